"""Real clusters: GPU nodes that arrive after init starts, and scaling a running pool.

``ray.cluster_utils.Cluster`` stands in for an autoscaler: the head has no GPUs, and the GPU
worker nodes are added while ``bft_ray.init`` (or ``cluster.scale``) is already waiting.
"""

from __future__ import annotations

import threading
import time

import pytest
import ray
from _support import cpu_head_cluster
from ray.cluster_utils import Cluster

import bft_ray
from bft_ray.errors import CapabilityError, ConfigError

pytestmark = pytest.mark.ray

_STORE = 100 * 1024**2


@pytest.fixture(scope="module")
def late_cluster():
    cluster = cpu_head_cluster(_STORE)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    bft_ray.shutdown()
    ray.shutdown()
    cluster.shutdown()


@bft_ray.verified_remote(replicas=3)
def triple(x):
    return 3 * x


def _while_nodes_arrive(cluster: Cluster, count: int, delay: float, work):
    """Run ``work`` in a thread; meanwhile add ``count`` GPU nodes after ``delay`` seconds.

    Nodes must be added from the main thread (Ray installs signal handlers), so the waiting
    side runs in the thread. Returns ``(result, seconds work took)``.
    """
    box: dict = {}

    def run() -> None:
        start = time.monotonic()
        try:
            box["result"] = work()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc
        box["took"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(delay)
    assert thread.is_alive(), box  # still waiting for resources, not failed at once
    for _ in range(count):
        cluster.add_node(num_cpus=2, num_gpus=2, object_store_memory=_STORE)
    thread.join(timeout=300)
    if "error" in box:
        raise box["error"]
    return box["result"], box["took"]


def test_init_waits_for_gpu_nodes_that_arrive_late_then_scales(late_cluster):
    # Nothing can hold an executor yet: the head has no GPU.
    assert ray.cluster_resources().get("GPU", 0) == 0
    cluster, waited = _while_nodes_arrive(
        late_cluster,
        count=2,
        delay=3.0,
        work=lambda: bft_ray.init(
            executors=4, address=late_cluster.address, ready_timeout_s=120, quarantine_below=0.0
        ),
    )
    assert waited >= 3.0  # it waited for the nodes instead of failing at once
    assert cluster.executors == 4
    assert bft_ray.get(triple.remote(5), timeout=120) == 15

    # Grow: a third GPU node arrives while scale() waits for it.
    _while_nodes_arrive(
        late_cluster, count=1, delay=2.0, work=lambda: cluster.scale(executors=6, timeout_s=120)
    )
    assert cluster.executors == 6
    rows = cluster.report().executors
    assert {r["index"] for r in rows} == set(range(6))
    # New executors take verified work: run enough calls that slots 4 and 5 are used.
    refs = [triple.remote(i) for i in range(30)]
    assert bft_ray.get(refs, timeout=300) == [3 * i for i in range(30)]
    by_index = {r["index"]: r for r in cluster.report().executors}
    assert by_index[4]["tasks"] > 0 and by_index[5]["tasks"] > 0

    # Shrink: the newest slots leave, get no more work, and are not respawned.
    cluster.scale(executors=3)
    assert cluster.executors == 3
    before = {r["executor"]: r["tasks"] for r in cluster.report().executors}
    assert bft_ray.get([triple.remote(i) for i in range(12)], timeout=300) == [
        3 * i for i in range(12)
    ]
    after = cluster.report().executors
    statuses = {r["index"]: r["status"] for r in after}
    assert [statuses[i] for i in (3, 4, 5)] == ["removed"] * 3
    for r in after:
        if r["index"] >= 3:
            assert r["tasks"] == before[r["executor"]]  # no work after removal
    cluster.scale(executors=2)
    with pytest.raises(ConfigError, match="replicas=3 but the pool has 2"):
        triple.remote(1)
    cluster.scale(executors=3)  # grows again into the freed GPUs
    assert bft_ray.get(triple.remote(2), timeout=120) == 6


def test_scale_is_for_the_owner_only_and_validated(late_cluster):
    cluster = bft_ray.current_cluster()
    with pytest.raises(ConfigError, match="at least one executor"):
        cluster.scale(executors=0)
    with pytest.raises(ConfigError, match="could not place"):
        cluster.scale(executors=20, timeout_s=2)
    assert cluster.executors == 3  # a failed grow leaves the pool as it was
    attached = bft_ray.api._attach("default")
    with pytest.raises(CapabilityError, match="scale"):
        attached.scale(executors=4)


def test_init_fails_after_its_timeout_with_what_is_missing(late_cluster):
    bft_ray.shutdown()
    with pytest.raises(
        ConfigError, match=r"could not place 40 executors.*need 40 (CPU|GPU).*ready_timeout_s"
    ):
        bft_ray.init(executors=40, address=late_cluster.address, ready_timeout_s=2)
