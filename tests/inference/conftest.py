"""Make ``inference_helpers`` importable under ``--import-mode=importlib``; session models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from inference_helpers import BF16, CFG  # noqa: E402

from bft_ray.inference import TinyLMFactory  # noqa: E402


@pytest.fixture(scope="session")
def factory() -> TinyLMFactory:
    return TinyLMFactory(CFG, seed=0)


@pytest.fixture(scope="session")
def model(factory):
    return factory()


@pytest.fixture(scope="session")
def bf16_model():
    return TinyLMFactory(BF16, seed=0)()
