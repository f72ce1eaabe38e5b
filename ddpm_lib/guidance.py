"""Guided sampling: classifier guidance (Dhariwal & Nichol 2021) and classifier-free guidance (Ho & Salimans 2021).

Classifier guidance. To sample from p(x | y) with an unconditional ε-model, tilt every reverse step by
a classifier p_φ(y | x_t). Expanding log p_φ(y | x_t) to first order around the step's mean gives
(Dhariwal & Nichol 2021, Secs. 4.1–4.2)

    x_{t−1} ~ N(μ + s·Σ·∇_{x_t} log p_φ(y | x_t), Σ)                 Algorithm 1 (ancestral), Sec. 4.1
    ε̂ = ε_θ(x_t, t) − √(1 − ᾱ_t)·s·∇_{x_t} log p_φ(y | x_t)          Algorithm 2 (DDIM), Sec. 4.2

with s the guidance scale (``scale``). The samplers take the gradient term as ``cond_fn(xt, t)``:
``sample_ddpm(…, cond_fn=f)`` and ``sample_ddim(…, cond_fn=f)``. This module builds f from a trained
noise-aware classifier (``classifier_grad_fn``) or from the exact p(y | x_t) of a Gaussian mixture
(``exact_mixture_grad_fn``, for 2-D demonstrations and tests). With s = 1 and an exact classifier,
−√(1 − ᾱ_t)·∇ log q(x_t) − √(1 − ᾱ_t)·∇ log p(y | x_t) = −√(1 − ᾱ_t)·∇ log q(x_t | y) is the exact
conditional ε; s > 1 sharpens p(y | x_t) into p(y | x_t)^s (more typical of y, less diverse).

Classifier-free guidance. Train one network ε_θ(x_t, t, y) with the label replaced by a null label ∅
at random (``drop_labels``), so that it is both conditional and unconditional; then sample with

    ε̃ = ε_θ(x_t, t, ∅) + w·(ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅))          (``cfg_eps_model``)

w = 0: unconditional, w = 1: conditional, w > 1: guided. (Ho & Salimans write (1 + w)·ε_c − w·ε_u;
their w is our w − 1.) Since ε_c − ε_u = −√(1 − ᾱ_t)·∇ log p(y | x_t) for exact models, w plays the
role of the classifier scale s with the "implicit classifier" p(x_t | y)/p(x_t).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .classifier import MNISTClassifier
from .oracle import GaussianMixture
from .schedules import Schedule
from .unet import UNet

CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CLASS_EMB_INIT_STD = 0.02


def _labels(y, name: str = "y") -> torch.Tensor:
    """y as a long tensor of shape () (one label for every sample) or (B,); ValueError otherwise."""
    if isinstance(y, bool):
        raise ValueError(f"{name} must be an integer class label or a tensor of them, got {y!r}")
    if isinstance(y, int):
        y = torch.tensor(y)
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be an integer class label or a tensor of them, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got a {y.dtype} tensor")
    if y.ndim > 1 or y.numel() == 0:
        raise ValueError(f"{name} must be one label or a tensor of shape (B,), got shape {tuple(y.shape)}")
    return y.long()


def _labels_for(y: torch.Tensor, batch: int, num_classes: int, device, what: str = "classes") -> torch.Tensor:
    """Check y against the batch size and 0..num_classes − 1; return it as (B,) on ``device``."""
    if y.ndim == 1 and y.shape[0] != batch:
        raise ValueError(f"{y.shape[0]} labels for a batch of {batch} samples: pass one label per sample "
                         f"(shape ({batch},)) or a single int for all")
    if y.device.type != "cpu" or torch.compiler.is_compiling():
        # on the device: reading y back would stall the GPU, and split a compiled graph in two
        torch._assert_async(((y >= 0) & (y < num_classes)).all(),
                            f"labels must lie in 0..{num_classes - 1} (the {num_classes} {what})")
    else:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1} (the {num_classes} {what}), "
                             f"got values from {lo} to {hi}")
    return y.to(device).expand(batch)


def _placed_labels(y: torch.Tensor, what: str = "classes") -> Callable:
    """``labels(batch, num_classes, device)``: y checked and put on the device once per (batch, classes,
    device), so that a sampler's loop does not copy (or range-check) the labels again at every step."""
    placed = {}

    def labels(batch: int, num_classes: int, device) -> torch.Tensor:
        key = (batch, num_classes, torch.device(device))
        if key not in placed:
            placed[key] = _labels_for(y, batch, num_classes, device, what)
        return placed[key]

    return labels


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return float(scale)


