"""The public API is complete, and the benchmark script works end to end on a tiny grid.

The docstring examples of ``bft_ray.robust`` run through ``--doctest-modules`` (pyproject).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import bft_ray.robust

ROOT = Path(__file__).resolve().parents[2]


def test_public_api_is_listed() -> None:
    for name in bft_ray.robust.__all__:
        assert hasattr(bft_ray.robust, name), name


def test_benchmark_quick_grid(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_robust", ROOT / "benchmarks" / "bench_robust.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--jobs", "1", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "robust_quick.json").read_text())
    assert len(record["runs"]) == 3 * 3 * 2
    worst = record["summary"]["worst"]["iid"]
    assert set(worst) == {"mean", "trimmed_mean", "nnm+cc(tau=0.1)"}
    assert worst["mean"]["attack"] == "nonfinite"  # the reference mean halts on NaN
    assert (tmp_path / "robust_quick.png").stat().st_size > 10_000
