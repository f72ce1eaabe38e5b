"""Exponential moving average (EMA) of the network weights, the model DDPM samples with.

Ho et al. (2020, App. B) keep θ_ema ← d·θ_ema + (1 − d)·θ after every optimizer step with d = 0.9999
and report their samples from θ_ema. With d = 0.9999 the average remembers about 1/(1 − d) = 10,000
steps, longer than a short course run lasts, so the decay ramps up as d_n = min(d, (1 + n)/(10 + n))
after n steps (the rule of TensorFlow's ExponentialMovingAverage): early on the average follows the
weights closely, and it reaches the full decay d once n ≥ (10d − 1)/(1 − d).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema_model(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode that will hold θ_ema (starts equal to θ)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def ema_decay(decay: float, step: int) -> float:
    """The decay used after optimizer step ``step`` (1, 2, …): d_n = min(d, (1 + n)/(10 + n))."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ for every parameter, in one foreach kernel per group.

    ``torch._foreach_lerp_(a, b, w)`` computes a + w·(b − a) = (1 − w)·a + w·b, so w = 1 − decay.
    Buffers (none in the U-Net or the toy MLP, running statistics in other nets) are copied as they are.
    """
    ema_params, params = list(ema_model.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"the EMA copy has {len(ema_params)} parameters but the model has {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)
