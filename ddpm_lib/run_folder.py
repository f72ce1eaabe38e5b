"""A training run's folder: one writer at a time, a stop between two steps, metrics cut back on resume.

``train`` and ``train_ddgan`` hold ``run_lock`` while they write into ``--out-dir``, stop through
``StopRequest`` (Ctrl-C or SIGTERM: save, then stop) and call ``keep_metrics_up_to`` when they resume; the
processes of a DDP run agree on a stop through ``StopAgreement``.
"""
from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from .files import replace_atomically


class RunLocked(RuntimeError):
    """Another run holds the lock on ``--out-dir`` (every rank of a DDP run raises it, with rank 0's message)."""


class Stopped(KeyboardInterrupt):
    """A trainer stopped by Ctrl-C or SIGTERM after saving a checkpoint, and has said so (the message names it).
    A plain ``KeyboardInterrupt`` out of a trainer means that it has not said what it kept."""


@contextmanager
def run_lock(out_dir: str | Path):
    """Hold an exclusive lock on ``out_dir/.lock`` while a training run writes into ``out_dir`` (created
    here): a second run into the same folder, new or ``--resume``, is refused in one line instead of
    interleaving its metrics and checkpoints with the first. The operating system drops the lock when
    the process ends, however it ends. On Windows (no ``fcntl``) runs are not guarded."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file: name a folder for the run")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        try:                                             # new files, not only an old .lock (a folder locked later)
            tempfile.TemporaryFile(dir=out_dir).close()
        except OSError as exc:                           # named by the folder, not by the probe's random name
            raise OSError(exc.errno, exc.strerror, str(out_dir)) from None
        handle = open(out_dir / ".lock", "a")
    except OSError as exc:                               # a file on the way, no permission, a read-only disk
        raise ValueError(f"--out-dir {out_dir}: cannot write there ({exc.strerror or exc}"
                         f"{': ' + str(exc.filename) if exc.filename else ''})") from None
    try:
        import fcntl
    except ImportError:
        handle.close()
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another training run is writing into {out_dir}: wait for it to end (then "
                        f"--resume), or choose another --out-dir") from None
        yield


def is_locked(out_dir: str | Path) -> bool:
    """Whether a training run holds ``out_dir``'s lock now (a look only: the lock is taken and let go)."""
    lock = Path(out_dir) / ".lock"
    try:
        import fcntl
        handle = open(lock, "r")                          # never creates the file
    except (ImportError, OSError):                        # no fcntl, or no lock file: nobody holds it
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to save and stop between two steps, so no step is cut in half.
    A second Ctrl-C a second or more after the first interrupts at once (a hung save); a later SIGTERM, or a
    copy of the first signal that arrives within the second, changes nothing: make and torchrun pass a
    signal on to a process that its process group already gave it, and a sender that will not wait for the
    save sends SIGKILL. Handlers are installed from the main thread only."""

    PATIENCE = 1.0          # seconds within which a second signal counts as a copy of the first

    def __init__(self):
        self.requested, self._previous, self._first = False, {}, 0.0

    def _handle(self, signum, frame):
        if not self.requested:
            self.requested, self._first = True, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._first >= self.PATIENCE:
            raise KeyboardInterrupt("a second Ctrl-C: stopped at once, without waiting for the save")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop metrics lines after ``step`` (an interrupted run wrote them; they will be written again)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.endswith("}")]   # not cut short
        text = "".join(line + "\n" for line in lines if json.loads(line)["step"] <= step).encode()
        replace_atomically(path, lambda f: f.write(text))


class StopAgreement:
    """The processes of a DDP run agree, at every step, whether one of them was asked to stop (Ctrl-C or
    SIGTERM), without waiting for the GPU: each call starts an all-reduce (MAX) of this process's flag on
    a CPU (gloo) group and returns the agreed flag of the call before, long finished by then. Every rank
    calls it once per step, so all of them stop after the same step, one step after the signal. With one
    process it returns the flag as it is."""

    def __init__(self, world: int):
        self.group = dist.new_group(backend="gloo") if world > 1 else None
        self.flag, self.work = None, None

    def __call__(self, requested: bool) -> bool:
        if self.group is None:
            return requested
        agreed = False
        if self.work is not None:
            self.work.wait()
            agreed = bool(self.flag.item())
        self.flag = torch.tensor(float(requested))
        self.work = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed

    def finish(self) -> None:
        """Wait for the last all-reduce (every rank started it), so that none is left running."""
        if self.work is not None:
            self.work.wait()
            self.work = None
