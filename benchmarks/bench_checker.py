"""The measured price of a cheaper audit: Freivalds' check against re-executing a matmul.

Side by side in one run, for square float32 products of several sizes:

* **In process** (no Ray): one ``a @ b`` against one Freivalds check of it (20 rounds), best
  of 5 each.
* **On Ray** (trusted mode, 4 executors): calls spot-checked at rate 1 with the Freivalds
  checker (``spot_check(1.0, warmup=1, checker=freivalds(), checker_cost=1.0)``: the declared
  price is deliberately wrong) and the same calls fully replicated (3 replicas). From the
  verifier's cost book (``cluster.trust_report()["cost"]``): the checker price the verifier
  *measured* on its own clock, the executions per call it counted with checkers at that price,
  and the wall time per call of each plan.

For small products Ray's per-call cost dominates both the function and the checker, so the
measured price stays near 1 there; it falls as the product grows and the O(n^2) check pulls
away from the O(n^3) product.

Writes ``benchmarks/results/checker.json`` and ``checker.png``. Run: ``make bench-checker``
(``--quick``: two sizes, fewer calls).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

import bft_ray
from bft_ray.progress import progress_bar
from bft_ray.trust.checkers import freivalds

RESULTS = Path(__file__).parent / "results"


def best_of(fn, repeats: int = 5) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def named_matmul(n: int, plan: str):
    """A fresh function per size and plan, so the cost book keeps them apart."""

    def matmul(a, b):
        return a @ b

    matmul.__name__ = matmul.__qualname__ = f"matmul_{n}_{plan}"
    return matmul


def in_process(n: int, rng: np.random.Generator) -> dict:
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = a @ b
    check = freivalds()
    assert check(c, a, b)
    t_mm = best_of(lambda: a @ b)
    t_ck = best_of(lambda: check(c, a, b))
    return {"matmul_s": t_mm, "check_s": t_ck, "check_over_matmul": t_ck / t_mm}


def on_ray(n: int, calls: int, rng: np.random.Generator, bar) -> dict:
    pairs = [
        (
            rng.standard_normal((n, n)).astype(np.float32),
            rng.standard_normal((n, n)).astype(np.float32),
        )
        for _ in range(calls)
    ]
    plans = {
        "spot_check": bft_ray.spot_check(
            1.0, warmup=1, cooldown=1, checker=freivalds(), checker_cost=1.0
        ),
        "replicate": "replicate",
    }
    out = {}
    for name, plan in plans.items():
        f = bft_ray.verified_remote(replicas=3, policy=plan, num_gpus=0)(named_matmul(n, name))
        bft_ray.get(f.remote(*pairs[0]), timeout=300)  # warm-up: earns trust on its first call
        t0 = time.perf_counter()
        for a, b in pairs:  # one at a time: the wall time per call is the plan's latency
            bft_ray.get(f.remote(a, b), timeout=300)
            bar.advance(status=f"n={n} {name}")
        out[name] = {"wall_s_per_call": (time.perf_counter() - t0) / calls}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two sizes, fewer calls")
    p.add_argument("--calls", type=int, default=12)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 768])
    args = p.parse_args()
    if args.quick:
        args.sizes, args.calls = [64, 384], 6
    rng = np.random.default_rng(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    cluster = bft_ray.init(executors=4, gpus_per_executor=0)
    try:
        with progress_bar("verified matmuls", total=len(args.sizes) * 2 * args.calls) as bar:
            for n in args.sizes:
                local = in_process(n, rng)
                ray_rows = on_ray(n, args.calls, rng, bar)
                book = cluster.trust_report()["cost"]
                spot = book[f"matmul_{n}_spot_check"]
                repl = book[f"matmul_{n}_replicate"]
                rows.append(
                    {
                        "n": n,
                        "in_process": local,
                        "spot_check": {**spot, **ray_rows["spot_check"]},
                        "replicate": {**repl, **ray_rows["replicate"]},
                        "latency_spot_over_replicate": ray_rows["spot_check"]["wall_s_per_call"]
                        / ray_rows["replicate"]["wall_s_per_call"],
                    }
                )
    finally:
        cluster.shutdown()
    print(
        f"{'n':>5}  {'check/matmul in process':>24}  {'measured checker price':>22}  "
        f"{'exec/call spot':>14}  {'exec/call repl':>14}  {'latency spot/repl':>17}"
    )
    for r in rows:
        s, rp = r["spot_check"], r["replicate"]
        print(
            f"{r['n']:>5}  {r['in_process']['check_over_matmul']:>24.3f}  "
            f"{s['checker_price']:>22.3f}  {s['executions_per_call']:>14.3f}  "
            f"{rp['executions_per_call']:>14.3f}  {r['latency_spot_over_replicate']:>17.3f}"
        )
    record = {
        "benchmark": "checker",
        "machine": platform.platform(),
        "calls_per_size": args.calls,
        "declared_checker_price": 1.0,
        "rows": rows,
    }
    (RESULTS / "checker.json").write_text(json.dumps(record, indent=2))
    plot(rows)
    print(f"wrote {RESULTS / 'checker.json'} and checker.png")


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(ns, [r["in_process"]["check_over_matmul"] for r in rows], "o-", label="in process")
    ax[0].plot(
        ns, [r["spot_check"]["checker_price"] for r in rows], "s-", label="measured by verifier"
    )
    ax[0].axhline(1.0, ls="--", color="gray", label="declared (1.0)")
    ax[0].set_xlabel("n (n x n float32 product)")
    ax[0].set_ylabel("Freivalds check / one matmul")
    ax[0].set_title("checker price")
    ax[0].legend()
    ax[1].plot(ns, [r["spot_check"]["executions_per_call"] for r in rows], "s-", label="spot check")
    ax[1].plot(ns, [r["replicate"]["executions_per_call"] for r in rows], "o-", label="replicate")
    ax[1].set_xlabel("n")
    ax[1].set_ylabel("executions per call (checker at its price)")
    ax[1].set_title("cost per verified call")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "checker.png", dpi=110)


if __name__ == "__main__":
    main()
