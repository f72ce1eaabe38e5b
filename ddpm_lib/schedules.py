"""Noise schedules β_t, indexed by the paper's t: ``beta[t]`` is β_t.

Every tensor has length T + 1 and is float64. Entry 0 is the clean-data pad:
``beta[0] = 0``, ``alpha[0] = 1``, ``alpha_bar[0] = 1``, ``beta_tilde[0] = 0``.

Variable names → paper symbols (Ho et al. 2020):
    beta[t]       β_t                      variance added by step t
    alpha[t]      α_t = 1 − β_t
    alpha_bar[t]  ᾱ_t = ∏_{s≤t} α_s         so q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)
    beta_tilde[t] β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t   posterior variance (eq. 7)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

SCHEDULES = ("linear", "quadratic", "sigmoid", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A noise schedule; all tensors float64 with length T + 1, index = the paper's t."""

    name: str
    T: int
    beta: torch.Tensor
    alpha: torch.Tensor
    alpha_bar: torch.Tensor
    beta_tilde: torch.Tensor

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio SNR_t = ᾱ_t / (1 − ᾱ_t); entry 0 is +inf (clean data)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    def to(self, device) -> "Schedule":
        """The same schedule with its tensors on ``device`` (still float64), for hot loops on a GPU."""
        return replace(self, **{k: getattr(self, k).to(device)
                                for k in ("beta", "alpha", "alpha_bar", "beta_tilde")})

    def __repr__(self) -> str:
        return (f"Schedule({self.name!r}, T={self.T}, beta[1]={self.beta[1]:.3g}, "
                f"beta[T]={self.beta[self.T]:.3g}, alpha_bar[T]={self.alpha_bar[self.T]:.3g})")


def betas_for(name: str, T: int) -> torch.Tensor:
    """β_1..β_T (length T, float64) for a named schedule:

    linear     β_t evenly spaced from 10⁻⁴·(1000/T) to 0.02·(1000/T)     (Ho et al. 2020 at T = 1000)
    quadratic  √β_t evenly spaced from √10⁻⁴ to √0.02
    sigmoid    β_t = 10⁻⁴ + (0.02 − 10⁻⁴)·sigmoid(u_t), u_t evenly spaced on [−6, 6]
    cosine     β_t = min(1 − f(t)/f(t−1), 0.999), f(t) = cos²((t/T + 0.008)/1.008 · π/2) (Nichol & Dhariwal
               2021), so ᾱ_t = f(t)/f(0) until the clip acts (at T = 1000 the last step only: ᾱ_T = 2.4·10⁻⁹, not 3.7·10⁻³³)
    """
    if name == "linear":
        scale = 1000.0 / T  # keeps ᾱ_T about the same for any T (Nichol & Dhariwal 2021)
        beta = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
        if beta[-1] >= 1.0:
            raise ValueError(f"the linear schedule needs T >= 21 (its β_T = 20/T would reach 1); "
                             f"got T={T}: use more steps or the 'cosine' schedule")
        return beta
    if name == "quadratic":
        return torch.linspace(1e-4 ** 0.5, 0.02 ** 0.5, T, dtype=torch.float64) ** 2
    if name == "sigmoid":
        return torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=torch.float64)) * (0.02 - 1e-4) + 1e-4
    if name == "cosine":
        # ᾱ(t) ∝ cos²(((t/T + s) / (1 + s)) · π/2), s = 0.008;  β_t = min(1 − ᾱ_t / ᾱ_{t−1}, 0.999)
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.clamp(1.0 - f[1:] / f[:-1], max=0.999)
    raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")


def schedule_from_betas(beta_1_to_T: torch.Tensor, name: str = "custom") -> Schedule:
    """Build a Schedule from β_1..β_T (each in (0, 1)); pads index 0 with the clean data."""
    beta_1_to_T = torch.as_tensor(beta_1_to_T, dtype=torch.float64)
    if beta_1_to_T.ndim != 1 or len(beta_1_to_T) < 1:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(beta_1_to_T.shape)}")
    if not ((beta_1_to_T > 0) & (beta_1_to_T < 1)).all():
        raise ValueError("every β_t must lie strictly between 0 and 1")
    T = len(beta_1_to_T)
    beta = torch.cat([torch.zeros(1, dtype=torch.float64), beta_1_to_T])
    alpha = 1.0 - beta                                   # α_t = 1 − β_t, α_0 = 1
    alpha_bar = torch.cumprod(alpha, dim=0)              # ᾱ_t = ∏_{s=1}^t α_s, ᾱ_0 = 1
    beta_tilde = torch.zeros_like(beta)                  # β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t
    beta_tilde[1:] = (1.0 - alpha_bar[:-1]) / (1.0 - alpha_bar[1:]) * beta[1:]
    return Schedule(name=name, T=T, beta=beta, alpha=alpha, alpha_bar=alpha_bar, beta_tilde=beta_tilde)


def make_schedule(name: str = "linear", T: int = 1000) -> Schedule:
    """The schedule ``name`` ("linear" | "quadratic" | "sigmoid" | "cosine") with T steps.

    >>> s = make_schedule("linear", T=1000)
    >>> s.beta[1].item(), s.alpha_bar[0].item()
    (0.0001, 1.0)
    """
    if isinstance(T, bool) or not isinstance(T, int):
        raise ValueError(f"T must be a whole number of steps, got {T!r}")
    if T < 1:
        raise ValueError(f"T must be at least 1, got T={T}")
    return schedule_from_betas(betas_for(name, T), name=name)
