"""Checks for the exercises of notebook 08 (classifier guidance and classifier-free guidance)."""
from __future__ import annotations

import torch

from ..indexing import gather
from ..schedules import make_schedule
from .grading import (Mistake, N_CASES, _generator, _grade, _images, _keeps_dtype, _one_step_per_sample, _timesteps,
                      f64)


def _guided_eps(s, eps_pred, t, grad, scale, root=True, sign=-1.0, coef="alpha_bar", shift=0):
    one_minus = 1 - gather(getattr(s, coef), t - shift, eps_pred)
    return eps_pred + sign * (one_minus.sqrt() if root else one_minus) * scale * grad


def check_guided_eps(fn, seed=None) -> bool:
    """Exercise 8.1: ``fn(s, eps_pred, t, grad, scale)`` → ε̂ = ε_θ − √(1 − ᾱ_t)·s·∇_{x_t} log p_φ(y | x_t)
    (Dhariwal & Nichol 2021, eq. 14 / Algorithm 2). eps_pred, grad: (B, C, H, W); t: long (B,) or an int; scale: float."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("cosine", 200) if k % 2 else make_schedule("linear", 1000)
        x = _images(g, 5)
        cases.append((s, x, _timesteps(g, s, 5), torch.randn(x.shape, generator=g, dtype=f64), (1.0, 2.5, 0.3, 7.0, 1.0)[k]))
    mistakes = [
        Mistake("the sign: guidance moves ε̂ *against* the gradient, ε̂ = ε_θ − √(1 − ᾱ_t)·s·∇ log p, because "
                "ε = −√(1 − ᾱ_t)·∇ log q(x_t)", lambda *a: _guided_eps(*a, sign=1.0)),
        Mistake("the factor is √(1 − ᾱ_t), the noise's standard deviation, not 1 − ᾱ_t",
                lambda *a: _guided_eps(*a, root=False)),
        Mistake("looks like α_t where ᾱ_t belongs: √(1 − ᾱ_t)", lambda *a: _guided_eps(*a, coef="alpha")),
        Mistake("off by one in t: the factor is √(1 − ᾱ_t), s.alpha_bar[t] (index = the paper's t), and you used "
                "ᾱ_{t−1}", lambda *a: _guided_eps(*a, shift=1)),
        Mistake("the guidance scale s is missing", lambda s, e, t, gr, sc: _guided_eps(s, e, t, gr, 1.0)),
    ]
    return _grade("guided_eps", fn, cases, _guided_eps, mistakes, ("ε̂",), (),
                  f"matches ε_θ − √(1 − ᾱ_t)·s·∇ log p_φ on {N_CASES} random batches, for an int t too, and float32 "
                  "stays float32", timesteps=lambda s, e, t, gr, sc: (t, s.T),
                  requirements=[lambda fn: _one_step_per_sample(fn, cases[0], 2),
                                lambda fn: _keeps_dtype(fn, cases[0])])


def check_cfg_combine(fn, seed=None) -> bool:
    """Exercise 8.2: ``fn(eps_uncond, eps_cond, w)`` → ε̃ = ε_u + w·(ε_c − ε_u), the classifier-free-guidance
    prediction in the course's convention (w = 0 unconditional, w = 1 conditional)."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        x = _images(g, 4)
        cases.append((x, torch.randn(x.shape, generator=g, dtype=f64), (0.0, 1.0, 3.0, 0.5, 7.5)[k]))
    reference = lambda eu, ec, w: eu + w * (ec - eu)
    mistakes = [
        Mistake("that is Ho & Salimans' convention (1 + w)·ε_c − w·ε_u, whose w is our w − 1; here w = 1 must "
                "return ε_c", lambda eu, ec, w: (1 + w) * ec - w * eu),
        Mistake("the two predictions are swapped: start from the unconditional ε_u and move towards ε_c",
                lambda eu, ec, w: ec + w * (eu - ec)),
        Mistake("w weighs the difference ε_c − ε_u, not ε_c alone", lambda eu, ec, w: eu + w * ec),
    ]

    def ends(fn):
        eu, ec = torch.randn(3, 2, generator=g, dtype=f64), torch.randn(3, 2, generator=g, dtype=f64)
        if not torch.allclose(torch.as_tensor(fn(eu, ec, 0.0)), eu) or not torch.allclose(torch.as_tensor(fn(eu, ec, 1.0)), ec):
            return "w = 0 must return ε_u and w = 1 must return ε_c"

    return _grade("cfg_combine", fn, cases, reference, mistakes, ("ε̃",), [ends],
                  f"matches ε_u + w·(ε_c − ε_u) on {N_CASES} cases; w = 0 and w = 1 give ε_u and ε_c")
