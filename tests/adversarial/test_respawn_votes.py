"""Attack 3: a respawn re-voting. A slot crashes, comes back with a new identity, and lies.

Three executors, every call on all three (replicas=3, quorum=2); slot 2 is faulty. Its respawn
(``ex2.1``) has a new id and key but the same slot, so it must never count as a second,
independent vote. Claims: the caller gets the right value or a clear error, never the faulty
slot's value; a certificate's agreeing attestations come from distinct slots and no slot signs
twice in one task; the faulty slot's incarnations are never credited for their lie; honest
executors are never flagged.
"""

from __future__ import annotations

import os
import time

import pytest
from adversarial._util import by_value, counts, delta, executor_slot_index, start, stop

import bft_ray
from bft_ray import faults

pytestmark = pytest.mark.ray
by_value(__name__)

N = 3
FAULTY = 2
WRONG = -999


@pytest.fixture(scope="module")
def cluster():
    c = start(N, max_respawns=6)
    yield c
    stop(c)


@pytest.fixture
def heal(cluster):
    yield
    for i in range(N):
        cluster.inject_fault(i, "honest")
    cluster.report()  # settles respawns


def check_slots(cluster, ref) -> bft_ray.Certificate:
    """The certificate verifies, and no slot signs twice in it."""
    cert = bft_ray.certificate(ref)
    assert bft_ray.verify_certificate(cert, cluster.verifier_keys(), task_id=bft_ray.task_id(ref))
    index_of = executor_slot_index(cluster)
    signed = list(cert.agreeing) + [d.attestation for d in cert.dissenting if d.attestation]
    by_index = [index_of[a.executor_id] for a in signed]
    assert len(by_index) == len(set(by_index)), f"a slot signs twice in one task: {signed}"
    agreeing = [index_of[a.executor_id] for a in cert.agreeing]
    assert len(agreeing) == len(set(agreeing)) >= cert.quorum
    assert FAULTY not in agreeing, "the faulty slot is among the agreeing"
    slots = [a.slot for a in cert.agreeing]
    assert len(slots) == len(set(slots)), f"agreeing attestations share a slot: {slots}"
    return cert


class CrashOnceThenLie(faults.Behaviour):
    """Crash on the slot's first call ever (a file remembers it across respawns), then lie."""

    name = "crash_once_then_lie"

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def corrupt(self, output, ctx):
        if not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)
        return WRONG


@bft_ray.verified_remote(replicas=3, quorum=2)
def seven(k):
    return 7


def test_a_respawned_slot_lies_and_is_outvoted_never_counted_twice(cluster, heal, tmp_path):
    flag = str(tmp_path / "crashed")
    honest_before = {i: counts(cluster, i) for i in range(N)}
    faulty_before = counts(cluster, FAULTY)
    cluster.inject_fault(FAULTY, CrashOnceThenLie(flag))
    ref = seven.remote(0)
    assert bft_ray.get(ref, timeout=60) == 7
    check_slots(cluster, ref)
    assert os.path.exists(flag), "slot 2 was asked and crashed"
    cluster.report()  # waits for the respawn
    for k in range(1, 8):
        ref = seven.remote(k)
        assert bft_ray.get(ref, timeout=60) == 7
        check_slots(cluster, ref)
    rows = cluster.report().by_index(FAULTY)
    respawns = [r for r in rows if r["executor"] != f"ex{FAULTY}"]
    assert respawns, f"slot {FAULTY} was not respawned: {rows}"
    for r in rows:
        if r.get("slot") is not None:
            assert r["slot"] == f"slot{FAULTY}", f"a respawn changed slot: {r}"
    d = delta(faulty_before, counts(cluster, FAULTY))
    assert d["agreed"] == 0, f"the faulty slot was credited: {d}"
    assert d["crashed"] >= 1 and d["disagreed"] >= 1, d
    for i in range(N):
        if i != FAULTY:
            assert counts(cluster, i)["flagged"] == honest_before[i]["flagged"], i


class StallOn(faults.Behaviour):
    """An honest executor that stalls on one function's calls (past their time limit)."""

    name = "stall_on"

    def __init__(self, prefix: str, seconds: float) -> None:
        self.prefix = prefix
        self.seconds = seconds

    def before(self, ctx):
        if ctx.task_id.startswith(self.prefix):
            time.sleep(self.seconds)


class LieThenCrashElsewhere(faults.Behaviour):
    """Lie on ``target`` calls; crash once (ever) on a ``trigger`` call, so the slot respawns
    while a ``target`` call it already voted in is still open. Its respawn lies the same way."""

    name = "lie_then_crash"

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def corrupt(self, output, ctx):
        if ctx.task_id.startswith("target-"):
            return WRONG
        if ctx.task_id.startswith("trigger-") and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)
        return output


@bft_ray.verified_remote(replicas=3, quorum=2, timeout_s=4.0)
def target():
    return 7


@bft_ray.verified_remote(replicas=3, quorum=2, timeout_s=30.0)
def trigger():
    return 0


def test_a_respawn_cannot_add_a_second_vote_to_a_call_its_slot_answered(cluster, heal, tmp_path):
    """Slot 2 answers a call with a lie, then crashes on another call and is respawned while
    the first call still waits for a stalled honest replica. The replacement for the stalled
    replica must not be slot 2's respawn: it would repeat the lie and make it a quorum."""
    flag = str(tmp_path / "crashed")
    honest_before = counts(cluster, 0)
    cluster.inject_fault(1, StallOn("target-", 8.0))
    cluster.inject_fault(FAULTY, LieThenCrashElsewhere(flag))
    ref = target.remote()
    time.sleep(0.5)  # slot 2 has answered `target` by now
    other = trigger.remote()
    try:
        value = bft_ray.get(ref, timeout=60)
    except bft_ray.VerificationError:
        value = None  # a clear error is an acceptable outcome; a wrong value is not
    assert value != WRONG, "one faulty slot voted twice through its respawn and won"
    if value is not None:
        assert value == 7
        check_slots(cluster, ref)
    try:
        bft_ray.get(other, timeout=60)
    except bft_ray.VerificationError:
        pass
    assert os.path.exists(flag), "slot 2 should have crashed on the trigger call"
    index_of = executor_slot_index(cluster)
    assert any(index_of[e] == FAULTY and e != f"ex{FAULTY}" for e in index_of), "no respawn"
    assert counts(cluster, 0)["flagged"] == honest_before["flagged"]
