"""Checks for the exercises of notebook 02 (the forward process)."""
from __future__ import annotations

import math

import torch

from ..forward import q_sample
from ..indexing import gather
from ..schedules import make_schedule, schedule_from_betas
from .grading import Mistake, N_CASES, _generator, _grade, _images, _keeps_dtype, _schedules, _timesteps, f64


def _mix(signal, noise):
    """x_t-like variant: signal(s, t, x)·x0 + noise(s, t, x)·eps."""
    return lambda s, x0, t, eps: signal(s, t, x0) * x0 + noise(s, t, x0) * eps


def check_q_sample(fn, seed=None) -> bool:
    """Exercise 2.1: ``fn(s, x0, t, eps)`` → x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·eps (eq. 4) for images (B, C, H, W)."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s, x0 = _schedules()[k % 2], _images(g, 6)
        cases.append((s, x0, _timesteps(g, s, 6), torch.randn(x0.shape, generator=g, dtype=f64)))
    ab = lambda s, t, x: gather(s.alpha_bar, t, x)
    a = lambda s, t, x: gather(s.alpha, t, x)
    ab_prev = lambda s, t, x: gather(s.alpha_bar, t - 1, x)
    ab_first = lambda s, t, x: gather(s.alpha_bar, int(t.reshape(-1)[0]), x)
    mistakes = [
        Mistake("looks like you used α_t (s.alpha) where ᾱ_t (s.alpha_bar) is needed: that is one forward step, "
                "not the closed form", _mix(lambda *z: a(*z).sqrt(), lambda *z: (1 - a(*z)).sqrt())),
        Mistake("off by one in t: you used ᾱ_{t−1} = s.alpha_bar[t - 1]; index = the paper's t, "
                "so ᾱ_t is s.alpha_bar[t]",
                _mix(lambda *z: ab_prev(*z).sqrt(), lambda *z: (1 - ab_prev(*z)).sqrt())),
        Mistake("the square roots are missing: the coefficients √ᾱ_t and √(1 − ᾱ_t) are standard deviations, "
                "not variances", _mix(ab, lambda *z: 1 - ab(*z))),
        Mistake("a square root is missing on the noise: its coefficient is √(1 − ᾱ_t)",
                _mix(lambda *z: ab(*z).sqrt(), lambda *z: 1 - ab(*z))),
        Mistake("a square root is missing on x_0: its coefficient is √ᾱ_t",
                _mix(ab, lambda *z: (1 - ab(*z)).sqrt())),
        Mistake("the noise coefficient √β_t belongs to one step q(x_t | x_{t−1}); the closed form needs √(1 − ᾱ_t)",
                _mix(lambda *z: ab(*z).sqrt(), lambda s, t, x: gather(s.beta, t, x).sqrt())),
        Mistake("the coefficients are swapped: x_0 gets √ᾱ_t and ε gets √(1 − ᾱ_t)",
                _mix(lambda *z: (1 - ab(*z)).sqrt(), lambda *z: ab(*z).sqrt())),
        Mistake("every sample took the first sample's step t[0]: t holds one step per sample, so take ᾱ at each "
                "(s.alpha_bar[t] has shape (B,); reshape it to (B, 1, 1, 1) to scale each image)",
                _mix(lambda *z: ab_first(*z).sqrt(), lambda *z: (1 - ab_first(*z)).sqrt())),
        Mistake("the sign of the noise: x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε adds it (the same law, but not the same x_t "
                "for the given ε)", _mix(lambda *z: ab(*z).sqrt(), lambda *z: -(1 - ab(*z)).sqrt())),
    ]
    n = 20_000

    def moments(fn):
        s, t = make_schedule("linear", 1000), int(torch.randint(1, 1001, (1,), generator=g))
        value, ab_t = 2 * float(torch.randn(1, generator=g)), float(s.alpha_bar[t])
        eps = torch.randn(n, 1, 1, 1, generator=g, dtype=f64)
        xt = fn(s, torch.full((n, 1, 1, 1), value, dtype=f64), torch.full((n,), t), eps)
        mean, var, want = float(xt.mean()), float(xt.var()), math.sqrt(ab_t) * value
        if abs(mean - want) > 5 * math.sqrt((1 - ab_t) / n):            # 5 standard errors
            return f"over {n:,} draws of ε the mean of x_t is {mean:.4f}, but √ᾱ_t·x_0 = {want:.4f} (t = {t})"
        if abs(var - (1 - ab_t)) > 5 * (1 - ab_t) * math.sqrt(2 / (n - 1)):
            return f"over {n:,} draws of ε the variance of x_t is {var:.4g}, but 1 − ᾱ_t = {1 - ab_t:.4g} (t = {t})"

    return _grade("q_sample", fn, cases, q_sample, mistakes, ("x_t",), [moments],
                  f"matches dl.q_sample on {N_CASES} random image batches (t = 1…T, linear and cosine), over "
                  f"{n:,} draws of ε x_t has mean √ᾱ_t·x_0 and variance 1 − ᾱ_t, and float32 stays float32",
                  timesteps=lambda s, x0, t, eps: (t, s.T), requirements=[lambda fn: _keeps_dtype(fn, cases[0])])


def _first_snr_below_one(s):
    return int(torch.argmax((s.snr < 1).int()))          # the first True; index = the paper's t (SNR_0 = ∞)


def check_snr_crossing(fn, seed=None) -> bool:
    """Exercise 2.2: ``fn(s)`` → the first t with SNR_t = ᾱ_t / (1 − ᾱ_t) < 1."""
    g = _generator(seed)
    cases = [(make_schedule(name, int(torch.randint(100, 2001, (1,), generator=g))),)
             for name in ("linear", "quadratic", "sigmoid", "cosine")]
    cases += [(schedule_from_betas(torch.sort(0.002 + 0.05 * torch.rand(300, generator=g, dtype=f64)).values),)]
    first = _first_snr_below_one
    mistakes = [
        Mistake("off by one in t: you returned the last step with SNR ≥ 1, or an index into s.alpha_bar[1:], "
                "whose entry 0 is t = 1 (add 1)", lambda s: first(s) - 1),
        Mistake("off by one in t: one step late (SNR_t < 1 already holds at the step before yours)",
                lambda s: first(s) + 1),
        Mistake("SNR compares variances: ᾱ_t against 1 − ᾱ_t, i.e. ᾱ_t < ½, with no square root",
                lambda s: int(torch.argmax((s.alpha_bar.sqrt() < 0.5).int()))),
    ]
    return _grade("snr_crossing", fn, cases, first, mistakes, ("t",), (),
                  "finds the first step with SNR_t < 1 for the four schedules (random T) and a random one",
                  tol=((0, 0),))


