"""Helpers shared by test modules."""

from __future__ import annotations

import ray
from ray.cluster_utils import Cluster

import bft_ray


def row_for_slot(report: bft_ray.Report, index: int) -> dict:
    """Summed counters over every incarnation of pool slot ``index``."""
    rows = report.by_index(index)
    assert rows, f"no executor with index {index}"
    keys = ("tasks", "agreed", "disagreed", "invalid", "crashed", "timeouts", "flagged", "disputed")
    return {k: sum(r[k] for r in rows) for k in keys}


# Verifier backends the shared verdict suite runs against (init keyword arguments). The BFT
# verifier group adds itself here, so every verdict test runs against it too.
VERIFIER_BACKENDS: dict[str, dict] = {"trusted": {"verifiers": 1}, "bft": {"verifiers": 4}}


def cpu_head_cluster(object_store_memory: int) -> Cluster:
    """A ``ray.cluster_utils.Cluster`` whose head has 2 CPUs and no GPU (the trusted head).

    Worker nodes with GPUs are added by the test; executors can only land on them.
    """
    bft_ray.shutdown()
    if ray.is_initialized():
        ray.shutdown()
    return Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "num_gpus": 0,
            "include_dashboard": False,
            "object_store_memory": object_store_memory,
        },
    )
