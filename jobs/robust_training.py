"""Byzantine-robust data-parallel training on bft-ray executors; reports test accuracy per epoch.

Runs on a local embedded Ray or on a cluster with ``ray job submit`` (the job joins it through
``RAY_ADDRESS``; see docs/ray-cluster.md)::

    .venv/bin/python jobs/robust_training.py
    .venv/bin/ray job submit --address http://127.0.0.1:8265 \
        --runtime-env-json '{"working_dir": ".", "excludes": [".venv", ".git"]}' \
        -- python jobs/robust_training.py

The executors are sized to the cluster unless ``--cpus-per-executor`` / ``--gpus-per-executor``
are given. A local Ray is started with one logical CPU per executor (and, without GPUs, one
logical GPU). On a cluster, each executor gets an equal share of the free CPUs (at most one) and
one GPU when the cluster has a free GPU for every worker, none when it has no GPUs; a cluster
with some GPUs but fewer than ``--workers`` is refused with what it needs and the flags that
change it (sharing GPUs would make one faulty GPU several Byzantine workers).

Each of ``--workers`` executors hosts one training worker (a shard of scikit-learn's digits
and an MLP replica). The last ``--attackers`` (default ``--f``) executor slots are Byzantine: they carry
``robust_attack(--attack)`` as their injected fault behaviour, and the omniscient attack is
simulated where the vectors are collected (the rule is not told which rows they are). More
faults can be injected into other slots with ``--fault INDEX=BEHAVIOUR``. The server step runs
in the trusted driver, or with ``--verify-aggregation`` as a replicated, certified
``verified_remote`` task. After the robust run, the same setup is trained with a baseline
rule (``--baseline``, default the mean) for comparison. The job exits 0 unless
``--min-accuracy`` is not reached or a certificate does not verify.

``--model digits|cnn|lm`` trains that model and its data (the digits MLP, a small CNN on
synthetic images, a tiny transformer LM on a synthetic token stream; ``bft_ray.robust.tasks``)
through :class:`bft_ray.robust.RobustTrainer` instead, for ``--steps`` server steps, with the
same executors, faults and flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any

import ray
import torch
from rich.console import Console

import bft_ray
from bft_ray.errors import ConfigError
from bft_ray.executor.pool import local_gpu_count
from bft_ray.progress import progress_bar
from bft_ray.robust import RayTrainer, RayTrainResult, TrainConfig, attack_faults
from bft_ray.robust._spec import parse_spec
from bft_ray.robust.data import load_digits_dataset

logger = logging.getLogger("jobs.robust_training")


def parse_fault(text: str) -> tuple[int, bft_ray.faults.Behaviour]:
    """``"2=gaussian_noise(scale=5)"`` -> ``(2, GaussianNoise(5))``."""
    index, sep, spec = text.partition("=")
    if not sep or not index.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected INDEX=BEHAVIOUR, got {text!r}")
    stages = parse_spec(spec)
    if len(stages) != 1 or stages[0][0] not in bft_ray.faults.known_faults():
        raise argparse.ArgumentTypeError(
            f"unknown behaviour {spec!r}; known: {', '.join(bft_ray.faults.known_faults())}"
        )
    name, kwargs = stages[0]
    return int(index), getattr(bft_ray.faults, name)(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aggregator", default="nnm+cc(tau=0.1)", help="robust rule specification")
    p.add_argument(
        "--attack",
        default="ipm(epsilon=10)",
        help="attack of the Byzantine slots ('none' for none)",
    )
    p.add_argument(
        "--model",
        choices=["mlp", "digits", "cnn", "lm"],
        default="mlp",
        help="mlp: the digits MLP with RayTrainer (default); digits, cnn (small CNN on synthetic "
        "images), lm (tiny transformer on a synthetic token stream): that model and its data "
        "through RobustTrainer",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="server steps for --model digits/cnn/lm (default 90)",
    )
    p.add_argument("--workers", "-n", type=int, default=15, help="workers = executors")
    p.add_argument("--f", type=int, default=3, help="Byzantine workers the rule must tolerate")
    p.add_argument(
        "--attackers",
        type=int,
        default=None,
        help="slots running --attack (the last ones; default f); leave room for --fault slots",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--split", choices=["iid", "dirichlet"], default="iid")
    p.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration")
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--verify-aggregation",
        action="store_true",
        help="run every server step as a replicated verified_remote task (untrusted server)",
    )
    p.add_argument("--aggregation-replicas", type=int, default=3)
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        type=parse_fault,
        metavar="INDEX=BEHAVIOUR",
        help="extra executor fault, e.g. 2=gaussian_noise(scale=5) (repeatable)",
    )
    p.add_argument(
        "--baseline",
        default="mean",
        help="rule trained afterwards on the same setup for comparison ('none' to skip)",
    )
    p.add_argument(
        "--gpus-per-executor",
        type=float,
        default=None,
        help="GPUs per executor (default: sized to the cluster; 0 runs on CPUs)",
    )
    p.add_argument(
        "--cpus-per-executor",
        type=float,
        default=None,
        help="CPUs per executor (default: sized to the cluster, at most 1)",
    )
    p.add_argument("--min-accuracy", type=float, default=0.0, help="exit 1 below this")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


def _gpu_shortage(workers: int, total: float, free: float) -> str:
    return (
        f"{workers} workers need {workers} GPUs at one GPU per executor, but the Ray cluster has "
        f"{total:g} ({free:g} free). Pass --gpus-per-executor 0 to run on CPUs, "
        f"--gpus-per-executor {math.floor(100 * free / workers) / 100:g} to share GPUs (one "
        "faulty GPU then counts as several Byzantine workers), fewer --workers (with a --f the "
        "rule tolerates), or add GPU nodes (on an autoscaling cluster, --gpus-per-executor 1 "
        "waits for them)."
    )


def size_executors(args: argparse.Namespace) -> tuple[float, float, str]:
    """GPUs and CPUs per executor, and a line saying how they were chosen.

    Flags given on the command line are used as they are (``bft_ray.init`` refuses what does not
    fit, saying so). Otherwise, on a local Ray (started by ``bft_ray.init`` with a logical CPU per
    executor, and a logical GPU per executor on a machine without GPUs) each executor gets one of
    each; on a cluster (``RAY_ADDRESS``, as under ``ray job submit``) each gets an equal share of
    the free CPUs, at most one, and one GPU if the cluster has a free GPU for every worker, none
    if it has no GPUs.

    Raises:
        ConfigError: When the cluster cannot hold ``--workers`` executors, with what it needs.
    """
    workers, gpus, cpus = args.workers, args.gpus_per_executor, args.cpus_per_executor
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        if gpus is None:
            present = local_gpu_count()
            if 0 < present < workers:
                raise ConfigError(_gpu_shortage(workers, present, present))
            gpus = 1.0
        return gpus, 1.0 if cpus is None else cpus, "local Ray"
    if not ray.is_initialized():
        ray.init(address=os.environ["RAY_ADDRESS"])  # bft_ray.init then joins this Ray
    total, free = ray.cluster_resources(), ray.available_resources()
    if gpus is None:
        total_gpus, free_gpus = total.get("GPU", 0.0), free.get("GPU", 0.0)
        if free_gpus >= workers:
            gpus = 1.0
        elif total_gpus == 0:
            gpus = 0.0
        else:
            raise ConfigError(_gpu_shortage(workers, total_gpus, free_gpus))
    if cpus is None:
        free_cpus = free.get("CPU", 0.0)
        cpus = min(1.0, math.floor(100 * free_cpus / workers) / 100)
        if cpus <= 0:
            raise ConfigError(
                f"{workers} workers need at least {workers / 100:g} free CPUs (0.01 each), but "
                f"the Ray cluster has {free_cpus:g} free of {total.get('CPU', 0.0):g}. Free "
                "CPUs, use fewer --workers, or add nodes."
            )
    how = (
        f"sized to the cluster: {total.get('CPU', 0.0):g} CPUs and {total.get('GPU', 0.0):g} "
        f"GPUs ({free.get('CPU', 0.0):g} and {free.get('GPU', 0.0):g} free)"
    )
    return gpus, cpus, how


def run_one(
    console: Console, cluster: bft_ray.BftCluster, trainer: RayTrainer
) -> tuple[RayTrainResult, bool | None]:
    """Train with a progress bar; returns the result and the certificate check (verified)."""
    cfg = trainer.config
    total = cfg.epochs * trainer.steps_per_epoch
    with progress_bar(f"{cfg.aggregator} steps", total, console=console, transient=True) as bar:

        def on_epoch(epoch: int, accuracy: float, loss: float) -> None:
            res = trainer.result
            recent = slice(-trainer.steps_per_epoch, None)
            steps = res.compute_seconds[recent]
            aggs = res.aggregate_seconds[recent]
            timing = (
                f"compute {1e3 * sum(steps) / len(steps):6.1f} ms/step, "
                f"aggregate {1e3 * sum(aggs) / len(aggs):6.1f} ms/step"
                if steps and not res.halted
                else "halted"
            )
            console.print(
                f"  epoch {epoch + 1:3d}/{cfg.epochs}  accuracy {accuracy:.3f}  "
                f"train loss {loss:9.4g}  ({timing})"
            )

        result = trainer.run(on_epoch=on_epoch, on_step=lambda _: bar.advance())
        certified = None
        if trainer.last_aggregation is not None:
            cert = trainer.certificate()
            certified = bft_ray.verify_certificate(
                cert,
                cluster.verifier_keys(),
                executor_keys=cluster.executor_keys().values(),
                value=(trainer.params, trainer.rule_state),
            )
            console.print(
                f"  last server step certified by {', '.join(cert.signers)} "
                f"(quorum {cert.quorum}); certificate verifies offline: {certified}"
            )
    return result, certified


def run_robust_trainer(
    console: Console, cluster: bft_ray.BftCluster, args: argparse.Namespace, rule: str, faults: Any
) -> dict[str, Any]:
    """One RobustTrainer run of ``--model`` with ``rule``; prints each epoch, returns a summary."""
    from bft_ray.robust.tasks import make_task
    from bft_ray.robust.trainer import RobustTrainer

    task = make_task(args.model, seed=args.seed)

    def on_epoch(m: dict[str, Any]) -> None:
        extra = "  ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in ("epoch", "step"))
        console.print(f"  epoch {m['epoch'] + 1:3d} (step {m['step']})  {extra}", highlight=False)

    steps = args.steps or 90
    with RobustTrainer(
        **task.kwargs(),
        aggregator=rule,
        f=args.f,
        workers=args.workers,
        steps=steps,
        seed=args.seed,
        cluster=cluster,
        faults=faults,
        verify_aggregation=args.verify_aggregation,
        aggregation_replicas=args.aggregation_replicas,
        on_epoch=on_epoch,
        progress=True,  # a live bar on a terminal, a line per tenth in a job log
    ) as trainer:
        result = trainer.fit()
    n = max(1, len(result.compute_seconds))
    return {
        "history": result.history,
        "diverged": result.diverged,
        "halted": result.halted,
        "recreated": result.recreated,
        "missing_steps": len(result.missing),
        "mean_compute_seconds": sum(result.compute_seconds) / n,
        "mean_aggregate_seconds": sum(result.aggregate_seconds) / n,
        "final": result.history[-1] if result.history else {},
    }


def main_robust_trainer(
    console: Console, cluster: bft_ray.BftCluster, args: argparse.Namespace, faults: Any
) -> int:
    """``--model digits|cnn|lm``: the robust rule, then the baseline, through RobustTrainer."""
    rules = [args.aggregator]
    if args.baseline.lower() != "none" and args.baseline != args.aggregator:
        rules.append(args.baseline)
    runs: dict[str, Any] = {}
    try:
        for rule in rules:
            console.print(f"[bold]{rule}[/] ({args.model} through RobustTrainer)")
            try:
                runs[rule] = run_robust_trainer(console, cluster, args, rule, faults)
            except ConfigError as exc:
                console.print(f"[bold]{rule}[/] [red]skipped:[/] {exc}")
    finally:
        cluster.shutdown()
    console.print("[bold]summary[/]")
    for rule, run in runs.items():
        final = {k: round(v, 4) for k, v in run["final"].items() if isinstance(v, float)}
        console.print(
            f"  {rule:24s} {final}  compute {1e3 * run['mean_compute_seconds']:.1f} ms/step, "
            f"server step {1e3 * run['mean_aggregate_seconds']:.1f} ms/step"
            + (" [red]diverged[/]" if run["diverged"] else ""),
            highlight=False,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, fh, indent=2
            )
    main_run = runs.get(args.aggregator)
    score = (main_run or {}).get("final", {}).get("accuracy", 1.0 if main_run else 0.0)
    if main_run is None or main_run["diverged"] or score < args.min_accuracy:
        console.print(f"[bold red]FAILED[/]: {args.aggregator} diverged or below --min-accuracy")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # The driver evaluates and (trusted mode) aggregates tiny tensors: one thread is fastest.
    torch.set_num_threads(1)
    console = Console(width=None if sys.stdout.isatty() else 120)
    start = time.perf_counter()

    cfg = TrainConfig(
        aggregator=args.aggregator,
        attack=args.attack,
        n_workers=args.workers,
        f=args.f,
        n_byzantine=args.attackers,
        split=args.split,
        alpha=args.alpha,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    try:
        cfg.validate()
        faults: dict[int, Any] = dict(attack_faults(cfg))
        for index, behaviour in args.fault:
            if index in faults:
                raise ConfigError(f"slot {index} already carries {faults[index]!r}")
            faults[index] = behaviour
    except ConfigError as exc:
        console.print(f"[bold red]configuration error:[/] {exc}")
        return 2

    try:
        gpus, cpus, sized = size_executors(args)
        cluster = bft_ray.init(
            executors=args.workers,
            faults=faults,
            gpus_per_executor=gpus,
            cpus_per_executor=cpus,
            num_cpus=max(8, args.workers + 2),  # local Ray only; ignored when joining a cluster
            object_store_memory=512 * 1024**2,
        )
    except ConfigError as exc:
        console.print(
            f"[bold red]configuration error:[/] {exc}\n(this job's flags: --workers, --f, "
            "--cpus-per-executor, --gpus-per-executor)"
        )
        return 2
    if args.model != "mlp":
        console.print(
            f"executors: {args.workers} x ({cpus:g} CPU, {gpus:g} GPU), {sized}", highlight=False
        )
        return main_robust_trainer(console, cluster, args, faults)
    dataset = load_digits_dataset()
    ready = time.perf_counter() - start
    console.print(
        f"executors: {args.workers} x ({cpus:g} CPU, {gpus:g} GPU), {sized}",
        highlight=False,
    )
    console.print(
        f"[bold]robust training on Ray[/]: {args.workers} executor-hosted workers, f={args.f}, "
        f"attack {args.attack!r} on slots {sorted(attack_faults(cfg))}, "
        f"other faults {({i: repr(b) for i, b in args.fault}) or 'none'}, {args.split} split, "
        f"{'verified' if args.verify_aggregation else 'trusted'} server step "
        f"(cluster ready in {ready:.1f}s)"
    )
    rules = [args.aggregator]
    if args.baseline.lower() != "none" and args.baseline != args.aggregator:
        rules.append(args.baseline)
    results: dict[str, RayTrainResult] = {}
    certified_all = True
    try:
        with contextlib.ExitStack() as stack:
            # Every run's workers start before any run, so all runs see the same pool (a
            # verified run may get lying executors quarantined or crashed ones respawned).
            trainers: dict[str, RayTrainer] = {}
            for rule in rules:
                try:
                    trainers[rule] = stack.enter_context(
                        RayTrainer(
                            dataclasses.replace(cfg, aggregator=rule),
                            cluster,
                            dataset=dataset,
                            faults=faults,
                            verify_aggregation=args.verify_aggregation,
                            aggregation_replicas=args.aggregation_replicas,
                        )
                    )
                except ConfigError as exc:  # e.g. (n, f) beyond this rule's breakdown point
                    console.print(f"[bold]{rule}[/] [red]skipped:[/] {exc}")
            for rule, trainer in trainers.items():
                console.print(f"[bold]{rule}[/]")
                result, certified = run_one(console, cluster, trainer)
                results[rule] = result
                certified_all &= certified is not False
                if result.halted:
                    console.print(f"  [yellow]halted:[/] {result.halted}")
    finally:
        cluster.shutdown()

    elapsed = time.perf_counter() - start
    console.print("[bold]summary[/]")
    for rule, result in results.items():
        d = result.to_dict()
        console.print(
            f"  {rule:24s} final accuracy {result.final_accuracy:.3f} "
            f"(best {max(result.accuracy, default=float('nan')):.3f}) in {result.seconds:.1f}s, "
            f"{d['steps']} steps: compute {1e3 * (d['mean_compute_seconds'] or 0):.1f} ms/step, "
            f"server step {1e3 * (d['mean_aggregate_seconds'] or 0):.1f} ms/step"
            + (f", lost workers {result.lost_slots}" if result.lost_slots else "")
        )
    console.print(f"  wall time {elapsed:.1f}s (cluster start {ready:.1f}s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"args": {k: str(v) for k, v in vars(args).items()}, "wall_seconds": elapsed}
                | {"executor_resources": {"CPU": cpus, "GPU": gpus, "sized": sized}}
                | {"runs": {rule: r.to_dict() for rule, r in results.items()}},
                fh,
                indent=2,
            )
    main_result = results.get(args.aggregator)
    if main_result is None or main_result.final_accuracy < args.min_accuracy:
        console.print(f"[bold red]FAILED[/]: {args.aggregator} below --min-accuracy")
        return 1
    if not certified_all:
        console.print("[bold red]FAILED[/]: a certificate did not verify")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
