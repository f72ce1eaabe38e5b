"""Checks for the exercises of notebook 03 (the posterior)."""
from __future__ import annotations

import torch

from ..indexing import gather
from ..posterior import q_posterior
from ..schedules import make_schedule
from .grading import Mistake, N_CASES, _generator, _grade, _images, _same, _schedules, _timesteps, f64


def _posterior_mean(s, x0, xt, t, prev=1, sqrt_prev=True, sqrt_alpha=True, alpha="alpha", swap=False):
    ab_t, ab_prev, beta = gather(s.alpha_bar, t, x0), gather(s.alpha_bar, t - prev, x0), gather(s.beta, t, x0)
    a = gather(getattr(s, alpha), t, x0)
    c0 = (ab_prev.sqrt() if sqrt_prev else ab_prev) * beta / (1 - ab_t)
    ct = (a.sqrt() if sqrt_alpha else a) * (1 - ab_prev) / (1 - ab_t)
    return ct * x0 + c0 * xt if swap else c0 * x0 + ct * xt


def check_q_posterior(fn, seed=None) -> bool:
    """Exercise 3.1: ``fn(s, x0, xt, t)`` → (μ̃_t, β̃_t) of q(x_{t−1} | x_t, x_0) (eqs. 6–7), images (B, C, H, W)."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s, x0 = _schedules()[k % 2], _images(g, 6)
        t = _timesteps(g, s, 6)
        cases.append((s, x0, torch.randn(x0.shape, generator=g, dtype=f64), t))
    at = lambda name, s, x, t: gather(getattr(s, name), t, x)
    off = "off by one in t: ᾱ_{t−1} is s.alpha_bar[t - 1] (index = the paper's t), and you used ᾱ_t"
    mistakes = [
        Mistake(off, lambda s, x0, xt, t: _posterior_mean(s, x0, xt, t, prev=0)),
        Mistake("the x_t coefficient has √α_t (s.alpha), not √ᾱ_t (s.alpha_bar)",
                lambda s, x0, xt, t: _posterior_mean(s, x0, xt, t, alpha="alpha_bar")),
        Mistake("a square root is missing: the x_0 coefficient is √ᾱ_{t−1}·β_t / (1 − ᾱ_t)",
                lambda s, x0, xt, t: _posterior_mean(s, x0, xt, t, sqrt_prev=False)),
        Mistake("a square root is missing: the x_t coefficient is √α_t·(1 − ᾱ_{t−1}) / (1 − ᾱ_t)",
                lambda s, x0, xt, t: _posterior_mean(s, x0, xt, t, sqrt_alpha=False)),
        Mistake("the coefficients of x_0 and x_t are swapped",
                lambda s, x0, xt, t: _posterior_mean(s, x0, xt, t, swap=True)),
        Mistake("you returned β_t: either ᾱ_t stands where ᾱ_{t−1} belongs (off by one in t: s.alpha_bar[t - 1]; "
                "the ratio is then 1), or you took the forward step's variance; the posterior's is "
                "β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t",
                lambda s, x0, xt, t: at("beta", s, x0, t), part=1),
        Mistake("the ratio is upside down: β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t",
                lambda s, x0, xt, t: (1 - at("alpha_bar", s, x0, t)) / (1 - at("alpha_bar", s, x0, t - 1))
                * at("beta", s, x0, t), part=1),
        Mistake("that is the standard deviation √β̃_t; return the variance β̃_t",
                lambda s, x0, xt, t: at("beta_tilde", s, x0, t).sqrt(), part=1),
    ]

    def completed_square(fn):        # precisions add: 1/β̃ = α_t/β_t + 1/(1 − ᾱ_{t−1}), t ≥ 2
        s = make_schedule("linear", 1000)
        x0, xt = torch.randn(2, 4, 2, 3, 3, generator=g, dtype=f64)
        t = torch.randint(2, 1001, (4,), generator=g)
        beta, alpha, ab_prev = at("beta", s, x0, t), at("alpha", s, x0, t), at("alpha_bar", s, x0, t - 1)
        var = 1 / (alpha / beta + 1 / (1 - ab_prev))
        mean = var * (alpha.sqrt() / beta * xt + ab_prev.sqrt() / (1 - ab_prev) * x0)
        got_mean, got_var = fn(s, x0, xt, t)
        if not (_same(got_mean, mean, (1e-6, 1e-9)) and _same(got_var, var.expand_as(x0), (1e-6, 1e-12), True)):
            return ("the completed square disagrees with it (precisions add: 1/β̃_t = α_t/β_t + "
                    "1/(1 − ᾱ_{t−1}))")

    reference = lambda s, x0, xt, t: (q_posterior(s, x0, xt, t)[0], q_posterior(s, x0, xt, t)[1].expand_as(x0))
    return _grade("q_posterior", fn, cases, reference, mistakes, ("the mean", "the variance"), [completed_square],
                  f"mean and variance match dl.q_posterior on {N_CASES} random image batches "
                  "(t = 1…T, linear and cosine) and the completed square", broadcast=(1,),
                  timesteps=lambda s, x0, xt, t: (t, s.T))


def _x0_from_mean(s, mean, xt, t, prev=1, sqrt_prev=True, alpha="alpha", subtract=True):
    ab_t, ab_prev, beta = gather(s.alpha_bar, t, xt), gather(s.alpha_bar, t - prev, xt), gather(s.beta, t, xt)
    a_t = (ab_prev.sqrt() if sqrt_prev else ab_prev) * beta / (1 - ab_t)
    c_t = gather(getattr(s, alpha), t, xt).sqrt() * (1 - ab_prev) / (1 - ab_t)
    return (mean - c_t * xt) / a_t if subtract else mean / a_t


def check_x0_from_posterior_mean(fn, seed=None) -> bool:
    """Exercise 3.3: ``fn(s, mean, xt, t)`` → the x_0 whose posterior mean μ̃_t(x_t, x_0) is ``mean``; (B, D)."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s, (x0, xt) = _schedules()[k % 2], torch.randn(2, 8, 3, generator=g, dtype=f64)
        t = _timesteps(g, s, 8)
        cases.append((s, q_posterior(s, x0, xt, t)[0], xt, t))

    def reference(s, mean, xt, t):   # μ̃ is affine in x_0: read its slope and intercept off the library
        at_zero = q_posterior(s, torch.zeros_like(xt), xt, t)[0]
        return (mean - at_zero) / (q_posterior(s, torch.ones_like(xt), xt, t)[0] - at_zero)

    mistakes = [
        Mistake("subtract the x_t part first: x_0 = (μ̃_t − c_t·x_t) / a_t",
                lambda s, m, xt, t: _x0_from_mean(s, m, xt, t, subtract=False)),
        Mistake("the sign of the x_t part: μ̃_t = a_t·x_0 + c_t·x_t, so x_0 = (μ̃_t − c_t·x_t) / a_t",
                lambda s, m, xt, t: _x0_from_mean(s, m, -xt, t)),
        Mistake("off by one in t: ᾱ_{t−1} is s.alpha_bar[t - 1] (index = the paper's t), and you used ᾱ_t",
                lambda s, m, xt, t: _x0_from_mean(s, m, xt, t, prev=0)),
        Mistake("a square root is missing: a_t = √ᾱ_{t−1}·β_t / (1 − ᾱ_t)",
                lambda s, m, xt, t: _x0_from_mean(s, m, xt, t, sqrt_prev=False)),
        Mistake("c_t has √α_t (s.alpha), not √ᾱ_t (s.alpha_bar)",
                lambda s, m, xt, t: _x0_from_mean(s, m, xt, t, alpha="alpha_bar")),
    ]
    return _grade("x0_from_posterior_mean", fn, cases, reference, mistakes, ("x_0",), (),
                  f"recovers x_0 from (μ̃_t, x_t) on {N_CASES} random batches (t = 1…T, linear and cosine)",
                  tol=((1e-6, 1e-8),), timesteps=lambda s, m, xt, t: (t, s.T))


