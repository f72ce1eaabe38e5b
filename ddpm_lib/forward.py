"""The forward (noising) process q of DDPM (Ho et al. 2020, eqs. 2 and 4)."""
from __future__ import annotations

import torch

from .indexing import check_operands, check_t, gather
from .schedules import Schedule


def q_step(s: Schedule, x_prev: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """One forward step x_t ~ q(x_t | x_{t−1}) = N(√(1−β_t)·x_{t−1}, β_t·I)   (eq. 2).

    Reparameterised: x_t = √(1 − β_t)·x_prev + √β_t·eps, eps ~ N(0, I) of x_prev's shape (B, ...).
    """
    check_operands(x_prev=x_prev, eps=eps)
    check_t(s, t, batch=x_prev.shape[0])
    beta_t = gather(s.beta, t, x_prev)
    return torch.sqrt(1.0 - beta_t) * x_prev + torch.sqrt(beta_t) * eps


def signal_noise_scales(s: Schedule, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """√ᾱ_t and √(1 − ᾱ_t), the two scales of eq. 4, shaped (B, 1, ..., 1) like ``gather``'s in like's dtype and
    device. Formed in float64 and cast once: 1 − ᾱ_t taken from a float32 ᾱ_t ≈ 0.9999 keeps four digits."""
    like64 = torch.empty((1,) * like.ndim, dtype=torch.float64, device=like.device)
    alpha_bar_t = gather(s.alpha_bar, t, like64)
    return torch.sqrt(alpha_bar_t).to(like.dtype), torch.sqrt(1.0 - alpha_bar_t).to(like.dtype)


def q_sample(s: Schedule, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """Closed form x_t ~ q(x_t | x_0) = N(√ᾱ_t·x_0, (1 − ᾱ_t)·I)   (eq. 4).

    x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·eps.  x0, eps: (B, ...); t: int or long tensor (B,) in 1..T.
    """
    check_operands(x0=x0, eps=eps)
    check_t(s, t, batch=x0.shape[0])
    sqrt_alpha_bar_t, sqrt_one_minus_alpha_bar_t = signal_noise_scales(s, t, x0)
    return sqrt_alpha_bar_t * x0 + sqrt_one_minus_alpha_bar_t * eps


def q_sample_chain(s: Schedule, x0: torch.Tensor, t: int, generator: torch.Generator | None = None,
                   return_path: bool = False) -> torch.Tensor:
    """Iterate eq. 2 for t steps: x_0 → x_1 → … → x_t, drawing fresh noise at every step.

    Returns x_t, or with ``return_path=True`` the whole path stacked as (t + 1, B, ...) so that
    ``path[k]`` is x_k. The same law as ``q_sample`` (the check of notebook 02), at t times the cost.
    """
    check_t(s, t)
    x, path = x0, [x0]
    for k in range(1, t + 1):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = q_step(s, x, k, eps)
        if return_path:
            path.append(x)
    return torch.stack(path) if return_path else x
