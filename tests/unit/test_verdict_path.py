"""The pure verdict path: admission, the call state machine and its clustering properties.

No Ray: these run in milliseconds and are what every verifier backend relies on.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft_ray.compare import compare
from bft_ray.compare.digest import digest_wire
from bft_ray.compare.wire import encode
from bft_ray.config import Policy, Tolerance
from bft_ray.crypto import SigningKey
from bft_ray.executor import envelope
from bft_ray.executor.actor import error_payload
from bft_ray.verifier.admission import Expected, NoAnswer, Outcome, Status, admit, own_object
from bft_ray.verifier.decision import CallState, Label, Step, choose_clique, max_cliques

KEYS = [SigningKey.generate() for _ in range(8)]


def _answer(i: int, value, task="t", attempt=0, kind=envelope.VALUE, key=None) -> bytes:
    payload = encode(value) if kind == envelope.VALUE else value
    return envelope.build(key or KEYS[i], kind, task, attempt, f"ex{i}", f"slot{i}", payload)


def _expected(i: int, task="t", attempt=0) -> Expected:
    return Expected(task, attempt, f"ex{i}", f"slot{i}", KEYS[i].public_bytes)


def _outcome(i: int, value) -> Outcome:
    out = admit(_answer(i, value), _expected(i))
    assert out.status is Status.OK, out.reason
    return out


# -- admission ------------------------------------------------------------------------------


def test_admits_a_signed_answer_and_keeps_its_attestation():
    out = admit(_answer(0, np.arange(3.0)), _expected(0))
    assert out.status is Status.OK
    assert out.attestation is not None and out.attestation.slot == "slot0"
    assert out.digest == digest_wire(encode(np.arange(3.0)))


@pytest.mark.parametrize(
    "raw, expected, reason",
    [
        (_answer(0, 1.0, task="other"), _expected(0), "names task"),
        (_answer(0, 1.0, attempt=1), _expected(0), "names task"),
        (_answer(0, 1.0), _expected(1), "names task"),  # answer of ex0 presented as ex1's
        (_answer(0, 1.0, key=KEYS[5]), _expected(0), "registered key"),
        (b"", _expected(0), "malformed"),
        (b"BFTE" + b"\x01" * 40, _expected(0), "malformed"),
        ("not bytes", _expected(0), "not bytes"),
        (NoAnswer(Status.INVALID, "refused a pickle"), _expected(0), "pickle"),
    ],
)
def test_refuses_answers_that_are_not_what_they_claim(raw, expected, reason):
    out = own_object(admit(raw, expected))  # as the verifier that submitted the call reads it
    assert out.status is Status.INVALID and reason in out.reason
    assert out.canonical is None


def test_an_executors_own_answer_to_another_call_is_misattributed_not_invalid():
    # Named by someone else's word (a BFT claim), it is no evidence against the executor.
    for raw in (_answer(0, 1.0, task="other"), _answer(0, 1.0, attempt=1)):
        out = admit(raw, _expected(0))
        assert out.status is Status.MISATTRIBUTED and not out.comparable
        assert out.canonical is None and "names task" in out.reason
        replay = own_object(out)
        assert replay.status is Status.INVALID and replay.reason.startswith("replayed answer")
    # Another executor's answer presented as this one's is not its own: INVALID either way.
    assert admit(_answer(0, 1.0), _expected(1)).status is Status.INVALID


def test_a_crash_is_not_an_answer():
    assert admit(NoAnswer(Status.CRASHED, "ACTOR_DIED"), _expected(0)).status is Status.CRASHED


def test_a_signature_over_other_bytes_is_refused():
    raw = bytearray(_answer(0, np.zeros(4)))
    raw[-1] ^= 0x01  # flip a bit of the payload after signing
    assert admit(bytes(raw), _expected(0)).status is Status.INVALID


def test_error_records_are_admitted_as_errors_and_other_shapes_are_not():
    good = _answer(0, error_payload(ValueError("bad")), kind=envelope.ERROR)
    assert admit(good, _expected(0)).status is Status.ERROR
    fake = _answer(0, encode([1, 2]), kind=envelope.ERROR)
    assert admit(fake, _expected(0)).status is Status.INVALID


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_admission_never_raises_on_mutated_answers(data):
    raw = bytearray(_answer(0, {"x": np.arange(4.0), "y": [1, "a"]}))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    out = admit(bytes(raw), _expected(0))
    if out.status is Status.OK:  # only a mutation that left a valid signed answer
        assert out.attestation is not None and out.attestation.verify(KEYS[0].public_bytes)


# -- decision: basics -----------------------------------------------------------------------


def _run(values: dict[int, float], policy: Policy, order=None, tiebreak=None):
    state = CallState("t", policy, tiebreak or os.urandom(32))
    state.start(len(values))
    decision = None
    for i in order or sorted(values):
        if state.record is None:
            state.feed(_outcome(i, values[i]))
            decision = state.decide(spare=0)
        else:
            state.judge_late(_outcome(i, values[i]))
    return state, decision


def test_accepts_a_strict_majority_of_everything_that_can_still_arrive():
    p = Policy(replicas=5, quorum=3, tolerance=Tolerance.exact())
    state = CallState("t", p, b"k" * 32)
    state.start(5)
    for i in range(2):
        state.feed(_outcome(i, 1.0))
        assert state.decide(spare=0).step is Step.PENDING
    state.feed(_outcome(2, 1.0))
    d = state.decide(spare=0)
    assert d.step is Step.ACCEPT and set(d.record.members) == {"ex0", "ex1", "ex2"}


def test_escalates_then_fails_with_a_record_of_fates():
    p = Policy(replicas=3, quorum=2, max_replicas=5, tolerance=Tolerance.exact())
    state = CallState("t", p, b"k" * 32)
    state.start(3)
    for i, v in enumerate([1.0, 2.0, 3.0]):
        state.feed(_outcome(i, v))
    d = state.decide(spare=2)
    assert d.step is Step.ESCALATE and d.count == 2
    state.feed(_outcome(3, 4.0))
    state.feed(_outcome(4, 5.0))
    d = state.decide(spare=0)
    assert d.step is Step.FAIL
    assert {j.label for j in d.record.judgements} == {Label.DISPUTED}


def test_replaces_failed_replicas_within_budget():
    p = Policy(replicas=3, tolerance=Tolerance.exact())
    state = CallState("t", p, b"k" * 32)
    state.start(3)
    state.feed(Outcome("ex0", "slot0", 0, Status.CRASHED, reason="died"))
    d = state.decide(spare=1)
    assert d.step is Step.REPLACE and d.count == 1
    assert state.decide(spare=1).step is Step.PENDING  # replaced once, not twice


def test_a_slot_votes_once():
    p = Policy(replicas=3, quorum=2, tolerance=Tolerance.exact())
    state = CallState("t", p, b"k" * 32)
    state.start(3)
    state.feed(_outcome(2, 9.0))
    # A second answer for slot2 (for example from its respawn) does not count again.
    respawn = admit(
        envelope.build(KEYS[6], envelope.VALUE, "t", 1, "ex2.1", "slot2", encode(9.0)),
        Expected("t", 1, "ex2.1", "slot2", KEYS[6].public_bytes),
    )
    state.feed(respawn)
    assert state.decide(spare=0).step is Step.PENDING
    assert len(state.comparable) == 1


def test_values_and_error_records_never_agree():
    p = Policy(replicas=2, quorum=2, tolerance=Tolerance.exact())
    state = CallState("t", p, b"k" * 32)
    payload = error_payload(ValueError("x"))
    err = admit(_answer(0, payload, kind=envelope.ERROR), _expected(0))
    # The same bytes returned as a value: a different answer.
    val = admit(
        envelope.build(KEYS[1], envelope.VALUE, "t", 0, "ex1", "slot1", payload), _expected(1)
    )
    assert err.digest == val.digest
    assert not state.agrees(err, val)


def test_max_cliques_finds_every_maximal_clique():
    adj = {"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b", "d"}, "d": {"c"}}
    assert sorted(sorted(c) for c in max_cliques(list(adj), adj)) == [["a", "b", "c"], ["c", "d"]]


# -- decision: the properties the adversary cannot break -----------------------------------

TOL = Tolerance(rtol=0.0, atol=1e-3)


@settings(max_examples=250, deadline=None)
@given(
    n=st.integers(3, 7),
    data=st.data(),
)
def test_honest_outputs_that_agree_pairwise_are_never_flagged(n, data):
    """(a) Honest outputs pairwise within the tolerance, at least q of them: none is flagged
    or left out of the agreement, whatever the others return and in whatever order."""
    q = n // 2 + 1
    honest = data.draw(st.integers(q, n))
    # Pairwise within atol: all inside one window of width < atol.
    centre = data.draw(st.floats(-10, 10))
    offsets = data.draw(st.lists(st.floats(0, 0.999e-3), min_size=honest, max_size=honest))
    values = {i: centre + off for i, off in enumerate(offsets)}
    # Byzantine values: anywhere, including just inside or outside the honest window.
    for i in range(honest, n):
        values[i] = data.draw(
            st.one_of(
                st.floats(-10, 10),
                st.floats(centre - 2e-3, centre + 2e-3),
                st.sampled_from([centre - 0.9e-3, centre + 1.9e-3, centre + 1e-3]),
            )
        )
    order = data.draw(st.permutations(list(range(n))))
    state, decision = _run(values, Policy(replicas=n, quorum=q, tolerance=TOL), order=order)
    assert decision is not None and decision.step is Step.ACCEPT
    final = state.final_record()
    for j in final.judgements:
        if int(j.executor_id[2:]) < honest:
            assert j.label is not Label.DISAGREED, (values, order, j)
    # (b) the accepted value is within the tolerance of an honest output.
    rep = final.accepted
    assert any(
        compare(rep.canonical, _outcome(i, values[i]).canonical, TOL, detail=False).agree
        for i in range(honest)
    )


def test_the_choice_among_agreeing_outputs_ignores_their_bits():
    """(b) Which agreeing output becomes the value depends on the verifier's secret key, not on
    anything an executor controls: grinding the bits (and so the digests) changes nothing."""
    p = Policy(replicas=5, quorum=3, tolerance=TOL)
    key = b"s" * 32
    picks = set()
    for trial in range(20):
        rng = random.Random(trial)
        values = {i: 1.0 + rng.uniform(0, 0.9e-3) for i in range(5)}
        _, d = _run(values, p, tiebreak=key)
        picks.add(d.record.accepted.executor_id)
    assert len(picks) == 1  # same key, same executors: same choice, whatever the bits
    chosen = {_run({i: 1.0 for i in range(5)}, p)[1].record.accepted.executor_id for _ in range(60)}
    # Fresh keys spread the choice over the clique (the first three answers reach the quorum).
    assert chosen == {"ex0", "ex1", "ex2"}


def test_two_colluders_at_the_tolerance_edge_cannot_push_out_an_honest_output():
    """The attack of the issue: honest 1.0, 1.0+0.6t, 1.0+0.9t agree pairwise; colluders sit
    where each agrees with all honest but one, so a representative chosen by digest could
    exclude an honest executor. With cliques and the degree rule no honest one is flagged."""
    t = 1e-3
    values = {0: 1.0, 1: 1.0 + 0.6 * t, 2: 1.0 + 0.9 * t, 3: 1.0 - 0.5 * t, 4: 1.0 + 1.7 * t}
    p = Policy(replicas=5, quorum=3, tolerance=TOL)
    for trial in range(200):
        order = random.Random(trial).sample(range(5), 5)
        state, d = _run(values, p, order=order)
        assert d.step is Step.ACCEPT
        labels = {j.executor_id: j.label for j in state.final_record().judgements}
        assert all(labels[f"ex{i}"] is not Label.DISAGREED for i in range(3)), labels


def test_a_liar_far_from_everyone_is_flagged_with_its_signed_evidence():
    state, _d = _run({0: 1.0, 1: 1.0, 2: 5.0}, Policy(replicas=3, tolerance=TOL))
    liar = next(j for j in state.final_record().judgements if j.executor_id == "ex2")
    assert liar.label is Label.DISAGREED and liar.label.flags
    assert liar.attestation is not None and liar.attestation.verify(KEYS[2].public_bytes)


def test_a_flag_waits_for_replicas_still_running():
    """At acceptance an honest output may not yet have its agreeing peers: it is not flagged
    while they are still running, nor in the final record once they are in."""
    p = Policy(replicas=5, quorum=3, tolerance=TOL)
    t = 1e-3
    # Colluders 3, 4 and honest 0 form a clique; honest 1 and 2 disagree with the colluders.
    values = {3: 1.0 - 0.9 * t, 4: 1.0 - 0.9 * t, 0: 1.0, 1: 1.0 + 0.5 * t, 2: 1.0 + 0.5 * t}
    colluder_chosen = 0
    for trial in range(30):
        key = bytes([trial]) * 32
        state, d = _run(values, p, order=[3, 4, 1, 0, 2], tiebreak=key)
        assert d.step is Step.ACCEPT
        colluder_chosen += d.record.accepted.executor_id in ("ex3", "ex4")
        early = {j.executor_id: j.label for j in d.record.judgements}
        assert early["ex1"] is not Label.DISAGREED  # ex2 is still running and agrees with it
        final = {j.executor_id: j.label for j in state.final_record().judgements}
        assert all(final[f"ex{i}"] is not Label.DISAGREED for i in range(3)), final
    assert colluder_chosen  # the case that needs the rule did occur


def test_choose_clique_is_keyed():
    cliques = [frozenset({"a", "b"}), frozenset({"c", "d"})]
    got = {choose_clique(cliques, os.urandom(32))[0] for _ in range(40)}
    assert got == set(cliques)


def test_a_sidekick_of_a_colluder_chosen_as_the_value_is_never_credited():
    """y agrees only with colluder x; when x's output is chosen as the value, y still agrees
    with fewer than q outputs, so it is not credited (nor is any honest output flagged)."""
    t = 1e-3
    values = {0: 1.0, 1: 1.0 + 0.5 * t, 2: 1.0 + 0.9 * t, 3: 1.0 + 1.2 * t, 4: 1.0 + 2.05 * t}
    p = Policy(replicas=5, quorum=3, tolerance=TOL)
    x_chosen = 0
    for trial in range(40):
        order = random.Random(trial).sample(range(5), 5)
        state, d = _run(values, p, order=order, tiebreak=bytes([trial]) * 32)
        assert d.step is Step.ACCEPT
        x_chosen += d.record.accepted.executor_id == "ex3"
        labels = {j.executor_id: j.label for j in state.final_record().judgements}
        assert labels["ex4"] is not Label.AGREED, labels
        assert all(labels[f"ex{i}"] is not Label.DISAGREED for i in range(3)), labels
    assert x_chosen  # the case that needs the rule did occur


class _NoText(Exception):
    def __str__(self):
        raise RuntimeError("no text")


def _raises_surrogate(x):
    raise ValueError("bad \udc80 input")


def _raises_no_text(x):
    raise _NoText()


@pytest.mark.parametrize("fn", [_raises_surrogate, _raises_no_text])
def test_an_exception_whose_text_cannot_be_encoded_is_still_a_record(fn):
    """User code raising an exception with a lone surrogate in its message (from an input
    string), or whose ``str()`` raises, still gives a signed error record the replicas agree on
    (an adversarial review: the record itself raised, so every honest replica read as an
    invalid answer, and in BFT mode a dispatcher could pick such inputs for one replica)."""
    from bft_ray.executor.actor import ExecutorActor, TaskSpec, capability_commitment

    cap = b"c" * 32
    records = []
    for i in range(2):
        ex = ExecutorActor(i, f"ex{i}", f"slot{i}", capability_commitment(cap))
        ex._functions["k"] = fn
        lone = ex.run(cap, TaskSpec("t", 0, "k"), "k", None, 1)
        batch = ex.run_batch(cap, [(TaskSpec("t", 0, "k"), "k", (1,), {})] * 2)
        for raw in (lone, *batch):
            key = envelope.parse(raw).public_key
            out = admit(raw, Expected("t", 0, f"ex{i}", f"slot{i}", key))
            assert out.status is Status.ERROR, out.reason
            records.append(out.digest)
    assert len(set(records)) == 1  # every replica's record is the same
