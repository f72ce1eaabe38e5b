"""Checks for the exercises of notebook 06 (training and sampling with the package)."""
from __future__ import annotations

import math

import torch

from ..forward import q_sample
from ..indexing import gather
from ..sampling import ddpm_step
from ..schedules import make_schedule
from .grading import (Mistake, N_CASES, _generator, _grade, _images, _keeps_dtype, _one_step_per_sample, _same,
                      _tensor, _timesteps, f64)


def _ema(ema, theta, decay):
    return decay * ema + (1 - decay) * theta


def check_ema_update(fn, seed=None) -> bool:
    """Exercise 6.1: ``fn(ema, theta, decay)`` → θ_ema ← d·θ_ema + (1 − d)·θ for one weight tensor
    (returns the new average; ``ema`` and ``theta`` have the same shape, ``decay`` is a float in [0, 1))."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        shape = tuple(int(v) for v in torch.randint(1, 6, (1 + k % 3,), generator=g))
        decay = (0.9, 0.999, 0.5, 0.0, 0.9999)[k]
        cases.append((torch.randn(shape, generator=g, dtype=f64), torch.randn(shape, generator=g, dtype=f64), decay))
    mistakes = [
        Mistake("the weights are swapped: the decay d multiplies the old average θ_ema, (1 − d) the new θ",
                lambda ema, theta, d: _ema(theta, ema, d)),
        Mistake("the new weights enter with factor (1 − d), not 1: θ_ema ← d·θ_ema + (1 − d)·θ",
                lambda ema, theta, d: d * ema + theta),
        Mistake("that is the plain weights θ, not their average", lambda ema, theta, d: theta),
    ]

    def fixed_point(fn):        # an average of a constant is that constant, whatever the decay
        w = torch.randn(4, 3, generator=g, dtype=f64)
        if not _same(fn(w.clone(), w.clone(), 0.99), w, (1e-12, 1e-12)):
            return "averaging θ with itself must return θ (the average of a constant is the constant)"

    def memory(fn):             # after n updates towards a fixed θ the gap shrinks by exactly dⁿ
        ema, theta, d, n = torch.zeros(5, dtype=f64), torch.ones(5, dtype=f64), 0.9, 20
        for _ in range(n):
            ema = fn(ema, theta, d)
        if not torch.equal(theta, torch.ones(5, dtype=f64)):
            return "the update changed θ in place: θ is the model's weights, so change (or return) only the average"
        if not _same(ema, torch.full((5,), 1 - d ** n, dtype=f64), (1e-10, 1e-12)):
            return f"after {n} updates from 0 towards 1 with d = {d} the average should be 1 − dⁿ = {1 - d ** n:.6f}"

    return _grade("ema_update", fn, cases, _ema, mistakes, ("the new average",), [fixed_point, memory],
                  f"matches θ_ema ← d·θ_ema + (1 − d)·θ on {N_CASES} cases; a constant θ is a fixed point and "
                  "the gap to θ shrinks by dⁿ", tol=((1e-12, 1e-12),))


def _step(s, xt, eps_pred, t, z, denom="alpha_bar", root=True, sigma="beta", zero_at_1=True, outer="alpha", sign=-1):
    at = lambda name: gather(getattr(s, name), t, xt)
    beta, one_minus = at("beta"), 1 - at(denom)
    mean = (xt + sign * beta / (one_minus.sqrt() if root else one_minus) * eps_pred) / at(outer).sqrt()
    noise = at("beta") * z if sigma == "beta_as_std" else at(sigma).sqrt() * z
    if zero_at_1:
        noise = noise * (t > 1).to(xt.dtype).reshape((-1,) + (1,) * (xt.ndim - 1))
    return mean + noise


def check_ancestral_step(fn, seed=None) -> bool:
    """Exercise 6.2: ``fn(s, xt, eps_pred, t, z)`` → one step of Algorithm 2 with σ_t² = β_t:
    x_{t−1} = (x_t − β_t/√(1 − ᾱ_t)·ε_θ)/√α_t + σ_t·z, and no noise where t = 1.
    xt, eps_pred, z: (B, C, H, W); t: long tensor (B,) in 1..T, or an int."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("linear", 1000) if k % 2 else make_schedule("cosine", 200)
        x0 = _images(g, 6)
        t = _timesteps(g, s, 6)
        xt = q_sample(s, x0, t, torch.randn(x0.shape, generator=g, dtype=f64))
        cases.append((s, xt, torch.randn(x0.shape, generator=g, dtype=f64), t, torch.randn(x0.shape, generator=g, dtype=f64)))
    reference = lambda s, xt, eps_pred, t, z: ddpm_step(s, xt, eps_pred, t, z, var="beta")
    mistakes = [
        Mistake("looks like α_t where ᾱ_t belongs: the noise coefficient is β_t/√(1 − ᾱ_t)",
                lambda *a: _step(*a, denom="alpha")),
        Mistake("the square root over 1 − ᾱ_t is missing: β_t/√(1 − ᾱ_t)", lambda *a: _step(*a, root=False)),
        Mistake("divide by √α_t (one step), not √ᾱ_t (all steps)", lambda *a: _step(*a, outer="alpha_bar")),
        Mistake("the sign of the noise term: the mean subtracts the predicted noise, (x_t − β_t/√(1 − ᾱ_t)·ε_θ)/√α_t",
                lambda *a: _step(*a, sign=1)),
        Mistake("σ_t is √β_t: β_t is the variance, so the noise is √β_t·z", lambda *a: _step(*a, sigma="beta_as_std")),
        Mistake("that is σ_t² = β̃_t; this exercise uses σ_t² = β_t (the paper's first choice)",
                lambda *a: _step(*a, sigma="beta_tilde")),
        Mistake("Algorithm 2 adds no noise at t = 1 (z = 0 there): the last step returns the mean",
                lambda *a: _step(*a, zero_at_1=False)),
    ]
    return _grade("ancestral_step", fn, cases, reference, mistakes, ("x_{t-1}",), (),
                  f"matches dl.ddpm_step(…, var='beta') on {N_CASES} random batches, t = 1 and t = T included, "
                  "and float32 stays float32",
                  timesteps=lambda s, xt, e, t, z: (t, s.T),
                  requirements=[lambda fn: _keeps_dtype(fn, cases[0]), lambda fn: _one_step_per_sample(fn, cases[0], 3)])


