"""The BFT verifier group across Ray nodes: one verifier per `verifier` node, node loss survived.

Head without GPUs (the trusted driver), two GPU nodes for the executors and four nodes that
each offer one `verifier` resource. The verifiers must land on four distinct nodes; removing
one verifier's node mid-burst loses no call (2f + 1 = 3 verifiers remain).
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from _support import cpu_head_cluster

import bft_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STORE = 80 * 1024**2


@pytest.fixture(scope="module")
def multinode(tmp_path_factory):
    cluster = cpu_head_cluster(STORE)
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=2, object_store_memory=STORE)
    verifier_nodes = [
        cluster.add_node(num_cpus=1, resources={"verifier": 1}, object_store_memory=STORE)
        for _ in range(4)
    ]
    cluster.wait_for_nodes()
    bft = bft_ray.init(
        executors=4,
        verifiers=4,
        address=cluster.address,
        quarantine_below=0.0,
        ledger_dir=str(tmp_path_factory.mktemp("ledgers")),
    )
    yield cluster, verifier_nodes, bft
    bft.shutdown()
    ray.shutdown()
    cluster.shutdown()


@bft_ray.verified_remote(replicas=3)
def scaled(x, k):
    return x * k


def _node_of(handle):
    return ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def test_verifiers_run_on_distinct_verifier_nodes(multinode):
    _, verifier_nodes, bft = multinode
    where = [_node_of(h) for h in bft.verifier_handles()]
    assert len(set(where)) == 4
    assert set(where) == {n.node_id for n in verifier_nodes}
    refs = [scaled.remote(np.arange(4.0), k) for k in range(6)]
    assert [float(v.sum()) for v in bft_ray.get(refs, timeout=120)] == [6.0 * k for k in range(6)]


def test_losing_a_verifier_node_loses_no_task(multinode):
    cluster, verifier_nodes, bft = multinode
    victim = verifier_nodes[1]
    refs = [scaled.remote(np.ones(3), k) for k in range(10)]
    cluster.remove_node(victim)
    values = bft_ray.get(refs, timeout=240)
    assert [float(v.sum()) for v in values] == [3.0 * k for k in range(10)]
    more = [scaled.remote(np.ones(3), k) for k in range(4)]
    assert [float(v.sum()) for v in bft_ray.get(more, timeout=240)] == [3.0 * k for k in range(4)]
    keys = bft.verifier_keys()
    assert all(bft_ray.verify_certificate(bft_ray.certificate(r), keys) for r in refs + more)
