"""The DDPM U-Net ε_θ(x_t, t), built from the blocks the lectures teach (notebook 05).

    x_t ──conv_in──▶ [ResBlock × n (+ attention)] ─Downsample─▶ … ─▶ middle (Res, Attn, Res)
        ◀─conv_out── [ResBlock × (n+1) (+ attention)] ◀─Upsample─ …   with skip connections (concat)

The time t (the paper's integer t, 1..T) enters every ResBlock through a sinusoidal embedding and an
MLP. Two details are configurable because the lecture's blocks and the DDPM paper's model differ:
``time_cond`` ("scale_shift": GroupNorm output · (1 + scale) + shift; "add": the paper's bias) and
``downsample`` ("conv4": 4×4 conv, stride 2, padding 1; "conv3": the paper's 3×3 conv, stride 2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import batch_timesteps, timestep_embedding


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (the paper's), or the largest power of two dividing ``channels``."""
    return nn.GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels)


class ResBlock(nn.Module):
    """x + F(x, temb) for x: (B, in_ch, H, W) and temb: (B, temb_dim); returns (B, out_ch, H, W).

    ``time_cond="scale_shift"`` (the default, Dhariwal & Nichol's AdaGN): GroupNorm → SiLU → 3×3 conv →
    GroupNorm → ·(1 + scale) + shift from the time embedding → SiLU → dropout → 3×3 conv.
    ``time_cond="add"`` (DDPM's): the time embedding is added after the first conv, before the second
    GroupNorm. The residual is a 1×1 conv when the channel count changes."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float = 0.0,
                 time_cond: str = "scale_shift"):
        super().__init__()
        if time_cond not in ("scale_shift", "add"):
            raise ValueError(f"time_cond must be 'scale_shift' or 'add', got {time_cond!r}")
        self.time_cond = time_cond
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, 2 * out_ch if time_cond == "scale_shift" else out_ch)
        self.norm2, self.dropout = group_norm(out_ch), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        tproj = self.time_proj(F.silu(temb))[:, :, None, None]
        if self.time_cond == "scale_shift":
            scale, shift = tproj.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + tproj)
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions, softmax(QKᵀ/√d)V via scaled_dot_product_attention,
    plus a residual: (B, ch, H, W) → (B, ch, H, W)."""

    def __init__(self, ch: int, heads: int = 1):
        super().__init__()
        if ch % heads:
            raise ValueError(f"{ch} channels do not split into {heads} heads")
        self.heads, self.norm = heads, group_norm(ch)
        self.qkv, self.out = nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, temb=None) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)      # each (B, heads, N, d), contiguous
        h = F.scaled_dot_product_attention(q, k, v)                  # fused kernels need contiguous inputs
        return x + self.out(h.transpose(-1, -2).reshape(B, C, H, W))


class LinearAttention(nn.Module):
    """Linear attention (Shen et al. 2021): softmax of Q over the feature axis, of K over positions,
    then Q·(KᵀV) — cost O(N·d²) in the number of positions N instead of O(N²·d). Plus a residual:
    (B, ch, H, W) → (B, ch, H, W)."""

    def __init__(self, ch: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, self.dim_head, inner = heads, dim_head, heads * dim_head
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * inner, 1, bias=False)
        self.out = nn.Sequential(nn.Conv2d(inner, ch, 1), nn.GroupNorm(1, ch))

    def forward(self, x: torch.Tensor, temb=None) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, self.dim_head, H * W).unbind(1)
        q = q.softmax(dim=-2) * self.dim_head ** -0.5          # over the d features of each position
        k = k.softmax(dim=-1)                                  # over the N positions of each feature
        context = torch.einsum("bhdn,bhen->bhde", k, v)        # (d × e) summary: O(N d²)
        h = torch.einsum("bhde,bhdn->bhen", context, q)
        return x + self.out(h.reshape(B, -1, H, W))


class Downsample(nn.Module):
    """Halve H and W: a 4×4 conv with stride 2 and padding 1 ("conv4") or the paper's 3×3 ("conv3")."""

    def __init__(self, ch: int, kind: str = "conv4"):
        super().__init__()
        if kind not in ("conv4", "conv3"):
            raise ValueError(f"downsample must be 'conv4' or 'conv3', got {kind!r}")
        self.conv = nn.Conv2d(ch, ch, 4 if kind == "conv4" else 3, stride=2, padding=1)

    def forward(self, x, temb=None):
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, temb=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimeSequential(nn.ModuleList):
    """Apply modules in order, handing each the time embedding."""

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for module in self:
            x = module(x, temb)
        return x


