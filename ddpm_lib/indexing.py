"""Checking timesteps and gathering schedule values at them (index = the paper's t: ``alpha_bar[t]`` is ᾱ_t)."""
from __future__ import annotations

import torch

from .schedules import Schedule


def check_t(s: Schedule, t, batch: int | None = None) -> None:
    """Raise ``ValueError`` unless t is an int or integer tensor of shape (B,) with 1 <= t <= T.

    For a tensor on a GPU, or inside ``torch.compile``, the range is checked on the device (an asynchronous
    assert), not on the host.
    """
    if isinstance(t, bool):
        raise ValueError(f"t must be an integer timestep in 1..{s.T}, got {t!r}")
    if isinstance(t, int):
        lo = hi = t
    elif isinstance(t, torch.Tensor):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timesteps 1..{s.T}, got a {t.dtype} tensor")
        if t.ndim > 1:
            raise ValueError(f"t must be an int or a tensor of shape (B,), got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError("t is empty")
        if t.ndim == 1 and batch is not None and t.shape[0] not in (1, batch):
            raise ValueError(f"t has {t.shape[0]} timesteps but the batch has {batch} samples")
        if t.device.type != "cpu" or torch.compiler.is_compiling():
            # on the device: reading t back would stall the GPU, and split a compiled graph in two
            torch._assert_async(((t >= 1) & (t <= s.T)).all(), f"t must lie in 1..T = 1..{s.T}")
            return
        lo, hi = int(t.min()), int(t.max())
    else:
        hint = ": pass int(t)" if hasattr(t, "__index__") else ""           # numpy.int64, …
        raise ValueError(f"t must be an int or a torch tensor of timesteps, got {type(t).__name__}{hint}")
    if lo < 1 or hi > s.T:
        raise ValueError(f"t must lie in 1..T = 1..{s.T} (the paper's t; index 0 is the clean data), "
                         f"got values from {lo} to {hi}")


def gather(values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped (B, 1, ..., 1) to broadcast against ``like``, in like's dtype and device.

    ``values`` is a schedule tensor of length T + 1; t is an int or a long tensor of shape (B,).
    """
    if isinstance(t, int):
        v = values[t].reshape((1,) * like.ndim)
    else:
        t = t.to(values.device).reshape(-1)
        v = values[t].reshape((-1,) + (1,) * (like.ndim - 1))
    return v.to(device=like.device, dtype=like.dtype)


def check_operands(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the tensors when their shapes differ, or naming one that is not real (floating
    point): an integer x_0 such as ``torch.tensor([[2, 1]])`` would round √ᾱ_t to 0 and every result with it."""
    for k, v in tensors.items():
        if not v.is_floating_point():
            raise ValueError(f"{k} is a {v.dtype} tensor: the formulas need real numbers ({k}.float(); images "
                             f"as floats in [−1, 1]: dl.to_model_range)")
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shapes must match: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
