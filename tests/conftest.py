"""Shared fixtures for the unit tests."""
import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator, fresh for each test: random tests draw the same numbers on every run."""
    return torch.Generator().manual_seed(20200619)  # the DDPM paper's arXiv date
