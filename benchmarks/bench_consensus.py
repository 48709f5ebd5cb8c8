"""Consensus benchmark: simulator throughput and per-block CPU cost with real Ed25519.

Measures, on this machine:

1. Twins throughput: scenarios per second and core steps per second (stand-in crypto, one
   process, the same scenarios as ``make test``'s sample: n = 4, one twin, R = 7).
2. Simulator throughput on a lossy random network (stand-in crypto).
3. CPU seconds per committed block at n = 4 and n = 7, fault-free network, with real Ed25519
   and with the stand-in; the difference is the cost of the signatures.

Prints a table, writes ``benchmarks/results/consensus.json`` and ``consensus.png``.
Run with ``make bench-consensus`` (about a minute).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console

from bft_ray.progress import Bar, progress_bar
from bft_ray.sim import NetworkConfig, SimConfig, Simulation
from bft_ray.sim.twins import TwinsGenerator, run_scenario

OUT = Path(__file__).resolve().parent / "results"
# Progress as plain lines on stderr, also on a terminal: a live bar redraws from a thread of
# this process, whose CPU time (process_time, all threads) is what part 3 measures.
PROGRESS = Console(stderr=True, force_terminal=False)


def bench_twins(count: int = 3000, progress: Bar | None = None) -> dict[str, float]:
    scenarios = list(TwinsGenerator(rounds=7).sample(count, seed=2024))
    steps = ticks = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for sc in scenarios:
        res = run_scenario(sc)
        assert res.ok, res.violations
        steps += res.steps
        ticks += res.tick_calls
        if progress is not None:
            progress.advance()  # well under 1 us against about 2 ms per scenario
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "scenarios": count,
        "seconds": wall,
        "scenarios_per_s": count / wall,
        "steps_per_s": steps / wall,
        "steps_and_ticks_per_s": (steps + ticks) / wall,
        "cpu_seconds": cpu,
    }


def bench_sim(seeds: int = 5, ticks: int = 2000, progress: Bar | None = None) -> dict[str, float]:
    steps = calls = blocks = 0
    t0 = time.perf_counter()
    for seed in range(seeds):
        res = Simulation(
            SimConfig(
                seed=seed,
                max_ticks=ticks,
                network=NetworkConfig(min_delay=1, max_delay=4, drop_prob=0.05),
                record_trace=False,
            )
        ).run()
        assert res.ok
        steps += res.steps
        calls += res.steps + res.tick_calls
        blocks += min(res.commit_heights.values())
        if progress is not None:
            progress.advance()
    wall = time.perf_counter() - t0
    return {
        "runs": seeds,
        "seconds": wall,
        "steps_per_s": steps / wall,
        "steps_and_ticks_per_s": calls / wall,
        "committed_blocks_per_s": blocks / wall,
    }


def bench_block_cost(n: int, crypto: str, blocks: int) -> dict[str, float]:
    sim = Simulation(
        SimConfig(
            n=n,
            seed=0,
            crypto=crypto,
            max_ticks=100 * blocks,
            network=NetworkConfig(min_delay=1, max_delay=1),
            stop_after_commits=blocks,
            record_trace=False,
            payload_size=256,
        )
    )
    c0 = time.process_time()
    res = sim.run()
    cpu = time.process_time() - c0
    assert res.ok
    committed = min(res.commit_heights.values())
    sig_checks = sum(i.node._certs.signature_checks for i in sim.instances if i.node)
    return {
        "n": n,
        "crypto": crypto,
        "blocks": committed,
        "cpu_seconds": cpu,
        "cpu_ms_per_block_all_replicas": 1000 * cpu / committed,
        "cpu_ms_per_block_per_replica": 1000 * cpu / committed / n,
        "signature_checks_per_block": sig_checks / committed,
    }


def main() -> int:
    results: dict[str, object] = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    print("Twins throughput (stand-in crypto, 1 process) ...", flush=True)
    with progress_bar("twins scenarios", 3000, console=PROGRESS) as bar:
        results["twins"] = tw = bench_twins(3000, progress=bar)
    print(
        f"  {tw['scenarios_per_s']:.0f} scenarios/s, {tw['steps_per_s']:.0f} steps/s, "
        f"{tw['steps_and_ticks_per_s']:.0f} steps+ticks/s"
    )
    print("Simulator throughput (lossy network, stand-in crypto) ...", flush=True)
    with progress_bar("lossy-network simulations", 5, console=PROGRESS) as bar:
        results["sim"] = sm = bench_sim(5, progress=bar)
    print(
        f"  {sm['steps_per_s']:.0f} steps/s, {sm['steps_and_ticks_per_s']:.0f} steps+ticks/s, "
        f"{sm['committed_blocks_per_s']:.0f} committed blocks/s"
    )
    print("CPU per committed block (fault-free, all replicas in one process) ...", flush=True)
    cost = []
    with progress_bar("block-cost runs", 4, console=PROGRESS) as bar:
        for n in (4, 7):
            for crypto in ("sim", "ed25519"):
                r = bench_block_cost(n, crypto, blocks=400 if crypto == "sim" else 300)
                cost.append(r)
                print(
                    f"  n={n} {crypto:8s}: {r['cpu_ms_per_block_all_replicas']:.2f} ms/block "
                    f"({r['cpu_ms_per_block_per_replica']:.3f} ms per replica), "
                    f"{r['signature_checks_per_block']:.1f} signature checks/block"
                )
                bar.advance(status=f"n={n} {crypto}")
    results["block_cost"] = cost
    for n in (4, 7):
        s = next(c for c in cost if c["n"] == n and c["crypto"] == "sim")
        e = next(c for c in cost if c["n"] == n and c["crypto"] == "ed25519")
        extra = e["cpu_ms_per_block_all_replicas"] - s["cpu_ms_per_block_all_replicas"]
        results[f"ed25519_extra_ms_per_block_n{n}"] = extra
        print(f"  n={n}: Ed25519 adds {extra:.2f} ms CPU per block over the stand-in")

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "consensus.json").write_text(json.dumps(results, indent=2) + "\n")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    labels = ["Twins steps/s", "sim steps/s"]
    a1.bar(labels, [tw["steps_per_s"], sm["steps_per_s"]], color=["tab:blue", "tab:green"])
    a1.set_title(f"Simulator: {tw['scenarios_per_s']:.0f} Twins scenarios/s")
    a1.set_ylabel("core steps per second")
    xs = [f"n={c['n']}\n{c['crypto']}" for c in cost]
    a2.bar(
        xs, [c["cpu_ms_per_block_all_replicas"] for c in cost], color=["tab:gray", "tab:red"] * 2
    )
    a2.set_title("CPU per committed block (all replicas)")
    a2.set_ylabel("ms")
    fig.tight_layout()
    fig.savefig(OUT / "consensus.png", dpi=110)
    print(f"wrote {OUT / 'consensus.json'} and {OUT / 'consensus.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
