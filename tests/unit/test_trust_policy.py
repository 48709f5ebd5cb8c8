"""Adaptive replication and spot checks: the policy math and its simulation (pure, no Ray)."""

from __future__ import annotations

import math
import random

import blake3
import pytest

from bft_ray.errors import ConfigError
from bft_ray.executor.placement import Candidate, assign
from bft_ray.trust.draw import AuditDraw
from bft_ray.trust.plans import (
    Adaptive,
    Replicate,
    adaptive,
    audit_rate_for,
    detection_probability,
    deterrence_rate,
    plan_from,
    spot_check,
)
from bft_ray.trust.simulate import SimConfig, simulate


@pytest.mark.parametrize("eps, P, N", [(0.1, 0.99, 1000), (0.01, 0.99, 1000), (0.5, 0.9, 10)])
def test_audit_rate_is_the_smallest_meeting_the_target(eps, P, N):
    p = audit_rate_for(eps, P, N)
    assert detection_probability(p, eps, N) == pytest.approx(P, rel=1e-9)
    assert detection_probability(p * 0.99, eps, N) < P
    assert p == pytest.approx((1 - (1 - P) ** (1 / N)) / eps, rel=1e-9)


def test_audit_rate_caps_at_one_and_rejects_nonsense():
    assert audit_rate_for(0.001, 0.999, 5) == 1.0
    for bad in [(0, 0.9, 10), (0.1, 1.0, 10), (0.1, 0.9, 0)]:
        with pytest.raises(ValueError):
            audit_rate_for(*bad)


def test_economic_rate_matches_its_formula_and_the_larger_rate_is_used():
    assert deterrence_rate(reward=1.0, stake=19.0, saving=0.5) == pytest.approx(0.025)
    plan = adaptive(0.1, 0.99, 1000, reward=1.0, stake=4.0, saving=1.0)
    assert plan.economic_rate == pytest.approx(0.2) and plan.rate == pytest.approx(0.2)
    cheap = adaptive(0.1, 0.99, 1000, reward=1.0, stake=99.0, saving=0.1)
    assert cheap.rate == pytest.approx(cheap.detection_rate)
    # Expected gain of one cheat, C - p (R + S), using the empirical audit frequency of the
    # real draw: negative just above the rate, positive just below.
    draw = AuditDraw(b"k" * 32)
    R, S, C = 1.0, 4.0, 1.0
    for p, sign in [(0.22, -1), (0.18, 1)]:
        freq = sum(draw.audited(f"t{i}", "e", b"d", p) for i in range(20_000)) / 20_000
        assert math.copysign(1, C - freq * (R + S)) == sign


def test_plan_validation_says_how_to_fix():
    with pytest.raises(ConfigError, match="spot_check"):
        Adaptive(epsilon=0.1, rate=0.5)
    with pytest.raises(ConfigError, match="reward, stake and saving"):
        adaptive(0.1, reward=1.0)
    with pytest.raises(ConfigError, match="rate"):
        spot_check(0.0)
    with pytest.raises(ConfigError, match="not a replication plan"):
        plan_from("sometimes")
    assert isinstance(plan_from("replicate"), Replicate)
    assert plan_from("adaptive").rate == pytest.approx(audit_rate_for(0.1, 0.99, 1000))


def test_audit_draw_is_uniform_and_provable():
    draw = AuditDraw(b"s" * 32)
    values = [draw.value(f"t{i}", "e", b"d") for i in range(20_000)]
    assert abs(sum(v < 0.05 for v in values) / len(values) - 0.05) < 0.006  # ~4 sigma
    key = draw.reveal("t7")
    assert AuditDraw.check(key, "e", b"d") == values[7]
    # The revealed key of one call says nothing about another's coin.
    assert AuditDraw.check(key, "e", b"d") != draw.value("t8", "e", b"d")
    assert AuditDraw(b"t" * 32).value("t7", "e", b"d") != values[7]


def test_derived_rate_meets_the_detection_bound_in_simulation():
    """Over many seeds a trusted cheater at epsilon is caught within N tasks with >= P."""
    eps, P, N = 0.2, 0.9, 30
    plan = adaptive(eps, P, N, warmup=5, cooldown=5)
    caught, seeds = 0, 150
    for seed in range(seeds):
        r = simulate(
            SimConfig(honest=4, epsilon=eps, tasks=600, plan=plan, seed=seed, cheat_after=40)
        )
        assert r.honest_flagged == 0
        caught += r.caught_after is not None and r.caught_after <= N
    # P - 3 sigma of a binomial(150, 0.9): the bound holds up to sampling error.
    assert caught / seeds >= P - 3 * math.sqrt(P * (1 - P) / seeds)


def test_cost_after_warmup_is_near_the_formula_minimum():
    plan = adaptive(0.1, 0.99, 1000)
    r = simulate(SimConfig(honest=20, epsilon=0.1, tasks=8000, plan=plan, seed=2, cheat_after=50))
    assert r.honest_flagged == 0 and r.warmup_tasks > 0
    assert r.executions_after_warmup <= 1.1 * (1 + plan.rate)


def _public_guess(rate: float):
    """What a cheater can compute: a hash of the task id (it never sees the secret key)."""

    def predicts(task_id: str) -> bool:
        h = blake3.blake3(task_id.encode()).digest(8)
        return int.from_bytes(h, "little") / float(1 << 64) < rate

    return predicts


class _PublicDraw(AuditDraw):
    """Seeded bug (test side only): the audit coin is a public hash of the task id."""

    def __init__(self, rate: float) -> None:
        super().__init__(b"\0" * 32)
        self._guess = _public_guess(rate)

    def audited(self, task_id, executor_id, digest, rate):
        return self._guess(task_id)


def test_cheater_that_behaves_only_when_watched_is_still_caught():
    plan = spot_check(0.3, warmup=5, cooldown=5)
    cfg = dict(honest=4, epsilon=1.0, tasks=400, plan=plan, cheat_after=30)
    cfg["predicts_audit"] = _public_guess(plan.rate)
    caught = [simulate(SimConfig(seed=s, **cfg)).caught_after for s in range(20)]
    assert all(c is not None for c in caught)
    # With the seeded bug the same cheater predicts every audit: never caught, and its wrong
    # answers are accepted.
    bug = [simulate(SimConfig(seed=s, draw=_PublicDraw(plan.rate), **cfg)) for s in range(20)]
    assert all(r.caught_after is None and r.wrong_accepted > 0 for r in bug)


def test_tainted_results_are_the_lone_wrong_ones_and_more():
    plan = spot_check(0.05, warmup=3, cooldown=3)
    r = simulate(SimConfig(honest=4, epsilon=0.3, tasks=2000, plan=plan, seed=5, cheat_after=20))
    assert r.caught_after is not None
    # Every lone result accepted from the cheater is listed, so the wrong ones among them too.
    assert r.tainted_reported >= r.wrong_accepted


def test_anti_collusion_placement_never_pairs_a_group():
    cands = [Candidate(f"e{i}", f"n{i}", group=f"owner{i // 2}") for i in range(8)]
    rng = random.Random(0)
    for t in range(500):
        picked = assign(f"t{t}", cands, 3, load={c.executor_id: rng.randrange(3) for c in cands})
        assert len({c.group for c in picked}) == len(picked) == 3
    # A group already holding a replica (earlier dispatch) is excluded too; fewer is better
    # than a colluding pair.
    few = assign("t", cands[:4], 3, avoid_groups={"owner0"})
    assert [c.group for c in few] == ["owner1"]
