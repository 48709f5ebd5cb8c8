"""Drift detection and executor standing: credit, taint, quarantine, canaries (pure, no Ray)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bft_ray.compare.tolerance import tolerance_ratio
from bft_ray.config import Tolerance
from bft_ray.trust.drift import DriftDetector
from bft_ray.trust.plans import spot_check
from bft_ray.trust.standing import Prices, Standing, Status


def _pool(detector, rng, rounds, noise, n=10):
    fired = []
    for t in range(rounds):
        for e in range(n):
            if detector.observe(f"e{e}", noise(rng, e, t)):
                fired.append((t, f"e{e}"))
    return fired


@pytest.mark.parametrize(
    "noise",
    [
        lambda rng, e, t: abs(rng.gauss(0, 0.1)),
        lambda rng, e, t: min(1.0, rng.expovariate(20.0)),
        lambda rng, e, t: 0.0 if rng.random() < 0.8 else rng.random() * 0.3,  # mostly identical
    ],
    ids=["half-normal", "exponential", "mostly-identical"],
)
def test_stable_honest_pool_raises_no_alarm(noise):
    # 10 executors x 5,000 results each: the false-alarm rate is measured, not assumed.
    d = DriftDetector()
    assert _pool(d, random.Random(1), 5000, noise) == []


def test_slowly_growing_noise_is_found_before_it_disagrees():
    rounds = 3000

    def noise(rng, e, t):
        scale = 0.05 * (1 + 2 * t / rounds) if e == 3 else 0.05  # e3 drifts to 3x
        return min(1.0, abs(rng.gauss(0, scale)))

    for seed in range(3):
        fired = _pool(DriftDetector(), random.Random(seed), rounds, noise)
        assert fired and fired[0][1] == "e3" and {e for _, e in fired} == {"e3"}
        # Found while its results were still well inside the tolerance (scale < 0.2).
        assert 0.05 * (1 + 2 * fired[0][0] / rounds) < 0.2


def test_drift_marks_suspect_and_reinstate_clears_it():
    s = Standing()
    rng = random.Random(0)
    for _ in range(400):
        for e in ("a", "b", "c", "d"):
            s.observe_distance(e, abs(rng.gauss(0, 0.05)))
    assert all(s.get(e).status is Status.ACTIVE for e in "abcd")
    assert any(s.observe_distance("d", 0.5) for _ in range(50))
    assert s.get("d").status is Status.SUSPECT and not s.may_run_alone("d", "f", spot_check(0.1))
    s.reinstate("d")
    assert s.get("d").status is Status.ACTIVE


def test_tolerance_ratio_measures_distance_in_tolerance_units():
    tol = Tolerance(rtol=1e-3, atol=0.0)
    a = np.ones(100, np.float32)
    assert tolerance_ratio(a, a.copy(), tol) == 0.0
    b = a.copy()
    b[7] = 1.0005
    assert tolerance_ratio(a, b, tol) == pytest.approx(0.5, rel=1e-3)
    b[7] = 1.01
    assert tolerance_ratio(a, b, tol) == float("inf")  # disagrees
    assert tolerance_ratio({"x": a, "n": 3}, {"x": a, "n": 3}, tol) == 0.0
    ulp = Tolerance.ulp(4)
    c = np.nextafter(a, 2, dtype=np.float32)
    assert tolerance_ratio(a, c, ulp) == pytest.approx(0.25)


def test_credit_penalty_and_taint():
    s = Standing(Prices(reward=2.0, stake=5.0, crash_penalty=1.0))
    plan = spot_check(0.1, warmup=2, cooldown=4)
    for t in range(2):
        s.apply_labels(f"t{t}", "f", [("e0", "agreed"), ("e1", "agreed")])
    assert s.may_run_alone("e0", "f", plan) and not s.may_run_alone("e0", "g", plan)
    s.apply_labels("t2", "f", [("e0", "agreed")], alone=True, digest=b"\1" * 32)
    s.apply_labels("t3", "f", [("e0", "agreed")], alone=True, digest=b"\2" * 32)
    assert s.get("e0").earned == 8.0  # 2 verified + 2 lone results paid
    tainted = s.apply_labels(
        "t4", "f", [("e0", "disagreed"), ("e1", "agreed"), ("e2", "crashed")], cooldown=4
    )
    assert [t.task_id for t in tainted] == ["t2", "t3"]
    acct = s.account("e0")
    assert acct["balance"] == 3.0 and acct["proven_wrong"] == 1 and acct["tainted"] == 2
    assert s.account("e2")["balance"] == -1.0
    # Cooldown: max(warmup, cooldown) verified agreements before it runs alone again.
    for _ in range(3):
        s.verified("e0", "f", agreed=True)
        assert not s.may_run_alone("e0", "f", plan)
    s.verified("e0", "f", agreed=True)
    assert s.may_run_alone("e0", "f", plan)
    s.clear_tainted("e0", {"t2"})
    assert [t.task_id for t in s.tainted["e0"]] == ["t3"]


def test_quarantine_probation_readmission_and_operator_actions():
    s = Standing(readmit_after=3)
    s.register("e0", group="owner-a")
    s.quarantine("e0", "trust below 0.3")
    assert not s.receives_work("e0")
    assert s.canary("e0", True) == "" and s.canary("e0", True) == ""
    assert s.canary("e0", False, "f", "c3") == "failed"  # a failed canary restarts probation
    assert s.get("e0").proven_wrong == 1
    assert [s.canary("e0", True) for _ in range(3)][-1] == "readmitted"
    assert s.receives_work("e0")
    s.ban("e0")
    assert not s.receives_work("e0")
    s.quarantine("e0", "x")
    assert s.get("e0").status is Status.BANNED  # quarantine never lifts a ban
    s.reinstate("e0")
    assert s.get("e0").status is Status.ACTIVE


def test_state_survives_a_restart(tmp_path):
    s = Standing(Prices(stake=3.0))
    rng = random.Random(0)
    for t in range(300):
        s.apply_labels(f"t{t}", "f", [("e0", "agreed"), ("e1", "agreed")])
        s.observe_distance("e0", abs(rng.gauss(0, 0.1)))
        s.observe_distance("e1", abs(rng.gauss(0, 0.1)))
    s.apply_labels("t9", "f", [("e1", "agreed")], alone=True, digest=b"\3" * 32)
    s.apply_labels("t10", "g", [("e1", "disagreed"), ("e0", "agreed")])
    path = tmp_path / "trust.json"
    s.save(str(path))
    r = Standing.load(str(path))
    assert r.to_json() == s.to_json()
    assert r.account("e1") == s.account("e1")
    plan = spot_check(0.1, warmup=10)
    assert r.may_run_alone("e0", "f", plan) and not r.may_run_alone("e1", "f", plan)
