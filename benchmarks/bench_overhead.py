"""Overhead of verification: bft-ray (trusted mode, replicas=3) vs plain Ray running the same replicas.

Both sides run in one Ray session on the same kind of executors (actors holding one logical GPU
each, retries off), interleaved round by round, for tasks of about 5, 50 and 500 ms:

* **plain**: the driver calls the same function on three plain Ray actors and ``ray.get``\\ s the
  three outputs (replication without verification);
* **verified**: ``@bft_ray.verified_remote(replicas=3)``: attestation, digest, tolerant
  comparison, verdict, signed certificate, and the value returned through the verifier.

The task sleeps for its duration (standing in for a GPU kernel, during which the executor's CPU
is idle) and returns a 64 KiB float32 output derived from its input, so transfer, hashing and
comparison costs are real. Two regimes:

* ``latency``: one call at a time, the time until the caller holds the value;
* ``throughput``: a batch of calls in flight at once, wall time for the batch.

The ratio verified/plain is printed per duration and regime. Target: <= 1.10x for 50 ms tasks.
Writes ``benchmarks/results/overhead.json`` and ``overhead.png``. Run: ``make bench-overhead``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import ray
from rich.console import Console

import bft_ray
from bft_ray.progress import progress_bar

RESULTS = Path(__file__).parent / "results"
OUTPUT_ELEMS = 16 * 1024  # 64 KiB of float32
# Progress as plain lines on stderr, also on a terminal: a live bar redraws from a thread of
# the driver, which would compete with the driver's side of the calls being timed.
PROGRESS = Console(stderr=True, force_terminal=False)


def work(x: np.ndarray, seconds: float) -> np.ndarray:
    time.sleep(seconds)
    return (np.sin(x) * 2.0).astype(np.float32)


@ray.remote(num_gpus=1, max_restarts=0, max_task_retries=0)
class PlainExecutor:
    def run(self, x, seconds):
        return work(x, seconds)


verified_work = bft_ray.verified_remote(replicas=3, quorum=2, num_gpus=1)(work)


def plain_call(actors, i, x, seconds):
    picks = [actors[(i + k) % len(actors)] for k in range(3)]
    return [a.run.remote(x, seconds) for a in picks]


def _rounds(rounds, seconds):
    """(latency rounds, throughput batches) per side for a task of ``seconds``."""
    n_rounds = min(max(3, int(rounds * 0.05 / max(seconds, 0.005))), rounds)
    return n_rounds, max(2, n_rounds // 4)


def measure(actors, durations, rounds, batch):
    rows = []
    x = np.linspace(0, 1, OUTPUT_ELEMS, dtype=np.float32)
    total = sum(sum(_rounds(rounds, seconds)) for seconds in durations)
    with progress_bar("overhead rounds", total, console=PROGRESS) as bar:
        for seconds in durations:
            lat_plain, lat_ver, thr_plain, thr_ver = [], [], [], []
            n_rounds, n_batches = _rounds(rounds, seconds)
            for r in range(n_rounds):
                # latency: one call at a time, alternating which side goes first
                order = ("plain", "verified") if r % 2 == 0 else ("verified", "plain")
                for side in order:
                    t = time.perf_counter()
                    if side == "plain":
                        ray.get(plain_call(actors, r, x, seconds))
                        lat_plain.append(time.perf_counter() - t)
                    else:
                        bft_ray.get(verified_work.remote(x, seconds))
                        lat_ver.append(time.perf_counter() - t)
                bar.advance(status=f"{seconds * 1e3:.0f} ms latency")  # between rounds
            for r in range(n_batches):
                order = ("plain", "verified") if r % 2 == 0 else ("verified", "plain")
                for side in order:
                    t = time.perf_counter()
                    if side == "plain":
                        refs = [
                            ref for i in range(batch) for ref in plain_call(actors, i, x, seconds)
                        ]
                        ray.get(refs)
                        thr_plain.append(time.perf_counter() - t)
                    else:
                        bft_ray.get([verified_work.remote(x, seconds) for _ in range(batch)])
                        thr_ver.append(time.perf_counter() - t)
                bar.advance(status=f"{seconds * 1e3:.0f} ms batches")
            row = {
                "task_ms": seconds * 1e3,
                "latency_plain_ms": statistics.median(lat_plain) * 1e3,
                "latency_verified_ms": statistics.median(lat_ver) * 1e3,
                "batch": batch,
                "batch_plain_s": statistics.median(thr_plain),
                "batch_verified_s": statistics.median(thr_ver),
                "rounds": n_rounds,
            }
            row["latency_ratio"] = row["latency_verified_ms"] / row["latency_plain_ms"]
            row["throughput_ratio"] = row["batch_verified_s"] / row["batch_plain_s"]
            rows.append(row)
            print(
                f"{row['task_ms']:>6.0f} ms task | latency plain {row['latency_plain_ms']:8.1f} ms  verified "
                f"{row['latency_verified_ms']:8.1f} ms  ratio {row['latency_ratio']:.3f} | batch of {batch}: plain "
                f"{row['batch_plain_s']:.3f} s  verified {row['batch_verified_s']:.3f} s  ratio {row['throughput_ratio']:.3f}"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40, help="latency samples for the 50 ms task")
    parser.add_argument(
        "--batch", type=int, default=12, help="calls in flight in the throughput regime"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    args = parser.parse_args()
    rounds = 6 if args.quick else args.rounds

    ray.init(
        num_cpus=8,
        num_gpus=8,
        include_dashboard=False,
        object_store_memory=512 * 1024**2,
        log_to_driver=False,
    )
    cluster = bft_ray.init(executors=4)
    actors = [PlainExecutor.remote() for _ in range(4)]
    ray.get([a.run.remote(np.zeros(4, np.float32), 0.0) for a in actors])
    bft_ray.get([verified_work.remote(np.zeros(4, np.float32), 0.0) for _ in range(8)])  # warm up

    rows = measure(actors, [0.005, 0.05, 0.5], rounds, args.batch)
    counters = cluster.report().counters
    cluster.shutdown()
    ray.shutdown()

    at50 = next(r for r in rows if r["task_ms"] == 50)
    print(
        f"\n50 ms tasks: latency ratio {at50['latency_ratio']:.3f}, throughput ratio {at50['throughput_ratio']:.3f} (target <= 1.10)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.json").write_text(
        json.dumps(
            {
                "benchmark": "overhead",
                "rows": rows,
                "verifier_counters": counters,
                "output_bytes": OUTPUT_ELEMS * 4,
            },
            indent=2,
        )
    )
    plot(rows)
    print(f"wrote {RESULTS / 'overhead.json'} and overhead.png")


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['task_ms']:.0f} ms" for r in rows]
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(xs - 0.2, [r["latency_ratio"] for r in rows], 0.4, label="latency (one call at a time)")
    ax.bar(
        xs + 0.2,
        [r["throughput_ratio"] for r in rows],
        0.4,
        label=f"throughput (batch of {rows[0]['batch']})",
    )
    ax.axhline(1.10, color="red", ls="--", lw=1, label="target 1.10x")
    ax.axhline(1.0, color="black", lw=0.5)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("task duration")
    ax.set_ylabel("verified / plain Ray (same 3 replicas)")
    ax.set_title("bft-ray overhead, trusted verifier, replicas=3")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "overhead.png", dpi=120)


if __name__ == "__main__":
    main()
