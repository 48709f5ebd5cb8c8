"""Fixtures for the robust-aggregation tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bft_ray.robust.data import Dataset, load_digits_dataset


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run each test with one torch thread, then restore the previous setting.

    The tensors here are tiny; with two threads, an op above torch's parallel grain waits for
    its second thread, and on a busy 2-core machine that wait can stretch a 0.1 s training run
    into tens of seconds.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's digits, split and standardised once per session."""
    return load_digits_dataset()
