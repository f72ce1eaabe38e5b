"""A noise-aware classifier p_φ(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

Guidance needs ∇_{x_t} log p_φ(y | x_t) at every noise level, so the classifier sees noised images
x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε (eq. 4) and the timestep t. A classifier of clean images is no use:
at large t its inputs look like nothing it was trained on. Like Dhariwal & Nichol's, the network is
the U-Net's encoder half with a pooled head:

    x_t ─conv_in─▶ [ResBlock (+ attention)] × levels, Downsample between ─▶ middle (Res, Attn, Res)
        ─▶ GroupNorm ─▶ SiLU ─▶ global average pool ─▶ linear ─▶ logits (B, K)

with t entering every ResBlock through the same sinusoidal embedding and MLP as the ε-model. The
encoder is built by ``UNet`` itself (same configuration fields, same parameter names ``time_mlp``,
``conv_in``, ``down``, ``middle``), so it is the U-Net's encoder exactly. Only GroupNorm is used:
one image's logits never depend on the rest of its batch, which per-sample gradients require.

``train_noisy_classifier`` minimises the cross-entropy on x_t with t ~ Uniform{1..T};
``noisy_classifier_accuracy`` measures the accuracy at a chosen noise level t;
``save_noisy_classifier`` / ``load_noisy_classifier`` write and read the weights with the schedule they
were trained for and a JSON card (``python -m ddpm_lib train-noisy-classifier`` makes one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import load_model_state
from .files import check_card, read_tagged_file, save_with_card
from .forward import q_sample
from .indexing import check_t
from .schedules import Schedule, make_schedule
from .unet import PRESETS, UNet, group_norm

FORMAT = "ddpm_lib-noisy-classifier-1"


class NoisyClassifier(nn.Module):
    """p_φ(y | x_t, t): (B, C, H, W) and t ∈ 1..T of shape (B,) → logits (B, num_classes).

    ``num_classes`` is K; every other argument is the ``UNet``'s and shapes the encoder the same way.
    """

    def __init__(self, num_classes: int = 10, **unet_kwargs):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        unet = UNet(**unet_kwargs)                   # build the U-Net, keep its encoder half
        self.config = {**unet.config, "num_classes": num_classes}
        self.levels = unet.levels
        self.time_mlp, self.conv_in, self.down, self.middle = unet.time_mlp, unet.conv_in, unet.down, unet.middle
        ch = self.config["base_width"] * self.config["width_mult"][-1]
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(ch, num_classes))

    @classmethod
    def from_preset(cls, name: str, num_classes: int = 10, **overrides) -> "NoisyClassifier":
        """The encoder of a named U-Net configuration ("mnist", "tiny", "ddpm-cifar10"), fields changeable."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return cls(num_classes=num_classes, **{**PRESETS[name], **overrides})

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    embed_time = UNet.embed_time                          # the U-Net's own shape checks and time embedding

    def forward(self, xt: torch.Tensor, t) -> torch.Tensor:
        temb = self.embed_time(xt, t)
        h = self.conv_in(xt)
        for block in self.down:
            h = block(h, temb)
        return self.head(self.middle(h, temb))


def _check_data(model: nn.Module, x0: torch.Tensor, y: torch.Tensor) -> None:
    if y.ndim != 1 or y.shape[0] != x0.shape[0] or y.is_floating_point():
        raise ValueError(f"y must hold one integer label per image: x0 has {x0.shape[0]} images, "
                         f"y has shape {tuple(y.shape)} ({y.dtype})")
    K = model.num_classes
    if int(y.min()) < 0 or int(y.max()) >= K:
        raise ValueError(f"labels must lie in 0..{K - 1} (the classifier's {K} classes), "
                         f"got values from {int(y.min())} to {int(y.max())}")


