"""Shared test configuration.

Pure suites (comparison, consensus, aggregators) never start Ray. Integration suites start one
Ray per module through the ``ray_module`` helpers in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis: a fast deterministic profile for `make test`, a thorough one for `make test-full`.
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "full", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("full" if os.environ.get("BFT_RAY_FULL") else "ci")

FULL = bool(os.environ.get("BFT_RAY_FULL"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"bft-ray suite: {'full' if FULL else 'bounded sample (set BFT_RAY_FULL=1 or run make test-full for all)'}"


@pytest.fixture(scope="session", autouse=True)
def _no_ray_left_running():
    """Leave no bft-ray cluster or Ray running when the session ends (modules start their own)."""
    yield
    import ray

    import bft_ray

    bft_ray.shutdown()
    if ray.is_initialized():
        ray.shutdown()
