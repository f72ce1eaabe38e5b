"""Shared fixtures for the unit tests."""
import json
import re
from pathlib import Path

import pytest
import torch

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator, fresh for each test: random tests draw the same numbers on every run."""
    return torch.Generator().manual_seed(20200619)  # the DDPM paper's arXiv date


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: the tensors are small, and two pytest-xdist workers share two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quick_parameters(lecture: Path) -> dict:
    """papermill's parameters for a quick-mode run of a copy of ``lecture`` outside ``notebooks/``:
    ``quick=True``, plus the notebook's ``results = "<folder>"`` default made absolute, since that
    folder is relative to ``notebooks/`` and the copy runs in a temporary folder."""
    cells = json.loads(lecture.read_text())["cells"]
    source = "".join(next(("".join(c["source"]) for c in cells
                           if "parameters" in c["metadata"].get("tags", [])), ""))
    folder = re.search(r'^results = "([^"]+)"', source, re.M)
    parameters = {"quick": True}
    if folder:
        parameters["results"] = str((NOTEBOOK_DIR / folder.group(1)).resolve())
    return parameters
