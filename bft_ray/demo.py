"""The bft-ray demo: verified numpy and torch work on executors and verifiers that include liars.

Run by ``make demo`` (``jobs/demo.py``), ``bft-ray demo`` and ``ray job submit``::

    ray job submit --working-dir . -- python jobs/demo.py --gpus-per-executor 0

Four executors, each holding one (logical) GPU: executor 2 adds Gaussian noise to everything it
returns, executor 3 flips a bit in some of its answers. By default the verdicts go through a BFT
group of four verifiers (``--verifiers 4``, ``f = 1``) in which verifier 1 is Byzantine
(``--verifier-fault 1:wrong_vote``: it votes for every block and signs every verdict, checked or
not); ``--verifiers 1`` runs the trusted-verifier mode. About 50 verified calls (matrix products
through ``@verified_remote`` functions, a seeded MLP's forward pass through a replicated
``@verified_remote`` class) run with a progress bar. Every accepted value is checked against a
local recomputation; the demo fails if a wrong value was ever accepted. At the end it prints the
per-executor table, the verifiers' state and one certificate, verified offline.

Example:
    .. code-block:: console

        $ bft-ray demo --tasks 20
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import bft_ray
from bft_ray.progress import progress_bar

TOL = bft_ray.Tolerance(rtol=1e-5, atol=1e-6)


@bft_ray.verified_remote(replicas=3, quorum=2, num_gpus=1, tolerance=TOL)
def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b


def make_mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # weights from a fixed seed: nothing is downloaded
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


@bft_ray.verified_remote(replicas=3, quorum=2, num_gpus=1, tolerance=TOL)
class Classifier:
    """A replicated model: every executor holding a replica builds the same seeded weights."""

    def __init__(self, seed: int) -> None:
        self.device = bft_ray.device()
        self.model = make_mlp(seed).to(self.device).eval()

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            logits = self.model(x.to(self.device)).cpu()
        return {"logits": logits, "label": logits.argmax(dim=1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50, help="verified calls to run (default 50)")
    parser.add_argument("--executors", type=int, default=4)
    parser.add_argument(
        "--gpus-per-executor", type=float, default=1.0, help="0 on a cluster without GPUs"
    )
    parser.add_argument("--wave", type=int, default=5, help="calls in flight at once")
    parser.add_argument(
        "--verifiers", type=int, default=4, help="1: trusted verifier; >= 4: BFT group (default 4)"
    )
    parser.add_argument(
        "--verifier-fault",
        default="1:wrong_vote",
        help="INDEX:BEHAVIOUR for one Byzantine verifier, or 'none' (default 1:wrong_vote)",
    )
    args = parser.parse_args(argv)
    if args.executors < 4:
        parser.error("the demo injects faults into executors 2 and 3: use --executors >= 4")
    verifier_faults = {}
    if args.verifiers > 1 and args.verifier_fault != "none":
        index, _, behaviour = args.verifier_fault.partition(":")
        if not index.isdigit() or not behaviour:
            parser.error("--verifier-fault takes INDEX:BEHAVIOUR, e.g. 1:censor")
        verifier_faults[int(index)] = behaviour

    console = Console(width=None if sys.stdout.isatty() else 120)
    start = time.perf_counter()
    cluster = bft_ray.init(
        executors=args.executors,
        gpus_per_executor=args.gpus_per_executor,
        faults={
            2: bft_ray.faults.gaussian_noise(0.05),
            3: bft_ray.faults.intermittent(0.3, "bitflip"),
        },
        num_cpus=max(8, args.executors + 2),
        object_store_memory=512 * 1024**2,
        verifiers=args.verifiers,
        verifier_faults=verifier_faults,
    )
    matmul_ = matmul.options(num_gpus=args.gpus_per_executor)
    classifier = Classifier.options(num_gpus=args.gpus_per_executor).remote(seed=0)
    reference = make_mlp(0).eval()
    group = (
        f"a BFT group of {args.verifiers} verifiers"
        + "".join(f", verifier {i} is Byzantine ({b})" for i, b in verifier_faults.items())
        if args.verifiers > 1
        else "the trusted verifier"
    )
    console.print(
        f"[bold]bft-ray demo[/]: {args.executors} executors (executor 2 adds noise, executor 3 "
        f"flips bits), {group}"
    )

    rng = np.random.default_rng(0)
    accepted = refused = wrong = 0
    example = None
    with progress_bar("verified calls", total=args.tasks, console=console) as bar:
        done = 0
        while done < args.tasks:
            batch = []
            for i in range(min(args.wave, args.tasks - done)):
                if (done + i) % 2 == 0:
                    a, b = rng.standard_normal((96, 96)), rng.standard_normal((96, 96))
                    batch.append((matmul_.remote(a, b), a @ b))
                else:
                    x = torch.from_numpy(rng.standard_normal((32, 64)).astype(np.float32))
                    with torch.no_grad():
                        expected = reference(x)
                    batch.append((classifier.predict.remote(x), expected))
            for ref, expected in batch:
                try:
                    value = bft_ray.get(ref, timeout=120)
                except bft_ray.NoQuorumError:
                    refused += 1  # replicas disagreed and no majority existed: nothing accepted
                else:
                    got = value["logits"].numpy() if isinstance(value, dict) else value
                    want = expected.numpy() if isinstance(expected, torch.Tensor) else expected
                    ok = np.allclose(got, want, rtol=1e-4, atol=1e-5)
                    accepted += ok
                    wrong += not ok
                    example = example or ref
                done += 1
                bar.advance(status=f"accepted {accepted}, refused {refused}, wrong {wrong}")

    # A short verified generation by a seeded tiny language model (bft_ray.inference).
    from bft_ray.inference import Sampling, TinyConfig, TinyLMFactory, VerifiedLM, generate

    factory = TinyLMFactory(TinyConfig(vocab=128, d_model=32, n_layers=2, n_heads=2), seed=0)
    policy = "prefill" if args.verifiers == 1 else "replicate"  # prefill: trusted mode only
    lm = VerifiedLM(factory, policy=policy, replicas=3, num_gpus=args.gpus_per_executor)
    prompts, sampling = [[1, 2, 3, 4], [9, 8, 7]], Sampling(temperature=0.8, seed=1)
    try:
        gen = lm.generate(prompts, 16, sampling, timeout=120)
    except bft_ray.NoQuorumError:
        # Executors 2 and 3 both lie about log-probabilities here; when they are two of the
        # replicas no majority exists and nothing is accepted.
        refused += 1
        console.print(f"verified generation ({policy}): refused, replicas disagreed")
    else:
        honest = generate(factory(), prompts, 16, sampling)
        same = bool(np.array_equal(gen.tokens, honest.tokens))
        console.print(
            f"verified generation ({policy}): {gen.tokens[0].tolist()}; "
            f"equals the honest one: {same}"
        )
        wrong += not same

    report = cluster.report()
    console.print(report.table())
    if args.verifiers > 1:
        console.print(_verifier_table(cluster))
    cert = bft_ray.certificate(example)
    console.print(cert.summary())
    valid = bft_ray.verify_certificate(
        cert,
        cluster.verifier_keys(),
        executor_keys=cluster.executor_keys().values(),
        value=bft_ray.get(example),
        require_commit_proof=cert.mode == "bft",  # the group's QCs travel in the certificate
    )
    signers = len(cert.signatures)
    proof = ", commit proven by the QCs it carries" if cert.commit_proof else ""
    console.print(
        f"certificate verifies offline: [bold]{valid}[/] ({cert.mode} mode, {signers} verifier "
        f"signatures{proof})"
    )
    elapsed = time.perf_counter() - start
    console.print(
        f"{accepted} accepted, {refused} refused for lack of a quorum, {wrong} wrong values accepted; "
        f"{elapsed:.1f}s"
    )
    cluster.shutdown()
    if wrong or not valid:
        console.print(
            "[bold red]FAILED: a wrong value was accepted or the certificate did not verify"
        )
        return 1
    return 0


def _verifier_table(cluster: bft_ray.BftCluster) -> Table:
    table = Table(title="verifier group")
    for col in ("verifier", "behaviour", "committed", "refused", "round", "ledger rows"):
        table.add_column(col)
    for s in cluster.verifier_status():
        if "error" in s:
            table.add_row(str(s["index"]), "unreachable", "", "", "", "")
            continue
        c = s["counters"]
        table.add_row(
            str(s["index"]),
            s["fault"],
            str(c["committed"]),
            str(c["refused"]),
            str(s["round"]),
            str(s["ledger_height"]),
        )
    return table


if __name__ == "__main__":
    sys.exit(main())