def train_noisy_classifier(model: NoisyClassifier, s: Schedule, x0: torch.Tensor, y: torch.Tensor,
                           steps: int, batch: int, lr: float, generator: torch.Generator,
                           weight_decay: float = 0.0, log: Callable[[int, float], None] | None = None,
                           progress: bool = False) -> list[float]:
    """Fit p_φ(y | x_t, t) by cross-entropy on noised images; returns the loss of every step.

    Each step draws a minibatch of ``batch`` (x_0, y) pairs with replacement, t ~ Uniform{1..T} and
    ε ~ N(0, I) (all from ``generator``, on its device), forms x_t = ``q_sample(s, x0, t, eps)``
    (eq. 4) and takes an AdamW step on −log p_φ(y | x_t, t). x0: (N, C, H, W) in [−1, 1]; y: long (N,)
    in 0..K − 1. The model trains on its own device and is left in eval mode (ready to guide).
    ``log(step, loss)`` is called after every step.
    """
    _check_data(model, x0, y)
    for ok, why in ((steps >= 1, f"steps must be at least 1, got {steps}"),
                    (1 <= batch <= x0.shape[0], f"batch must lie in 1..{x0.shape[0]} (the images), got {batch}"),
                    (lr > 0, f"lr must be positive, got {lr}"),                               # NaN fails too
                    (weight_decay >= 0, f"weight_decay must be at least 0, got {weight_decay}")):
        if not ok:
            raise ValueError(why)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    gen_device = generator.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    model.train()
    for step in tqdm(range(1, steps + 1), desc="training the noisy classifier", disable=not progress):
        idx = torch.randint(0, x0.shape[0], (batch,), generator=generator, device=gen_device).to(x0.device)
        t = torch.randint(1, s.T + 1, (batch,), generator=generator, device=gen_device).to(device)
        eps = torch.randn((batch, *x0.shape[1:]), generator=generator, device=gen_device, dtype=dtype).to(device)
        x_batch = x0[idx].to(device=device, dtype=dtype)
        loss = F.cross_entropy(model(q_sample(s, x_batch, t, eps), t), y[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if log is not None:
            log(step, history[-1])
    model.eval()
    return history


@torch.no_grad()
def noisy_classifier_accuracy(model: nn.Module, s: Schedule, x0: torch.Tensor, y: torch.Tensor, t: int,
                              generator: torch.Generator, batch_size: int = 500) -> float:
    """Fraction of the images, noised to level t (one ε per image from ``generator``), whose arg-max
    logit is the label: how well p_φ(y | x_t, t) still recognises classes at that noise level.
    The model is evaluated in eval mode and put back in the mode it was in."""
    _check_data(model, x0, y)
    check_t(s, t)
    was_training = model.training
    model.eval()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    correct = 0
    for i in range(0, x0.shape[0], batch_size):
        x_batch = x0[i:i + batch_size]
        eps = torch.randn(x_batch.shape, generator=generator, device=generator.device, dtype=dtype).to(device)
        xt = q_sample(s, x_batch.to(device=device, dtype=dtype), t, eps)
        t_batch = torch.full((x_batch.shape[0],), t, device=device, dtype=torch.long)
        correct += int((model(xt, t_batch).argmax(1).cpu() == y[i:i + batch_size].cpu()).sum())
    model.train(was_training)
    return correct / x0.shape[0]


def save_noisy_classifier(model: NoisyClassifier, s: Schedule, path: str | Path, card: dict | None = None) -> dict:
    """Write the weights (fp16, on the CPU, as the course's exported ε-models; read back as fp32) and the
    schedule they were trained for atomically to ``path``, and a JSON card beside it (``path`` with
    ``.json``): ``card`` plus the format, the model's config, the schedule, the file name and the sha256
    of the written file. Returns the card."""
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    schedule = {"name": s.name, "T": s.T}
    return save_with_card({"format": FORMAT, "config": model.config, "schedule": schedule, "state_dict": state},
                          path, {**(card or {}), "format": FORMAT, "config": model.config, "schedule": schedule})


def load_noisy_classifier(path: str | Path, device="cpu", check_sha256: bool = True):
    """``(classifier, schedule)``: a saved ``NoisyClassifier`` in eval mode on ``device`` (ready for
    ``guidance.classifier_grad_fn``) and the noise schedule it was trained for.

    Read with ``weights_only=True``. With ``check_sha256`` the card ``path.with_suffix('.json')`` must
    exist and hold the file's sha256 (``ValueError`` otherwise); a missing file → ``FileNotFoundError``,
    a truncated one → ``RuntimeError``, a file of another kind → ``ValueError``.
    """
    path = Path(path)
    saved = read_tagged_file(path, FORMAT, "noisy classifier")          # its kind first, then its card
    if check_sha256:
        check_card(path, required=True)
    config = dict(saved["config"])
    model = NoisyClassifier(num_classes=config.pop("num_classes"), **config)
    load_model_state(model, {k: v.float() for k, v in saved["state_dict"].items()}, source=str(path))
    return model.to(device).eval(), make_schedule(saved["schedule"]["name"], saved["schedule"]["T"])
