"""The course's ``data/`` folder (shipped models, their cards, training logs and measured results),
wherever the package runs.

From a clone of the course it is the clone's own ``data/``: the one beside the package (``make lab``, an
editable install), or else the one of the clone that the working folder lies in (a non-editable install
used from a clone's ``notebooks/``). A package installed without any clone (``pip install "ddpm_lib @
git+…"`` on Colab) has no ``data/``: then the folder is fetched once, from the course repository's
archive, into a cache folder (``$DDPM_COURSE_CACHE``, else ``$XDG_CACHE_HOME/ddpm_course``, else
``~/.cache/ddpm_course``), and found there afterwards.

    dl.course_data("laptop")            # notebooks 06–09: the CPU stand-in's models and results
    dl.course_data("mnist_classifier.pt")

``$DDPM_COURSE_ARCHIVE`` replaces the archive's address (any URL that ``urllib`` opens, ``file://`` too).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

COURSE_REPOSITORY = "https://github.com/ddpm-course/ddpm-course"
ARCHIVE = f"{COURSE_REPOSITORY}/archive/refs/heads/main.zip"
MARKER = "mnist_classifier.pt"           # a data/ folder holding this file is the course's
CLONE_DATA = Path(__file__).resolve().parent.parent / "data"


def cache_folder() -> Path:
    """Where a fetched ``data/`` folder is kept: ``$DDPM_COURSE_CACHE``, else the user's cache folder."""
    if os.environ.get("DDPM_COURSE_CACHE"):
        return Path(os.environ["DDPM_COURSE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm_course"


def course_data(path: str | Path = ".", fetch: bool = True) -> Path:
    """``path`` inside the course's ``data/`` folder (an absolute ``path`` is returned as it is).

    The folder is a clone's own ``data/`` (beside the package, or around the working folder), else the cached copy,
    fetched first when there is none and ``fetch`` is true (``RuntimeError`` naming the remedy when the
    fetch fails, ``FileNotFoundError`` when ``fetch`` is false)."""
    path = Path(path)
    if path.is_absolute():
        return path
    clones = [CLONE_DATA] + [folder / "data" for folder in (Path.cwd(), *Path.cwd().parents)
                             if (folder / "ddpm_lib").is_dir()]
    clone = next((data for data in clones if (data / MARKER).is_file()), None)
    if clone is not None:
        return clone / path
    cached = cache_folder() / "data"
    if not (cached / MARKER).is_file():
        if not fetch:
            raise FileNotFoundError(f"no course data/ folder: no clone around the package or the working folder, "
                                    f"and {cached} holds no {MARKER}")
        fetch_course_data(os.environ.get("DDPM_COURSE_ARCHIVE", ARCHIVE), cached)
    return cached / path


def fetch_course_data(url: str, dest: Path) -> Path:
    """Download the zip archive of the course repository at ``url`` and put its ``data/`` folder at ``dest``.

    The archive's top folder (``<repo>-main/`` for a GitHub archive) is skipped; only members under its
    ``data/`` are written, and ``dest`` appears whole or not at all (written beside it, then renamed)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"fetching the course's data/ folder from {url} into {dest} (once)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        archive = Path(tmp) / "course.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as err:
            raise RuntimeError(f"could not download {url} ({err}): clone {COURSE_REPOSITORY} and run the "
                               "notebooks from its notebooks/ folder, or set DDPM_COURSE_ARCHIVE to a copy of the "
                               "archive") from None
        if not zipfile.is_zipfile(archive):
            raise RuntimeError(f"{url} did not send a zip archive (a login or error page?): set DDPM_COURSE_ARCHIVE "
                               "to the course repository's archive")
        staged = Path(tmp) / "data"
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                parts = Path(member.filename).parts
                if len(parts) < 3 or parts[1] != "data" or member.is_dir():
                    continue
                if ".." in parts or Path(member.filename).is_absolute():
                    raise RuntimeError(f"{url}: refusing the archive member {member.filename!r}")
                target = staged.joinpath(*parts[2:])
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        if not (staged / MARKER).is_file():
            raise RuntimeError(f"{url} is not the course's archive: it has no data/{MARKER}")
        if (dest / MARKER).is_file():            # another process fetched it meanwhile: keep that copy
            return dest
        if dest.exists():                        # a cache folder left incomplete (not by a fetch): replace it
            shutil.rmtree(dest)
        staged.rename(dest)
    return dest
