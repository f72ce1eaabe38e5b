"""Shipping a trained model: θ_ema in half precision, beside a JSON card (config, sha256, command).

    python -m ddpm_lib export --checkpoint runs/mnist --out data/ddpm_mnist.pt
    model, s = dl.load_pretrained("data/ddpm_mnist.pt")      # float32, eval mode, with its schedule

The weights file is loaded with ``weights_only=True``; the card ``<name>.json`` records what made it.
``load_sampling_model`` opens either kind of file (a training checkpoint or run folder, or an exported
weights file), telling them apart by the format tag inside: ``sample`` and ``evaluate`` use it.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import (build_model, check_files, example_shape_of, load_checkpoint, load_model_state,
                         resolve_checkpoint)
from .files import check_card, read_tagged_file, save_with_card
from .schedules import make_schedule

FORMAT = "ddpm_lib-weights-1"


def export_ema_weights(checkpoint: str | Path, out: str | Path, command: str | None = None) -> dict:
    """Write θ_ema of a training checkpoint (file or run folder) as fp16 to ``out`` and a card
    ``out.with_suffix('.json')``; returns the card (sha256, step, config, model_spec, command).
    Any model kind (U-Net, class-conditional U-Net, toy MLP) is exported the same way."""
    check_files({"--checkpoint": checkpoint}, out, writes_card=True)
    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    if "ema" not in ckpt:
        kind = ckpt.get("model_spec", {}).get("kind")
        raise ValueError(f"{path} is not a diffusion training checkpoint (model kind {kind!r})"
                         + (": export a DDGAN run with export-ddgan" if kind == "ddgan" else ""))
    half = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    config = ckpt["config"]
    blob = {"format": FORMAT, "model_spec": ckpt["model_spec"], "ema": half,
            "schedule": {"name": config["schedule"], "T": config["T"]},
            "step": ckpt["step"], "example_shape": list(ckpt["example_shape"]), "config": config}
    return save_with_card(blob, out, {"step": ckpt["step"], "training_seconds": ckpt.get("elapsed"), "config": config,
                                      "model_spec": ckpt["model_spec"],
                                      "command": command or shlex.join(["python", "-m", "ddpm_lib", *sys.argv[1:]])})


def _model_from_weights(blob: dict, source: str):
    model = build_model(blob["model_spec"], source=source)
    load_model_state(model, {k: v.float() if v.is_floating_point() else v for k, v in blob["ema"].items()},
                     source=source)
    return model


def load_pretrained(path: str | Path, device="cpu", check_sha256: bool = True):
    """``(model, schedule)`` from an exported weights file: float32, eval mode, on ``device``.

    With ``check_sha256`` the file must match the sha256 of its JSON card when the card exists.
    """
    path = Path(path)
    if check_sha256:
        check_card(path)
    blob = read_tagged_file(path, FORMAT, "weights file")
    model = _model_from_weights(blob, str(path))
    return model.to(device).eval(), make_schedule(blob["schedule"]["name"], blob["schedule"]["T"])


def load_sampling_model(path: str | Path, device="cpu", weights: str = "ema"):
    """``(model, schedule, info)`` to sample from, whichever file ``path`` is: a training checkpoint
    (its θ_ema), a run folder (its latest checkpoint) or an exported weights file (``export_ema_weights``;
    its sha256 is checked against the card when there is one). The file's format tag decides.
    ``weights="raw"`` takes a checkpoint's raw θ instead of θ_ema (to compare the two; an exported file
    holds θ_ema only).

    model: float32, eval mode, on ``device``; info: ``{"path", "source": "checkpoint" | "weights",
    "step", "example_shape", "config", "model_spec"}`` (for weights exported before these were stored,
    step and config come from the card, and the example shape from the architecture).
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' (θ_ema) or 'raw' (θ), got {weights!r}")
    path = resolve_checkpoint(path)
    card = check_card(path)
    blob = read_tagged_file(path, (CHECKPOINT_FORMAT, FORMAT), "checkpoint or exported weights file")
    if weights == "raw" and blob["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is an exported weights file, which holds θ_ema only: pass a training "
                         f"checkpoint or run folder for --weights raw")
    if blob["format"] == CHECKPOINT_FORMAT:
        model = build_model(blob["model_spec"], source=path)
        load_model_state(model, blob["ema" if weights == "ema" else "model"], source=str(path))
        config, source = blob["config"], "checkpoint"
    else:
        model = _model_from_weights(blob, str(path))
        config, source = blob.get("config") or (card or {}).get("config") or {}, "weights"
    schedule = (make_schedule(blob["schedule"]["name"], blob["schedule"]["T"]) if source == "weights"
                else make_schedule(config["schedule"], config["T"]))
    step = blob.get("step", (card or {}).get("step"))
    example_shape = tuple(blob.get("example_shape") or example_shape_of(blob["model_spec"]))
    info = {"path": str(path), "source": source, "weights": weights, "step": step, "example_shape": example_shape,
            "config": config, "model_spec": blob["model_spec"]}
    return model.to(device).eval(), schedule, info
