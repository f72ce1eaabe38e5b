"""A small MNIST classifier whose penultimate layer is the feature space of FID-MNIST (``metrics.py``).

FID (Heusel et al. 2017) compares Gaussians fitted to the features that a trained image network gives
real and generated pictures. The Inception-v3 network used for natural images knows nothing about
handwritten digits, so for MNIST this package uses its own clean digit classifier instead:

    x (B, 1, 32, 32) in [−1, 1]
    → conv 3×3 (16) → conv 3×3 (32) → max-pool       32×32 → 16×16
    → conv 3×3 (64) → max-pool                       16×16 → 8×8
    → conv 3×3 (64) → max-pool                        8×8 → 4×4
    → flatten → linear (128)                         ``features(x)``: (B, 128)
    → ReLU → dropout → linear (10)                   ``forward(x)``: logits (B, 10)

each convolution followed by GroupNorm and ReLU (GroupNorm, not BatchNorm: the features of an image
never depend on the rest of its batch). The features are the penultimate layer taken before its
ReLU: every one of the 128 numbers varies from digit to digit (after the ReLU, units that are negative
for all digits would be constant 0 and make the feature covariance singular).

``train_classifier`` fits it with AdamW and random shifts of up to 2 pixels; ``save_classifier``
writes the weights with a JSON card (config, held-out accuracy, sha256, command); ``load_classifier``
reads them back with ``weights_only=True``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import load_model_state
from .data_folder import CLONE_DATA, course_data
from .files import read_tagged_file, save_with_card

FORMAT = "ddpm_lib-mnist-classifier-1"
DEFAULT_CLASSIFIER = CLONE_DATA / "mnist_classifier.pt"        # in a clone of the course; else see classifier_path
TRAIN_HINT = "python -m ddpm_lib train-classifier --data mnist-5k --out data/mnist_classifier.pt"


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.ReLU())


class MNISTClassifier(nn.Module):
    """Digit classifier for (B, 1, 32, 32) images in [−1, 1] (28×28 inputs are padded with −1).

    ``width``: channels of the first 32×32 layer (the others are 2×, 4×, 4× of it);
    ``feature_dim``: size of the penultimate layer that ``features`` returns.
    """

    def __init__(self, width: int = 16, feature_dim: int = 128, num_classes: int = 10, dropout: float = 0.25):
        super().__init__()
        self.config = dict(width=width, feature_dim=feature_dim, num_classes=num_classes, dropout=dropout)
        self.convs = nn.Sequential(
            _conv(1, width), _conv(width, 2 * width), nn.MaxPool2d(2),          # 32 → 16
            _conv(2 * width, 4 * width), nn.MaxPool2d(2),                        # 16 → 8
            _conv(4 * width, 4 * width), nn.MaxPool2d(2))                        # 8 → 4
        self.to_features = nn.Linear(4 * width * 4 * 4, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer before its ReLU, (B, feature_dim): FID-MNIST's feature space."""
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-2:] not in ((28, 28), (32, 32)):
            raise ValueError(f"the MNIST classifier takes images (B, 1, 32, 32) or (B, 1, 28, 28), "
                             f"got {tuple(x.shape)}")
        if x.shape[-1] == 28:
            x = F.pad(x, (2, 2, 2, 2), value=-1.0)
        return self.to_features(self.convs(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.dropout(F.relu(self.features(x))))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Move each image by its own (dy, dx), both uniform in {−max_shift, …, max_shift}, filling the
    uncovered border with background −1 (no wrap-around). x: (B, C, H, W)."""
    if max_shift == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator)
    rows = (torch.arange(H) + dy[:, None]).to(x.device)                    # (B, H) rows of the padded image
    cols = (torch.arange(W) + dx[:, None]).to(x.device)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of ``images`` whose arg-max logit equals the label (model in eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = sum(int((model(images[i:i + batch_size].to(device)).argmax(1).cpu() == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    model.train(was_training)
    return correct / len(images)


def train_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_heldout: torch.Tensor, y_heldout: torch.Tensor,
                     epochs: int = 12, batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.05,
                     max_shift: int = 2, seed: int = 0, device="cpu", model_config: dict | None = None,
                     log: Callable[[int, float], None] | None = None, progress: bool = False):
    """Fit an ``MNISTClassifier`` by cross-entropy; returns ``(model, held-out accuracy)``, model in eval mode.

    AdamW with ``lr`` warmed up linearly over the first epoch and decayed to 0 by a cosine; each
    minibatch is shifted at random by up to ``max_shift`` pixels. ``seed`` fixes the initial weights,
    the data order, the shifts and dropout. ``log(step, loss)`` is called after every step.
    """
    side = x_train.shape[-1]
    for ok, why in ((epochs >= 1, f"epochs must be at least 1, got {epochs}"),
                    (1 <= batch_size <= len(x_train), f"batch_size must lie in 1..{len(x_train)} (the training "
                                                      f"digits), got {batch_size}"),
                    (0 <= max_shift < side // 2, f"max_shift must lie in 0..{side // 2 - 1} (under half the image "
                                                 f"side), got {max_shift}"),
                    (lr > 0, f"lr must be positive, got {lr}"),                       # NaN fails too
                    (weight_decay >= 0, f"weight_decay must be at least 0, got {weight_decay}")):
        if not ok:
            raise ValueError(why)
    torch.manual_seed(seed)                                          # initial weights and dropout masks
    generator = torch.Generator().manual_seed(seed)                  # data order and shifts
    model = MNISTClassifier(**(model_config or {})).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(x_train) // batch_size
    total, warmup = epochs * steps_per_epoch, steps_per_epoch
    step = 0
    model.train()
    bar = tqdm(total=total, desc="training the classifier", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = random_shift(x_train[idx], max_shift, generator).to(device)
            loss = F.cross_entropy(model(x), y_train[idx].to(device))
            step += 1
            if step <= warmup:                                       # linear warm-up, then cosine decay to 0
                scale = step / warmup
            else:
                scale = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = lr * scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if log is not None:
                log(step, loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    return model, classifier_accuracy(model, x_heldout, y_heldout)


def save_classifier(model: MNISTClassifier, path: str | Path, card: dict | None = None) -> dict:
    """Write the weights (fp32) atomically to ``path`` and a JSON card beside it (``path`` with ``.json``).

    The card is ``card`` (e.g. held-out accuracy, command) plus the format, the model's config, the
    file name and the sha256 of the written ``.pt``; it is returned as a dict.
    """
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    return save_with_card({"format": FORMAT, "config": model.config, "state_dict": state}, path,
                          {**(card or {}), "format": FORMAT, "config": model.config})


def classifier_path(path: str | Path | None = None) -> Path:
    """``path``, or when it is None the shipped ``mnist_classifier.pt`` in the course's ``data/`` folder
    (the clone's, or a cached copy fetched once where the package was installed without the clone)."""
    return Path(path) if path is not None else course_data(DEFAULT_CLASSIFIER.name)


def load_classifier(path: str | Path | None = None, device="cpu") -> MNISTClassifier:
    """The classifier saved at ``path`` (default: the shipped ``data/mnist_classifier.pt``), in eval mode.

    Raises ``FileNotFoundError`` for a missing file (saying how to train one), ``RuntimeError`` for a
    truncated or damaged file and ``ValueError`` for a file that is not a ddpm_lib classifier.
    """
    path = classifier_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier file at {path}: train one with `{TRAIN_HINT}`")
    saved = read_tagged_file(path, FORMAT, "MNIST classifier")
    model = MNISTClassifier(**saved["config"])
    load_model_state(model, {k: v.float() for k, v in saved["state_dict"].items()}, source=str(path))
    return model.to(device).eval()
