"""init() on a cluster that cannot hold the executors fails clearly and leaves nothing running."""

from __future__ import annotations

import pytest
import ray

import bft_ray

pytestmark = pytest.mark.ray


def test_too_few_gpus_is_a_config_error_and_ray_is_stopped_again():
    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(
        bft_ray.ConfigError, match=r"3 executors x 1 GPU need 3 GPU, but the Ray cluster has 1"
    ):
        bft_ray.init(
            executors=3,
            num_gpus=1,
            num_cpus=4,
            object_store_memory=100 * 1024**2,
            include_dashboard=False,
        )
    assert not ray.is_initialized()
    with pytest.raises(bft_ray.ConfigError, match="not initialised"):
        bft_ray.current_cluster()
