"""Twins testing (Bano et al.): honest code, one duplicated key, enumerated partitions and leaders.

For ``n = 4`` keys (``f = 1``) the key ``twin_key`` runs on two instances (instance ``n`` is the
twin), which lets a correct implementation behave like an equivocating replica. A scenario
fixes, for each of ``R`` rounds, the leader key and a partition of the ``n + 1`` instances: a
message is delivered iff sender and receiver share a group in the partition of the sender's
round. Messages from rounds above ``R`` are dropped.

The space of scenarios is every combination of ``(leader, partition)`` per round, with the
partitions limited to at most ``max_groups`` groups of which one holds a quorum of distinct keys
(others cannot make progress and teach nothing new). Scenarios are numbered; a seeded sample
picks numbers uniformly and decodes them, so the same seed always yields the same scenarios.

A failing scenario is saved as JSON and replayed with ``python -m bft_ray.sim.replay FILE``.

Example:
    >>> gen = TwinsGenerator(rounds=6)
    >>> sc = gen.scenario(12345)
    >>> run_scenario(sc).ok
    True
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bft_ray.consensus.config import CommitRule, SeededBugs
from bft_ray.consensus.leader import FixedSchedule, RoundRobin

from .invariants import Violation
from .network import NetworkConfig, SimConfig, SimResult, Simulation

__all__ = [
    "TwinsBatch",
    "TwinsGenerator",
    "TwinsScenario",
    "isolation_family",
    "load_scenario",
    "run_batch",
    "run_scenario",
    "save_scenario",
    "set_partitions",
]

logger = logging.getLogger(__name__)

Groups = tuple[tuple[int, ...], ...]


def set_partitions(items: Sequence[int], max_groups: int) -> list[Groups]:
    """All partitions of ``items`` into at most ``max_groups`` non-empty groups (canonical order).

    Example:
        >>> len(set_partitions([0, 1, 2], 2))
        4
    """
    out: list[list[list[int]]] = [[]]
    for x in items:
        nxt: list[list[list[int]]] = []
        for p in out:
            for i in range(len(p)):
                nxt.append([*p[:i], [*p[i], x], *p[i + 1 :]])
            if len(p) < max_groups:
                nxt.append([*p, [x]])
        out = nxt
    return [tuple(tuple(g) for g in p) for p in out]


@dataclass(frozen=True)
class TwinsScenario:
    """One Twins scenario.

    Attributes:
        rounds: Per round ``1..R``: ``(leader key, partition groups of instance ids)``.
        n: Number of keys.
        twin_key: Key run by two instances (instance ``n`` is the twin); None for no twin.
        commit_rule: ``"two_chain"`` or ``"three_chain"``.
        bugs: Seeded bugs of every instance (test-only).
        scenario_id: Number in the generator's space (informational).
        base_timeout_ticks: Pacemaker base timeout.
        max_timeout_ticks: Back-off cap.
        ticks_per_round: Tick budget per scenario round (run length = R times this).
        check_commit_proofs: Whether the checker verifies commit proofs against the rule.
    """

    rounds: tuple[tuple[int, Groups], ...]
    n: int = 4
    twin_key: int | None = 0
    commit_rule: str = CommitRule.TWO_CHAIN.value
    bugs: SeededBugs = field(default_factory=SeededBugs)
    scenario_id: int | None = None
    base_timeout_ticks: int = 4
    max_timeout_ticks: int = 16
    ticks_per_round: int = 10
    check_commit_proofs: bool = True

    def sim_config(self) -> SimConfig:
        """The simulator configuration that realises this scenario."""
        R = len(self.rounds)
        leaders = FixedSchedule(
            {r + 1: leader for r, (leader, _) in enumerate(self.rounds)}, RoundRobin(self.n)
        )
        return SimConfig(
            n=self.n,
            seed=0,
            commit_rule=self.commit_rule,
            network=NetworkConfig(min_delay=1, max_delay=1),
            bugs=self.bugs,
            twins={self.n: self.twin_key} if self.twin_key is not None else {},
            leaders=leaders,
            base_timeout_ticks=self.base_timeout_ticks,
            max_timeout_ticks=self.max_timeout_ticks,
            max_ticks=R * self.ticks_per_round,
            round_partitions={r + 1: groups for r, (_, groups) in enumerate(self.rounds)},
            drop_rounds_above=R,
            stop_rounds_above=R,
            check_commit_proofs=self.check_commit_proofs,
            record_trace=True,
            payload_size=8,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (see :func:`save_scenario`)."""
        return {
            "format": "bft-ray-twins/1",
            "n": self.n,
            "twin_key": self.twin_key,
            "commit_rule": self.commit_rule,
            "bugs": asdict(self.bugs),
            "scenario_id": self.scenario_id,
            "base_timeout_ticks": self.base_timeout_ticks,
            "max_timeout_ticks": self.max_timeout_ticks,
            "ticks_per_round": self.ticks_per_round,
            "check_commit_proofs": self.check_commit_proofs,
            "rounds": [
                {"round": i + 1, "leader": leader, "partition": [list(g) for g in groups]}
                for i, (leader, groups) in enumerate(self.rounds)
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TwinsScenario:
        """Inverse of :meth:`to_json`."""
        if d.get("format") != "bft-ray-twins/1":
            raise ValueError(f"not a bft-ray Twins scenario: format={d.get('format')!r}")
        rounds = tuple(
            (int(r["leader"]), tuple(tuple(int(i) for i in g) for g in r["partition"]))
            for r in d["rounds"]
        )
        return cls(
            rounds=rounds,
            n=int(d["n"]),
            twin_key=None if d.get("twin_key") is None else int(d["twin_key"]),
            commit_rule=str(d["commit_rule"]),
            bugs=SeededBugs(**d.get("bugs", {})),
            scenario_id=d.get("scenario_id"),
            base_timeout_ticks=int(d.get("base_timeout_ticks", 4)),
            max_timeout_ticks=int(d.get("max_timeout_ticks", 16)),
            ticks_per_round=int(d.get("ticks_per_round", 10)),
            check_commit_proofs=bool(d.get("check_commit_proofs", True)),
        )


def save_scenario(
    scenario: TwinsScenario, path: str | os.PathLike[str], violations: Iterable[Violation] = ()
) -> Path:
    """Write ``scenario`` (and the violations it produced) as JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = scenario.to_json()
    doc["violations"] = [v.to_dict() for v in violations]
    doc["replay"] = f"python -m bft_ray.sim.replay {p}"
    p.write_text(json.dumps(doc, indent=1) + "\n")
    return p


def load_scenario(path: str | os.PathLike[str]) -> TwinsScenario:
    """Read a scenario written by :func:`save_scenario`."""
    return TwinsScenario.from_json(json.loads(Path(path).read_text()))


def run_scenario(scenario: TwinsScenario) -> SimResult:
    """Run one scenario and check every invariant."""
    return Simulation(scenario.sim_config()).run()


class TwinsGenerator:
    """Numbered space of Twins scenarios and seeded samples of it.

    Args:
        n: Keys (``f = (n - 1) // 3``).
        rounds: Scenario rounds ``R``.
        twin_key: The duplicated key (None: no twin).
        max_groups: Largest number of groups in a partition.
        commit_rule: Commit rule of generated scenarios.
        bugs: Seeded bugs of generated scenarios (test-only).
    """

    def __init__(
        self,
        n: int = 4,
        rounds: int = 7,
        twin_key: int | None = 0,
        max_groups: int = 2,
        commit_rule: CommitRule | str = CommitRule.TWO_CHAIN,
        bugs: SeededBugs | None = None,
    ) -> None:
        self.n = n
        self.rounds = rounds
        self.twin_key = twin_key
        self.commit_rule = CommitRule(commit_rule).value
        self.bugs = bugs or SeededBugs()
        quorum = 2 * ((n - 1) // 3) + 1
        key_of = [*list(range(n)), twin_key]
        self.partitions = [
            p
            for p in set_partitions(list(range(n + 1)), max_groups)
            if any(len({key_of[i] for i in g}) >= quorum for g in p)
        ]
        self.choices_per_round = n * len(self.partitions)
        self.space_size = self.choices_per_round**rounds

    def scenario(self, index: int) -> TwinsScenario:
        """Decode scenario number ``index`` (``0 <= index < space_size``)."""
        if not (0 <= index < self.space_size):
            raise IndexError(f"scenario {index} outside 0..{self.space_size - 1}")
        rounds = []
        x = index
        for _ in range(self.rounds):
            x, c = divmod(x, self.choices_per_round)
            p, leader = divmod(c, self.n)
            rounds.append((leader, self.partitions[p]))
        return TwinsScenario(
            rounds=tuple(rounds),
            n=self.n,
            twin_key=self.twin_key,
            commit_rule=self.commit_rule,
            bugs=self.bugs,
            scenario_id=index,
        )

    def sample(self, count: int, seed: int = 0) -> Iterator[TwinsScenario]:
        """``count`` scenarios drawn uniformly (with a seeded RNG) from the space."""
        rng = random.Random(seed)
        for _ in range(count):
            yield self.scenario(rng.randrange(self.space_size))


def isolation_family(
    n: int = 4,
    rounds: int = 8,
    commit_rule: CommitRule | str = CommitRule.TWO_CHAIN,
    bugs: SeededBugs | None = None,
) -> Iterator[TwinsScenario]:
    """Every scenario where odd rounds are fully connected and each even round is either fully
    connected or cuts one replica off; round-robin leaders, no twin. ``(n + 1) ** (rounds // 2)``
    scenarios, enumerated exhaustively.

    Cutting off the leader that holds the only copy of a fresh QC is what makes replicas'
    views of the chain diverge, so this small family reaches forks that need many precise
    rounds in the general space.
    """
    full: Groups = (tuple(range(n)),)
    options = [full] + [((i,), tuple(j for j in range(n) if j != i)) for i in range(n)]
    rule = CommitRule(commit_rule).value
    for idx, combo in enumerate(itertools.product(options, repeat=rounds // 2)):
        rs = []
        for r in range(1, rounds + 1):
            groups = full if r % 2 == 1 else combo[r // 2 - 1]
            rs.append((r % n, groups))
        yield TwinsScenario(
            rounds=tuple(rs),
            n=n,
            twin_key=None,
            commit_rule=rule,
            bugs=bugs or SeededBugs(),
            scenario_id=idx,
        )


@dataclass
class TwinsBatch:
    """Summary of many scenarios.

    Attributes:
        scenarios: How many ran.
        failures: ``(scenario, violations)`` of each failing one (first ``keep`` only).
        failed: Number of failing scenarios.
        seconds: Wall time.
        steps: Total ``Node.step`` calls.
        tick_calls: Total ``Node.tick`` calls.
        commits: Total committed blocks over all instances.
        kinds: Violation kind -> number of scenarios showing it.
    """

    scenarios: int = 0
    failures: list[tuple[TwinsScenario, list[Violation]]] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0
    steps: int = 0
    tick_calls: int = 0
    commits: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def scenarios_per_second(self) -> float:
        """Throughput."""
        return self.scenarios / self.seconds if self.seconds else 0.0

    def merge(self, other: TwinsBatch, keep: int) -> None:
        """Add ``other`` into this batch."""
        self.scenarios += other.scenarios
        self.failed += other.failed
        self.failures.extend(other.failures[: max(0, keep - len(self.failures))])
        self.steps += other.steps
        self.tick_calls += other.tick_calls
        self.commits += other.commits
        for k, v in other.kinds.items():
            self.kinds[k] = self.kinds.get(k, 0) + v


def _run_chunk(args: tuple[list[TwinsScenario], int, bool]) -> TwinsBatch:
    scenarios, keep, stop_at_first = args
    batch = TwinsBatch()
    t0 = time.perf_counter()
    for sc in scenarios:
        res = run_scenario(sc)
        batch.scenarios += 1
        batch.steps += res.steps
        batch.tick_calls += res.tick_calls
        batch.commits += sum(res.commit_heights.values())
        if res.violations:
            batch.failed += 1
            for k in res.violation_kinds:
                batch.kinds[k] = batch.kinds.get(k, 0) + 1
            if len(batch.failures) < keep:
                batch.failures.append((sc, res.violations))
            if stop_at_first:
                break
    batch.seconds = time.perf_counter() - t0
    return batch


def run_batch(
    scenarios: Iterable[TwinsScenario],
    *,
    workers: int = 1,
    keep: int = 5,
    stop_at_first: bool = False,
    chunk: int = 500,
) -> TwinsBatch:
    """Run scenarios, optionally over ``workers`` processes (spawned, so safe in any parent).

    With ``workers > 1`` a calling script needs the usual ``if __name__ == "__main__":`` guard
    (spawned workers re-import the main module).

    Args:
        scenarios: What to run.
        workers: Processes; 1 runs in this process.
        keep: Failing scenarios kept in the summary.
        stop_at_first: Stop at the first failing scenario (single process only).
        chunk: Scenarios per task when using several processes.
    """
    t0 = time.perf_counter()
    scs = list(scenarios)
    if workers <= 1 or len(scs) <= chunk:
        out = _run_chunk((scs, keep, stop_at_first))
        out.seconds = time.perf_counter() - t0
        return out
    import multiprocessing

    out = TwinsBatch()
    chunks = [(scs[i : i + chunk], keep, False) for i in range(0, len(scs), chunk)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        for part in ex.map(_run_chunk, chunks):
            out.merge(part, keep)
    out.seconds = time.perf_counter() - t0
    return out
