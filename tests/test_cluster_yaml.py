"""cluster.yaml parses and keeps the shape bft-ray relies on (GPU workers, a trusted CPU head)."""

from __future__ import annotations

from pathlib import Path

import yaml


def test_cluster_yaml_shape():
    cfg = yaml.safe_load((Path(__file__).parent.parent / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"]["GPU"] == 0  # the verifier's node holds no executor
    gpu_workers = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_workers and all(t["max_workers"] >= t["min_workers"] >= 1 for t in gpu_workers)
    assert any("pip install" in c and "bft-ray" in c for c in cfg["setup_commands"])
    assert cfg["max_workers"] >= max(t["max_workers"] for t in gpu_workers)
