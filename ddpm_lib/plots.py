"""Figures shared by the notebooks. The only module of the package that imports matplotlib."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .data import to_pixel_range


def image_grid(x: torch.Tensor, nrow: int = 8, pad: int = 2) -> torch.Tensor:
    """Tile images (B, C, H, W) in [−1, 1] into one (H', W', C) array in [0, 1], row by row."""
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