def classifier_grad_fn(classifier: Callable, y, scale: float) -> CondFn:
    """The ``cond_fn`` of classifier guidance: f(x_t, t) = s·∇_{x_t} log p_φ(y_i | x_t^(i)), per sample.

    ``classifier(xt, t)`` returns logits (or log-probabilities) of shape (B, K) for the batch xt with
    timesteps t (B,); y is one label (an int) or a long tensor (B,) in 0..K − 1; ``scale`` is s.
    The gradient of every sample comes from one backward pass through the SUM over the batch of
    log softmax(logits)[i, y_i]: the i-th term depends on x_t^(i) alone, so ∂/∂x_t^(i) of the sum is that
    sample's own gradient. This holds only if the classifier treats samples independently, so an
    ``nn.Module`` must be in eval mode (no batch statistics of BatchNorm, no dropout); a classifier in
    training mode raises ``ValueError``. Labels outside 0..K − 1 (K read from the logits) or a label
    tensor whose length differs from the batch raise ``ValueError``.
    Gradients are enabled inside, so f works within the samplers' ``torch.no_grad``.
    """
    if isinstance(classifier, MNISTClassifier):                # the FID-MNIST classifier: clean digits only
        raise ValueError("this is the MNIST classifier of FID-MNIST, which takes clean digits and no t: guidance "
                         "needs a noise-aware p(y | x_t, t) (dl.load_noisy_classifier, train-noisy-classifier)")
    y, scale = _labels(y), _check_scale(scale)
    placed = _placed_labels(y)

    def cond_fn(xt: torch.Tensor, t) -> torch.Tensor:
        if isinstance(classifier, nn.Module) and classifier.training:
            raise ValueError("the classifier is in training mode: call classifier.eval() before guiding "
                             "(batch statistics or dropout would make a sample's gradient depend on the rest "
                             "of the batch or on chance)")
        with torch.enable_grad():
            x = xt.detach().requires_grad_(True)
            logits = classifier(x, t)
            if logits.ndim != 2 or logits.shape[0] != xt.shape[0]:
                raise ValueError(f"the classifier must return logits of shape (B, K) = ({xt.shape[0]}, K), "
                                 f"got {tuple(logits.shape)}")
            labels = placed(xt.shape[0], logits.shape[1], logits.device)
            log_prob = torch.log_softmax(logits, dim=1).gather(1, labels[:, None])      # (B, 1)
            grad, = torch.autograd.grad(log_prob.sum(), x)
        return scale * grad

    return cond_fn


def exact_mixture_grad_fn(mixture: GaussianMixture, s: Schedule, y, scale: float) -> CondFn:
    """``cond_fn`` with the exact classifier of mixture data: f(x_t, t) = scale·∇_{x_t} log q(y | x_t).

    q(y = k | x_t) ∝ w_k·N(x_t; √ᾱ_t μ_k, (ᾱ_t σ_k² + 1 − ᾱ_t) I), with w_k, μ_k, σ_k the weight, mean and
    standard deviation of component k; its logarithm is ``mixture.log_class_posterior`` (a log-softmax
    of the log joint, not the log of the softmax), taken in float64, so that points deep inside another
    component, where q(y | x_t) underflows, still get a finite gradient. s: the schedule (ᾱ_t);
    xt: (B, D); y: an int or a long tensor (B,) in 0..K − 1. Returned in xt's dtype.
    """
    y, scale = _labels(y), _check_scale(scale)
    _labels_for(y, y.shape[0] if y.ndim else 1, mixture.K, "cpu", "mixture components")

    def cond_fn(xt: torch.Tensor, t) -> torch.Tensor:
        if xt.ndim != 2 or xt.shape[1] != mixture.D:
            raise ValueError(f"the mixture lives in {mixture.D} dimensions: xt must have shape (B, {mixture.D}), "
                             f"got {tuple(xt.shape)}")
        labels = _labels_for(y, xt.shape[0], mixture.K, xt.device, "mixture components")
        with torch.enable_grad():
            x = xt.detach().to(torch.float64).requires_grad_(True)
            log_post = mixture.log_class_posterior(s, x, t).gather(1, labels[:, None])       # (B, 1)
            grad, = torch.autograd.grad(log_post.sum(), x)
        return (scale * grad).to(xt.dtype)

    return cond_fn


# ----------------------------------------------------------------------------- classifier-free guidance

