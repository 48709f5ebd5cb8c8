"""A lying dispatcher re-keys an honest executor (pure: no Ray).

The claim lists each executor's public key, and the recheck admits answers against the keys the
claim lists. A dispatcher that gives an honest executor a key of its own therefore turns every
honest answer into a bad signature: the replay judges it ``invalid``, the claim rechecks as
valid, and the honest executor is flagged on the agreed record. The first test shows the recheck
alone lets that through; the defence is each verifier's own registry of the keys the executors
stated to it (``bft_ray/verifier/registry.py``), checked before the recheck.
"""

from __future__ import annotations

import dataclasses

import pytest

from bft_ray.crypto import SigningKey
from bft_ray.verifier.decision import Label
from bft_ray.verifier.recheck import recheck
from bft_ray.verifier.registry import (
    ExecutorRegistry,
    Registered,
    registration_bytes,
    slot_of_executor,
    unconfirmed,
)

from .test_bft_claims import ACTOR, GOOD, KEYS, dispatch, envelope, seal

DISPATCHER_HELD = SigningKey.generate()  # a key the lying dispatcher holds


def honest_claim(task="reg1"):
    """Three honest answers of ex0..ex2 on their own slots, and the honest claim."""
    answers_by = {
        (f"ex{i}", f"slot{i}"): envelope(KEYS[f"ex{i}"], f"ex{i}", f"slot{i}", GOOD, task=task)
        for i in range(3)
    }
    return dispatch(task, answers_by)


def pinned(keys=KEYS, n=3) -> ExecutorRegistry:
    reg = ExecutorRegistry()
    for i in range(n):
        assert reg.pin(f"ex{i}", Registered(keys[f"ex{i}"].public_bytes, ACTOR, f"slot{i}")) == ""
    return reg


def rekeyed(claim, answers, victim="ex0"):
    """The lie: the victim's key replaced by one the dispatcher holds, verdict recomputed."""
    executors = tuple(
        (e, DISPATCHER_HELD.public_bytes if e == victim else k, a) for e, k, a in claim.executors
    )
    # Its answer does not verify under that key, so the claim reports it as an invalid answer.
    reason = "answer is not signed with the registered key"
    replicas = tuple(
        dataclasses.replace(r, state="failed", failure="invalid", reason=reason)
        if r.executor_id == victim
        else r
        for r in claim.replicas
    )
    return seal(dataclasses.replace(claim, executors=executors, replicas=replicas), answers)


def test_a_rekeyed_honest_executor_is_refused_by_the_recheck_and_by_the_registry():
    claim, answers = honest_claim()
    assert recheck(claim, answers).ok
    assert pinned().mismatch(claim) == ""

    lie = rekeyed(claim, answers)
    flags = {j.executor_id for j in lie.judgements if Label(j.label).flags}
    assert flags == {"ex0"}  # the lie: the honest ex0 flagged invalid
    # The recheck alone used to agree (ex0's answer does not verify under the key the claim
    # names); since only a signed answer is evidence of an invalid one in BFT mode, it
    # refuses the claim, and the registry refuses the key the executor never stated.
    assert "without a signed answer" in recheck(lie, answers).reason
    assert "key it never stated" in pinned().mismatch(lie)


@pytest.mark.parametrize("field", ["actor", "slot", "unregistered"])
def test_a_claim_naming_an_executor_otherwise_than_it_was_pinned_is_refused(field):
    claim, _ = honest_claim()
    if field == "actor":
        executors = tuple((e, k, "cd" * 16 if e == "ex1" else a) for e, k, a in claim.executors)
        claim = dataclasses.replace(claim, executors=executors)
        expected = "actor that is not its own"
    elif field == "slot":
        replicas = tuple(
            dataclasses.replace(r, slot="slot2") if r.executor_id == "ex1" else r
            for r in claim.replicas
        )
        claim = dataclasses.replace(claim, replicas=replicas)
        expected = "not its own slot"
    else:
        expected = "not registered"
    reg = pinned(n=2 if field == "unregistered" else 3)
    assert expected in reg.mismatch(claim)
    assert reg.unknown(claim) == (["ex2"] if field == "unregistered" else [])


def test_the_first_pin_wins_and_a_slot_must_be_the_ids_own():
    reg = pinned()
    again = Registered(KEYS["ex0"].public_bytes, ACTOR, "slot0")
    assert reg.pin("ex0", again) == ""  # the same identity again: nothing changes
    other_key = Registered(DISPATCHER_HELD.public_bytes, ACTOR, "slot0")
    other_actor = Registered(KEYS["ex0"].public_bytes, "ef" * 16, "slot0")
    assert "already registered" in reg.pin("ex0", other_key)
    assert "already registered" in reg.pin("ex0", other_actor)
    assert reg.get("ex0") == again
    assert "states slot" in reg.pin("ex3", Registered(b"k" * 32, ACTOR, "slot4"))
    assert "ex3" not in reg
    assert reg.pin("ex3.2", Registered(b"k" * 32, ACTOR, "slot3")) == ""
    assert [slot_of_executor(e) for e in ("ex3", "ex3.2", "ex", "x3", "ex3.a", "ex-1")] == [
        "slot3",
        "slot3",
        "",
        "",
        "",
        "",
    ]


def test_a_committed_claim_teaches_a_verifier_that_missed_the_registration():
    claim, _ = honest_claim()
    fresh = ExecutorRegistry()
    assert fresh.unknown(claim) == ["ex0", "ex1", "ex2"]
    fresh.learn(claim)
    assert fresh.mismatch(claim) == "" and len(fresh) == 3
    # ... but never re-keys what it pinned itself.
    claim2, answers2 = honest_claim("reg2")
    lie = rekeyed(claim2, answers2)
    fresh.learn(lie)
    assert fresh.get("ex0").key == KEYS["ex0"].public_bytes


def test_registrations_of_different_executors_sign_different_bytes():
    a = registration_bytes([("ex0", ACTOR)])
    assert a != registration_bytes([("ex0", "cd" * 16)])
    assert a != registration_bytes([("ex1", ACTOR)])
    assert a != registration_bytes([("ex0", ACTOR), ("ex1", ACTOR)])
    assert a.startswith(b"bft-ray/executor-registration/v1\x00")


def test_an_executor_is_admitted_only_once_2f_plus_1_verifiers_pinned_the_key_it_gave_us():
    key = KEYS["ex0"].public_bytes
    ok = {"ex0": {"public_key": key}}
    other = {"ex0": {"public_key": DISPATCHER_HELD.public_bytes}}  # a two-faced executor
    assert unconfirmed({"ex0": key}, [ok, ok, ok, "ActorDiedError"], 4) == {}
    assert unconfirmed({"ex0": key}, [ok, ok, other, other], 4)  # 2 of 4
    # f faulty verifiers answering garbage cannot block an honest executor (n = 7, f = 2) ...
    garbage = [{"ex0": "x"}, 42]
    assert unconfirmed({"ex0": key}, [ok] * 5 + garbage, 7) == {}
    # ... nor vouch for a key f + 1 honest verifiers did not pin.
    why = unconfirmed({"ex0": key}, [ok] * 4 + [other] * 3, 7)["ex0"]
    assert "only 4 of 7" in why and "need 5" in why
