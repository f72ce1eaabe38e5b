"""Shared fixtures for the unit tests."""
from pathlib import Path

import pytest
import torch



def pytest_collection_modifyitems(items):
    """The CPU rehearsal of the results pipeline (minutes on one core) first, so that pytest-xdist's other worker runs
    the rest of the suite beside it instead of after it."""
    items.sort(key=lambda item: item.path.name != "test_rehearsal.py")


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
    """papermill's parameters for a quick-mode run of a copy of ``lecture`` outside ``notebooks/``. Only
    ``quick=True``: the lectures find their shipped models through ``dl.course_data``, wherever they run
    (the student notebooks in ``build/student`` too), so the copies run with their default ``results``."""
    return {"quick": True}
