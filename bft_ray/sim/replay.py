"""Replay a saved Twins scenario: ``python -m bft_ray.sim.replay FILE [--verbose]``.

Prints the violations, each instance's committed rounds and the trace digest; exits 1 if an
invariant is violated, 0 otherwise. ``--verbose`` logs every delivery.

Example:
    >>> main(["--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .network import Simulation
from .twins import load_scenario

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m bft_ray.sim.replay", description="Replay a saved Twins scenario."
    )
    ap.add_argument("file", help="JSON written by bft_ray.sim.twins.save_scenario")
    ap.add_argument("--verbose", action="store_true", help="print every delivery")
    args = ap.parse_args(argv)
    sc = load_scenario(args.file)
    sim = Simulation(sc.sim_config())
    if args.verbose:
        orig = sim._deliver

        def deliver(dst: int, src: int, msg: object) -> None:
            orig(dst, src, msg)  # type: ignore[arg-type]
            rounds = [i.node.round if i.node else None for i in sim.instances]
            print(f"t={sim.now:4d} {src}->{dst} {type(msg).__name__:13s} rounds={rounds}")

        sim._deliver = deliver  # type: ignore[method-assign]
    res = sim.run()
    print(f"scenario {sc.scenario_id} rule={sc.commit_rule} twin_key={sc.twin_key} bugs={sc.bugs}")
    for i, (leader, groups) in enumerate(sc.rounds, start=1):
        print(f"  round {i}: leader {leader} partition {[list(g) for g in groups]}")
    for inst, rounds in sorted(res.committed_rounds.items()):
        print(f"  instance {inst} committed rounds {rounds}")
    print(f"trace {res.trace_digest}")
    if res.violations:
        for v in res.violations:
            print(f"VIOLATION {v.kind} instance={v.instance} t={v.time}: {v.detail}")
        return 1
    print("no violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
