"""Two-dimensional toy data sets, generated in code (no downloads). Each returns float64 tensors."""
from __future__ import annotations

import math

import torch

from .oracle import GaussianMixture


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """n points on a 2-D spiral (θ cos θ, θ sin θ), θ ∈ [1.5π, 4.5π], scaled to about unit spread: (n, 2)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    theta = 1.5 * math.pi * (1 + 2 * u)
    x = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 7.0
    return x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05):
    """Two interleaved half circles: ``(x, y)`` with x (n, 2) centred near 0 and labels y ∈ {0, 1}."""
    y = torch.randint(0, 2, (n,), generator=generator)
    angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    x = torch.where(y[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64), y


def ring_of_gaussians(k: int = 8, radius: float = 2.0, std: float = 0.1, weights=None) -> GaussianMixture:
    """A mixture of k Gaussians on a circle (the "8 Gaussians" set); sample with ``.sample(n, g)``."""
    angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return GaussianMixture(means, torch.full((k,), float(std), dtype=torch.float64),
                           torch.ones(k, dtype=torch.float64) if weights is None else weights)


TOY_SETS = ("swiss_roll", "two_moons", "eight_gaussians")


def make_toy(name: str, n: int, generator: torch.Generator | None = None):
    """``(x, y)`` for a named toy set; y is None for the swiss roll, which has no classes."""
    if name == "swiss_roll":
        return swiss_roll(n, generator), None
    if name == "two_moons":
        return two_moons(n, generator)
    if name == "eight_gaussians":
        return ring_of_gaussians().sample(n, generator)
    raise ValueError(f"unknown toy data set {name!r}: choose one of {', '.join(TOY_SETS)}")


def check_points(x0_data: torch.Tensor) -> None:
    """Refuse toy training data that is not (N, D) points with N >= 1, or that holds NaN or infinite values."""
    if x0_data.ndim != 2 or x0_data.shape[0] == 0:
        raise ValueError(f"x0_data must be (N, D) points with N >= 1 (1-D data: x.unsqueeze(1)), "
                         f"got shape {tuple(x0_data.shape)}")
    if not torch.isfinite(x0_data).all():
        raise ValueError("x0_data holds NaN or infinite values")
