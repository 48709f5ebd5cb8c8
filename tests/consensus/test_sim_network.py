"""Simulator: determinism, Byzantine replicas, crashes, partitions and liveness."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bft_ray.consensus import CommitRule, RoundRobin
from bft_ray.sim import BEHAVIORS, Crash, NetworkConfig, Partition, SimConfig, Simulation

RULES = [CommitRule.TWO_CHAIN, CommitRule.THREE_CHAIN]
ROUGH = NetworkConfig(min_delay=1, max_delay=4, drop_prob=0.05, duplicate_prob=0.05)


def test_same_seed_same_trace_different_seed_different_trace():
    cfg = dict(max_ticks=250, network=ROUGH, byzantine={0: "equivocate"})
    a = Simulation(SimConfig(seed=7, **cfg)).run()
    b = Simulation(SimConfig(seed=7, **cfg)).run()
    c = Simulation(SimConfig(seed=8, **cfg)).run()
    assert a.trace_digest == b.trace_digest
    assert a.commit_logs == b.commit_logs
    assert a.trace_digest != c.trace_digest


def test_trace_is_independent_of_hash_randomisation():
    code = textwrap.dedent(
        """
        from bft_ray.sim import NetworkConfig, SimConfig, Simulation
        r = Simulation(SimConfig(seed=11, max_ticks=200, byzantine={3: "replay"},
                       network=NetworkConfig(max_delay=5, drop_prob=0.1))).run()
        print(r.trace_digest)
        """
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("behavior", sorted(BEHAVIORS))
def test_byzantine_replica_cannot_break_safety(behavior, rule):
    for seed in range(3):
        res = Simulation(
            SimConfig(
                seed=seed,
                commit_rule=rule,
                byzantine={seed % 4: behavior},
                network=ROUGH,
                max_ticks=300,
            )
        ).run()
        assert res.ok, res.violations[:3]
        if not (behavior == "silent" and rule is CommitRule.THREE_CHAIN):
            # (Three-chain under round robin with n = 4 needs three consecutive honest leaders
            # plus an honest next leader, which one silent replica prevents: a known liveness
            # limit, see docs/consensus.md.)
            assert max(res.commit_heights.values()) > 0


def test_forgeries_are_rejected_not_accepted():
    res = Simulation(SimConfig(seed=1, byzantine={2: "forge"}, max_ticks=200)).run()
    assert res.ok
    for reason in ("bad_vote_signature", "bad_proposal_signature", "bad_timeout"):
        assert res.rejected.get(reason, 0) > 0, res.rejected


@pytest.mark.parametrize("rule", RULES)
def test_crashes_restarts_and_healing_partitions_are_safe(rule):
    for seed in range(4):
        res = Simulation(
            SimConfig(
                seed=seed,
                commit_rule=rule,
                max_ticks=500,
                crashes=(Crash(1, 40, 120), Crash(2, 200, 230)),
                crash_after_vote_prob=0.2,
                network=NetworkConfig(
                    max_delay=4,
                    drop_prob=0.1,
                    partitions=(Partition(60, 160, ((0, 1), (2, 3))),),
                    gst=300,
                ),
            )
        ).run()
        assert res.ok, res.violations[:3]
        heights = res.commit_heights
        assert min(heights.values()) > 5, heights


def _first_commit_round_after(res, inst, tick):
    return next((r for t, r in res.commit_times[inst] if t >= tick), None)


# Liveness: once the network is stable (GST) commits resume within a bounded number of rounds.
# Rounds lost per 2-chain commit under round robin with one crashed leader: its round and the
# round before it (votes go to the next leader), so a window of 8 rounds is generous.
@pytest.mark.parametrize(
    ("n", "rule", "crashed", "window"),
    [
        (4, CommitRule.TWO_CHAIN, (0,), 8),
        (7, CommitRule.TWO_CHAIN, (0, 3), 10),
        (7, CommitRule.THREE_CHAIN, (0,), 10),
        (4, CommitRule.TWO_CHAIN, (), 4),
        (4, CommitRule.THREE_CHAIN, (), 5),
    ],
)
def test_commits_resume_after_gst_with_f_crashed(n, rule, crashed, window):
    gst = 200
    for seed in range(3):
        res = Simulation(
            SimConfig(
                n=n,
                seed=seed,
                commit_rule=rule,
                max_ticks=gst + 400,
                crashes=tuple(Crash(c, 0) for c in crashed),
                probe_tick=gst,
                network=NetworkConfig(
                    max_delay=6,
                    drop_prob=0.3,
                    partitions=(Partition(50, gst, ((0, 1), tuple(range(2, n)))),),
                    gst=gst,
                    stable_max_delay=2,
                ),
            )
        ).run()
        assert res.ok, res.violations[:3]
        for inst, r0 in res.probe_rounds.items():
            first = _first_commit_round_after(res, inst, gst)
            assert first is not None, (seed, inst, res.commit_heights)
            # The first block committed after GST was proposed within `window` rounds.
            assert first <= r0 + window, (seed, inst, r0, first)


def test_commits_resume_after_the_leader_crashes():
    # Find the leader of the round in progress at tick 100 and crash it there.
    probe = Simulation(SimConfig(seed=5, max_ticks=100, probe_tick=100)).run()
    r = max(probe.probe_rounds.values())
    leader = RoundRobin(4).leader(r)
    res = Simulation(
        SimConfig(seed=5, max_ticks=400, crashes=(Crash(leader, 100),), probe_tick=101)
    ).run()
    assert res.ok
    for inst, r0 in res.probe_rounds.items():
        first = _first_commit_round_after(res, inst, 101)
        assert first is not None and first <= r0 + 8, (inst, r0, first)


def test_replica_isolated_for_many_rounds_catches_up():
    # Replica 3 misses far more rounds than NodeConfig.future_round_window (64).
    res = Simulation(
        SimConfig(
            seed=3,
            max_ticks=1400,
            probe_tick=1200,
            network=NetworkConfig(
                min_delay=1, max_delay=1, partitions=(Partition(10, 1200, ((0, 1, 2), (3,))),)
            ),
        )
    ).run()
    assert res.ok
    r0 = res.probe_rounds[0]
    assert r0 - res.probe_rounds[3] > 100
    first = _first_commit_round_after(res, 3, 1200)
    assert first is not None and first <= r0 + 6
    assert res.commit_logs[3] == res.commit_logs[0][: len(res.commit_logs[3])]
