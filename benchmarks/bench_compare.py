"""Comparison speed: our digest vs raw blake3, our tolerant comparison vs numpy.allclose.

Both sides run on the same arrays in the same process, interleaved, best of several repeats.

* Digest: ``bft_ray.compare.digest`` (canonical form + headers + blake3 over a zero-copy view)
  against ``blake3`` over the same bytes with the same threading. Target: >= 0.7 of raw.
* Tolerant comparison: ``bft_ray.compare.compare`` (allclose mode, symmetric, NaN/inf rules)
  against ``numpy.allclose`` on the same two arrays (which differ by honest noise, so neither
  side can take an "identical bytes" shortcut). Target: >= 2x.

Writes ``benchmarks/results/compare.json`` and ``compare.png``.

Run: ``make bench-compare``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import blake3
import numpy as np

from bft_ray.compare import compare, digest
from bft_ray.compare.digest import _PARALLEL_BYTES
from bft_ray.config import Tolerance

RESULTS = Path(__file__).parent / "results"
SIZES_MB = [1, 4, 16, 64]
REPEATS = 7


def best_of(fn, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    tol = Tolerance(rtol=1e-5, atol=1e-8)
    rows = []
    print(
        f"{'size':>7} {'dtype':>8} | {'digest GB/s':>11} {'blake3 GB/s':>11} {'ratio':>6} | "
        f"{'compare GB/s':>12} {'allclose GB/s':>13} {'speedup':>7}"
    )
    for mb in SIZES_MB:
        for dtype in (np.float32, np.float64):
            n = mb * 2**20 // np.dtype(dtype).itemsize
            a = rng.standard_normal(n).astype(dtype)
            b = (a * (1 + rng.uniform(-1e-7, 1e-7, n))).astype(dtype)  # honest noise inside tol
            assert not np.array_equal(a, b) and np.allclose(a, b, rtol=tol.rtol, atol=tol.atol)
            threads = blake3.blake3.AUTO if a.nbytes >= _PARALLEL_BYTES else 1
            view = memoryview(a).cast("B")
            # Small sizes are quick and noisy on a shared machine: more repeats.
            reps = 25 if mb <= 4 else REPEATS
            t_raw, t_ours, t_np, t_cmp = (float("inf"),) * 4
            for _ in range(reps):  # interleaved, so a noisy moment hits both sides alike
                t_raw = min(
                    t_raw, best_of(lambda: blake3.blake3(view, max_threads=threads).digest(), 1)
                )
                t_ours = min(t_ours, best_of(lambda: digest(a), 1))
                t_np = min(
                    t_np, best_of(lambda: np.allclose(a, b, rtol=tol.rtol, atol=tol.atol), 1)
                )
                t_cmp = min(t_cmp, best_of(lambda: compare(a, b, tol, detail=False), 1))
            assert compare(a, b, tol).agree
            gb = a.nbytes / 1e9
            row = {
                "size_mb": mb,
                "dtype": np.dtype(dtype).name,
                "digest_gbps": gb / t_ours,
                "blake3_gbps": gb / t_raw,
                "digest_ratio": t_raw / t_ours,
                "compare_gbps": 2 * gb / t_cmp,
                "allclose_gbps": 2 * gb / t_np,
                "compare_speedup": t_np / t_cmp,
            }
            rows.append(row)
            print(
                f"{mb:>5}MB {row['dtype']:>8} | {row['digest_gbps']:>11.2f} {row['blake3_gbps']:>11.2f} "
                f"{row['digest_ratio']:>6.2f} | {row['compare_gbps']:>12.2f} {row['allclose_gbps']:>13.2f} "
                f"{row['compare_speedup']:>6.2f}x"
            )
    worst_digest = min(r["digest_ratio"] for r in rows)
    worst_speedup = min(r["compare_speedup"] for r in rows)
    print(f"\nworst digest/raw-blake3 ratio: {worst_digest:.2f} (target >= 0.70)")
    print(
        f"worst tolerant-compare speedup over numpy.allclose: {worst_speedup:.2f}x (target >= 2x)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "compare",
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.processor(),
        },
        "rows": rows,
        "worst_digest_ratio": worst_digest,
        "worst_compare_speedup": worst_speedup,
    }
    (RESULTS / "compare.json").write_text(json.dumps(out, indent=2))
    plot(rows)
    print(f"wrote {RESULTS / 'compare.json'} and compare.png")


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for dtype, marker in (("float32", "o"), ("float64", "s")):
        rs = [r for r in rows if r["dtype"] == dtype]
        x = [r["size_mb"] for r in rs]
        axes[0].plot(
            x, [r["digest_gbps"] for r in rs], marker=marker, label=f"bft-ray digest {dtype}"
        )
        axes[0].plot(
            x, [r["blake3_gbps"] for r in rs], marker=marker, ls="--", label=f"raw blake3 {dtype}"
        )
        axes[1].plot(
            x, [r["compare_gbps"] for r in rs], marker=marker, label=f"bft-ray compare {dtype}"
        )
        axes[1].plot(
            x,
            [r["allclose_gbps"] for r in rs],
            marker=marker,
            ls="--",
            label=f"numpy.allclose {dtype}",
        )
    for ax, title in zip(
        axes, ("digest throughput", "tolerant comparison throughput (bytes of both inputs)")
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("array size (MB)")
        ax.set_ylabel("GB/s")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "compare.png", dpi=120)


if __name__ == "__main__":
    main()
