"""Shared fixtures for the unit tests."""
import pytest
import torch


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