def drop_labels(y: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time label dropout of classifier-free guidance: each label becomes ``null_label`` with
    probability p, independently (Ho & Salimans 2021, Algorithm 1, p_uncond = p). y: long (B,)."""
    y = _labels(y)
    if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0:
        raise ValueError(f"null_label must be a non-negative int, got {null_label!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p (the probability of dropping a label) must lie in [0, 1], got {p!r}")
    device = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape, generator=generator, device=device) < p
    return torch.where(drop.to(y.device), torch.full_like(y, null_label), y)


def cfg_eps_model(cond_model: Callable, y, w: float, null_label: int):
    """Classifier-free guidance: an ``eps_model(xt, t)`` for the samplers returning
    ε̃ = ε_u + w·(ε_c − ε_u), ε_c = cond_model(xt, t, y), ε_u = cond_model(xt, t, null_label).

    This is Ho & Salimans' eq. 6, ε̃ = (1 + w′)·ε_c − w′·ε_u, with their w′ = w − 1: the paper's w′ = 3 is
    w = 4 here (w = 1, their w′ = 0, is the plain conditional model).

    ``cond_model(xt, t, y)`` is a class-conditional ε-model trained with label dropout (``drop_labels``)
    for which y = ``null_label`` means "no class"; y is an int or a long tensor (B,) of labels
    0..null_label (the null label itself gives ε_u). The sum is written (1 − w)·ε_u + w·ε_c, so w = 0
    returns ε_u and w = 1 returns ε_c exactly. The two predictions are two calls of cond_model.
    """
    if isinstance(cond_model, UNet) and not isinstance(cond_model, ConditionalUNet):
        raise ValueError("this UNet takes no class label: classifier-free guidance needs a class-conditional "
                         "ConditionalUNet trained with label dropout (train --num-classes, e.g. ddpm_mnist_cfg.pt)")
    y = _labels(y)
    if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0:
        raise ValueError(f"null_label must be a non-negative int, got {null_label!r}")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise ValueError(f"the guidance weight w must be a finite number, got {w!r}")
    _labels_for(y, y.shape[0] if y.ndim else 1, null_label + 1, "cpu", "classes and the null label")
    placed = _placed_labels(y, "classes and the null label")

    def eps_model(xt: torch.Tensor, t) -> torch.Tensor:
        labels = placed(xt.shape[0], null_label + 1, xt.device)
        eps_cond = cond_model(xt, t, labels)
        eps_uncond = cond_model(xt, t, torch.full_like(labels, null_label))
        return (1 - w) * eps_uncond + w * eps_cond

    return eps_model


class ConditionalUNet(UNet):
    """ε_θ(x_t, t, y): the ``UNet`` with a learned class embedding added to its time embedding.

    There are ``num_classes + 1`` embeddings: labels 0..num_classes − 1 and the null label
    ``num_classes`` (``self.null_label``) meaning "unconditional" (classifier-free guidance). All
    other arguments are the ``UNet``'s; ``ConditionalUNet.from_preset("tiny", num_classes=10)`` works.
    xt (B, C, H, W), t (B,) in 1..T, y long (B,) in 0..num_classes → predicted noise (B, C, H, W).
    """

    def __init__(self, num_classes: int = 10, **unet_kwargs):
        super().__init__(**unet_kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.config["num_classes"] = num_classes
        self.num_classes = num_classes
        self.class_emb = nn.Embedding(num_classes + 1, self.time_mlp[-1].out_features)
        # Small start (std 0.02, as DiT's label table): nn.Embedding's default N(0, 1) rows have norm
        # √(4·base_width) (≈ 11 in the tiny preset) against the time embedding's ≈ 1.4, drowning t; a
        # short run then never learns ε precisely at large t, where an error in ε is multiplied by
        # √(1 − ᾱ_t)/√ᾱ_t in x̂_0.
        nn.init.normal_(self.class_emb.weight, std=CLASS_EMB_INIT_STD)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, xt: torch.Tensor, t, y) -> torch.Tensor:
        if isinstance(y, int) and not isinstance(y, bool):      # one label for all, made on the device: no copy
            if not 0 <= y <= self.num_classes:
                raise ValueError(f"labels must lie in 0..{self.num_classes} (the {self.num_classes} classes and "
                                 f"the null label), got {y}")
            labels = torch.full((xt.shape[0],), y, dtype=torch.long, device=xt.device)
        else:
            labels = _labels_for(_labels(y), xt.shape[0], self.num_classes + 1, xt.device,
                                 "classes and the null label")
        temb = self.embed_time(xt, t)
        return self.forward_with_embedding(xt, temb + self.class_emb(labels).to(temb.dtype))   # the only change
