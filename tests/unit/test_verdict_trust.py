"""Escalation, replica assignment, reputation and quarantine (pure, no Ray).

The verdict state machine and admission are in ``test_verdict_path.py``; certificates in
``test_certificate.py``.
"""

from __future__ import annotations

import pytest

from bft_ray.config import Policy
from bft_ray.executor.placement import Candidate, assign
from bft_ray.trust.reputation import ExecutorRecord, QuarantinePolicy, Reputation
from bft_ray.verifier.decision import Judgement, Label, VerdictRecord, escalation_size


@pytest.mark.parametrize(
    "best, compared, max_replicas, expected",
    [(1, 3, 5, 2), (1, 3, 4, None), (2, 4, 5, 1), (1, 2, 3, 1), (0, 3, 9, 4)],
)
def test_escalation_size(best, compared, max_replicas, expected):
    assert (
        escalation_size(best, compared, Policy(replicas=3, max_replicas=max_replicas)) == expected
    )


def test_assignment_is_deterministic_distinct_and_spreads_nodes():
    cands = [Candidate(f"e{i}", f"n{i % 3}") for i in range(9)]
    a = assign("task-1", cands, 3)
    assert a == assign("task-1", list(reversed(cands)), 3)
    assert len({c.executor_id for c in a}) == 3 and len({c.node_id for c in a}) == 3
    # More replicas than nodes: nodes repeat only once every node is used.
    b = assign("task-1", cands, 5)
    assert len({c.node_id for c in b}) == 3
    assert not {
        c.executor_id for c in assign("task-1", cands, 3, exclude={c.executor_id for c in a})
    } & {c.executor_id for c in a}


def test_assignment_spreads_load():
    cands = [Candidate(f"e{i}", "n") for i in range(6)]
    counts = {c.executor_id: 0 for c in cands}
    for t in range(3000):
        for c in assign(f"t{t}", cands, 3):
            counts[c.executor_id] += 1
    assert max(counts.values()) / min(counts.values()) < 1.15


def test_reputation_trust_and_quarantine():
    rep = Reputation()
    rep.register("e", 0, "n")
    for i in range(5):
        rep.record("e", "disagreed", f"t{i}", "values", evidence="sig")
    r = rep.get("e")
    assert r.flagged == 5 and r.trust == pytest.approx(1 / 7) and r.flags[-1].evidence == "sig"
    q = QuarantinePolicy(below=0.3, min_tasks=4, keep=3)
    assert q.should_quarantine(r, in_service=4)
    assert not q.should_quarantine(r, in_service=3)  # never below `keep` in service
    assert not QuarantinePolicy(below=0.0).should_quarantine(r, 10)  # disabled
    assert not q.should_quarantine(ExecutorRecord("x", 1, "n", tasks=3, disagreed=3), 10)  # too new


def test_assignment_excludes_slots_so_a_respawn_never_reruns_a_task():
    cands = [
        Candidate("ex0", "n", "slot0"),
        Candidate("ex1.1", "n", "slot1"),
        Candidate("ex2", "n", "slot2"),
    ]
    # slot1 ran the task as ex1; its respawn ex1.1 is the same slot.
    picked = assign("t", cands, 3, exclude={"slot1"})
    assert [c.executor_id for c in picked if c.slot == "slot1"] == []
    assert len(picked) == 2


def test_reputation_changes_by_applying_verdict_records():
    rep = Reputation()
    for i in range(3):
        rep.register(f"ex{i}", i, "n")
    record = VerdictRecord(
        "t",
        None,
        (),
        2,
        3,
        (
            Judgement("ex0", "slot0", Label.AGREED),
            Judgement("ex1", "slot1", Label.UNALIGNED, "close to a quorum"),
            Judgement("ex2", "slot2", Label.DISAGREED, "values", attestation="signed"),
        ),
        b"k" * 32,
    )
    assert rep.apply(record) == ["ex2"]
    assert rep.get("ex0").agreed == 1 and rep.get("ex1").unaligned == 1
    assert rep.get("ex1").flagged == 0
    assert rep.get("ex2").flagged == 1 and rep.get("ex2").flags[-1].evidence == "signed"
