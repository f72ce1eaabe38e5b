"""The forward-process posterior q(x_{t−1} | x_t, x_0) and the ε ↔ x_0 ↔ μ̃ conversions.

Ho et al. 2020, eqs. 6–7 and 9–11:
    μ̃_t(x_t, x_0) = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
    β̃_t          = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t
    x_0           = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t
    μ̃_t           = (x_t − β_t / √(1 − ᾱ_t) · ε) / √α_t
"""
from __future__ import annotations

import torch

from .forward import signal_noise_scales
from .indexing import check_operands, check_t, gather
from .schedules import Schedule


def q_posterior(s: Schedule, x0: torch.Tensor, xt: torch.Tensor, t):
    """Mean μ̃_t(x_t, x_0) and variance β̃_t of q(x_{t−1} | x_t, x_0)   (eqs. 6–7).

    Returns ``(mean, var)``: mean has x0's shape (B, ...), var is β̃_t shaped (B, 1, ..., 1) ((1, ..., 1) for
    an int t).
    """
    check_operands(x0=x0, xt=xt)
    check_t(s, t, batch=x0.shape[0])
    alpha_bar_prev = gather(s.alpha_bar, t - 1, x0)      # ᾱ_{t−1}; ᾱ_0 = 1 needs no special case
    beta_t, alpha_t = gather(s.beta, t, x0), gather(s.alpha, t, x0)
    # 1 − ᾱ_t = (1 − ᾱ_{t−1}) + ᾱ_{t−1}·β_t: the same number, but free of the rounding in 1 − ᾱ_t
    # when ᾱ_t ≈ 1, so that at t = 1 (where it is β_1) the mean is x_0 exactly.
    one_minus_alpha_bar_t = (1.0 - alpha_bar_prev) + alpha_bar_prev * beta_t
    coef_x0 = torch.sqrt(alpha_bar_prev) * beta_t / one_minus_alpha_bar_t
    coef_xt = torch.sqrt(alpha_t) * (1.0 - alpha_bar_prev) / one_minus_alpha_bar_t
    return coef_x0 * x0 + coef_xt * xt, gather(s.beta_tilde, t, x0)


def predict_x0_from_eps(s: Schedule, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t: invert eq. 4 for x_0 given the noise.
    xt, eps: (B, ...); t: int or long tensor (B,) in 1..T; returns xt's shape."""
    check_operands(xt=xt, eps=eps)
    check_t(s, t, batch=xt.shape[0])
    sqrt_alpha_bar_t, sqrt_one_minus_alpha_bar_t = signal_noise_scales(s, t, xt)
    return (xt - sqrt_one_minus_alpha_bar_t * eps) / sqrt_alpha_bar_t


def predict_eps_from_x0(s: Schedule, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """ε = (x_t − √ᾱ_t·x_0) / √(1 − ᾱ_t): invert eq. 4 for the noise given x_0.
    xt, x0: (B, ...); t: int or long tensor (B,) in 1..T; returns xt's shape."""
    check_operands(xt=xt, x0=x0)
    check_t(s, t, batch=xt.shape[0])
    sqrt_alpha_bar_t, sqrt_one_minus_alpha_bar_t = signal_noise_scales(s, t, xt)
    return (xt - sqrt_alpha_bar_t * x0) / sqrt_one_minus_alpha_bar_t


def mu_from_eps(s: Schedule, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """μ̃_t = (x_t − β_t / √(1 − ᾱ_t) · ε) / √α_t   (eq. 11): the mean from predicted noise.
    xt, eps: (B, ...); t: int or long tensor (B,) in 1..T; returns xt's shape."""
    check_operands(xt=xt, eps=eps)
    check_t(s, t, batch=xt.shape[0])
    beta_t, alpha_t = gather(s.beta, t, xt), gather(s.alpha, t, xt)
    _, sqrt_one_minus_alpha_bar_t = signal_noise_scales(s, t, xt)
    return (xt - beta_t / sqrt_one_minus_alpha_bar_t * eps) / torch.sqrt(alpha_t)
