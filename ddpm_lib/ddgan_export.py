"""A trained DDGAN's generator, for sampling and shipping: ``load_ddgan_generator`` reads G_ema from a run
folder, a training checkpoint or an exported file; ``export_ddgan`` writes G_ema in fp16 with a JSON card.

    G, s, info = load_ddgan_generator("data/ddgan_mnist.pt")      # G_ema in float32, the T = 4 schedule
    x0 = sample_ddgan(G, s, (64, 1, 32, 32))                       # T generator calls
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .checkpoint import (FORMAT as CHECKPOINT_FORMAT, check_files, load_checkpoint, load_model_state,
                         resolve_checkpoint)
from .ddgan import ddgan_schedule
from .ddgan_nets import build_generator
from .ddgan_train import WEIGHTS_FORMAT, _check_ddgan_checkpoint
from .files import check_card, read_tagged_file, save_with_card


def _read_ddgan_file(path: Path) -> dict:
    """A DDGAN training checkpoint or exported weights file, read onto the CPU, as a dict with its ``format`` tag."""
    blob = read_tagged_file(path, (CHECKPOINT_FORMAT, WEIGHTS_FORMAT),
                            "DDGAN checkpoint or exported DDGAN weights file")
    if blob["format"] == CHECKPOINT_FORMAT:
        _check_ddgan_checkpoint(blob, path)
    return blob


def load_ddgan_generator(path: str | Path, device="cpu", check_sha256: bool = True):
    """``(G_ema, schedule, info)`` from a DDGAN run folder (its latest checkpoint), a checkpoint file or
    a file written by ``export_ddgan``: G_ema in float32 and eval mode on ``device``, the run's schedule
    and ``info`` (source, format, step, config, example_shape, model_spec).

    An exported file must match the sha256 of its JSON card when the card exists (``check_sha256``).
    A diffusion checkpoint or any other file → ``ValueError``; a damaged one → ``RuntimeError``.
    """
    path = resolve_checkpoint(path)
    blob = _read_ddgan_file(path)                 # onto the CPU, then G.to(device): a bad device is named as such
    exported = blob["format"] == WEIGHTS_FORMAT
    if exported and check_sha256:
        check_card(path)
    G = build_generator(blob["model_spec"])
    weights = {k: v.float() if v.is_floating_point() else v for k, v in blob["generator_ema"].items()}
    load_model_state(G, weights, source=str(path))
    config = blob["config"]
    schedule = ddgan_schedule(config["T"], config["beta_min"], config["beta_max"])
    info = {"source": str(path), "format": "export" if exported else "checkpoint", "step": blob["step"],
            "config": config, "example_shape": tuple(blob["example_shape"]), "model_spec": blob["model_spec"]}
    return G.to(device).eval().requires_grad_(False), schedule, info


def export_ddgan(checkpoint: str | Path, out: str | Path, command: str | None = None) -> dict:
    """Write G_ema of a DDGAN checkpoint (file or run folder) as fp16 to ``out`` and a JSON card
    ``out.with_suffix('.json')`` (sha256, step, training seconds, config, architecture, command);
    returns the card. ``load_ddgan_generator(out)`` reads it back (in float32)."""
    check_files({"--checkpoint": checkpoint}, out, writes_card=True)
    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    _check_ddgan_checkpoint(ckpt, path)
    half = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["generator_ema"].items()}
    blob = {"format": WEIGHTS_FORMAT, "model_spec": ckpt["model_spec"], "generator_ema": half,
            "config": ckpt["config"], "step": ckpt["step"], "example_shape": ckpt["example_shape"]}
    return save_with_card(blob, out, {"format": WEIGHTS_FORMAT, "step": ckpt["step"],
                                      "training_seconds": ckpt.get("elapsed"), "config": ckpt["config"],
                                      "model_spec": ckpt["model_spec"], "example_shape": list(ckpt["example_shape"]),
                                      "source": str(path),
                                      "command": command or shlex.join(["python", "-m", "ddpm_lib", *sys.argv[1:]])})

