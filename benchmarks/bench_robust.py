"""Benchmark: Byzantine-robust training on scikit-learn's digits (``make bench-robust``).

Grid: aggregation rules x attacks (including none) x {IID, Dirichlet(alpha=0.3)} x seeds, an MLP
64-32-10, n = 15 workers of which f = 3 are Byzantine, worker momentum 0.9. Each cell is one
seeded in-process run of :func:`bft_ray.robust.train` (no Ray: this measures the rules).

Outputs ``benchmarks/results/robust.json`` (every run, per-cell means, worst case over attacks
per rule) and ``benchmarks/results/robust.png`` (heatmaps), prints the tables and the wall time.

Usage::

    python benchmarks/bench_robust.py              # full grid, 2 processes
    python benchmarks/bench_robust.py --quick      # tiny grid, a few seconds (smoke test)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

# Runnable as a plain script from a checkout (``python benchmarks/bench_robust.py``).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_robust_trainer

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Rules: every aggregator of bft_ray.robust, and each pre-aggregator in at least one pipeline.
# Thresholds are in the units of the momentum vectors (norms ~0.1-1 on this task).
RULES = [
    "mean",
    "median",
    "trimmed_mean",
    "geometric_median",
    "krum",
    "multi_krum",
    "bulyan",
    "cc(tau=0.1)",
    "nnm+trimmed_mean",
    "nnm+cc(tau=0.1)",
    "nnm+krum",
    "arc+trimmed_mean",
    "bucketing(s=2)+cc(tau=0.1)",
    "clipping(c=0.5)+mean",
]
# ALIE uses the z that Baruch et al. derive from (n, f): 0.43 for n=15, f=3.
ATTACKS = [
    "none",
    "sign_flip",
    "ipm(epsilon=0.1)",
    "ipm(epsilon=10)",
    "alie",
    "minmax",
    "minsum",
    "gaussian(sigma=1)",
    "mimic",
    "label_flip",
    "nonfinite",
]
SPLITS = ["iid", "dirichlet"]
SEEDS = [0, 1]

# Shared by every run.
BASE = {
    "n_workers": 15,
    "f": 3,
    "alpha": 0.3,
    "momentum": 0.9,
    "batch_size": 32,
    "lr": 0.5,
    "epochs": 60,
    "hidden": (32,),
}

_DATASET: Any = None


def _init_process(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_cell(rule: str, attack: str, split: str, seed: int, epochs: int) -> dict[str, Any]:
    """One training run; returns a JSON-friendly record."""
    global _DATASET
    from bft_ray.robust import TrainConfig, train
    from bft_ray.robust.data import load_digits_dataset

    if _DATASET is None:
        _DATASET = load_digits_dataset()
    config = TrainConfig(
        aggregator=rule, attack=attack, split=split, seed=seed, **{**BASE, "epochs": epochs}
    )
    result = train(config, dataset=_DATASET)
    return {
        "rule": rule,
        "attack": attack,
        "split": split,
        "seed": seed,
        "final_accuracy": round(result.final_accuracy, 4),
        # The learning curve every 10 epochs keeps the JSON small (504 runs).
        "accuracy_every_10_epochs": [round(a, 4) for a in result.accuracy[9::10]],
        "diverged": result.diverged,
        # The refusal message is the same for every halted run; the flag is enough here.
        "halted": result.halted is not None,
        "seconds": round(result.seconds, 3),
    }


def summarise(
    runs: list[dict[str, Any]], rules: list[str], attacks: list[str], splits: list[str]
) -> dict[str, Any]:
    """Mean over seeds per cell, and per rule the worst case over the attacks (not 'none')."""
    cells: dict[str, dict[str, dict[str, float]]] = {}
    worst: dict[str, dict[str, dict[str, Any]]] = {}
    for split in splits:
        cells[split] = {}
        worst[split] = {}
        for rule in rules:
            row = {}
            for attack in attacks:
                accs = [
                    r["final_accuracy"]
                    for r in runs
                    if (r["rule"], r["attack"], r["split"]) == (rule, attack, split)
                ]
                row[attack] = sum(accs) / len(accs) if accs else float("nan")
            cells[split][rule] = row
            attacked = {a: v for a, v in row.items() if a != "none"}
            if attacked:
                name = min(attacked, key=lambda a: attacked[a])
                worst[split][rule] = {"accuracy": attacked[name], "attack": name}
    return {"cells": cells, "worst": worst}


def print_tables(summary: dict[str, Any], rules: list[str], attacks: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Wide enough for all columns even when stdout is not a terminal (CI logs, redirects).
    console = Console(width=max(200, shutil.get_terminal_size().columns))
    for split, rows in summary["cells"].items():
        table = Table(title=f"final test accuracy, {split} split (mean over seeds)")
        table.add_column("rule", style="bold")
        for attack in attacks:
            table.add_column(attack.replace("(", "\n("), justify="right")
        table.add_column("worst", justify="right", style="bold")
        for rule in rules:
            worst = summary["worst"][split][rule]
            cells = []
            for attack in attacks:
                v = rows[rule][attack]
                style = "red" if v < 0.8 else ("yellow" if v < 0.95 else "green")
                cells.append(f"[{style}]{v:.3f}[/{style}]")
            table.add_row(rule, *cells, f"{worst['accuracy']:.3f}")
        console.print(table)


def markdown(summary: dict[str, Any], rules: list[str], attacks: list[str]) -> str:
    """The tables as Markdown (for notes and docs)."""
    lines = []
    for split, rows in summary["cells"].items():
        lines.append(f"\n**{split}** (final test accuracy, mean of seeds)\n")
        lines.append("| rule | " + " | ".join(attacks) + " | worst (attack) |")
        lines.append("|---" * (len(attacks) + 2) + "|")
        for rule in rules:
            w = summary["worst"][split][rule]
            vals = " | ".join(f"{rows[rule][a]:.3f}" for a in attacks)
            lines.append(f"| {rule} | {vals} | {w['accuracy']:.3f} ({w['attack']}) |")
    return "\n".join(lines)


def heatmap(summary: dict[str, Any], rules: list[str], attacks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    splits = list(summary["cells"])
    cols = [*attacks, "worst"]
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=(7.5 * len(splits) + 2.5, 0.42 * len(rules) + 2.5),
        sharey=True,
        constrained_layout=True,
    )
    axes = np.atleast_1d(axes)
    # Yellow at 90%, green above, red below: the 95% target stands out, collapses saturate.
    norm = TwoSlopeNorm(vmin=0.0, vcenter=0.9, vmax=1.0)
    for ax, split in zip(axes, splits):
        data = np.array(
            [
                [summary["cells"][split][r][a] for a in attacks]
                + [summary["worst"][split][r]["accuracy"]]
                for r in rules
            ]
        )
        im = ax.imshow(data, cmap="RdYlGn", norm=norm, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(rules)), rules, fontsize=8)
        ax.axvline(len(attacks) - 0.5, color="black", linewidth=1.5)
        for i, j in itertools.product(range(len(rules)), range(len(cols))):
            ax.text(j, i, f"{100 * data[i, j]:.0f}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{split}: test accuracy (%), n=15, f=3")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="test accuracy")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _dump(record: dict[str, Any]) -> str:
    """JSON with the header indented and one line per run (readable, and a fraction the size)."""
    head = json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=1)
    runs = ",\n".join("  " + json.dumps(run) for run in record["runs"])
    return head[:-2] + ',\n "runs": [\n' + runs + "\n ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--epochs", type=int, default=BASE["epochs"])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per job (default: 2 // jobs)"
    )
    parser.add_argument("--rules", nargs="+", default=RULES)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS)
    parser.add_argument("--splits", nargs="+", default=SPLITS)
    parser.add_argument("--quick", action="store_true", help="tiny grid for a smoke test")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--trainer",
        choices=["auto", "yes", "no"],
        default="auto",
        help="also run benchmarks/bench_robust_trainer.py (kappa table, user models, Ray vs "
        "in-process overhead); auto: yes unless --quick",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rules = ["mean", "trimmed_mean", "nnm+cc(tau=0.1)"]
        args.attacks = ["none", "alie", "nonfinite"]
        args.seeds = [0]
        args.epochs = 3

    from bft_ray.progress import progress_bar

    start = time.perf_counter()
    grid = list(itertools.product(args.rules, args.attacks, args.splits, args.seeds))
    runs: list[dict[str, Any]] = []
    # The machine has 2 cores: 2 processes x 1 torch thread, or 1 process x 2 threads.
    threads = args.threads or max(1, 2 // max(1, args.jobs))
    with progress_bar("robust training runs", total=len(grid)) as progress:
        if args.jobs <= 1:
            import torch

            previous = torch.get_num_threads()
            _init_process(threads)
            try:
                for cell in grid:
                    runs.append(run_cell(*cell, args.epochs))
                    progress.advance()
            finally:
                torch.set_num_threads(previous)  # when called from tests, leave no trace
        else:
            with ProcessPoolExecutor(
                max_workers=args.jobs,
                mp_context=get_context("spawn"),  # no fork after torch started its threads
                initializer=_init_process,
                initargs=(threads,),
            ) as pool:
                futures = [pool.submit(run_cell, *cell, args.epochs) for cell in grid]
                for future in as_completed(futures):
                    runs.append(future.result())
                    progress.advance()
    wall = time.perf_counter() - start

    order = {cell: i for i, cell in enumerate(grid)}
    runs.sort(key=lambda r: order[(r["rule"], r["attack"], r["split"], r["seed"])])
    summary = summarise(runs, args.rules, args.attacks, args.splits)
    print_tables(summary, args.rules, args.attacks)
    print(markdown(summary, args.rules, args.attacks))

    import torch

    args.out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "robust",
        "setup": {
            **BASE,
            "epochs": args.epochs,
            "dataset": "sklearn digits (1347 train / 450 test, standardised)",
            "model": "MLP 64-32-10",
            "byzantine_workers": "the last f worker ids",
            "steps_per_epoch": "ceil(mean shard size / batch) = 3",
            "seeds": args.seeds,
            "rules": args.rules,
            "attacks": args.attacks,
            "splits": args.splits,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "torch_threads_per_job": threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "wall_seconds": round(wall, 2),
        "summary": summary,
        "runs": runs,
    }
    name = "robust_quick" if args.quick else "robust"
    (args.out_dir / f"{name}.json").write_text(_dump(record))
    heatmap(summary, args.rules, args.attacks, args.out_dir / f"{name}.png")
    budget = "within" if wall < 180 else "OVER"
    print(
        f"\n{len(grid)} runs in {wall:.1f} s wall ({budget} the 3-minute budget); wrote "
        f"{args.out_dir / (name + '.json')} and {args.out_dir / (name + '.png')}"
    )
    if args.trainer == "yes" or (args.trainer == "auto" and not args.quick):
        import bench_robust_trainer

        return bench_robust_trainer.main(["--out-dir", str(args.out_dir)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
