"""Verified inference: verify-by-prefill against replicated generation, side by side.

In process (no Ray), on seeded tiny models (:class:`bft_ray.inference.TinyLM`):

* Cost: one verify-by-prefill check (:func:`bft_ray.inference.check_prefill`, one batched
  forward pass plus the sampler replay and the commitment check) against one generation of
  the same output (KV cache), for 128 generated tokens. Replicated verification costs
  ``replicas - 1`` extra generations (1.0 for two replicas, 2.0 for three). Target: check /
  generation <= 0.2.
* Commitment bytes per 32 tokens (k = 128 values per chunk).
* Detection: each substitution (weights perturbed 1e-3 relative, int8, 4-bit, a smaller model,
  another prompt, another sampling seed, a truncated generation, an honest prefix followed by a
  smaller model's tokens with a consistent commitment) over ``--seeds`` seeds, for generations
  of 4/8/32 tokens (fp32), and at 32 tokens in bf16; by the prefill check and by the
  replicated comparison under the generation tolerance. "tokens needed" is the shortest
  length at which every seed was caught.
* False alarms: honest variations (batch size 1/8/16, 1 vs 2 threads, KV cache vs full
  recompute) over ``--honest-seeds`` x 16 prompts each, fp32 and bf16, checked prompt by prompt
  with the shipped tolerances; plus calibration (honest maxima, proposed thresholds, margins).

Writes ``benchmarks/results/inference.json`` and ``inference.png``.

Run: ``make bench-inference`` (``--quick``: fewer seeds).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "inference"))

from bft_ray.compare import compare
from bft_ray.inference import (
    PrefillTolerance,
    Sampling,
    TinyConfig,
    TinyLMFactory,
    check_prefill,
    generate,
    generation_tolerance,
)
from bft_ray.inference.calibrate import calibrate_prefill, honest_variants
from bft_ray.inference.substitutions import SUBSTITUTIONS
from bft_ray.progress import progress_bar

RESULTS = Path(__file__).parent / "results"
KINDS = ["perturb", "int8", "int4", "smaller", "prompt", "seed", "truncate", "cheap_suffix"]
CFG = TinyConfig(vocab=256, d_model=64, n_layers=2, n_heads=4, max_seq=320)
COMMIT_K = 128


def best_of(fn, repeats=3):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def prompts(seed, n=1, length=8, vocab=256):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, length).tolist() for _ in range(n)]


def cost(model, new=128, n=8, repeats=3):
    ps = prompts(0, n=n)
    s = Sampling(temperature=1.0, seed=1)
    g = generate(model, ps, new, s, commit_k=COMMIT_K)
    t_gen = best_of(lambda: generate(model, ps, new, s, commit_k=COMMIT_K), repeats)
    t_chk = best_of(lambda: check_prefill(model, ps, g, sampling=s, max_new_tokens=new), repeats)
    return {
        "prompts": n,
        "new_tokens": new,
        "generation_s": t_gen,
        "check_s": t_chk,
        "check_over_generation": t_chk / t_gen,
        "check_over_replication_r2": t_chk / t_gen,  # r=2 re-runs one whole generation
        "check_over_replication_r3": t_chk / (2 * t_gen),
        "commitment_bytes_per_32_tokens": (g.commitment_bytes() / n - 6) / (new / 32),
        "commitment_bytes_per_prompt": g.commitment_bytes() / n,
    }


def linear_bf16_penalty(rows=(8, 64, 1088), repeats=20):
    """bf16 over fp32 time of one linear layer: why bf16 prefill is dear on a CPU without bf16."""
    out = {}
    for m in rows:
        t = {}
        for dt in (torch.float32, torch.bfloat16):
            x, w = torch.randn(m, 128, dtype=dt), torch.randn(512, 128, dtype=dt)
            torch.nn.functional.linear(x, w)
            t[dt] = best_of(
                lambda x=x, w=w: [torch.nn.functional.linear(x, w) for _ in range(repeats)]
            )
        out[m] = t[torch.bfloat16] / t[torch.float32]
    return out


def detection(model, tol, seeds, lengths):
    import test_attacks as A  # the attacks exactly as the tests build them

    out = {}
    with progress_bar("detection runs", len(KINDS) * len(lengths) * len(seeds)) as bar:
        for kind in KINDS:
            row = {}
            for new in lengths:
                A.NEW = new
                pre = rep = 0
                for seed in seeds:
                    bar.advance(status=kind)
                    s = (
                        Sampling(temperature=1.0, seed=seed)
                        if kind == "seed" or seed % 2
                        else Sampling()
                    )
                    ps = prompts(5000 + seed)
                    bad = A.cheat(kind, model, ps, s)
                    r = check_prefill(model, ps, bad, sampling=s, max_new_tokens=new, tolerance=tol,
                                      commit_k=COMMIT_K)  # fmt: skip
                    pre += not r.ok
                    honest = generate(model, ps, new, s).to_wire()
                    b = {k: v for k, v in bad.to_wire().items() if k != "commitment"}
                    rep += not compare(honest, b, generation_tolerance()).agree
                row[new] = {"prefill": pre / len(seeds), "replicated": rep / len(seeds)}
            full = [n for n in lengths if row[n]["prefill"] == 1.0]
            out[kind] = {
                "by_length": row,
                "tokens_needed_prefill": min(full) if full else None,
                "tokens_needed_replicated": min(
                    (n for n in lengths if row[n]["replicated"] == 1.0), default=None
                ),
            }
            print(f"  {kind:<13}" + "  ".join(
                f"{n:>3} tok: prefill {row[n]['prefill']:>4.0%} repl {row[n]['replicated']:>4.0%}"
                for n in lengths))  # fmt: skip
    return out


def false_alarms(model, tol, seeds, n_prompts=16, new=32):
    variants = honest_variants()
    gens = alarms_pre = alarms_rep = 0
    with progress_bar("honest runs", len(seeds) * len(variants)) as bar:
        for seed in seeds:
            ps = prompts(seed, n=n_prompts)
            s = Sampling(temperature=1.0 if seed % 2 else 0.0, seed=seed)
            ref = generate(model, ps, new, s, commit_k=COMMIT_K)
            for kw in variants.values():
                kw = dict(kw)
                threads = kw.pop("threads", None)
                before = torch.get_num_threads()
                if threads:
                    torch.set_num_threads(threads)
                try:
                    g = generate(model, ps, new, s, commit_k=COMMIT_K, **kw)
                finally:
                    torch.set_num_threads(before)
                bar.advance()
                for i in range(n_prompts):
                    one = type(g)(g.tokens[i : i + 1], g.logprobs[i : i + 1], g.topk_ids[i : i + 1],
                                  [g.commitments[i]])  # fmt: skip
                    # Stream ids are request positions, so row i is checked inside the request.
                    r = check_prefill(model, ps, _only_row(g, i, ref), sampling=s,
                                      max_new_tokens=new, tolerance=tol, commit_k=COMMIT_K)  # fmt: skip
                    alarms_pre += not r.ok
                    a = {k: v[i] for k, v in ref.to_wire().items() if k != "commitment"}
                    b = {k: v[0] for k, v in one.to_wire().items() if k != "commitment"}
                    alarms_rep += not compare(a, b, generation_tolerance()).agree
                    gens += 1
    return {
        "generations": gens,
        "prefill_false_alarms": alarms_pre,
        "replicated_false_alarms": alarms_rep,
    }


def _only_row(g, i, ref):
    """The request with row ``i`` from ``g`` and every other row from the reference run."""
    tok, lp, top, com = (
        ref.tokens.copy(),
        ref.logprobs.copy(),
        ref.topk_ids.copy(),
        list(ref.commitments),
    )
    tok[i], lp[i], top[i], com[i] = g.tokens[i], g.logprobs[i], g.topk_ids[i], g.commitments[i]
    return type(g)(tok, lp, top, com)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer seeds")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--honest-seeds", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.seeds, args.honest_seeds = 10, 1
    torch.manual_seed(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": CFG.model_dump(),
        "commit_k": COMMIT_K,
    }
    models = {
        "float32": TinyLMFactory(CFG, 0)(),
        "bfloat16": TinyLMFactory(CFG.model_copy(update={"dtype": "bfloat16"}), 0)(),
    }
    big = TinyLMFactory(TinyConfig(vocab=256, d_model=128, n_layers=4, n_heads=4, max_seq=320))()
    big_bf16 = TinyLMFactory(
        TinyConfig(vocab=256, d_model=128, n_layers=4, n_heads=4, max_seq=320, dtype="bfloat16")
    )()
    bigger = TinyLMFactory(TinyConfig(vocab=512, d_model=256, n_layers=4, n_heads=8, max_seq=320))()
    print("cost of verify-by-prefill vs generation, 128 new tokens, 8 prompts:")
    out["cost"] = {}
    generate(models["float32"], prompts(0, n=8), 16)  # warm-up (first-call allocations)
    for name, m in [("d64_l2_fp32", models["float32"]), ("d128_l4_fp32", big),
                    ("d256_l4_v512_fp32", bigger), ("d64_l2_bf16", models["bfloat16"]),
                    ("d128_l4_bf16", big_bf16)]:  # fmt: skip
        c = cost(m)
        out["cost"][name] = c
        print(f"  {name:<13} generation {c['generation_s'] * 1e3:7.1f} ms  check "
              f"{c['check_s'] * 1e3:6.1f} ms  check/generation {c['check_over_generation']:.3f}  "
              f"(replication r=2: 1.0, r=3: 2.0)  commitment "
              f"{c['commitment_bytes_per_32_tokens']:.0f} B / 32 tokens")  # fmt: skip
    out["bf16_linear_over_fp32"] = linear_bf16_penalty()
    print("  bf16 / fp32 time of one linear layer (128 -> 512) on this CPU, by rows: "
          + ", ".join(f"{m} rows {r:.1f}x" for m, r in out["bf16_linear_over_fp32"].items())
          + "  (a prefill pass multiplies many rows at once, a decoding step few)")  # fmt: skip
    seeds = list(range(args.seeds))
    print(f"\ndetection over {len(seeds)} seeds (fp32):")
    out["detection_fp32"] = detection(models["float32"], PrefillTolerance(), seeds, [4, 8, 32])
    print(f"\ndetection over {len(seeds)} seeds (bf16, bf16 tolerances):")
    out["detection_bf16"] = detection(
        models["bfloat16"], PrefillTolerance.for_dtype("bfloat16"), seeds, [32]
    )
    hs = list(range(args.honest_seeds))
    out["false_alarms"] = {}
    out["calibration"] = {}
    for dt, m in models.items():
        fa = false_alarms(m, PrefillTolerance.for_dtype(dt), hs)
        out["false_alarms"][dt] = fa
        print(f"\nfalse alarms ({dt}, shipped tolerance): prefill {fa['prefill_false_alarms']}/"
              f"{fa['generations']}, replicated {fa['replicated_false_alarms']}/"
              f"{fa['generations']}")  # fmt: skip
        fac = TinyLMFactory(m.cfg, 0)
        inputs = [(prompts(100 + s, n=8), 32, Sampling(temperature=1.0, seed=s)) for s in hs]
        rep = calibrate_prefill(
            fac, inputs, substitutions={k: SUBSTITUTIONS[k] for k in ("perturb", "int8", "int4")},
            commit_k=COMMIT_K,
        )  # fmt: skip
        out["calibration"][dt] = rep.to_dict()
        print(f"calibration ({dt}):\n" + rep.table())
    (RESULTS / "inference.json").write_text(json.dumps(out, indent=2, default=str))
    plot(out)
    print(f"\nwrote {RESULTS / 'inference.json'} and inference.png")


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    names = list(out["cost"])
    ax.bar(names, [out["cost"][n]["check_over_generation"] for n in names], label="prefill check")
    ax.axhline(1.0, color="grey", ls="--", label="replication r=2 (1.0)")
    ax.axhline(0.2, color="red", ls=":", label="target 0.2")
    ax.set_ylabel("cost / one generation (128 tokens)")
    ax.set_title("verification cost")
    ax.legend(fontsize=8)
    for ax, key, title in [(axes[1], "detection_fp32", "fp32, 32 tokens"),
                           (axes[2], "detection_bf16", "bf16, 32 tokens")]:  # fmt: skip
        d = out[key]
        x = np.arange(len(KINDS))
        pre = [d[k]["by_length"][max(d[k]["by_length"])]["prefill"] for k in KINDS]
        rep = [d[k]["by_length"][max(d[k]["by_length"])]["replicated"] for k in KINDS]
        ax.bar(x - 0.2, pre, 0.4, label="prefill check")
        ax.bar(x + 0.2, rep, 0.4, label="replicated compare")
        ax.set_xticks(x, KINDS, rotation=35, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"detection rate ({title})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "inference.png", dpi=110)


if __name__ == "__main__":
    main()
