"""Many samples drawn batch by batch and kept on disk as they come (``evaluate``, ``trilemma``,
``evaluate-guidance``).

An evaluation of 10,000 samples, or of 1,000-step samplers, can outlast a time limit. After each batch the
samples so far, the sampler's generator state and the seconds spent go to ``<out>.partial.pt`` (written
atomically); Ctrl-C or SIGTERM then loses at most the batch in progress, and running the same command
again continues from the file and returns the samples an uninterrupted run returns. The file records the
settings that determine the samples (``key``: a caller includes the machine, GPU model and torch build,
on which the exact values depend) and is refused by a command with other ones. It is removed only once the
caller's own output is written (``kept_until_written``; a table of rows removes its row files itself), so
that nothing is lost before then.
"""
from __future__ import annotations

import contextlib
import glob
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from tqdm import tqdm

from .files import save_atomic

FORMAT = "ddpm_lib-partial-samples-3"


def machine_name(device: torch.device) -> str:
    """The processor a sampler ran on, for telling apart runs whose exact values may differ ("cpu" or
    the GPU's model)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def warm_up(net: Callable, batch_shape: tuple, device, bf16: bool = False) -> None:
    """Off the CPU, one call of ``net(x, t)`` on zeros of ``batch_shape`` (t = 1), its result dropped: a GPU
    loads each kernel on its first launch, which then happens here and not in a timed batch. ``bf16``: under
    CUDA bf16 autocast, as the sampler will run. On a CPU nothing: no first-launch cost to keep apart, and a
    call at a batch of 500 would take seconds."""
    if torch.device(device).type == "cpu":
        return
    x = torch.zeros(batch_shape, device=device)
    t = torch.ones(batch_shape[0], dtype=torch.long, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        net(x, t)


def partial_path(out: str | Path) -> Path:
    """Where the samples of the command writing ``out`` are kept until it finishes: ``<out>.partial.pt``."""
    out = Path(out)
    return out.with_name(out.name + ".partial.pt")


def _read_kept(path: Path) -> dict | None:
    """The contents of a file of kept samples, or None when it is cut off or not such a file."""
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:                                    # cut off, or not a torch file at all
        return None
    return kept if isinstance(kept, dict) and kept.get("format") == FORMAT else None


def kept_count(out: str | Path) -> int:
    """How many samples an earlier, stopped run of the command writing ``out`` kept (0 when there is no
    readable file; ``draw_batches`` checks the file's settings and says what is wrong with it)."""
    path = partial_path(out)
    kept = _read_kept(path) if path.exists() else None
    return sum(len(b) for b in kept["batches"]) if kept else 0


def _resume(path: Path, key: dict | None, generator: torch.Generator) -> tuple[list, float, list]:
    """The batches, seconds and calls kept in ``path`` (none when it does not exist), with ``generator`` set
    to the state after the last kept batch. A file of other settings raises ``ValueError``."""
    if not path.exists():
        return [], 0.0, []
    kept = _read_kept(path)
    if kept is None:
        raise ValueError(f"{path} is not a file of kept samples of this ddpm_lib (damaged, or from another "
                         f"version): delete it to start afresh")
    if kept["key"] != key:
        changed = "; ".join(f"{k}={kept['key'].get(k)!r} there, {v!r} here" for k, v in key.items()
                            if kept["key"].get(k) != v)
        raise ValueError(f"{path} holds samples drawn with other settings ({changed}): run that command again "
                         f"to finish it, or delete the file to start afresh")
    generator.set_state(kept["generator"])
    n_kept = sum(len(b) for b in kept["batches"])
    tqdm.write(f"continuing from the {n_kept} samples kept in {path}")
    return kept["batches"], kept["seconds"], kept["calls"]


class Drawn(NamedTuple):
    """What ``draw_batches`` returns."""
    samples: torch.Tensor      # (n, ...) float32 on the CPU, of fp16-rounded values (see draw_batches)
    seconds: float             # time spent drawing them, over every run that contributed
    calls: list[int]           # network calls made by each batch (``count_calls``); empty without it


def draw_batches(draw: Callable[[int, int], torch.Tensor], n: int, batch_size: int, generator: torch.Generator,
                 out: str | Path | None, key: dict | None = None, count_calls: Callable[[], int] | None = None,
                 desc: str | None = "sampling") -> Drawn:
    """``n`` samples drawn by ``draw(start, b)`` (samples start … start + b − 1, from ``generator``, on any
    device) in batches of ``batch_size``, with the seconds spent in ``draw`` and the copy to the CPU (which
    waits for a GPU).
    The samples are rounded to fp16 as they come, whether kept or not: a step of at most 2⁻¹¹ in [−1, 1], a
    sixteenth of an 8-bit pixel's, that halves the kept file (10,000 MNIST samples: 20 MB) and gives a
    resumed run the values of an uninterrupted one.

    - ``out``: kept in ``partial_path(out)`` after each batch, the last one too (see the module docstring);
      ``None`` keeps nothing. ``key``: the settings that determine the samples (plain values).
    - ``count_calls``: a running count of network calls, read around each batch (its differences are
      ``calls``, kept with the samples).
    - ``desc``: the progress bar's name (``None``: no bar).

    A stop (Ctrl-C, SIGTERM) raises KeyboardInterrupt with a line naming the kept samples, or with no
    message when this call kept none (``stopped_message`` then says what earlier calls kept)."""
    path = partial_path(out) if out is not None else None
    batches, seconds, calls = _resume(path, key, generator) if path else ([], 0.0, [])
    kept = sum(len(b) for b in batches)                  # samples the file holds
    bar = tqdm(total=n, initial=kept, desc=desc, unit="sample", disable=desc is None, leave=False)
    try:
        with bar:
            while kept < n:
                before = count_calls() if count_calls else 0
                start = time.perf_counter()
                x0 = draw(kept, min(batch_size, n - kept)).to("cpu", torch.float16)
                seconds += time.perf_counter() - start
                if count_calls:
                    calls.append(count_calls() - before)
                batches.append(x0)
                if path:
                    save_atomic({"format": FORMAT, "key": key, "batches": batches, "seconds": seconds,
                                 "calls": calls, "generator": generator.get_state()}, path)
                kept += len(x0)
                bar.update(len(x0))
    except KeyboardInterrupt:
        if path is None or not kept:
            raise
        raise KeyboardInterrupt(stopped_message(path, kept, n)) from None
    return Drawn(torch.cat(batches).float(), seconds, calls)


def stopped_message(path: Path, kept: int, n: int) -> str:
    """The one line of a command stopped with ``kept`` (> 0) of its ``n`` samples in ``path``."""
    return f"interrupted: {kept} of {n} samples are kept in {path}; the same command continues from them"


def row_output(out: str | Path, i: int) -> Path:
    """The name under which row ``i`` (from 0) of a table written to ``out`` (``trilemma``, ``evaluate-guidance``)
    keeps its samples until the table is written: ``partial_path(row_output(out, i))`` is
    ``<out>.row<i+1>.partial.pt``."""
    out = Path(out)
    return out.with_name(f"{out.name}.row{i + 1}")


def kept_files(out: str | Path) -> list[Path]:
    """The files of kept samples that a command writing ``out`` has left: ``<out>.partial.pt`` and, for a
    table of rows, ``<out>.row<i>.partial.pt``."""
    out = Path(out)
    return sorted(p for p in out.parent.glob(f"{glob.escape(out.name)}*.partial.pt")
                  if p == partial_path(out) or p.name[len(out.name):].startswith(".row"))


def remove_kept(out: str | Path) -> None:
    """Remove every file of kept samples for ``out`` (``kept_files``): called once ``out`` is written."""
    for path in kept_files(out):
        path.unlink()


@contextlib.contextmanager
def kept_on_stop(out: str | Path, n: int):
    """A block run after all ``n`` samples for ``out`` are kept: a Ctrl-C inside it says they still are."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(stopped_message(partial_path(out), n, n)) from None


@contextlib.contextmanager
def kept_until_written(out: str | Path, n: int):
    """The block that turns ``n`` kept samples into the output ``out``: the kept samples are removed when it
    ends normally, and a Ctrl-C inside it says that they are still kept (and nothing else was lost)."""
    with kept_on_stop(out, n):
        yield
    partial_path(out).unlink(missing_ok=True)
