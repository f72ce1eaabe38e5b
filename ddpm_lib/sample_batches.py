"""Many samples drawn batch by batch and kept on disk as they come (``python -m ddpm_lib evaluate``).

An evaluation of 10,000 samples, or of 1,000-step samplers, can outlast a time limit. After each batch the
samples so far, the sampler's generator state and the seconds spent go to ``<out>.partial.pt`` (written
atomically); Ctrl-C or SIGTERM then loses at most the batch in progress, and running the same command
again continues from the file and returns exactly the samples an uninterrupted run returns. The file
records the settings that determine the samples (``key``) and is refused by a command with other ones.
"""
from __future__ import annotations

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
        assert kept.get("format") == FORMAT
    except Exception:
        raise ValueError(f"{path} is not a file of kept samples (damaged?): delete it to start afresh") from None
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
    every run that contributed. Kept in ``partial_path(out)`` after each batch (see the module docstring)
    and removed once all ``n`` exist. ``key``: the settings that determine the samples (plain values)."""
    path = partial_path(out)
    batches, seconds = _resume(path, key, generator)
    done = sum(len(b) for b in batches)
    bar = tqdm(total=n, initial=done, desc="sampling", unit="sample")
    try:
        with bar:
            while done < n:
                start = time.perf_counter()
                x0 = draw(min(batch_size, n - done)).float().cpu()
                seconds += time.perf_counter() - start
                batches.append(x0)
                done += len(x0)
                bar.update(len(x0))
                if done < n:
                    save_atomic({"format": FORMAT, "key": key, "batches": batches, "seconds": seconds,
                                 "generator": generator.get_state()}, path)
    except KeyboardInterrupt:
        if not done:
            raise KeyboardInterrupt("interrupted before the first batch of samples was finished") from None
        raise KeyboardInterrupt(f"interrupted: {done} of {n} samples are kept in {path}; the same command "
                                f"continues from them") from None
    path.unlink(missing_ok=True)
    return torch.cat(batches), seconds
