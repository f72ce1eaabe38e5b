"""Many samples drawn batch by batch and kept on disk as they come (``python -m ddpm_lib evaluate``).

An evaluation of 10,000 samples, or of 1,000-step samplers, can outlast a time limit. After each batch the
samples so far, the sampler's generator state and the seconds spent go to ``<out>.partial.pt`` (written
atomically); Ctrl-C or SIGTERM then loses at most the batch in progress, and running the same command
again continues from the file and returns the samples an uninterrupted run returns. The file records the
settings that determine the samples (``key``: a caller includes the machine, GPU model and torch build,
on which the exact values depend) and is refused by a command with other ones. It is removed only once the
caller's own output is written (``kept_until_written``), so that nothing is lost before then.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .checkpoint import save_atomic

FORMAT = "ddpm_lib-partial-samples-1"


def partial_path(out: str | Path) -> Path:
    """Where the samples of the command writing ``out`` are kept until it finishes: ``<out>.partial.pt``."""
    out = Path(out)
    return out.with_name(out.name + ".partial.pt")


def _resume(path: Path, key: dict, generator: torch.Generator) -> tuple[list, float]:
    """The batches and seconds kept in ``path`` (none when it does not exist), with ``generator`` set to
    the state after the last kept batch. A file of other settings raises ``ValueError``."""
    if not path.exists():
        return [], 0.0
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:                                    # cut off, or not a torch file at all
        kept = None
    if not isinstance(kept, dict) or kept.get("format") != FORMAT:
        raise ValueError(f"{path} is not a file of kept samples (damaged?): delete it to start afresh")
    if kept["key"] != key:
        changed = "; ".join(f"{k}={kept['key'].get(k)!r} there, {v!r} here" for k, v in key.items()
                            if kept["key"].get(k) != v)
        raise ValueError(f"{path} holds samples drawn with other settings ({changed}): run that command again "
                         f"to finish it, or delete the file to start afresh")
    generator.set_state(kept["generator"])
    n_kept = sum(len(b) for b in kept["batches"])
    tqdm.write(f"continuing from the {n_kept} samples kept in {path}")
    return kept["batches"], kept["seconds"]


def draw_batches(draw: Callable[[int], torch.Tensor], n: int, batch_size: int, generator: torch.Generator,
                 out: str | Path, key: dict) -> tuple[torch.Tensor, float]:
    """``(samples, seconds)``: ``n`` samples as a float32 CPU tensor, drawn by ``draw(b)`` (b samples from
    ``generator``, on any device) in batches of ``batch_size``, and the seconds spent drawing them, over
    every run that contributed. Kept in ``partial_path(out)`` after each batch, the last one too (see the
    module docstring). ``key``: the settings that determine the samples (plain values)."""
    path = partial_path(out)
    batches, seconds = _resume(path, key, generator)
    kept = sum(len(b) for b in batches)                  # samples the file holds
    bar = tqdm(total=n, initial=kept, desc="sampling", unit="sample")
    try:
        with bar:
            while kept < n:
                start = time.perf_counter()
                x0 = draw(min(batch_size, n - kept)).float().cpu()
                seconds += time.perf_counter() - start
                batches.append(x0)
                save_atomic({"format": FORMAT, "key": key, "batches": batches, "seconds": seconds,
                             "generator": generator.get_state()}, path)
                kept += len(x0)
                bar.update(len(x0))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(stopped_message(path, kept, n)) from None
    return torch.cat(batches), seconds


def stopped_message(path: Path, kept: int, n: int) -> str:
    """The one line of a command stopped with ``kept`` of its ``n`` samples in ``path``."""
    if not kept:
        return "interrupted before the first batch of samples was finished"
    return f"interrupted: {kept} of {n} samples are kept in {path}; the same command continues from them"


@contextlib.contextmanager
def kept_until_written(out: str | Path, n: int):
    """The block that turns ``n`` kept samples into the output ``out``: the kept samples are removed when it
    ends normally, and a Ctrl-C inside it says that they are still kept (and nothing else was lost)."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(stopped_message(partial_path(out), n, n)) from None
    partial_path(out).unlink(missing_ok=True)
