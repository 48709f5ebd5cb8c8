"""Verified LLM inference with one cheating executor that serves an int8-quantised model.

Runs on a local embedded Ray or on a cluster with ``ray job submit`` (the job joins it through
``RAY_ADDRESS`` via ``bft_ray.init``)::

    .venv/bin/python jobs/verified_inference.py
    .venv/bin/ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env-json '{"working_dir": ".", "excludes": [".venv", ".git"]}' \\
        -- "$PWD/.venv/bin/python" jobs/verified_inference.py --prompts 8

Every call runs on ``--replicas`` executors (``policy="replicate"``) and their generations are
compared under the generation tolerance; the executor at ``--cheater`` serves an int8 copy of
the model (:class:`bft_ray.inference.faults.ServeSubstitute`). The job prints one line per
executor (calls, agreed, flagged, trust), the cost of verification (replicated generation
against one generation, and what a verify-by-prefill check of the same output costs, measured
in this process), and exits 0 when every accepted generation equals the honest one computed
locally and the cheater, and only it, was flagged.

Example:
    .. code-block:: console

        $ .venv/bin/python jobs/verified_inference.py --prompts 4 --tokens 32
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
from rich.console import Console


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
    p.add_argument("--executors", type=int, default=3)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--cheater", type=int, default=2, help="executor index serving int8")
    p.add_argument("--substitute", default="int8", help="int8, int4, perturb or smaller")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.8)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import bft_ray
    from bft_ray.inference import (
        Generation,
        Sampling,
        TinyConfig,
        TinyLMFactory,
        VerifiedLM,
        check_prefill,
        generate,
    )
    from bft_ray.inference.faults import ServeSubstitute
    from bft_ray.progress import progress_bar

    # A live bar on a terminal only when stdout is one too: a live bar sends what is printed
    # to stdout meanwhile (the line per call) to its own console, out of a redirected stdout.
    console = None if sys.stdout.isatty() else Console(stderr=True, force_terminal=False)

    factory = TinyLMFactory(TinyConfig(vocab=256, d_model=64, n_layers=2, n_heads=4), seed=0)
    init_kw: dict = {"executors": args.executors, "gpus_per_executor": 0, "quarantine_below": 0.0}
    if args.address:
        init_kw["address"] = args.address
    if 0 <= args.cheater < args.executors:
        init_kw["faults"] = {args.cheater: ServeSubstitute(args.substitute)}
    cluster = bft_ray.init(**init_kw)
    ok = True
    try:
        lm = VerifiedLM(factory, replicas=args.replicas)  # policy="replicate" (see docs)
        rng = np.random.default_rng(0)
        t_verified = 0.0
        with progress_bar("verified generations", args.calls, console=console) as bar:
            for call in range(args.calls):
                prompts = [rng.integers(0, 256, 8).tolist() for _ in range(args.prompts)]
                sampling = Sampling(temperature=args.temperature, seed=call)
                t0 = time.perf_counter()
                gen = lm.generate(prompts, args.tokens, sampling, timeout=300)
                t_verified += time.perf_counter() - t0
                honest = generate(factory(), prompts, args.tokens, sampling)
                same = bool(np.array_equal(gen.tokens, honest.tokens))
                ok &= same
                print(f"call {call}: {args.prompts} prompts x {args.tokens} tokens accepted; "
                      f"equals the honest generation: {same}")  # fmt: skip
                bar.advance(status=f"call {call}: {'equals' if same else 'DIFFERS from'} honest")
        # Cost: one local generation, and a verify-by-prefill check of the same output.
        t0 = time.perf_counter()
        g = generate(factory(), prompts, args.tokens, sampling, commit_k=128)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = check_prefill(factory(), prompts, Generation.from_wire(g.to_wire()),
                            sampling=sampling, max_new_tokens=args.tokens)  # fmt: skip
        t_check = time.perf_counter() - t0
        report = cluster.report()
        print("\nper-executor verdicts:")
        flagged = []
        for row in report.executors:
            idx = row.get("index")
            role = f"cheater ({args.substitute})" if idx == args.cheater else "honest"
            print(f"  executor {idx} [{role:>15}] {row.get('executor')}: tasks {row.get('tasks')}"
                  f", agreed {row.get('agreed')}, flagged {row.get('flagged')}, "
                  f"trust {row.get('trust', float('nan')):.2f}")  # fmt: skip
            if row.get("flagged"):
                flagged.append(idx)
        expect = [args.cheater] if 0 <= args.cheater < args.executors else []
        ok &= sorted(set(flagged)) == expect
        print("\ncost of verification:")
        print(
            f"  replicated generation: {args.replicas} generations per call "
            f"({args.replicas:.1f}x compute), {t_verified / args.calls:.2f} s per verified call"
        )
        print(f"  verify-by-prefill (same output, this process): check {t_check * 1e3:.1f} ms vs "
              f"generation {t_gen * 1e3:.1f} ms = {t_check / t_gen:.3f}x "
              f"(prefill check ok: {res.ok}; commitment "
              f"{g.commitment_bytes() / len(prompts):.0f} B per prompt)")  # fmt: skip
        print(f"\nresult: {'OK' if ok else 'FAILED'} (flagged executors: {sorted(set(flagged))})")
    finally:
        cluster.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
