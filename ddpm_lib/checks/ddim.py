"""Checks for the exercises of notebook 07 (DDIM)."""
from __future__ import annotations

import math

import torch

from ..ddim import ddim_step
from ..schedules import make_schedule
from .grading import Mistake, N_CASES, _generator, _grade, _images, _keeps_dtype, f64


def _pairs(g, s):
    """(t, t') pairs with 0 <= t' < t: neighbours, long jumps, and a last step to t' = 0."""
    T = s.T
    t = int(torch.randint(2, T + 1, (1,), generator=g))
    jump = int(torch.randint(1, t, (1,), generator=g))
    return [(t, t - 1), (t, t - jump), (T, 0), (T, T - 1), (2, 1)]


def _sigma(s, t, t_prev, eta, inner=True, outer=True, ratio="ab"):
    a, ap = float(s.alpha_bar[t]), float(s.alpha_bar[t_prev])
    first = math.sqrt((1 - ap) / (1 - a)) if outer else (1 - ap) / (1 - a)
    second = 1 - a / ap if ratio == "ab" else 1 - float(s.alpha[t])
    return eta * first * (math.sqrt(second) if inner else second)


def check_ddim_sigma(fn, seed=None) -> bool:
    """Exercise 7.1: ``fn(s, t, t_prev, eta)`` → σ_{t→t'}(η) = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'})
    (DDIM eq. 16 with DDIM's α_t = our ᾱ_t), for ints 0 <= t' < t <= T and η in [0, 1]."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("cosine", 200) if k % 2 else make_schedule("linear", 1000)
        eta = (1.0, 0.5, 0.3, 1.0, 0.0)[k]
        cases += [(s, t, tp, eta) for t, tp in _pairs(g, s)]
    mistakes = [
        Mistake("the first factor is a ratio of variances under a square root: √((1 − ᾱ_{t'})/(1 − ᾱ_t))",
                lambda *a: _sigma(*a, outer=False)),
        Mistake("the second factor needs its square root too: √(1 − ᾱ_t/ᾱ_{t'})", lambda *a: _sigma(*a, inner=False)),
        Mistake("1 − α_t is right only for neighbouring steps; for a jump t → t' use 1 − ᾱ_t/ᾱ_{t'}",
                lambda *a: _sigma(*a, ratio="alpha")),
        Mistake("that is σ², the variance of the step's noise; return σ itself, the factor that multiplies the "
                "noise", lambda *a: _sigma(*a) ** 2),
    ]

    def ddpm_limit(fn):        # η = 1 and t' = t − 1: σ² is DDPM's posterior variance β̃_t
        s = make_schedule("linear", 1000)
        for t in (2, 500, 1000):
            if abs(float(fn(s, t, t - 1, 1.0)) ** 2 - float(s.beta_tilde[t])) > 1e-9:
                return f"with η = 1 and t' = t − 1, σ² must equal β̃_t (DDPM); at t = {t} it does not"

    return _grade("ddim_sigma", fn, cases, _sigma, mistakes, ("σ",), [ddpm_limit],
                  f"matches eq. 16 on {len(cases)} (t, t', η) triples, jumps and t' = 0 included, and σ² = β̃_t "
                  "for η = 1 and t' = t − 1", tol=((1e-9, 1e-12),))


def check_ddim_update(fn, seed=None) -> bool:
    """Exercise 7.2: ``fn(s, xt, eps_pred, t, t_prev, eta, noise)`` → x_{t'} of DDIM eq. 12:
    √ᾱ_{t'}·x̂_0 + √(1 − ᾱ_{t'} − σ²)·ε_θ + σ·noise with x̂_0 = (x_t − √(1 − ᾱ_t)·ε_θ)/√ᾱ_t and σ of eq. 16.
    xt, eps_pred, noise: (B, C, H, W); t, t_prev: ints, or long tensors (B,), with 0 <= t_prev < t."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("cosine", 200) if k % 2 else make_schedule("linear", 1000)
        eta = (0.0, 1.0, 0.5, 0.0, 1.0)[k]
        x = _images(g, 3)
        for t, tp in _pairs(g, s)[:3]:
            cases.append((s, x, torch.randn(x.shape, generator=g, dtype=f64), t, tp, eta,
                          torch.randn(x.shape, generator=g, dtype=f64)))

    def variant(xt_coef="direction", sigma_sq=True):
        def step(s, xt, eps, t, tp, eta, noise):
            a, ap = float(s.alpha_bar[t]), float(s.alpha_bar[tp])
            sigma = _sigma(s, t, tp, eta)
            x0 = (xt - math.sqrt(1 - a) * eps) / math.sqrt(a)
            direction = math.sqrt(max(1 - ap - (sigma ** 2 if sigma_sq else 0.0), 0.0)) * eps
            if xt_coef == "alpha":
                x0 = (xt - math.sqrt(1 - float(s.alpha[t])) * eps) / math.sqrt(float(s.alpha[t]))
            return math.sqrt(ap) * x0 + direction + sigma * noise
        return step

    mistakes = [
        Mistake("the direction term is √(1 − ᾱ_{t'} − σ²)·ε: σ² must come off, or the variance grows with η",
                variant(sigma_sq=False)),
        Mistake("x̂_0 uses ᾱ_t (all steps so far), not α_t: x̂_0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t", variant("alpha")),
    ]

    def deterministic(fn):     # η = 0 ignores the noise argument
        s, x = make_schedule("linear", 1000), torch.randn(2, 1, 4, 4, generator=g, dtype=f64)
        e = torch.randn(x.shape, generator=g, dtype=f64)
        a = fn(s, x, e, 600, 550, 0.0, torch.randn(x.shape, generator=g, dtype=f64))
        b = fn(s, x, e, 600, 550, 0.0, torch.randn(x.shape, generator=g, dtype=f64))
        if not torch.equal(torch.as_tensor(a), torch.as_tensor(b)):
            return "with η = 0 the step must not depend on the noise (σ = 0)"

    def batched(fn):           # t, t_prev as long tensors (B,): sample b takes its own step t[b] → t_prev[b]
        s, x = make_schedule("linear", 1000), torch.randn(3, 1, 4, 4, generator=g, dtype=f64)
        e, z = torch.randn(x.shape, generator=g, dtype=f64), torch.randn(x.shape, generator=g, dtype=f64)
        t, tp = torch.tensor([1000, 600, 2]), torch.tensor([999, 350, 0])
        try:
            out = torch.as_tensor(fn(s, x, e, t, tp, 0.5, z))
        except Exception as err:
            return (f"t and t_prev may be long tensors of shape (B,), one step per sample; that failed with "
                    f"{type(err).__name__}: {err}")
        one_by_one = torch.cat([torch.as_tensor(fn(s, x[b:b + 1], e[b:b + 1], int(t[b]), int(tp[b]), 0.5, z[b:b + 1]))
                                for b in range(len(t))])           # the answer's own steps, taken with int t
        if out.shape != x.shape or not torch.allclose(out, one_by_one, rtol=1e-6, atol=1e-9):
            return ("with tensors t, t_prev of shape (B,), sample b must take its own step t[b] → t_prev[b], "
                    "as the call with the ints t[b], t_prev[b] does")

    return _grade("ddim_update", fn, cases, lambda s, xt, e, t, tp, eta, z: ddim_step(s, xt, e, t, tp, eta, z),
                  mistakes, ("x_{t'}",), [deterministic, batched],
                  f"matches dl.ddim_step on {len(cases)} steps (η = 0, ½, 1; neighbours, jumps and t' = 0), "
                  "on a batch whose samples take different steps, and float32 stays float32",
                  requirements=[lambda fn: _keeps_dtype(fn, cases[0])])
