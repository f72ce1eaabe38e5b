"""Image networks of Denoising Diffusion GANs (Xiao, Kreis & Vahdat, ICLR 2022), built from the course U-Net.

    DDGANGenerator      G(x_t, z, t) → x_0′ ∈ [−1, 1]   the U-Net of ``unet.py`` whose ResBlocks are
                                                        conditioned on t and on z (adaptive GroupNorm)
    DDGANDiscriminator  D(x_{t−1}, x_t, t) → a logit     residual down-sampling convolutions on the pair

How z enters the generator. The U-Net's ResBlocks already scale and shift their second GroupNorm with
an affine map of the conditioning vector c: GroupNorm(h)·(1 + scale(c)) + shift(c). The generator
passes c = emb(t) + w(z), where w is a small mapping network (normalised z → MLP, as StyleGAN's) whose
width is the U-Net's embedding width (4·base_width: ``UNet.time_mlp``'s output). Every ResBlock's
normalisation is therefore adapted by both t and z ("adaptive normalisation conditioned on z").

The generator's output goes through tanh: data live in [−1, 1], a clean sample outside it is never
right, and the bound keeps the posterior draw of x_{t−1} in the range the discriminator sees on real
pairs (the paper's code ends its generator with tanh too).

The discriminator has no BatchNorm (nor a minibatch-statistics layer): each sample's logit depends on
that sample alone, which R1 (a per-sample gradient norm) and the per-sample GAN losses assume. It
pools with a sum over positions, as the paper's discriminator does. Having no normalisation either, it
keeps the scale of its activations only through its initialisation: every convolution starts with He's
variance for LeakyReLU(0.2), Var w = 2 / ((1 + 0.2²)·fan_in), and zero bias (StyleGAN2's discriminator gets
the same scale from its equalised learning rate). PyTorch's default, Var w = 1 / (3·fan_in), shrank the
activations 23× through the four blocks of the "mnist" preset on MNIST pairs; its logit then barely moved
(its loss sat at ln 4 and R1 at 0 through the first 100 steps of a CPU run).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ddgan import ToyDiscriminator, ToyGenerator
from .embedding import batch_timesteps, timestep_embedding
from .indexing import check_operands
from .unet import UNet

LEAKY_SLOPE = 0.2          # the discriminator's LeakyReLU, as in the paper (and its He initialisation)

# Each preset: the image generator and discriminator (image_size and in_channels come from the data),
# and the MLPs used for 2-D toy sets.
DDGAN_PRESETS = {
    # MNIST padded to 32×32: G 7.24M and D 2.74M parameters. Meant for one GPU (batch 64, a few thousand
    # steps); on one CPU thread a step of batch 8 with R1 costs about 2.5 s, so CPUs should use "tiny".
    "mnist": {"generator": dict(z_dim=64, base_width=64, width_mult=(1, 2, 2), blocks_per_level=2, attn_res=(8,),
                                linear_attn_res=(), heads=4, mapping_layers=3),
              "discriminator": dict(base_width=64, width_mult=(1, 2, 4, 4)),
              "toy": dict(z_dim=8, hidden=128, layers=3)},
    # Small enough for CPU tests and the notebooks' quick mode: G 0.30M and D 0.05M parameters.
    "tiny": {"generator": dict(z_dim=16, base_width=16, width_mult=(1, 2, 2), blocks_per_level=1, attn_res=(),
                               linear_attn_res=(), heads=1, mapping_layers=2),
             "discriminator": dict(base_width=16, width_mult=(1, 2, 2)),
             "toy": dict(z_dim=4, hidden=64, layers=2)},
}


class DDGANGenerator(nn.Module):
    """G(x_t, z, t) → x_0′: the course U-Net with z-adaptive normalisation and a tanh output.

    xt (B, C, H, W), z (B, z_dim), t int or long (B,) in 1..T; returns (B, C, H, W) in [−1, 1].
    The U-Net always uses ``time_cond="scale_shift"`` (the adaptive GroupNorm) and no dropout.
    """

    def __init__(self, image_size: int = 32, in_channels: int = 1, z_dim: int = 64, base_width: int = 64,
                 width_mult=(1, 2, 2), blocks_per_level: int = 2, attn_res=(8,), linear_attn_res=(),
                 heads: int = 4, mapping_layers: int = 3, downsample: str = "conv4"):
        super().__init__()
        if z_dim < 1 or mapping_layers < 1:
            raise ValueError(f"z_dim and mapping_layers must be at least 1, got {z_dim}, {mapping_layers}")
        self.z_dim = z_dim
        self.unet = UNet(image_size=image_size, in_channels=in_channels, base_width=base_width,
                         width_mult=width_mult, blocks_per_level=blocks_per_level, attn_res=attn_res,
                         linear_attn_res=linear_attn_res, heads=heads, dropout=0.0, time_cond="scale_shift",
                         downsample=downsample)
        cond_dim = self.unet.time_mlp[-1].out_features          # 4·base_width: what every ResBlock receives
        layers, width = [], z_dim
        for _ in range(mapping_layers):
            layers += [nn.Linear(width, cond_dim), nn.SiLU()]
            width = cond_dim
        self.mapping = nn.Sequential(*layers[:-1])              # z → w, no activation after the last layer

    def style(self, z: torch.Tensor) -> torch.Tensor:
        """w(z): z normalised to unit mean square per sample (pixel norm), then the mapping MLP."""
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        return self.mapping(z)

    def forward(self, xt: torch.Tensor, z: torch.Tensor, t) -> torch.Tensor:
        temb = self.unet.embed_time(xt, t)                     # checks xt's shape and size
        if z.shape != (xt.shape[0], self.z_dim):
            raise ValueError(f"expected z of shape ({xt.shape[0]}, {self.z_dim}), got {tuple(z.shape)}")
        cond = temb + self.style(z.to(xt.dtype))
        return torch.tanh(self.unet.forward_with_embedding(xt, cond))


class DownBlock(nn.Module):
    """LeakyReLU → 3×3 conv → (+ time) → LeakyReLU → 3×3 conv → 2×2 average pool, plus a pooled 1×1
    skip; the sum is divided by √2 to keep the scale of the activations."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, LEAKY_SLOPE)) + self.time_proj(temb)[:, :, None, None]
        h = F.avg_pool2d(self.conv2(F.leaky_relu(h, LEAKY_SLOPE)), 2)
        return (h + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2.0)


