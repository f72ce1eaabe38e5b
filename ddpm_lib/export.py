"""Shipping a trained model: θ_ema in half precision, beside a JSON card (config, sha256, command).

    python -m ddpm_lib export --checkpoint runs/mnist --out data/ddpm_mnist.pt
    model, s = dl.load_pretrained("data/ddpm_mnist.pt")      # float32, eval mode, with its schedule

The weights file is loaded with ``weights_only=True``; the card ``<name>.json`` records what made it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .checkpoint import (build_model, file_sha256, load_checkpoint, load_model_state,
                         read_tagged_file, resolve_checkpoint, save_atomic)
from .schedules import make_schedule

FORMAT = "ddpm_lib-weights-1"


def export_ema_weights(checkpoint: str | Path, out: str | Path, command: str | None = None) -> dict:
    """Write θ_ema of a training checkpoint (file or run folder) as fp16 to ``out`` and a card
    ``out.with_suffix('.json')``; returns the card (sha256, step, config, model_spec, command)."""
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    half = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    config = ckpt["config"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"format": FORMAT, "model_spec": ckpt["model_spec"], "ema": half,
                 "schedule": {"name": config["schedule"], "T": config["T"]}}, out)
    card = {"file": out.name, "sha256": file_sha256(out), "step": ckpt["step"],
            "training_seconds": ckpt.get("elapsed"), "config": config, "model_spec": ckpt["model_spec"],
            "command": command or " ".join(["python -m ddpm_lib", *sys.argv[1:]])}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def load_pretrained(path: str | Path, device="cpu", check_sha256: bool = True):
    """``(model, schedule)`` from an exported weights file: float32, eval mode, on ``device``.

    With ``check_sha256`` the file must match the sha256 of its JSON card when the card exists.
    """
    path = Path(path)
    card = path.with_suffix(".json")
    if check_sha256 and path.is_file() and card.is_file():
        expected = json.loads(card.read_text())["sha256"]
        if file_sha256(path) != expected:
            raise ValueError(f"{path} does not match the sha256 in {card.name}: the file is damaged or was replaced")
    blob = read_tagged_file(path, FORMAT, "weights file")
    model = build_model(blob["model_spec"])
    load_model_state(model, {k: v.float() if v.is_floating_point() else v for k, v in blob["ema"].items()},
                     source=str(path))
    return model.to(device).eval(), make_schedule(blob["schedule"]["name"], blob["schedule"]["T"])
