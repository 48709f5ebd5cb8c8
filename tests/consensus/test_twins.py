"""Twins: a fixed deterministic sample in `make test`, 100,000 scenarios in `make test-full`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bft_ray.consensus import CommitRule, SeededBugs
from bft_ray.sim.twins import (
    TwinsGenerator,
    TwinsScenario,
    isolation_family,
    load_scenario,
    run_batch,
    run_scenario,
    save_scenario,
    set_partitions,
)

ROUNDS = 7
FAILURE_DIR = Path(__file__).resolve().parents[2] / "twins-failures"


def _report(batch, name: str) -> str:
    paths = []
    for i, (sc, violations) in enumerate(batch.failures):
        paths.append(save_scenario(sc, FAILURE_DIR / f"{name}-{i}.json", violations))
    lines = [f"{batch.failed}/{batch.scenarios} Twins scenarios violated invariants {batch.kinds}"]
    lines += [f"  replay: {sys.executable} -m bft_ray.sim.replay {p}" for p in paths]
    return "\n".join(lines)


def test_generator_space_and_determinism():
    gen = TwinsGenerator(rounds=ROUNDS)
    # 5 instances (4 keys + 1 twin), <= 2 groups, one group with 3 distinct keys: 13 partitions.
    assert len(gen.partitions) == 13
    assert len(set_partitions(range(5), 2)) == 16
    assert gen.space_size == (13 * 4) ** ROUNDS
    a = list(gen.sample(50, seed=3))
    assert a == list(gen.sample(50, seed=3))
    assert a != list(gen.sample(50, seed=4))
    sc = gen.scenario(gen.space_size - 1)
    assert len(sc.rounds) == ROUNDS
    with pytest.raises(IndexError):
        gen.scenario(gen.space_size)


def test_scenario_json_roundtrip(tmp_path):
    sc = TwinsGenerator(rounds=ROUNDS, commit_rule="three_chain").scenario(987654321)
    p = save_scenario(sc, tmp_path / "s.json")
    back = load_scenario(p)
    assert back == sc
    assert run_scenario(back).trace_digest == run_scenario(sc).trace_digest


@pytest.mark.parametrize(
    ("rule", "count", "seed"),
    [(CommitRule.TWO_CHAIN, 2000, 2024), (CommitRule.THREE_CHAIN, 500, 2025)],
)
def test_twins_sample_has_no_violation(rule, count, seed):
    gen = TwinsGenerator(rounds=ROUNDS, commit_rule=rule)
    batch = run_batch(gen.sample(count, seed=seed), keep=3)
    assert batch.scenarios == count
    assert batch.failed == 0, _report(batch, f"sample-{rule.value}")
    # The scenarios do exercise the protocol: blocks get committed in most of them.
    assert batch.commits > count


@pytest.mark.parametrize("rule", [CommitRule.TWO_CHAIN, CommitRule.THREE_CHAIN])
def test_isolation_family_has_no_violation(rule):
    """All 625 scenarios of the leader-isolation family (R = 8), exhaustively."""
    batch = run_batch(isolation_family(rounds=8, commit_rule=rule), keep=3)
    assert batch.scenarios == 625
    assert batch.failed == 0, _report(batch, f"isolation-{rule.value}")


@pytest.mark.slow
@pytest.mark.parametrize("rule", [CommitRule.TWO_CHAIN, CommitRule.THREE_CHAIN])
def test_isolation_family_full(rule):
    """`make test-full`: the 15,625-scenario family with R = 12, exhaustively."""
    batch = run_batch(isolation_family(rounds=12, commit_rule=rule), workers=2, keep=3, chunk=2000)
    assert batch.scenarios == 15625
    assert batch.failed == 0, _report(batch, f"isolation12-{rule.value}")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_twins_full_run():
    """`make test-full`: 100,000 scenarios (two-chain; 10% three-chain) over 2 processes."""
    count = int(os.environ.get("BFT_RAY_TWINS_FULL", "100000"))
    workers = min(2, os.cpu_count() or 1)
    n3 = count // 10
    g2 = TwinsGenerator(rounds=ROUNDS, commit_rule=CommitRule.TWO_CHAIN)
    g3 = TwinsGenerator(rounds=ROUNDS, commit_rule=CommitRule.THREE_CHAIN)
    scenarios = [*g2.sample(count - n3, seed=1), *g3.sample(n3, seed=2)]
    batch = run_batch(scenarios, workers=workers, keep=5, chunk=2500)
    print(
        f"\nTwins full run: {batch.scenarios} scenarios in {batch.seconds:.1f} s "
        f"({batch.scenarios_per_second:.0f}/s, {workers} processes), {batch.steps} steps"
    )
    assert batch.scenarios == count
    assert batch.failed == 0, _report(batch, "full")


def test_failing_scenario_is_replayed_by_one_command(tmp_path):
    """A seeded bug makes some scenario fail; its JSON replays the failure in a subprocess."""
    bugs = SeededBugs(non_consecutive_commit=True)
    gen = TwinsGenerator(rounds=ROUNDS, bugs=bugs)
    batch = run_batch(gen.sample(300, seed=5), keep=1, stop_at_first=True)
    assert batch.failures, "the seeded bug should fail some scenario"
    sc, violations = batch.failures[0]
    path = save_scenario(sc, tmp_path / "fail.json", violations)
    cmd = [sys.executable, "-m", "bft_ray.sim.replay", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "VIOLATION commit_rule" in out.stdout
    # The same scenario with the bug switched off replays clean.
    fixed = TwinsScenario.from_json({**sc.to_json(), "bugs": {}})
    ok_path = save_scenario(fixed, tmp_path / "ok.json")
    out = subprocess.run([*cmd[:-1], str(ok_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no violations" in out.stdout
