"""Trust and cost on Ray: spot checks, the watched-only cheater, taint and re-verification,
quarantine, probation and re-admission, ban and reinstate, anti-collusion groups, credit and
persistence (trusted-verifier mode)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import bft_ray
from bft_ray import faults
from bft_ray.trust.checkers import freivalds

pytestmark = pytest.mark.usefixtures("ray_module")


def _vec(x):
    return np.arange(4.0) * x


def _truth(x):
    return np.arange(4.0) * x


def _accounts(cluster):
    return {a["executor"]: a for a in cluster.trust_report()["executors"]}


def _init(**kw):
    kw.setdefault("executors", 5)
    kw.setdefault("gpus_per_executor", 0)
    return bft_ray.init(**kw)


def test_spot_checks_cut_cost_catch_the_unwatched_cheater_and_reverify_its_results():
    plan = bft_ray.spot_check(0.1, warmup=2, cooldown=2)
    # Honest all of wave 1, then it lies on the half of tasks it guesses are unwatched. A
    # cheater caught once must agree `cooldown` times in a row before it runs alone again; the
    # more often it lies, the longer that takes. In a simulation of this test (the same
    # Standing, draw and dispatch order, 1000 seeds) no wrong value had been accepted alone and
    # then tainted within 15 waves in 1.3% of runs lying 70% of the time (CI met one), and in
    # none lying 50% of the time.
    cheat = faults.unwatched(rate=0.5, inner="zeros", after=30)
    with _init(faults={3: cheat}, quarantine_below=0.0) as cluster:
        f = bft_ray.verified_remote(replicas=3, policy=plan, num_gpus=0)(_vec)
        cheater = cluster.report().by_index(3)[0]["executor"]
        xs: list[int] = []
        values: list = []
        ids: list[str] = []
        # Waves (trust is earned between them) until a wrong value the cheater had accepted
        # alone is tainted (it was proven wrong afterwards); audits are secret coins, so how
        # long that takes varies.
        for wave in range(15):
            batch = list(range(1 + 40 * wave, 41 + 40 * wave))
            refs = [f.remote(x) for x in batch]
            xs += batch
            values += bft_ray.get(refs)
            ids += [bft_ray.task_id(r) for r in refs]
            wrong = [x for x, v in zip(xs, values) if not np.allclose(v, _truth(x))]
            wrong_ids = {t for t, x, v in zip(ids, xs, values) if not np.allclose(v, _truth(x))}
            if wrong_ids & {t["task_id"] for t in cluster.tainted()}:
                break
        report = cluster.report()
        counters = report.counters
        # Cheaper than replication (3 executions per call), warm-up included.
        assert counters["alone"] >= len(xs) / 3 and counters["audits"] > 0
        executions = sum(r["tasks"] for r in report.executors)
        assert executions / len(xs) < 2.5
        acct = _accounts(cluster)
        # The cheater guessed which calls would be checked from their ids; it was caught.
        assert acct[cheater]["proven_wrong"] >= 1
        assert acct[cheater]["penalties"] == 10.0 * acct[cheater]["proven_wrong"]
        for eid, a in acct.items():
            if eid != cheater:  # honest executors: never penalised, flagged or suspect
                assert a["proven_wrong"] == 0 and a["penalties"] == 0 and a["status"] == "active"
                assert a["balance"] == a["credited"] * 1.0
        # The wrong values accepted alone are what taint lists and re-verification fixes.
        assert wrong, "no wrong value was accepted alone in 600 calls"
        tainted = cluster.tainted()
        assert {t["executor"] for t in tainted} == {cheater}
        rows = cluster.reverify_tainted()
        changed = [r for r in rows if r["changed"]]
        assert all(r["changed"] is not None for r in rows)
        # Every wrong value was tainted (its executor was proven wrong after it), except the
        # ones accepted since its last proof, which are not tainted yet.
        assert 0 < len(changed) <= len(wrong)
        assert cluster.tainted() == []


def test_checker_audits_refuse_a_wrong_product_and_the_majority_flags_it():
    def matmul(a, b):
        return a @ b

    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((24, 16)), rng.standard_normal((16, 8))) for _ in range(24)]
    plan = bft_ray.spot_check(1.0, warmup=1, cooldown=1, checker=freivalds(), checker_cost=0.1)
    bad = faults.unwatched(rate=0.0, inner="random", after=3)
    with _init(executors=4, faults={1: bad}) as cluster:
        mm = bft_ray.verified_remote(replicas=3, policy=plan, num_gpus=0)(matmul)
        out = bft_ray.get([mm.remote(a, b) for a, b in pairs[:12]])
        out += bft_ray.get([mm.remote(a, b) for a, b in pairs[12:]])
        for (a, b), c in zip(pairs, out):
            np.testing.assert_allclose(c, a @ b, rtol=1e-9)  # every audit ran: nothing wrong
        acct = _accounts(cluster)
        cheater = cluster.report().by_index(1)[0]["executor"]
        assert acct[cheater]["proven_wrong"] >= 1
        assert all(a["proven_wrong"] == 0 for e, a in acct.items() if e != cheater)
        counters = cluster.report().counters
        assert counters["audits"] >= 1
        # The cost book: every call counted, checker runs priced by what the verifier timed.
        ((name, cost),) = cluster.trust_report()["cost"].items()
        assert name.endswith("matmul")
        assert cost["calls"] == 24 and cost["checker_runs"] == counters["audits"]
        assert cost["executions"] >= 24  # each call ran the function at least once
        assert cost["declared_checker_price"] == 0.1
        assert cost["checker_price_source"] == "measured" and cost["checker_price"] > 0
        assert cost["executions_per_call"] == pytest.approx(
            (cost["executions"] + cost["checker_runs"] * cost["checker_price"]) / cost["calls"]
        )


def test_quarantine_probation_and_readmission_after_correct_canaries():
    with _init(
        faults={1: "zeros"},
        quarantine_below=0.45,
        quarantine_min_tasks=2,
        readmit_after=2,
        canary_interval_s=0.1,
    ) as cluster:
        f = bft_ray.verified_remote(replicas=3, num_gpus=0)(_vec)
        bft_ray.get([f.remote(x) for x in range(1, 41)])
        faulty = cluster.report().by_index(1)[0]["executor"]
        assert _accounts(cluster)[faulty]["status"] == "quarantined"
        deadline = time.monotonic() + 30
        while _accounts(cluster)[faulty]["canaries_failed"] < 1:  # on probation, they fail
            assert time.monotonic() < deadline, _accounts(cluster)[faulty]
            time.sleep(0.2)
        assert _accounts(cluster)[faulty]["status"] == "quarantined"  # so it stays out
        cluster.inject_fault(1, "honest")  # repaired
        deadline = time.monotonic() + 30
        while _accounts(cluster)[faulty]["status"] != "active":
            assert time.monotonic() < deadline, _accounts(cluster)[faulty]
            time.sleep(0.2)
        assert _accounts(cluster)[faulty]["canaries_passed"] >= 2
        assert cluster.report().row(faulty)["status"] == "alive"
        before = cluster.report().row(faulty)["tasks"]
        bft_ray.get([f.remote(x) for x in range(41, 81)])
        assert cluster.report().row(faulty)["tasks"] > before  # real work again


def test_ban_reinstate_groups_credit_and_persistence(tmp_path):
    path = str(tmp_path / "trust.json")
    groups = {0: "a", 1: "a", 2: "b", 3: "b", 4: "c"}
    colluders = {0: faults.collude("cartel"), 1: faults.collude("cartel")}
    with _init(
        executor_groups=groups,
        faults=colluders,
        trust_path=path,
        prices={"reward": 2.0, "stake": 5.0},
        quarantine_below=0.0,  # keep the flagged cartel in service: placement alone stops it
        canary_rate=0.8,  # known-answer replays mixed in (at 0.5, ~2e-4 of runs sent group b none)
    ) as cluster:
        f = bft_ray.verified_remote(replicas=3, num_gpus=0)(_vec)
        refs = [f.remote(x) for x in range(1, 31)]
        for x, v in zip(range(1, 31), bft_ray.get(refs)):
            np.testing.assert_array_equal(v, _truth(x))  # a same-group cartel never pairs up
        for ref in refs:
            cert = bft_ray.certificate(ref)
            ids = [a.executor_id for a in cert.agreeing] + [d.executor_id for d in cert.dissenting]
            assert len({groups[int(e[2:].split(".")[0])] for e in ids}) == len(ids)
        rows = {r["executor"]: r for r in cluster.report().executors}
        assert rows["ex4"]["credit"] == 2.0 * rows["ex4"]["agreed"]
        acct = _accounts(cluster)
        assert cluster.report().counters["canaries"] > 0
        # Honest executors pass every canary; the cartel's lies fail theirs.
        assert all(acct[e]["canaries_failed"] == 0 for e in ("ex2", "ex3", "ex4"))
        assert sum(acct[e]["canaries_passed"] for e in ("ex2", "ex3", "ex4")) > 0
        assert cluster.ban("ex4") == "banned"
        with pytest.raises(bft_ray.ConfigError, match="no executor"):
            cluster.ban("ex99")
        cluster.inject_fault(0, "honest")
        cluster.inject_fault(1, "honest")
        # Banned: no more work. Two groups are left, so pairs of distinct groups still run.
        before = cluster.report().row("ex4")["tasks"]
        f2 = bft_ray.verified_remote(replicas=2, quorum=2, num_gpus=0)(_vec)
        bft_ray.get([f2.remote(x) for x in range(5)])
        assert cluster.report().row("ex4")["tasks"] == before
        assert cluster.reinstate("ex4") == "active"
        saved = _accounts(cluster)
    with _init(executor_groups=groups, trust_path=path) as cluster:
        again = _accounts(cluster)
        for eid in ("ex2", "ex3", "ex4"):
            assert again[eid]["balance"] == saved[eid]["balance"]
            assert again[eid]["group"] == groups[int(eid[2:])]


def test_policy_option_is_validated_at_decoration():
    f = bft_ray.verified_remote(replicas=3, policy=bft_ray.adaptive(0.1), num_gpus=0)(_vec)
    with pytest.raises(bft_ray.ConfigError, match="replicated instances"):
        bft_ray.verified_remote(policy="adaptive")(type("C", (), {}))
    with pytest.raises(bft_ray.ConfigError, match="not a replication plan"):
        bft_ray.verified_remote(policy="sometimes")(_vec)
    assert "adaptive(epsilon=0.1" in repr(f)


def test_prefill_policy_generates_alone_checked_by_another_executor():
    pytest.importorskip("torch")
    from bft_ray.inference import Sampling, TinyConfig, TinyLMFactory, VerifiedLM, generate
    from bft_ray.inference.faults import ServeSubstitute

    factory = TinyLMFactory(TinyConfig(vocab=128, d_model=32, n_layers=2, n_heads=2), seed=0)
    with _init(executors=4, faults={2: ServeSubstitute("int8")}, quarantine_below=0.0) as c:
        lm = VerifiedLM(factory, policy="prefill", replicas=3, num_gpus=0)
        cheater = c.report().by_index(2)[0]["executor"]
        # Which executors serve a call follows from its random task id, so how soon the
        # cheater is caught varies (8 calls left it uncaught once in CI; 18 runs here caught
        # it 1 to 4 times). Go on, up to 40 calls, until it is caught (if it is caught only as
        # the primary, one call in four, 40 calls miss it with probability 0.75**40 = 1e-5).
        for call in range(40):
            prompts = [[1 + call, 2, 3, 4], [5, 6, 7 + call]]
            sampling = Sampling(temperature=0.8, seed=call)
            gen = lm.generate(prompts, 12, sampling, timeout=120)
            honest = generate(factory(), prompts, 12, sampling)
            np.testing.assert_array_equal(gen.tokens, honest.tokens)
            if call >= 7 and _accounts(c)[cheater]["proven_wrong"] >= 1:
                break
        counters = c.report().counters
        # Warm-up is replicated; then results come from one executor, each checked by one
        # prefill pass elsewhere (audit rate 1).
        assert counters["audits"] >= 1 and counters["alone"] == 0
        acct = _accounts(c)
        assert acct[cheater]["proven_wrong"] >= 1
        assert all(a["proven_wrong"] == 0 for e, a in acct.items() if e != cheater)
