"""Throughput and latency of the verified path against plain Ray actors (issue 8, section 4).

Two measurements in one Ray session, both sides interleaved round by round:

* **throughput**: ``--calls`` (1,000) calls of a trivial function (``x + 1`` on a small int)
  submitted all at once, then collected.

  - *verified*: ``@bft_ray.verified_remote(replicas=3, quorum=2, num_gpus=0)``, collected with
    ``bft_ray.get`` (``.remote()`` returns plain ``ObjectRef``\\ s; in a burst they come from
    the result desk and the calls reach the verifier in batches, see ``bft_ray.submission``;
    each round records how many calls went direct and how many in how many batches);
  - *plain*: the same number of plain Ray actors as executors, each with the same resources
    (1 CPU, no GPU, retries off, ``max_concurrency=1``), running 3 calls per logical call on
    3 distinct actors (3,000 actor calls), collected with ``ray.get``.

  Reported: logical calls/s for each side and the ratio verified/plain (above 1: the verified
  path is faster; the issue's bar is >= 0.5).

* **latency**: a 50 ms task (``time.sleep(0.05)``), one call at a time: the verified call
  against one plain actor call (the time until the caller holds the value). Reported: median
  latencies and the ratio verified/plain (target <= 1.05). A plain call replicated on 3 actors
  is measured as well, for reference.

Both sides warm up first (the verified side's first call also ships the function to every
executor). Writes ``benchmarks/results/throughput.json`` and ``throughput.png``.

Run: ``.venv/bin/python benchmarks/bench_throughput.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import ray
from rich.console import Console

import bft_ray
from bft_ray.progress import progress_bar

RESULTS = Path(__file__).parent / "results"
EXECUTORS = 4
REPLICAS = 3
LATENCY_TASK_S = 0.05
LATENCY_TARGET = 1.05
THROUGHPUT_TARGET = 0.5
# Progress as plain lines on stderr, also on a terminal: a live bar redraws from a thread of
# the driver, and the driver's CPU per call (process_time, all threads) is measured here.
PROGRESS = Console(stderr=True, force_terminal=False)


def inc(x):
    return x + 1


def nap(x):
    time.sleep(LATENCY_TASK_S)
    return x + 1


verified_inc = bft_ray.verified_remote(replicas=REPLICAS, quorum=2, num_gpus=0)(inc)
verified_nap = bft_ray.verified_remote(replicas=REPLICAS, quorum=2, num_gpus=0)(nap)


@ray.remote(num_cpus=1, num_gpus=0, max_restarts=0, max_task_retries=0, max_concurrency=1)
class PlainExecutor:
    """A plain Ray actor with the resources and options of one executor."""

    def inc(self, x):
        return inc(x)

    def nap(self, x):
        return nap(x)


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_split() -> tuple[float, float]:
    """(CPU-s used by the whole machine, CPU-s used by this process and its descendants)."""
    import psutil

    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    me = psutil.Process(os.getpid())
    ours = sum(_proc_cpu_s(p) for p in [me.pid, *(c.pid for c in me.children(recursive=True))])
    return busy, ours


class Noise:
    """CPU other processes used on the machine while a measurement ran (the machine is shared)."""

    def __enter__(self) -> Noise:
        self.start = _cpu_split()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, ours = (b - a for a, b in zip(self.start, _cpu_split()))
        self.other_cpu_s = max(0.0, busy - ours)


def plain_burst(actors: list, n: int) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    refs = [actors[(i + k) % len(actors)].inc.remote(i) for i in range(n) for k in range(REPLICAS)]
    t1, c1 = time.perf_counter(), time.process_time()
    values = ray.get(refs, timeout=600)
    t2, c2 = time.perf_counter(), time.process_time()
    assert values == [i + 1 for i in range(n) for _ in range(REPLICAS)]
    return _burst_row(n, t0, t1, t2, c0, c1, c2, actor_calls=n * REPLICAS)


def verified_burst(n: int) -> dict:
    submitter = bft_ray.current_cluster()._submitter
    before = dict(submitter.counters)
    t0, c0 = time.perf_counter(), time.process_time()
    refs = [verified_inc.remote(i) for i in range(n)]
    t1, c1 = time.perf_counter(), time.process_time()
    values = bft_ray.get(refs, timeout=600)
    t2, c2 = time.perf_counter(), time.process_time()
    assert values == [i + 1 for i in range(n)]
    row = _burst_row(n, t0, t1, t2, c0, c1, c2, actor_calls=n)
    # How the calls reached the verifier (bft_ray.submission): direct, or batched via the
    # result desk (one desk call per call, one submit_many per batch).
    row["submission"] = {k: submitter.counters[k] - before[k] for k in before}
    return row


def _burst_row(n, t0, t1, t2, c0, c1, c2, actor_calls) -> dict:
    wall = t2 - t0
    return {
        "calls": n,
        "driver_ray_calls": actor_calls,
        "wall_s": wall,
        "calls_per_s": n / wall,
        "submit_wall_s": t1 - t0,
        "collect_wall_s": t2 - t1,
        "driver_submit_cpu_us_per_call": (c1 - c0) / n * 1e6,
        "driver_collect_cpu_us_per_call": (c2 - c1) / n * 1e6,
    }


def measure_throughput(actors: list, calls: int, rounds: int) -> dict:
    plain, verified = [], []
    with progress_bar("throughput bursts", 2 * rounds, console=PROGRESS) as bar:
        for r in range(rounds):
            order = ("plain", "verified") if r % 2 == 0 else ("verified", "plain")
            for side in order:
                with Noise() as noise:
                    row = plain_burst(actors, calls) if side == "plain" else verified_burst(calls)
                row["other_processes_cpu_s"] = noise.other_cpu_s
                (plain if side == "plain" else verified).append(row)
                print(
                    f"  round {r} {side:>8}: {row['calls_per_s']:8.1f} calls/s "
                    f"({row['wall_s']:.2f} s; submit {row['submit_wall_s']:.2f} s, driver CPU "
                    f"{row['driver_submit_cpu_us_per_call']:.0f} us/call to submit; other processes "
                    f"{row['other_processes_cpu_s']:.1f} CPU-s)",
                    flush=True,
                )
                bar.advance(status=f"round {r} {side}")  # between bursts
    p = statistics.median(r["calls_per_s"] for r in plain)
    v = statistics.median(r["calls_per_s"] for r in verified)
    return {
        "calls": calls,
        "rounds": rounds,
        "plain_calls_per_s": p,
        "verified_calls_per_s": v,
        "plain_actor_calls_per_s": p * REPLICAS,
        "ratio_verified_over_plain": v / p,
        "target_ratio": THROUGHPUT_TARGET,
        "plain_rounds": plain,
        "verified_rounds": verified,
    }


def measure_latency(actors: list, samples: int) -> dict:
    lat = {"plain_single": [], "plain_3_replicas": [], "verified": []}
    with progress_bar("latency samples", samples, console=PROGRESS) as bar:
        for r in range(samples):
            sides = list(lat)
            sides = sides[r % 3 :] + sides[: r % 3]  # rotate which side goes first
            for side in sides:
                t = time.perf_counter()
                if side == "plain_single":
                    value = ray.get(actors[r % len(actors)].nap.remote(r))
                elif side == "plain_3_replicas":
                    refs = [actors[(r + k) % len(actors)].nap.remote(r) for k in range(REPLICAS)]
                    value = ray.get(refs)[0]
                else:
                    value = bft_ray.get(verified_nap.remote(r), timeout=60)
                lat[side].append(time.perf_counter() - t)
                assert value == r + 1
            bar.advance()  # between samples
    med = {k: statistics.median(v) * 1e3 for k, v in lat.items()}
    out = {
        "task_ms": LATENCY_TASK_S * 1e3,
        "samples": samples,
        "median_ms": med,
        "p90_ms": {k: sorted(v)[int(0.9 * (len(v) - 1))] * 1e3 for k, v in lat.items()},
        "ratio_verified_over_plain_single": med["verified"] / med["plain_single"],
        "ratio_verified_over_plain_3_replicas": med["verified"] / med["plain_3_replicas"],
        "added_ms_over_plain_single": med["verified"] - med["plain_single"],
        "target_ratio": LATENCY_TARGET,
    }
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(bft_ray.__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        return ""


def _dirty() -> bool | None:
    """Whether the bft_ray package measured differs from the commit (None outside a checkout)."""
    root = Path(bft_ray.__file__).parent
    try:
        res = subprocess.run(
            ["git", "status", "--porcelain", "--", str(root)],
            capture_output=True,
            text=True,
            cwd=root,
            check=False,
        )
    except OSError:
        return None
    return bool(res.stdout.strip()) if res.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000, help="logical calls per burst")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per side (median taken)")
    parser.add_argument("--latency-samples", type=int, default=30, help="50 ms calls per side")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 calls, fewer rounds")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds, args.latency_samples = 200, 1, 6

    started = time.perf_counter()
    load_before = os.getloadavg()
    # address="local": always a fresh local Ray, never one found on the machine.
    ray.init(
        address="local",
        num_cpus=2 * EXECUTORS + 2,  # executors + plain actors (1 CPU each) + slack
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
    )
    try:
        cluster = bft_ray.init(executors=EXECUTORS, gpus_per_executor=0, cpus_per_executor=1)
        actors = [PlainExecutor.remote() for _ in range(EXECUTORS)]
        # Warm-up: processes, function shipping, code paths on both sides.
        ray.get([a.inc.remote(0) for a in actors] + [a.nap.remote(0) for a in actors])
        plain_burst(actors, 100)
        verified_burst(100)
        bft_ray.get([verified_nap.remote(0) for _ in range(4)], timeout=60)

        print(f"throughput: {args.calls} calls of x + 1, all submitted at once", flush=True)
        thr = measure_throughput(actors, args.calls, args.rounds)
        print(f"latency: {LATENCY_TASK_S * 1e3:.0f} ms task, one call at a time", flush=True)
        with Noise() as noise:
            lat = measure_latency(actors, args.latency_samples)
        lat["other_processes_cpu_s"] = noise.other_cpu_s
        counters = cluster.report().counters
        cluster.shutdown()
    finally:
        ray.shutdown()

    med = lat["median_ms"]
    print(
        f"\nthroughput: plain {thr['plain_calls_per_s']:.1f} calls/s "
        f"({thr['plain_actor_calls_per_s']:.0f} actor calls/s), verified "
        f"{thr['verified_calls_per_s']:.1f} calls/s -> ratio verified/plain "
        f"{thr['ratio_verified_over_plain']:.3f} (bar >= {THROUGHPUT_TARGET})"
    )
    print(
        f"latency (50 ms task): plain single {med['plain_single']:.1f} ms, plain x3 "
        f"{med['plain_3_replicas']:.1f} ms, verified {med['verified']:.1f} ms -> ratio "
        f"verified/plain single {lat['ratio_verified_over_plain_single']:.3f} "
        f"(target <= {LATENCY_TARGET}), verified/plain x3 "
        f"{lat['ratio_verified_over_plain_3_replicas']:.3f}"
    )
    print(
        "other processes on this shared machine used "
        f"{sum(r['other_processes_cpu_s'] for r in thr['plain_rounds'] + thr['verified_rounds']):.1f}"
        f" CPU-s during the throughput bursts and {lat['other_processes_cpu_s']:.1f} during the "
        "latency runs"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "throughput",
        "commit": _git_commit(),
        "bft_ray": str(Path(bft_ray.__file__).parent),
        "bft_ray_uncommitted_changes": _dirty(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "executors": EXECUTORS,
        "replicas": REPLICAS,
        "quorum": 2,
        "throughput": thr,
        "latency": lat,
        "verifier_counters": counters,
        "total_s": time.perf_counter() - started,
    }
    (RESULTS / "throughput.json").write_text(json.dumps(result, indent=2))
    plot(thr, lat)
    print(
        f"wrote {RESULTS / 'throughput.json'} and throughput.png ({result['total_s']:.0f} s in all)"
    )


def plot(thr: dict, lat: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    vals = [thr["plain_calls_per_s"], thr["verified_calls_per_s"]]
    ax1.bar(["plain Ray\n(3 actors per call)", "verified\n(replicas=3)"], vals, color=["C0", "C1"])
    for i, v in enumerate(vals):
        ax1.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax1.axhline(
        THROUGHPUT_TARGET * thr["plain_calls_per_s"],
        color="red",
        ls="--",
        lw=1,
        label=f"{THROUGHPUT_TARGET}x plain",
    )
    ax1.set_ylabel("logical calls / s")
    ax1.set_title(
        f"{thr['calls']} calls of x + 1 at once: ratio {thr['ratio_verified_over_plain']:.3f}"
    )
    ax1.legend(fontsize=8)

    med = lat["median_ms"]
    names = ["plain_single", "plain_3_replicas", "verified"]
    labels = ["plain\n(1 actor)", "plain\n(3 actors)", "verified\n(replicas=3)"]
    ax2.bar(labels, [med[n] for n in names], color=["C0", "C2", "C1"])
    for i, n in enumerate(names):
        ax2.text(i, med[n], f"{med[n]:.1f}", ha="center", va="bottom")
    ax2.axhline(
        LATENCY_TARGET * med["plain_single"],
        color="red",
        ls="--",
        lw=1,
        label=f"{LATENCY_TARGET}x plain (1 actor)",
    )
    ax2.set_ylim(0, max(med.values()) * 1.2)
    ax2.set_ylabel("median latency (ms)")
    ax2.set_title(f"50 ms task, one at a time: ratio {lat['ratio_verified_over_plain_single']:.3f}")
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle("bft-ray verified path vs plain Ray actors (trusted verifier, 2-core machine)")
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput.png", dpi=120)


if __name__ == "__main__":
    main()
