"""Training checkpoints: keep-last-k in a run's folder, resuming bit for bit, and rebuilding a model to sample from.

A checkpoint is one file ``ckpt_<step, 8 digits>.pt`` in the run's folder holding a plain dict: the
weights θ and θ_ema, the optimizer and grad-scaler states, the step, the training config as a dict,
the model's architecture (``model_spec``) and every random state needed to continue bit for bit.
It is written atomically and read with ``weights_only=True`` (``files``).
``save_training`` / ``resume_training`` checkpoint a ``training.Trainer`` (under DDP too) and continue it;
``model_spec`` / ``build_model`` describe and rebuild the network; ``load_ema_model`` is for sampling
(``export.load_sampling_model`` also takes exported weights files).
"""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from .files import check_checksums, read_tagged_file, refuse_a_card, save_atomic
from .schedules import make_schedule
from .unet import PRESETS, UNet

FORMAT = "ddpm_lib-checkpoint-1"
_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")     # temporary files (".ckpt_….tmp-<pid>") never match


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """``out_dir/ckpt_00001000.pt`` for step 1000."""
    return Path(out_dir) / f"ckpt_{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints in ``out_dir``, oldest step first (temporary files are ignored)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the latest checkpoint of a run folder (``FileNotFoundError`` if none)."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint (ckpt_*.pt) in {path}")
    return found


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``out_dir``, or None when there is none."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


RUN_COMMANDS = {"diffusion": "train", "ddgan": "train-ddgan"}   # the command that trains each kind of run
_RUN_NAMES = {"diffusion": "diffusion model", "ddgan": "DDGAN"}


def run_kind(ckpt: dict) -> str:
    """``"ddgan"`` for a checkpoint of a DDGAN run, ``"diffusion"`` for an ε-model's (U-Net or toy MLP)."""
    return "ddgan" if ckpt.get("model_spec", {}).get("kind") == "ddgan" else "diffusion"


def checkpoint_to_resume(out_dir: str | Path, resume: bool, kind: str) -> Path | None:
    """The run folder rule of every trainer of runs of ``kind`` (``RUN_COMMANDS``): with ``resume`` the
    latest checkpoint in ``out_dir`` (``FileNotFoundError`` when there is none); without it None, and
    ``FileExistsError`` when the folder already holds checkpoints (a new run never mixes with an old one).
    A folder holding the other kind's run → one-line ``ValueError`` naming the command that continues it."""
    out_dir = Path(out_dir)
    found = latest_checkpoint(out_dir)
    if found is None:
        if resume:
            raise FileNotFoundError(f"--resume: no checkpoint (ckpt_*.pt) in {out_dir} to continue from")
        return None
    try:
        ckpt = load_checkpoint(found, mmap=True)                            # weights unread, but
        if resume:                                                          # checked (whole file, ~0.1 s)
            check_checksums(found, "checkpoint")
    except RuntimeError as exc:                          # damaged: an older checkpoint may still be whole
        older = list_checkpoints(out_dir)[:-1]
        if not older:
            raise
        raise RuntimeError(f"{exc}. The run also keeps {older[-1].name}: move {found.name} out of {out_dir} "
                           f"and --resume continues from the older one") from exc
    held = run_kind(ckpt)
    if held != kind:
        raise ValueError(f"{out_dir} holds a {_RUN_NAMES[held]} run (model kind {ckpt['model_spec'].get('kind')!r}): "
                         f"continue it with `python -m ddpm_lib {RUN_COMMANDS[held]} --out-dir {out_dir} --resume`, "
                         f"or give `{RUN_COMMANDS[kind]}` another --out-dir")
    if not resume:
        raise FileExistsError(f"{out_dir} already holds checkpoints: pass --resume to continue that run "
                              f"or choose another --out-dir")
    return found


def check_files(inputs: dict, out: str | Path | None = None, writes_card: bool = False) -> None:
    """Before any work, a one-line ``ValueError`` when an input flag names a JSON card instead of the file
    it describes, or when ``out`` (and, with ``writes_card``, its ``.json`` card) would overwrite an input
    file or an input's card, or is named like a training checkpoint (a run keeps several; only the latest
    is an input). ``inputs``: flag → path (None: not given); a run folder stands for its latest checkpoint."""
    protected = {}
    for flag, given in inputs.items():
        if given is None:
            continue
        path = Path(given)
        refuse_a_card(path, flag)
        if path.is_dir():
            path = latest_checkpoint(path)
        if path is not None:
            for kept in (path, path.with_suffix(".json")):
                protected.setdefault(kept.resolve(), (flag, kept))
    if out is None:
        return
    out = Path(out)
    for written in (out, out.with_suffix(".json")) if writes_card else (out,):
        if written.resolve() in protected:
            flag, kept = protected[written.resolve()]
            what = "card" if kept.suffix.lower() == ".json" else "file"
            raise ValueError(f"--out {out} would overwrite the {flag} {what} {kept}: write to another name")
    if _NAME.match(out.name):                            # a run's kept checkpoint, or one it will write
        raise ValueError(f"--out {out} is named like a training checkpoint (ckpt_<step>.pt): write to another name")


