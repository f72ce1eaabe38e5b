"""The sinusoidal embedding of the timestep t, shared by every ε-model of the package."""
from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor | int, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style embedding of the paper's t (Vaswani et al. 2017, §3.5), as DDPM's networks use it.

    t: (B,) integers 1..T (or floats), or one int (B = 1); returns (B, dim) float32 =
    [sin(t·ω_k), cos(t·ω_k)], with frequencies ω_k = max_period^(−k / (dim/2)), k = 0 .. dim/2 − 1.
    These are the frequencies of the improved-DDPM / guided-diffusion code. DDPM's own code divides by
    dim/2 − 1 instead (ω runs down to exactly 1/max_period) and feeds t − 1: the same family of
    features, other values, so a network trained with one does not run with the other.
    """
    if dim % 2:
        raise ValueError(f"the embedding size must be even, got {dim}")
    t = torch.as_tensor(t)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.to(torch.float32).reshape(-1, 1) * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def batch_timesteps(t, batch: int, device) -> torch.Tensor:
    """The time input of a network, t (an int, or an integer tensor of shape (1,) or (B,)), as a (B,) tensor on
    ``device``; anything else (floats, bools, another length, more axes) is a ``ValueError``. The range 1..T is
    not checked here: a network does not know T, and reading t back from a GPU would stall it."""
    t = torch.as_tensor(t, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim > 1 or t.numel() not in (1, batch):
        raise ValueError(f"t must be an int or an integer tensor of shape ({batch},), got {t!r}")
    return t.reshape(-1).expand(batch)