def _linear_loss(s, t, eigvals, signal="alpha_bar", part="residual", reduce=torch.mean):
    """ℓ_lin(t) of eq. (6.5) and its common wrong versions: the mean over i of ᾱ_t·λ_i/(ᾱ_t·λ_i + 1 − ᾱ_t)."""
    alpha_bar_t = s.alpha_bar[torch.as_tensor(t)].unsqueeze(-1)         # ᾱ_t: () → (1,), (B,) → (B, 1)
    scale = {"alpha_bar": alpha_bar_t, "sqrt": alpha_bar_t.sqrt(), "none": torch.ones_like(alpha_bar_t)}[signal]
    var_signal, var_noise = scale * eigvals, 1 - alpha_bar_t            # variances of √ᾱ_t·x_0 and √(1 − ᾱ_t)·ε along e_i
    kept = var_signal if part == "residual" else var_noise
    return reduce(kept / (var_signal + var_noise), -1)


def _affine_denoiser_mc(s, t, cov, mean, root, n, generator):
    """Monte-Carlo L_simple per dimension of the best affine predictor of ε from x_t, built from matrices only:
    x_0 = mean + root·z ~ N(mean, cov) with cov = root·rootᵀ (root: (D, K)), ε̂ = C·(x_t − √ᾱ_t·mean) with
    C = Cov(ε, x_t)·Cov(x_t)⁻¹ = √(1 − ᾱ_t)·(ᾱ_t·cov + (1 − ᾱ_t)·I)⁻¹. Returns (estimate, standard error)."""
    D, alpha_bar_t = len(mean), float(s.alpha_bar[t])
    x0 = mean + torch.randn(n, root.shape[1], generator=generator, dtype=f64) @ root.T
    eps = torch.randn(n, D, generator=generator, dtype=f64)
    xt = math.sqrt(alpha_bar_t) * x0 + math.sqrt(1 - alpha_bar_t) * eps                       # eq. (4)
    C = math.sqrt(1 - alpha_bar_t) * torch.linalg.inv(alpha_bar_t * cov + (1 - alpha_bar_t) * torch.eye(D, dtype=f64))
    per_draw = ((eps - (xt - math.sqrt(alpha_bar_t) * mean) @ C.T) ** 2).mean(1)             # ‖ε − ε̂‖²/D
    return float(per_draw.mean()), float(per_draw.std()) / math.sqrt(n)


