"""The files the package writes and reads: atomic writes, JSON cards with the sha256 of the file they describe,
and torch files tagged with their kind, read safely.

Writes are atomic: the bytes go to a hidden temporary file in the same folder, are flushed to disk (fsync) and
only then renamed over the final name with ``os.replace``, so a crash or a full disk leaves the old file or the
new one, never half of one. Reading always passes ``weights_only=True``: a file cannot run code when it is
opened. Every file a command reads is a dict tagged ``{"format": …}``; ``FILE_KINDS`` names each tag, so a file
of another kind is refused by what it is and which commands read it.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

FILE_KINDS = {   # every tagged file a command reads → what it is and which commands read it (a test keeps the tags)
    "ddpm_lib-checkpoint-1": "a training checkpoint (diffusion runs: sample, evaluate, export; DDGAN runs: "
                             "sample-ddgan, export-ddgan)",
    "ddpm_lib-weights-1": "an exported diffusion model (sample, evaluate, evaluate-guidance, trilemma --ddpm)",
    "ddpm_lib-ddgan-weights-1": "an exported DDGAN generator (sample-ddgan, trilemma --ddgan)",
    "ddpm_lib-noisy-classifier-1": "a noise-aware classifier (--classifier of sample and evaluate-guidance)",
    "ddpm_lib-mnist-classifier-1": "the MNIST classifier behind FID-MNIST (--classifier of evaluate and trilemma)",
}


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str | Path, write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush, fsync and ``os.replace`` it over
    ``path`` (atomic on one file system), so that ``path`` is either untouched or complete. On any
    error the temporary file is removed and the error is raised again."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_atomic(obj, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (``replace_atomically``)."""
    return replace_atomically(path, lambda f: torch.save(obj, f))


def write_json(obj, path: str | Path) -> Path:
    """``obj`` as indented JSON at ``path``, written atomically: a crash leaves the old file or the new one."""
    text = (json.dumps(obj, indent=2) + "\n").encode()
    return replace_atomically(path, lambda f: f.write(text))


def prepare_output(path: str | Path, suffixes: tuple, name: str = "--out") -> Path:
    """Check an output name before any work is done, and create its folder: a one-line ``ValueError``
    when the suffix is not one of ``suffixes`` (e.g. ``(".png", ".pt")``) or the name is a folder.
    ``name``: what the messages call the path (the command-line flag, or e.g. "the weights file")."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder: name a file in it, e.g. {path / ('out' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{name} {path}: the name must end in {' or '.join(suffixes)}")
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ValueError(f"{name} {path}: {folder} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def refuse_a_card(path: Path, flag: str = "") -> None:
    """A ``.json`` path is a card, not the file it describes: say so (its sha256 would not match itself).
    ``flag``: the command-line flag that named it, if any."""
    if path.suffix.lower() == ".json":
        raise ValueError(f"{flag + ' ' if flag else ''}{path} is a JSON card: pass the file it describes, "
                         f"{path.with_suffix('.pt')}")


def save_with_card(blob: dict, path: str | Path, card: dict) -> dict:
    """Write the weights file ``blob`` atomically to ``path`` (a ``.pt`` name) and its JSON card beside it
    (``path`` with ``.json``): ``card`` plus the file's name and sha256, which loaders check. Returns the card."""
    path = prepare_output(path, (".pt",), name="the weights file")
    save_atomic(blob, path)
    card = {**card, "file": path.name, "sha256": file_sha256(path)}
    write_json(card, path.with_suffix(".json"))
    return card


def check_card(path: str | Path, required: bool = False) -> dict | None:
    """The JSON card beside the weights file ``path`` (``path`` with ``.json``), once the file's sha256 is
    checked against it. None when there is no card (a one-line ``ValueError`` when ``required``) or no
    file; ``ValueError`` naming the card when it is not JSON, holds no sha256, or holds another one."""
    path = Path(path)
    refuse_a_card(path)
    card_path = path.with_suffix(".json")
    if not card_path.is_file() or not path.is_file():
        if required and path.is_file():
            raise ValueError(f"{path} has no card {card_path.name} to check its sha256 against")
        return None
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"the card {card_path} is not valid JSON ({err}): it is damaged") from None
    sha256 = card.get("sha256") if isinstance(card, dict) else None
    if file_sha256(path) != sha256:
        why = "the file is damaged or was replaced" if sha256 else "the card holds none, so it is damaged"
        raise ValueError(f"{path} does not match the sha256 in {card_path.name}: {why}")
    return card


def read_tagged_file(path: str | Path, fmt: str | tuple, what: str, map_location="cpu", mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)`` of a dict tagged ``{"format": fmt}`` (or one of the tags
    in a tuple ``fmt``; ``blob["format"]`` says which).

    A missing file → ``FileNotFoundError``; a truncated or damaged one (its checksums are read: ~0.1 s for
    a 120 MB checkpoint) → one-line ``RuntimeError``; a readable file of another kind → ``ValueError``.
    ``what`` names the kind in the messages. ``mmap``: map the tensors instead of loading them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what.removesuffix(' file')} file at {path}")
    refuse_a_card(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated zip, bad pickle, foreign object: torch raises several types
        raise RuntimeError(f"cannot read {what} {path}: {_unreadable_because(path, exc)}") from exc
    if not mmap:                                          # a mapped read is a peek: whoever loads it checks
        check_checksums(path, what)
    formats = fmt if isinstance(fmt, tuple) else (fmt,)
    found = blob.get("format") if isinstance(blob, dict) else None
    if found not in formats:
        if found in FILE_KINDS:
            raise ValueError(f"{path} is {FILE_KINDS[found]}, not a ddpm_lib {what}")
        raise ValueError(f"{path} is not a ddpm_lib {what} (no format tag {' or '.join(map(repr, formats))})")
    return blob


def damaged_member(path: str | Path) -> str | None:
    """The first member of a ``torch.save`` archive whose bytes no longer match the CRC-32 written with them
    (bytes changed on disk or in a copy: torch.load reads them without looking), or None. A file written
    without checksums (torch's ``serialization.config.save.compute_crc32 = False`` records 0), or in the
    legacy format (``_use_new_zipfile_serialization=False``: no zip archive), is not checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            if any(info.CRC == 0 and info.file_size > 0 for info in archive.infolist()):
                return None
            return archive.testzip()
    except (zipfile.BadZipFile, NotImplementedError):
        return None


def check_checksums(path: str | Path, what: str) -> None:
    """A one-line ``RuntimeError`` when ``damaged_member`` finds a part of the file ``path`` (a ``what``) changed."""
    damaged = damaged_member(path)
    if damaged is not None:
        raise RuntimeError(f"cannot read {what} {path}: the file is damaged (its part {damaged} no longer matches "
                           f"the checksum written with it)")


def _unreadable_because(path: Path, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``exc``, in words that fit a ddpm_lib file
    (torch's own first line may advise ``weights_only=False``, which would let the file run code)."""
    if not zipfile.is_zipfile(path):
        return ("the file is truncated, damaged or not a PyTorch file (it is no zip archive, which every file "
                "torch.save writes is)")
    if isinstance(exc, pickle.UnpicklingError):
        return ("it holds Python objects that weights_only=True will not unpickle (ddpm_lib's files hold only "
                "tensors, numbers, strings and containers), so another program wrote it")
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"the file is truncated, damaged or not a PyTorch file ({reason})"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_path(path: str | Path) -> str:
    """How a results file names an input file: relative to the working directory when it lies below it
    (``data/mnist_classifier.pt``), else by its name alone, so that no machine's folders end up in shipped
    files (the sha256 recorded beside it identifies the file either way)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name
