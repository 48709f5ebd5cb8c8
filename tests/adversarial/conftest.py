"""Adversarial suites start one Ray per module, like the integration suites."""

from __future__ import annotations

import pytest
import ray

import bft_ray


@pytest.fixture(scope="module")
def ray_module():
    from integration.conftest import start_ray

    start_ray()
    yield
    bft_ray.shutdown()
    ray.shutdown()
