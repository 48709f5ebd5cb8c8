"""Integration fixtures: one Ray per test module, small and capped for a 2-core machine."""

from __future__ import annotations

import os

import pytest
import ray

import bft_ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def start_ray(num_cpus: int = 8, num_gpus: int = 8) -> None:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",  # never join a cluster someone started with `ray start`
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        object_store_memory=300 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )


@pytest.fixture(scope="module")
def ray_module():
    """A Ray for the module: the one already running if a previous module left it (starting
    Ray costs about 4 s; every module's bft-ray cluster is shut down at its end, and the
    session ends Ray), else a new one. Modules that need another Ray shut this one down."""
    if not ray.is_initialized():
        start_ray()
    yield
    bft_ray.shutdown()