def save_checkpoint(state: dict, out_dir: str | Path, keep: int) -> Path:
    """Write ``state`` (which holds ``"step"``) atomically as the next checkpoint; keep the newest ``keep``."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the checkpoint just written), got {keep}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_atomic({"format": FORMAT, **state}, checkpoint_path(out_dir, state["step"]))
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """Read a training checkpoint with ``weights_only=True`` (``read_tagged_file``'s errors)."""
    return read_tagged_file(path, FORMAT, "checkpoint", map_location, mmap)


def load_model_state(model: nn.Module, state_dict: dict, source: str = "the checkpoint") -> None:
    """``model.load_state_dict(state_dict)``, or a one-line ``ValueError`` when the architectures differ."""
    own = model.state_dict()
    missing = sorted(own.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - own.keys())
    reshaped = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or reshaped:
        if reshaped:
            k = reshaped[0]
            example = f"{k} is {tuple(state_dict[k].shape)} there but {tuple(own[k].shape)} here"
        else:
            example = f"e.g. {(missing or unexpected)[0]!r} is {'missing' if missing else 'unexpected'}"
        raise ValueError(f"{source} holds a different architecture from this {type(model).__name__}: "
                         f"{len(missing)} missing, {len(unexpected)} unexpected and {len(reshaped)} "
                         f"differently shaped tensors ({example})")
    model.load_state_dict(state_dict)


def _rng_state(trainer) -> dict:
    """One process's random streams: torch's CPU (and CUDA) generator and the generator of t and ε (and of
    hflip's coins)."""
    cuda = trainer.device.type == "cuda"
    return {"torch_cpu": torch.get_rng_state(), "noise": trainer.noise_generator.get_state(),
            "labels": trainer.label_generator.get_state(),
            "torch_cuda": torch.cuda.get_rng_state(trainer.device) if cuda else None}


def save_training(trainer, batches, extra: dict, out_dir: str | Path, keep: int, rank: int = 0,
                  world: int = 1) -> Path:
    """Checkpoint a run: ``trainer`` (θ, θ_ema, optimizer, scaler, step), the data order ``batches``,
    the random streams of every rank (gathered to rank 0) and ``extra`` (config, model_spec, …).

    Every rank calls it; rank 0 writes; a barrier lets no rank go on before the file exists.
    """
    rng = [_rng_state(trainer)] * world
    if world > 1:
        torch.distributed.all_gather_object(rng, rng[0])
    if rank == 0:
        save_checkpoint({**trainer.state_dict(), "batches": batches.state_dict(), "rng": rng, **extra}, out_dir, keep)
    if world > 1:
        torch.distributed.barrier()
    return checkpoint_path(out_dir, trainer.step)


RUN_CONTROL = ("steps", "out_dir", "log_every", "sample_every", "n_samples", "save_every", "keep", "device",
               "compile", "progress", "resume", "data_root")    # the only settings a resumed run may change
# Settings added after the first checkpoints were written whose default is now None (the data's kind decides):
# a checkpoint without one was trained with the value every run had before the setting existed.
BEFORE_RECORDED = {"d_steps": 1}


def recorded_setting(saved: dict, f):
    """The value of the config field ``f`` that a checkpoint's config ``saved`` was trained with; one that it
    does not record (an older checkpoint) is ``BEFORE_RECORDED``'s value, else the field's default."""
    return saved[f.name] if f.name in saved else BEFORE_RECORDED.get(f.name, f.default)


def check_same_run(path: Path, saved: dict, config, unused: tuple = ()) -> None:
    """Refuse (one-line ``ValueError``) to resume the run ``config`` (a ``TrainConfig`` or ``DDGANConfig``)
    from the checkpoint ``path`` whose config is ``saved`` when any setting differs but ``RUN_CONTROL`` (step
    budget, logging, grids, saving, device) and ``unused`` (settings this run never reads). A setting an
    older checkpoint lacks counts as ``recorded_setting`` says. Otherwise the resumed run would train with settings its
    checkpoint does not record, or silently keep the old ones in the optimizer (its weight decay, betas)."""
    changed = [f"{f.name}={recorded_setting(saved, f)!r} there, {getattr(config, f.name)!r} here"
               for f in fields(config) if f.name not in RUN_CONTROL + tuple(unused)
               and recorded_setting(saved, f) != getattr(config, f.name)]
    if changed:
        raise ValueError(f"cannot resume from {path}: it was trained with other settings ({'; '.join(changed)}); "
                         f"a resumed run may change only its steps, logging, grids, saving and device: keep the "
                         f"others or start a new --out-dir")


def resume_training(path: Path, trainer, batches, config, unused: tuple = (), rank: int = 0,
                    world: int = 1) -> dict:
    """Load a checkpoint into ``trainer`` and ``batches`` and restore this rank's random streams, so
    the next step repeats the interrupted run's bit for bit. ``config`` must match the checkpoint's
    (``check_same_run``). With another number of processes the streams restart from the seed (with a
    warning). Returns the checkpoint dict.
    """
    ckpt = load_checkpoint(path)
    check_same_run(path, ckpt["config"], config, unused)
    trainer.load_state_dict(ckpt, source=str(path))
    batches.load_state_dict(ckpt["batches"])
    if len(ckpt["rng"]) != world:
        why = (f"was written by {len(ckpt['rng'])} process{'es' if len(ckpt['rng']) > 1 else ''} and this run "
               f"has {world}")
    elif not restore_random_streams(ckpt["rng"][rank], trainer):
        why = "was written on another kind of device"
    else:
        why = None
    if why and rank == 0:
        print(f"warning: {path} {why}: t, ε and dropout draw fresh random streams from the seed")
    return ckpt


def restore_random_streams(state: dict, trainer) -> bool:
    """Set the global generators and the trainer's to a checkpoint's ``state``, so the next step repeats the
    interrupted run's draws. False, and nothing set, when the state comes from another kind of device (a CPU
    generator's state does not fit a CUDA one): the streams then stay as seeded."""
    on_cuda = trainer.device.type == "cuda"
    if state["noise"].numel() != trainer.noise_generator.get_state().numel() \
            or on_cuda != (state.get("torch_cuda") is not None):
        return False
    torch.set_rng_state(state["torch_cpu"])
    trainer.noise_generator.set_state(state["noise"])
    if "labels" in state and hasattr(trainer, "label_generator"):   # DDGAN and older checkpoints have none
        trainer.label_generator.set_state(state["labels"])
    if on_cuda:
        torch.cuda.set_rng_state(state["torch_cuda"], trainer.device)
    return True


def model_spec(example_shape: tuple, preset: str, num_classes: int = 0) -> dict:
    """The architecture for examples of ``example_shape``: the toy MLP for points (D,), else the U-Net
    ``preset`` fitted to images (C, H, W); with ``num_classes`` K > 0 the class-conditional U-Net of
    classifier-free guidance (``guidance.ConditionalUNet``, K classes and a null label).
    ``build_model`` turns it into a network."""
    if len(example_shape) == 1:
        if num_classes:
            raise ValueError("the toy MLP has no class input: classifier-free guidance needs image data")
        return {"kind": "toy_mlp", "config": {"dim": example_shape[0]}}
    channels, size = example_shape[0], example_shape[-1]
    config = {**PRESETS[preset], "in_channels": channels, "image_size": size}
    if num_classes:
        return {"kind": "conditional_unet", "config": {**config, "num_classes": num_classes}}
    return {"kind": "unet", "config": config}


def build_model(spec: dict, source: str | Path | None = None) -> nn.Module:
    """The network a ``model_spec`` describes: ``{"kind": "unet" | "conditional_unet" | "toy_mlp",
    "config": {...}}``. ``source``: the file the spec was read from, named in the errors."""
    kind, config = spec.get("kind"), spec.get("config", {})
    if kind == "unet":
        return UNet(**config)
    if kind == "conditional_unet":
        from .guidance import ConditionalUNet
        return ConditionalUNet(**config)
    if kind == "toy_mlp":
        from .toy_model import ToyEpsModel              # imported when needed: images never load it
        return ToyEpsModel(**config)
    if kind == "ddgan":
        raise ValueError(f"{source or 'this'} is a DDGAN's checkpoint, not a diffusion model's: use sample-ddgan "
                         f"and export-ddgan (in Python, load_ddgan_generator)")
    raise ValueError(f"unknown model kind {kind!r} in {source or 'the checkpoint'}: expected 'unet', "
                     f"'conditional_unet' or 'toy_mlp'")


def example_shape_of(spec: dict) -> tuple:
    """The shape of one example, (C, H, W) or (D,), that a ``model_spec``'s network takes."""
    config = spec.get("config", {})
    if spec.get("kind") == "toy_mlp":
        return (config["dim"],)
    return (config["in_channels"], config["image_size"], config["image_size"])


def load_ema_model(path: str | Path, device="cpu"):
    """``(ema_model, schedule, ckpt)`` from a checkpoint: θ_ema in eval mode, and the run's schedule.

    ``path`` may be a checkpoint file or a run folder (its latest checkpoint is taken).
    """
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location=device)
    model = build_model(ckpt["model_spec"], source=path)
    load_model_state(model, ckpt["ema"], source=str(path))
    schedule = make_schedule(ckpt["config"]["schedule"], ckpt["config"]["T"])
    return model.to(device).eval(), schedule, ckpt