class DDGANDiscriminator(nn.Module):
    """D(x_{t−1}, x_t, t) → one logit per sample.

    The pair is concatenated on channels (2C), a 3×3 conv lifts it to ``base_width`` channels, then one
    ``DownBlock`` per entry of ``width_mult`` halves the size (the time embedding is added in each),
    then LeakyReLU, a sum over positions and a linear head. No BatchNorm: samples never interact.
    x_prev, xt (B, C, H, W); t int or long (B,); returns (B,).
    """

    def __init__(self, image_size: int = 32, in_channels: int = 1, base_width: int = 64, width_mult=(1, 2, 4, 4)):
        super().__init__()
        factor = 2 ** len(width_mult)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} cannot be halved {len(width_mult)} times by the "
                             f"discriminator: it must be a multiple of {factor}")
        self.in_channels, self.base_width = in_channels, base_width
        temb_dim = 4 * base_width
        self.time_mlp = nn.Sequential(nn.Linear(base_width, temb_dim), nn.LeakyReLU(LEAKY_SLOPE),
                                      nn.Linear(temb_dim, temb_dim), nn.LeakyReLU(LEAKY_SLOPE))
        self.conv_in = nn.Conv2d(2 * in_channels, base_width, 3, padding=1)
        blocks, ch = [], base_width
        for mult in width_mult:
            blocks.append(DownBlock(ch, base_width * mult, temb_dim))
            ch = base_width * mult
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(ch, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):                    # He init for LeakyReLU(0.2): see the module docstring
                nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x_prev: torch.Tensor, xt: torch.Tensor, t) -> torch.Tensor:
        check_operands(x_prev=x_prev, xt=xt)
        if xt.ndim != 4 or xt.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {tuple(xt.shape)}")
        t = batch_timesteps(t, xt.shape[0], xt.device)
        temb = self.time_mlp(timestep_embedding(t, self.base_width).to(xt.dtype))
        h = self.conv_in(torch.cat([x_prev, xt], dim=1))
        for block in self.blocks:
            h = block(h, temb)
        return self.head(F.leaky_relu(h, LEAKY_SLOPE).sum(dim=(2, 3))).squeeze(1)


def ddgan_spec(preset: str, example_shape) -> dict:
    """The architecture of a DDGAN run on examples of ``example_shape``: image networks of ``preset`` for
    (C, H, W), the toy MLPs for points (D,). ``build_ddgan`` turns it into ``(G, D)``."""
    if preset not in DDGAN_PRESETS:
        raise ValueError(f"unknown DDGAN preset {preset!r}: choose one of {', '.join(DDGAN_PRESETS)}")
    p, example_shape = DDGAN_PRESETS[preset], tuple(example_shape)
    if len(example_shape) == 1:
        toy = p["toy"]
        return {"kind": "ddgan", "config": {
            "type": "toy", "generator": {"dim": example_shape[0], **toy},
            "discriminator": {"dim": example_shape[0], "hidden": toy["hidden"], "layers": toy["layers"]}}}
    if len(example_shape) != 3 or example_shape[1] != example_shape[2]:
        raise ValueError(f"DDGAN's image networks need square images (C, H, H), got examples {example_shape}")
    data = {"image_size": example_shape[1], "in_channels": example_shape[0]}
    return {"kind": "ddgan", "config": {"type": "image", "generator": {**p["generator"], **data},
                                        "discriminator": {**p["discriminator"], **data}}}


def build_generator(spec: dict) -> nn.Module:
    """G of a ``ddgan_spec``."""
    config = _ddgan_config(spec)
    return (DDGANGenerator if config["type"] == "image" else ToyGenerator)(**config["generator"])


def build_ddgan(spec: dict):
    """``(G, D)`` of a ``ddgan_spec``."""
    config = _ddgan_config(spec)
    D = (DDGANDiscriminator if config["type"] == "image" else ToyDiscriminator)(**config["discriminator"])
    return build_generator(spec), D


def _ddgan_config(spec: dict) -> dict:
    if not isinstance(spec, dict) or spec.get("kind") != "ddgan" or spec.get("config", {}).get("type") not in ("image", "toy"):
        kind = spec.get("kind") if isinstance(spec, dict) else None
        raise ValueError(f"not a DDGAN architecture (model kind {kind!r}; expected 'ddgan')")
    return spec["config"]