PRESETS = {
    # The DDPM paper's CIFAR-10 model (Ho et al. 2020, App. B): 35.7M parameters.
    "ddpm-cifar10": dict(image_size=32, in_channels=3, base_width=128, width_mult=(1, 2, 2, 2),
                         blocks_per_level=2, attn_res=(16,), linear_attn_res=(), heads=1, dropout=0.1,
                         time_cond="add", downsample="conv3"),
    # MNIST padded to 32×32, with the lecture's blocks; a few million parameters.
    "mnist": dict(image_size=32, in_channels=1, base_width=64, width_mult=(1, 2, 2),
                  blocks_per_level=2, attn_res=(8,), linear_attn_res=(16,), heads=4, dropout=0.1,
                  time_cond="scale_shift", downsample="conv4"),
    # Small enough to train for a few minutes on a laptop CPU (notebooks' quick mode, tests).
    "tiny": dict(image_size=32, in_channels=1, base_width=32, width_mult=(1, 2, 2),
                 blocks_per_level=1, attn_res=(8,), linear_attn_res=(), heads=2, dropout=0.0,
                 time_cond="scale_shift", downsample="conv4"),
}


class UNet(nn.Module):
    """ε_θ(x_t, t): (B, C, H, W) and t ∈ 1..T of shape (B,) → predicted noise (B, C, H, W).

    ``width_mult[i]`` gives level i's channels as a multiple of ``base_width``; level i works at
    ``image_size / 2**i``; ``attn_res`` / ``linear_attn_res`` list the resolutions that get full or
    linear attention after each ResBlock. Any input whose side halves evenly at every level works.
    """

    def __init__(self, image_size: int = 32, in_channels: int = 1, base_width: int = 64,
                 width_mult=(1, 2, 2), blocks_per_level: int = 2, attn_res=(8,), linear_attn_res=(),
                 heads: int = 4, dropout: float = 0.1, time_cond: str = "scale_shift",
                 downsample: str = "conv4"):
        super().__init__()
        self.config = dict(image_size=image_size, in_channels=in_channels, base_width=base_width,
                           width_mult=tuple(width_mult), blocks_per_level=blocks_per_level,
                           attn_res=tuple(attn_res), linear_attn_res=tuple(linear_attn_res), heads=heads,
                           dropout=dropout, time_cond=time_cond, downsample=downsample)
        self.levels = len(width_mult)
        if image_size % 2 ** (self.levels - 1):
            raise ValueError(f"image_size {image_size} cannot be halved {self.levels - 1} times")
        temb_dim = 4 * base_width
        self.time_mlp = nn.Sequential(nn.Linear(base_width, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        res_args = dict(temb_dim=temb_dim, dropout=dropout, time_cond=time_cond)

        def attention(ch: int, res: int):
            if res in attn_res:
                return [Attention(ch, heads)]
            return [LinearAttention(ch)] if res in linear_attn_res else []

        self.conv_in = nn.Conv2d(in_channels, base_width, 3, padding=1)
        self.down, skip_ch, ch = nn.ModuleList(), [base_width], base_width
        for i, mult in enumerate(width_mult):
            res = image_size // 2 ** i
            for _ in range(blocks_per_level):
                self.down.append(TimeSequential([ResBlock(ch, base_width * mult, **res_args),
                                                 *attention(base_width * mult, res)]))
                ch = base_width * mult
                skip_ch.append(ch)
            if i < self.levels - 1:
                self.down.append(Downsample(ch, downsample))
                skip_ch.append(ch)
        self.middle = TimeSequential([ResBlock(ch, ch, **res_args), Attention(ch, heads), ResBlock(ch, ch, **res_args)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(width_mult))):
            res = image_size // 2 ** i
            for _ in range(blocks_per_level + 1):
                self.up.append(TimeSequential([ResBlock(ch + skip_ch.pop(), base_width * mult, **res_args),
                                               *attention(base_width * mult, res)]))
                ch = base_width * mult
            if i > 0:
                self.up.append(Upsample(ch))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        """A named configuration ("mnist", "ddpm-cifar10", "tiny"), optionally with fields changed."""
        if name not in PRESETS:
            raise ValueError(f"unknown U-Net preset {name!r}: choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward(self, xt: torch.Tensor, t) -> torch.Tensor:
        return self.forward_with_embedding(xt, self.embed_time(xt, t))

    def embed_time(self, xt: torch.Tensor, t) -> torch.Tensor:
        """The time embedding (B, 4·base_width) for t (int or (B,)), checking xt's shape first."""
        if xt.ndim != 4 or xt.shape[1] != self.config["in_channels"]:
            raise ValueError(f"expected images (B, {self.config['in_channels']}, H, W), got {tuple(xt.shape)}")
        factor = 2 ** (self.levels - 1)
        if xt.shape[-1] % factor or xt.shape[-2] % factor:
            raise ValueError(f"image size {tuple(xt.shape[-2:])} cannot be halved {self.levels - 1} times: "
                             f"height and width must be multiples of {factor}; pad them to the next multiple")
        t = batch_timesteps(t, xt.shape[0], xt.device)                 # (B,) integers; a ValueError otherwise
        return self.time_mlp(timestep_embedding(t, self.config["base_width"]).to(xt.dtype))

    def forward_with_embedding(self, xt: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The U-Net proper, given the conditioning vector ``temb`` that every ResBlock receives."""
        h = self.conv_in(xt)
        skips = [h]
        for block in self.down:
            h = block(h, temb)
            skips.append(h)
        h = self.middle(h, temb)
        for block in self.up:
            h = block(h if isinstance(block, Upsample) else torch.cat([h, skips.pop()], dim=1), temb)
        return self.out(h)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
