"""Comparison speed: digests, tolerant comparison and the wire format against their baselines.

Both sides of every ratio run on the same data in the same process, interleaved, best of
several repeats.

* Digest: ``bft_ray.compare.digest.digest_wire`` (blake3 in derive-key mode over the canonical
  wire bytes) against raw ``blake3`` over the same bytes with the same threading. Target:
  >= 0.9 of raw. Also reported: ``digest(value)`` end to end (encoding streamed into the
  hasher, leaves never copied) against raw blake3 over the array's own bytes.
* Tolerant comparison: ``bft_ray.compare.compare`` (allclose mode, symmetric, NaN/inf rules) on
  the canonical forms the verifier holds, against ``numpy.allclose`` on the same two arrays
  (which differ by honest noise, so neither side can take an "identical bytes" shortcut).
  Target: >= 2x. ``compare`` on raw arrays (which first encodes both) is reported too.
* Wire format: ``encode`` / ``decode_canonical`` / ``decode`` of a 64 MiB float32 numpy array
  and torch tensor against ``pickle.dumps`` / ``pickle.loads`` (protocol 5, in band) of the
  same object; ratios are pickle time / wire time (above 1: the wire format is faster).

Writes ``benchmarks/results/compare.json`` and ``compare.png``.

Run: ``make bench-compare`` (``--quick``: fewer sizes and repeats).
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import time
from pathlib import Path

import blake3
import numpy as np
import torch
from rich.console import Console

from bft_ray.compare import canonicalize, compare, decode, decode_canonical, digest, encode
from bft_ray.compare.digest import PARALLEL_BYTES, digest_wire
from bft_ray.config import Tolerance
from bft_ray.progress import Bar, progress_bar

RESULTS = Path(__file__).parent / "results"
SIZES_MB = [1, 4, 16, 64]
REPEATS = 7
WIRE_MB = 64
# Progress as plain lines on stderr, also on a terminal: a live bar redraws from a thread of
# this process, which would compete with the timed digests and comparisons.
PROGRESS = Console(stderr=True, force_terminal=False)


def best_of(fn, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def interleaved(fns: dict, reps: int) -> dict:
    """Best time of each function, running them in turn so a noisy moment hits all alike.

    The order rotates every round, so no function always runs right after another (whose
    data would then be warm in the cache)."""
    times = dict.fromkeys(fns, float("inf"))
    names = list(fns)
    for i in range(reps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name] = min(times[name], best_of(fns[name], 1))
    return times


def bench_digest_compare(
    sizes: list[int], reps_small: int, reps: int, progress: Bar | None = None
) -> list[dict]:
    rng = np.random.default_rng(0)
    tol = Tolerance(rtol=1e-5, atol=1e-8)
    rows = []
    print(
        f"{'size':>7} {'dtype':>8} | {'digest GB/s':>11} {'blake3 GB/s':>11} {'ratio':>6} "
        f"{'e2e':>5} | {'compare GB/s':>12} {'allclose GB/s':>13} {'speedup':>7} {'raw in':>6}"
    )
    for mb in sizes:
        for dtype in (np.float32, np.float64):
            n = mb * 2**20 // np.dtype(dtype).itemsize
            a = rng.standard_normal(n).astype(dtype)
            b = (a * (1 + rng.uniform(-1e-7, 1e-7, n))).astype(dtype)  # honest noise inside tol
            assert not np.array_equal(a, b) and np.allclose(a, b, rtol=tol.rtol, atol=tol.atol)
            wire = encode(a)
            ca, cb = canonicalize(a), canonicalize(b)
            threads = blake3.blake3.AUTO if len(wire) >= PARALLEL_BYTES else 1
            view = memoryview(a).cast("B")
            # Small sizes are quick and noisy on a shared machine: more repeats. Digests and
            # comparisons are timed in separate groups, so one group's memory traffic does not
            # evict the other's data.
            rounds = reps_small if mb <= 4 else reps
            t = interleaved(
                {
                    "raw": lambda: blake3.blake3(wire, max_threads=threads).digest(),
                    "ours": lambda: digest_wire(wire),
                    "raw_array": lambda: blake3.blake3(view, max_threads=threads).digest(),
                    "e2e": lambda: digest(a),
                },
                rounds,
            )
            t |= interleaved(
                {
                    "np": lambda: np.allclose(a, b, rtol=tol.rtol, atol=tol.atol),
                    "cmp": lambda: compare(ca, cb, tol, detail=False),
                },
                rounds,
            )
            t["cmp_raw"] = best_of(lambda: compare(a, b, tol, detail=False), max(3, rounds // 3))
            assert compare(ca, cb, tol).agree
            gb = a.nbytes / 1e9
            row = {
                "size_mb": mb,
                "dtype": np.dtype(dtype).name,
                "digest_gbps": gb / t["ours"],
                "blake3_gbps": gb / t["raw"],
                "digest_ratio": t["raw"] / t["ours"],
                "digest_value_gbps": gb / t["e2e"],
                "digest_value_ratio": t["raw_array"] / t["e2e"],
                "compare_gbps": 2 * gb / t["cmp"],
                "allclose_gbps": 2 * gb / t["np"],
                "compare_speedup": t["np"] / t["cmp"],
                "compare_raw_speedup": t["np"] / t["cmp_raw"],
            }
            rows.append(row)
            print(
                f"{mb:>5}MB {row['dtype']:>8} | {row['digest_gbps']:>11.2f} "
                f"{row['blake3_gbps']:>11.2f} {row['digest_ratio']:>6.2f} "
                f"{row['digest_value_ratio']:>5.2f} | {row['compare_gbps']:>12.2f} "
                f"{row['allclose_gbps']:>13.2f} {row['compare_speedup']:>6.2f}x "
                f"{row['compare_raw_speedup']:>5.2f}x"
            )
            if progress is not None:
                progress.advance(status=f"{mb} MB {row['dtype']}")
    return rows


def bench_wire(reps: int, progress: Bar | None = None) -> list[dict]:
    n = WIRE_MB * 2**20 // 4
    arr = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    rows = []
    print(
        f"\n{WIRE_MB} MiB float32 | {'encode':>8} {'dumps':>8} {'ratio':>6} | "
        f"{'dec_canon':>9} {'decode':>8} {'loads':>8} {'ratio':>6} {'ratio':>6} | round trip"
    )
    for kind, value in (("numpy", arr), ("torch", torch.from_numpy(arr.copy()))):
        wire = encode(value)
        pickled = pickle.dumps(value, protocol=5)
        t = interleaved(
            {
                "encode": lambda: encode(value),
                "dumps": lambda: pickle.dumps(value, protocol=5),
                "decode_canonical": lambda: decode_canonical(wire),
                "decode": lambda: decode(wire),
                "loads": lambda: pickle.loads(pickled),
            },
            reps,
        )
        out = decode(wire)
        assert type(out) is type(value) and out.shape == value.shape
        row = {
            "kind": kind,
            "size_mb": WIRE_MB,
            "wire_bytes": len(wire),
            "pickle_bytes": len(pickled),
            **{f"{k}_ms": v * 1e3 for k, v in t.items()},
            "encode_vs_dumps": t["dumps"] / t["encode"],
            "decode_canonical_vs_loads": t["loads"] / t["decode_canonical"],
            "decode_vs_loads": t["loads"] / t["decode"],
            "roundtrip_vs_pickle": (t["dumps"] + t["loads"]) / (t["encode"] + t["decode"]),
        }
        rows.append(row)
        print(
            f"{kind:>16} | {row['encode_ms']:>6.1f}ms {row['dumps_ms']:>6.1f}ms "
            f"{row['encode_vs_dumps']:>5.2f}x | {row['decode_canonical_ms']:>7.3f}ms "
            f"{row['decode_ms']:>6.2f}ms {row['loads_ms']:>6.1f}ms "
            f"{row['decode_canonical_vs_loads']:>5.0f}x {row['decode_vs_loads']:>5.1f}x | "
            f"{row['roundtrip_vs_pickle']:.2f}x"
        )
        if progress is not None:
            progress.advance(status=f"wire {kind}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args()
    sizes = [1, 16] if args.quick else SIZES_MB
    reps_small, reps = (9, 3) if args.quick else (25, REPEATS)
    with progress_bar("compare cases", 2 * len(sizes) + 2, console=PROGRESS) as bar:
        rows = bench_digest_compare(sizes, reps_small, reps, progress=bar)
        wire_rows = bench_wire(3 if args.quick else 5, progress=bar)
    worst_digest = min(r["digest_ratio"] for r in rows)
    worst_speedup = min(r["compare_speedup"] for r in rows)
    print(f"\nworst digest/raw-blake3 ratio (same bytes): {worst_digest:.2f} (target >= 0.90)")
    print(
        "worst digest(value)/raw-blake3-of-the-array ratio: "
        f"{min(r['digest_value_ratio'] for r in rows):.2f}"
    )
    print(
        f"worst tolerant-compare speedup over numpy.allclose: {worst_speedup:.2f}x (target >= 2x)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "compare",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "blake3": blake3.__version__,
            "cpu": platform.processor(),
        },
        "rows": rows,
        "wire": wire_rows,
        "worst_digest_ratio": worst_digest,
        "worst_compare_speedup": worst_speedup,
    }
    (RESULTS / "compare.json").write_text(json.dumps(out, indent=2))
    plot(rows, wire_rows)
    print(f"wrote {RESULTS / 'compare.json'} and compare.png")


def plot(rows: list[dict], wire_rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
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
        axes[:2], ("digest throughput", "tolerant comparison throughput (bytes of both inputs)")
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("array size (MB)")
        ax.set_ylabel("GB/s")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ops = [
        ("encode_vs_dumps", "encode\nvs dumps"),
        ("decode_vs_loads", "decode\nvs loads"),
        ("roundtrip_vs_pickle", "round trip\nvs pickle"),
    ]
    width = 0.38
    for i, r in enumerate(wire_rows):
        xs = [j + (i - 0.5) * width for j in range(len(ops))]
        bars = axes[2].bar(xs, [r[k] for k, _ in ops], width, label=r["kind"])
        axes[2].bar_label(bars, fmt="%.1fx", fontsize=7)
    axes[2].set_yscale("log")  # numpy decode is zero-copy: three orders of magnitude
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set_xticks(range(len(ops)), [label for _, label in ops])
    axes[2].set_ylabel("pickle time / wire time")
    dc = ", ".join(f"{r['kind']} {r['decode_canonical_vs_loads']:.0f}x" for r in wire_rows)
    axes[2].set_title(f"wire vs pickle, {WIRE_MB} MiB float32 (decode_canonical: {dc})", fontsize=9)
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(RESULTS / "compare.png", dpi=120)


if __name__ == "__main__":
    main()