def check_linear_denoiser_loss(fn, seed=None) -> bool:
    """Exercise 6.3: ``fn(s, t, eigvals)`` → ℓ_lin(t) = (1/D)·Σ_i ᾱ_t·λ_i/(ᾱ_t·λ_i + 1 − ᾱ_t), eq. (6.5): the
    L_simple per dimension (Ho et al. 2020, eq. 14) of the best affine predictor of ε from x_t (eq. 4) for data whose
    covariance has eigenvalues ``eigvals`` (D,), float64, some of them 0. t: an int in 1..T (returns one number) or a
    long tensor (B,) (returns (B,), one value per t)."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = (make_schedule("linear", 1000), make_schedule("cosine", 1000), make_schedule("cosine", 200))[k % 3]
        D = int(torch.randint(7, 41, (1,), generator=g))                       # never the batch's 6
        eigvals = 10 ** (7 * torch.rand(D, generator=g, dtype=f64) - 5)        # 1e-5 … 1e2
        eigvals[torch.randperm(D, generator=g)[:1 + k % 3]] = 0.0              # directions the data never vary in
        t_int = (1, s.T, int(torch.randint(2, s.T, (1,), generator=g)))[k % 3]     # an int t: 1, T or one between
        cases += [(s, _timesteps(g, s, 6), eigvals), (s, t_int, eigvals)]
    mistakes = [
        Mistake("that is the explained part (1 − ᾱ_t)/(ᾱ_t·λ_i + 1 − ᾱ_t), i.e. 1 − ℓ_lin; the loss is what the "
                "predictor cannot explain, ᾱ_t·λ_i/(ᾱ_t·λ_i + 1 − ᾱ_t)", lambda *a: _linear_loss(*a, part="explained")),
        Mistake("x_0 enters x_t scaled by √ᾱ_t, so its variance along e_i is ᾱ_t·λ_i, not λ_i",
                lambda *a: _linear_loss(*a, signal="none")),
        Mistake("√ᾱ_t scales x_0, so it scales its variance by ᾱ_t: the signal's variance is ᾱ_t·λ_i, not √ᾱ_t·λ_i",
                lambda *a: _linear_loss(*a, signal="sqrt")),
        Mistake("L_simple is per dimension: take the mean over the D directions, not the sum",
                lambda *a: _linear_loss(*a, reduce=torch.sum)),
    ]
    n = 40_000

    def affine_oracle(fn):      # the Monte-Carlo loss of C = √(1 − ᾱ_t)(ᾱ_t Σ + (1 − ᾱ_t) I)⁻¹, no eigenvalues used
        for s, t in ((make_schedule("linear", 1000), 1), (make_schedule("cosine", 1000), 300),
                     (make_schedule("linear", 1000), 1000)):
            ab = float(s.alpha_bar[t])
            eigvals = (1 - ab) / ab * 10 ** (3 * torch.rand(4, generator=g, dtype=f64) - 1.5)   # λ_i near the noise level
            eigvals[0] = 0.0
            Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=f64)).Q                 # random orthonormal basis
            root = Q * eigvals.sqrt()                                                          # Σ = Q diag(λ) Qᵀ
            est, se = _affine_denoiser_mc(s, t, root @ root.T, torch.randn(4, generator=g, dtype=f64), root, n, g)
            got = float(_tensor(fn(s, t, eigvals)).reshape(-1)[0])
            if abs(got - est) > 5 * se:          # 5 s.e.: a right answer fails ~6·10⁻⁷ per comparison
                return (f"with Σ = Q·diag(λ)·Qᵀ in D = 4 (λ = {', '.join(f'{v:.3g}' for v in eigvals)}, t = {t}) the "
                        f"affine predictor C·(x_t − √ᾱ_t·μ), C = √(1 − ᾱ_t)(ᾱ_t·Σ + (1 − ᾱ_t)·I)⁻¹, has a Monte-Carlo "
                        f"loss of {est:.4g} ± {se:.2g} per dimension ({n:,} draws), but your function gives {got:.4g}")

    return _grade("linear_denoiser_loss", fn, cases, _linear_loss, mistakes, ("ℓ_lin",), [affine_oracle],
                  f"matches eq. (6.5) on {len(cases)} cases (linear and cosine, t = 1…T, an int t or a tensor (B,), "
                  f"zero eigenvalues included) and the Monte-Carlo loss of the best affine predictor built from Σ",
                  timesteps=lambda s, t, eigvals: (torch.as_tensor(t).reshape(-1), s.T))
