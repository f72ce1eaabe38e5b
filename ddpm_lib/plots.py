"""Figures shared by the notebooks. The only module of the package that imports matplotlib."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from .data import to_pixel_range


def image_grid(x: torch.Tensor, nrow: int = 8, pad: int = 2) -> torch.Tensor:
    """Tile images (B, C, H, W) in [−1, 1] into one (H', W', C) array in [0, 1], row by row. One image
    (C, H, W) or (H, W) is a grid of one."""
    if not x.is_floating_point():
        raise ValueError(f"images are {x.dtype}: show floats in [−1, 1] (pixels 0..255: dl.to_model_range)")
    if x.ndim in (2, 3):
        x = x.reshape((1,) * (4 - x.ndim) + tuple(x.shape))
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, C, H, W) with 1 or 3 channels, or one image, got {tuple(x.shape)}")
    x = to_pixel_range(x.detach().float().cpu())
    B, C, H, W = x.shape
    ncol = min(nrow, B)
    rows = (B + ncol - 1) // ncol
    grid = torch.ones(C, rows * (H + pad) + pad, ncol * (W + pad) + pad)
    for i in range(B):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i]
    return grid.permute(1, 2, 0)


def show_images(x: torch.Tensor, nrow: int = 8, ax=None, title: str | None = None):
    """Draw a grid of images in [−1, 1] (grey for one channel); returns the axes."""
    ax = ax or plt.gca()
    grid = image_grid(x, nrow).numpy()                  # numpy: matplotlib warns on torch tensors
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def scatter2d(x: torch.Tensor, ax=None, c=None, title: str | None = None, lim: float | None = 3.0,
              s: float = 2.0, cmap: str = "tab10", **kw):
    """Scatter plot of 2-D points (N, 2) with equal axes; ``c`` colours points through ``cmap``
    (class labels with the default "tab10"; a continuous quantity with e.g. "viridis")."""
    ax = ax or plt.gca()
    x = x.detach().cpu().numpy()
    ax.scatter(x[:, 0], x[:, 1], c=None if c is None else torch.as_tensor(c).cpu().numpy(), s=s,
               cmap=cmap if c is not None else None, **kw)
    ax.set_aspect("equal")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    if title:
        ax.set_title(title)
    return ax


def save_scatter(x: torch.Tensor, path, title: str | None = None, lim: float = 3.0, dpi: int = 100):
    """Write 2-D points (N, 2) to ``path`` as a scatter plot on the fixed square [−lim, lim]² (the toy sets
    lie within ±2.4), so that plots of one run's steps compare at a glance and a collapsed or exploding
    sampler shows as one; the title counts the points outside the square. Draws on its own ``Figure``, not
    pyplot's, so a command or a notebook's current figure is left alone."""
    outside = int((x.detach().abs() > lim).any(dim=1).sum())
    note = f" ({outside:,} outside ±{lim:g})" if outside else ""
    fig = Figure(figsize=(4, 4), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    scatter2d(x, ax=ax, lim=lim, title=((title or "") + note).strip(), s=4 if x.shape[0] <= 1000 else 1)
    fig.savefig(path)
    return path


def plain_log_ticks(axis, values=None):
    """Label a log-scaled axis (``ax.xaxis`` or ``ax.yaxis``) with plain numbers — 30, 50, 100 — instead of
    matplotlib's 3 × 10¹: at ``values`` if given, else at the sparsest of m × 10^k for m in (1, 2, 3, 5), then
    m = 1…9, then m = 1, 1.5, …, 5, 6, …, 9 that puts at least four ticks inside the axis's limits (a narrow
    axis, say 21 to 55, gets 25, 30, …, 50 rather than three labels). Call it after the data are drawn and the
    limits set; returns the axis."""
    if axis.get_scale() != "log":
        raise ValueError(f"plain_log_ticks is for a log-scaled axis; this one is {axis.get_scale()}")
    lo, hi = sorted(axis.get_view_interval())
    if values is None:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for mantissas in ((1, 2, 3, 5), range(1, 10), (1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9)):
            values = [m * 10.0 ** k for k in decades for m in mantissas if lo <= m * 10.0 ** k <= hi]
            if len(values) >= 4:
                break
    axis.set_ticks([v for v in values if lo <= v <= hi])
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    return axis
