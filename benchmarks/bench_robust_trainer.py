"""Benchmark: RobustTrainer and the (f, kappa) table (part of ``make bench-robust``).

Three sections, written to ``benchmarks/results/robust_trainer.json``:

* ``kappa``: the empirical (f, kappa)-robustness coefficient of every rule of the digits grid
  (n = 15, f = 3, d = 10; attacks plus a (1+1)-ES search, max over all sets of n - f inputs)
  beside the theoretical bound of Allouah et al. (2023) and the lower bound f / (n - 2f);
* ``user_models``: the small CNN and the tiny transformer LM of ``bft_ray.robust.tasks``,
  12 workers of which 3 run IPM(epsilon=10), robust rule vs the mean, in-process backend;
* ``overhead``: the same RobustTrainer run (digits MLP, n = 15, f = 3, nnm+cc(tau=0.1),
  IPM(10)) with the in-process backend and on Ray executors: accuracy and time per step.

Usage::

    python benchmarks/bench_robust_trainer.py [--sections kappa user_models overhead] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Progress as plain lines on stderr, also on a terminal: a live bar redraws from a thread of
# this process, which would compete with the timed training steps (seconds, ms per step).
PROGRESS = Console(stderr=True, force_terminal=False)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
KAPPA_RULES = [
    "mean",
    "median",
    "trimmed_mean",
    "geometric_median",
    "krum",
    "multi_krum",
    "bulyan",
    "cc",
    "cc(tau=0.1)",
    "nnm+trimmed_mean",
    "nnm+median",
    "nnm+cc(tau=0.1)",
    "nnm+krum",
    "arc+trimmed_mean",
    "bucketing(s=2)+cc(tau=0.1)",
]


def kappa_section(quick: bool) -> list[dict[str, Any]]:
    from bft_ray.progress import track
    from bft_ray.robust.kappa import empirical_kappa

    rows = []
    for rule in track(KAPPA_RULES[:3] if quick else KAPPA_RULES, "kappa rules", console=PROGRESS):
        start = time.perf_counter()
        r = empirical_kappa(rule, 15, 3, trials=1 if quick else 3, iterations=30 if quick else 400)
        rows.append({**r.to_dict(), "seconds": round(time.perf_counter() - start, 2)})
        theory = "-" if r.theory is None else f"{r.theory:.3g}"
        print(f"kappa {rule:28s} empirical {r.kappa:10.4g}  theory {theory:>6s}  ({r.found_by})")
    return rows


def _fit(task: Any, rule: str, steps: int, workers: int, f: int, attack: str, **kw: Any) -> Any:
    from bft_ray.robust.trainer import RobustTrainer, byzantine_faults

    if "cluster" not in kw:
        kw.update(backend="local", faults=byzantine_faults(attack, workers, f))
    start = time.perf_counter()
    with RobustTrainer(
        **task.kwargs(), aggregator=rule, f=f, workers=workers, steps=steps, **kw
    ) as trainer:
        result = trainer.fit()
    return result, time.perf_counter() - start


def user_models_section(quick: bool) -> list[dict[str, Any]]:
    from bft_ray.progress import progress_bar
    from bft_ray.robust.tasks import image_task, lm_task

    rows = []
    cases = [("cnn", image_task(), 60), ("lm", lm_task(), 60)]
    rules = ["nnm+cc(tau=0.1)", "nnm+trimmed_mean", "mean"]
    with progress_bar("user-model runs", len(cases) * len(rules), console=PROGRESS) as bar:
        for name, task, steps in cases:
            for rule in rules:
                result, wall = _fit(task, rule, 10 if quick else steps, 12, 3, "ipm(epsilon=10)")
                final = result.history[-1]
                rows.append(
                    {
                        "task": name,
                        "rule": rule,
                        "steps": result.steps,
                        "final": final,
                        "diverged": result.diverged,
                        "seconds": round(wall, 2),
                    }
                )
                print(f"user model {name:4s} {rule:18s} {final} diverged={result.diverged}")
                bar.advance(status=f"{name} {rule}")  # between runs
    return rows


def overhead_section(quick: bool) -> dict[str, Any]:
    import numpy as np

    import bft_ray
    from bft_ray.progress import progress_bar
    from bft_ray.robust.tasks import digits_task
    from bft_ray.robust.trainer import byzantine_faults

    steps, workers, f, rule, attack = (
        (9 if quick else 90),
        15,
        3,
        "nnm+cc(tau=0.1)",
        "ipm(epsilon=10)",
    )
    task = digits_task()
    out: dict[str, Any] = {
        "steps": steps,
        "workers": workers,
        "f": f,
        "rule": rule,
        "attack": attack,
    }
    with progress_bar("overhead runs", 3, console=PROGRESS) as bar:
        local, wall = _fit(task, rule, steps, workers, f, attack, backend="local")
        out["local"] = {
            "accuracy": local.history[-1]["accuracy"],
            "wall_seconds": round(wall, 2),
            "ms_per_step": round(1e3 * wall / steps, 2),
            "compute_ms_per_step": round(1e3 * float(np.mean(local.compute_seconds)), 2),
            "aggregate_ms_per_step": round(1e3 * float(np.mean(local.aggregate_seconds)), 2),
        }
        bar.advance(status="in-process run")
        start = time.perf_counter()
        cluster = bft_ray.init(
            executors=workers,
            faults=byzantine_faults(attack, workers, f),
            gpus_per_executor=0,
            num_cpus=workers + 2,
        )
        out["cluster_start_seconds"] = round(time.perf_counter() - start, 1)
        bar.advance(status="Ray executors started")
        try:
            on_ray, wall = _fit(task, rule, steps, workers, f, attack, cluster=cluster)
        finally:
            cluster.shutdown()
        bar.advance(status="run on Ray executors")
        out["ray"] = {
            "accuracy": on_ray.history[-1]["accuracy"],
            "wall_seconds_with_worker_start": round(wall, 2),
            "compute_ms_per_step": round(1e3 * float(np.mean(on_ray.compute_seconds)), 2),
            "aggregate_ms_per_step": round(1e3 * float(np.mean(on_ray.aggregate_seconds)), 2),
        }
    same = all(
        a == b
        for a, b in zip((h["loss"] for h in local.history), (h["loss"] for h in on_ray.history))
    )
    out["same_history"] = same
    print(f"overhead: {json.dumps(out)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["kappa", "user_models", "overhead"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    record: dict[str, Any] = {"benchmark": "robust_trainer", "quick": args.quick}
    start = time.perf_counter()
    if "kappa" in args.sections:
        record["kappa"] = kappa_section(args.quick)
    if "user_models" in args.sections:
        record["user_models"] = user_models_section(args.quick)
    if "overhead" in args.sections:
        record["overhead"] = overhead_section(args.quick)
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = "robust_trainer_quick" if args.quick else "robust_trainer"
    (args.out_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out_dir / (name + '.json')} in {record['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
