"""Tests that can fail: each seeded bug is caught, and the correct core passes the same runs.

Bug 1 (no lock check) and bug 2 (vote released before its safety state is persisted, with a
crash in between) are caught by the simulator with a Byzantine replica. Bug 3 (commit without
consecutive rounds) is caught as a real fork by an exhaustively enumerated family of
round-partition scenarios (two-chain), and by Twins and the simulator through the commit-rule
invariant (both rules).

Why bug 1 needs a Byzantine leader: an honest leader always extends the highest QC it knows,
and a TC carries the highest QC its 2f + 1 signers reported, so with honest-code leaders (Twins
included) no proposal ever fails the lock check that the bug removes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bft_ray.consensus import CommitRule, RoundRobin, SeededBugs
from bft_ray.sim import SAFETY_KINDS, NetworkConfig, SimConfig, Simulation
from bft_ray.sim.twins import TwinsGenerator, TwinsScenario, isolation_family, run_batch

RULES = [CommitRule.TWO_CHAIN, CommitRule.THREE_CHAIN]
SEEDS = range(10)


def _runs(bugs: SeededBugs, seeds=SEEDS, **cfg) -> list[set[str]]:
    return [Simulation(SimConfig(seed=s, bugs=bugs, **cfg)).run().violation_kinds for s in seeds]


@pytest.mark.parametrize("rule", RULES)
def test_bug1_missing_lock_check_is_caught(rule):
    # Replica 0 leads two rounds in a row and proposes on the genesis QC, ignoring every lock:
    # in its first round nobody can follow (no TC yet); in the second it attaches that TC.
    cfg = dict(
        commit_rule=rule,
        max_ticks=300,
        byzantine={0: "stale_proposer"},
        leaders=RoundRobin(4, [0, 0, 1, 2, 3]),
        network=NetworkConfig(drop_prob=0.02),
    )
    buggy = _runs(SeededBugs(skip_lock_check=True), **cfg)
    correct = _runs(SeededBugs(), **cfg)
    assert all(not k for k in correct), correct
    caught = [k for k in buggy if k & SAFETY_KINDS]
    assert len(caught) >= len(SEEDS) // 2, buggy  # conflicting commits, not just a format check


@pytest.mark.parametrize("rule", RULES)
def test_bug2_vote_before_persist_is_caught(rule):
    # An equivocating leader re-sends its other block later; honest replicas crash right after
    # sending a vote (before advance) and restart from their store.
    cfg = dict(
        commit_rule=rule,
        max_ticks=300,
        byzantine={0: "equivocate_late"},
        crash_after_vote_prob=0.5,
        network=NetworkConfig(drop_prob=0.02),
    )
    buggy = _runs(SeededBugs(vote_before_persist=True), range(20), **cfg)
    correct = _runs(SeededBugs(), range(20), **cfg)
    assert all(not k for k in correct), correct
    assert sum("double_vote" in k for k in buggy) >= 3, buggy


def test_bug2_needs_the_crash():
    # Without a crash between send and advance, the deferred state is persisted in time.
    cfg = dict(
        max_ticks=300, byzantine={0: "equivocate_late"}, network=NetworkConfig(drop_prob=0.02)
    )
    assert all(not k for k in _runs(SeededBugs(vote_before_persist=True), **cfg))


@pytest.mark.parametrize("rule", RULES)
def test_bug3_non_consecutive_commit_is_caught_by_twins(rule):
    bugs = SeededBugs(non_consecutive_commit=True)
    buggy = run_batch(TwinsGenerator(rounds=7, commit_rule=rule, bugs=bugs).sample(300, seed=9))
    correct = run_batch(TwinsGenerator(rounds=7, commit_rule=rule).sample(300, seed=9))
    assert correct.failed == 0
    assert buggy.failed >= 10 and "commit_rule" in buggy.kinds, buggy.kinds


@pytest.mark.parametrize("rule", RULES)
def test_bug3_non_consecutive_commit_is_caught_by_the_simulator(rule):
    cfg = dict(commit_rule=rule, max_ticks=300, network=NetworkConfig(max_delay=6, drop_prob=0.2))
    buggy = _runs(SeededBugs(non_consecutive_commit=True), **cfg)
    correct = _runs(SeededBugs(), **cfg)
    assert all(not k for k in correct), correct
    assert sum("commit_rule" in k for k in buggy) >= len(SEEDS) // 2, buggy


FULL = ((0, 1, 2, 3),)


def _cut(i):
    return ((i,), tuple(j for j in range(4) if j != i))


def test_bug3_fork_hand_derived_scenario():
    """The smallest fork we know for the non-consecutive two-chain rule (round robin: leader r%4).

    r1: B1 by 1; its QC forms at 2 only.        r2: 2 cut off, so nobody else learns QC(B1).
    r3: D3 by 3 extends genesis via TC(2); QC(D3) forms at 0 only.     r4: 0 cut off.
    r5: C5 by 1 extends B1 via TC(4) (2 reported QC(B1)); QC(C5) at 2: the bug commits B1.
    r6: 2 cut off.  r7: G7 by 3 extends D3 via TC(6) (0 reported QC(D3)); QC(G7) at 0: the bug
    commits D3, a sibling of B1.
    """
    rounds = tuple(
        (r % 4, g)
        for r, g in zip(range(1, 9), [FULL, _cut(2), FULL, _cut(0), FULL, _cut(2), FULL, FULL])
    )
    base = TwinsScenario(rounds=rounds, twin_key=None, check_commit_proofs=False)
    buggy = Simulation(
        replace(base, bugs=SeededBugs(non_consecutive_commit=True)).sim_config()
    ).run()
    assert "conflicting_commit" in buggy.violation_kinds, buggy.violations
    assert Simulation(base.sim_config()).run().ok


def test_bug3_fork_found_by_exhaustive_partition_family():
    bugs = SeededBugs(non_consecutive_commit=True)
    family = [replace(s, check_commit_proofs=False) for s in isolation_family(rounds=8, bugs=bugs)]
    buggy = run_batch(family)
    correct = run_batch([replace(s, bugs=SeededBugs()) for s in family])
    assert buggy.scenarios == correct.scenarios == 625
    assert correct.failed == 0
    assert buggy.kinds.get("conflicting_commit", 0) >= 1, buggy.kinds
