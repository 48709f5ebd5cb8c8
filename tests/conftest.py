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


# -- leaving the process ----------------------------------------------------------------------
#
# Once every result is reported, the suite leaves with os._exit and the session's own exit
# status. One clean-clone run in three on 2026-12-03 printed a passing summary and then died in
# interpreter finalization with a segmentation fault (native teardown of the libraries loaded
# here: Ray's core worker, grpc, torch), which turned a passing suite into a failed `make test`.
# Nothing of ours runs after this point: the session fixtures have shut Ray down, and the
# reports are written and flushed.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _EXIT_STATUS and not os.environ.get("BFT_RAY_NORMAL_EXIT"):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
