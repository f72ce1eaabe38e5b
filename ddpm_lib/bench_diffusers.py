"""The diffusers side of ``python -m ddpm_lib bench``: ``UNet2DModel`` built like our U-Net presets.

diffusers is optional (the ``course`` extra installs it); nothing here imports it until a function
needs it, so ``ddpm_lib`` itself never depends on it.

How a preset maps onto ``UNet2DModel`` (the same layers, hence the same parameters and FLOPs):

    ours                                     diffusers.UNet2DModel
    base_width · width_mult                  block_out_channels
    blocks_per_level                         layers_per_block (up blocks get one more, in both)
    attention at resolution r (level i)      "AttnDownBlock2D" / "AttnUpBlock2D" at level i
    heads                                    attention_head_dim = channels / heads
    time_cond "add" / "scale_shift"          resnet_time_scale_shift "default" / "scale_shift"
    downsample "conv3" (3×3, stride 2)       downsample_type "conv", downsample_padding 1
    nearest ×2 + 3×3 conv                    upsample_type "conv"
    [sin, cos] embedding of 128 frequencies  flip_sin_to_cos False, freq_shift 0, then Linear–SiLU–Linear

Our "conv4" downsampling (4×4 kernel, the lecture's) has no diffusers counterpart: the "tiny" preset
maps with 3×3 downsampling convolutions instead (fewer parameters; ``parameter_counts`` reports both).
Linear attention (the "mnist" preset) has no counterpart either: that preset does not map.

Timesteps: our ε-models take the paper's t ∈ 1..T; diffusers' schedulers number the same steps
0..T−1 (their timestep k is the paper's t = k + 1). ``DiffusersEps`` converts, so that the same
``Trainer.train_step`` and samplers drive both models.
"""
from __future__ import annotations

import torch
from torch import nn

from .unet import PRESETS


def diffusers_available() -> bool:
    """Whether the optional diffusers package imports, with the UNet2DModel the bench compares against (an
    install that lacks one of diffusers' own dependencies counts as not installed)."""
    try:
        from diffusers import UNet2DModel  # noqa: F401
    except ImportError:
        return False
    return True


def diffusers_config(preset: str | dict) -> dict:
    """The ``UNet2DModel`` keyword arguments of the architecture of our ``preset`` (see the module docstring).

    ``preset``: a name of ``unet.PRESETS`` or a U-Net's configuration (``UNet(...).config``).
    Raises ``ValueError`` for a preset diffusers has no blocks for (linear attention) or whose
    attention layers differ in head size.
    """
    if isinstance(preset, dict):
        c = preset
    elif preset in PRESETS:
        c = PRESETS[preset]
    else:
        raise ValueError(f"unknown U-Net preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if c["linear_attn_res"]:
        raise ValueError("this U-Net uses linear attention, which diffusers' UNet2DModel does not offer")
    widths = tuple(c["base_width"] * m for m in c["width_mult"])
    attn_levels = [i for i in range(len(widths)) if c["image_size"] // 2 ** i in c["attn_res"]]
    head_dims = {w // c["heads"] for w in [widths[i] for i in attn_levels] + [widths[-1]]}   # + the middle
    if len(head_dims) != 1 or any(w % c["heads"] for w in widths):
        raise ValueError("diffusers' UNet2DModel needs one attention head size everywhere")
    return dict(
        sample_size=c["image_size"], in_channels=c["in_channels"], out_channels=c["in_channels"],
        block_out_channels=widths, layers_per_block=c["blocks_per_level"],
        down_block_types=tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(len(widths))),
        up_block_types=tuple("AttnUpBlock2D" if i in attn_levels else "UpBlock2D"
                             for i in reversed(range(len(widths)))),
        attention_head_dim=head_dims.pop(), dropout=c["dropout"], norm_num_groups=32, norm_eps=1e-5,
        resnet_time_scale_shift="default" if c["time_cond"] == "add" else "scale_shift",
        downsample_type="conv", downsample_padding=1, upsample_type="conv",
        time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=0, act_fn="silu")


def diffusers_unet(preset: str) -> nn.Module:
    """``diffusers.UNet2DModel`` with the architecture of our ``preset`` (float32, on the CPU)."""
    from diffusers import UNet2DModel
    return UNet2DModel(**diffusers_config(preset))


class DiffusersEps(nn.Module):
    """A diffusers ``UNet2DModel`` with our ε-model call convention: ``forward(xt, t)`` takes the
    paper's t ∈ 1..T (a long tensor (B,)) and returns the predicted noise as a tensor.

    diffusers numbers the timesteps 0..T−1, so the network receives t − 1; it returns a dataclass,
    whose ``.sample`` is the tensor.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(xt, t - 1).sample


def parameter_counts(preset: str) -> dict:
    """Exact trainable-parameter counts of our preset and of its diffusers counterpart."""
    from .unet import UNet, count_parameters
    return {"ddpm_lib": count_parameters(UNet.from_preset(preset)),
            "diffusers": count_parameters(diffusers_unet(preset))}
