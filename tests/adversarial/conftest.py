"""Adversarial suites share the session's Ray, like the integration suites."""

from __future__ import annotations

import pytest
import ray

import bft_ray


@pytest.fixture(scope="module")
def ray_module():
    from integration.conftest import start_ray

    if not ray.is_initialized():
        start_ray()
    yield
    bft_ray.shutdown()
