"""Recompute a claimed verdict from the answers a verifier read itself (pure, no Ray).

Every BFT verifier runs this before it votes for a block, on every claim in it: the claim says
which replicas were dispatched and what the dispatcher saw of each; the verifier has read each
answer's bytes from the executor's own object (or observed that there was none when the claim
reached it). Replaying them through the shared verdict path (:func:`admit` then
:class:`CallState`) must give the claimed step, digest and representative, or the verifier
refuses the block. The record it returns is the one the verifier applies to reputation and
writes to its ledger: it is recomputed, never taken from the claim.

What a verifier checks, and why each matters against a lying dispatcher or leader:

* the policy parses and the replicas use distinct slots with registered keys;
* an ``answered`` replica's bytes were read and admitted here (signature, task, attempt,
  executor and slot recomputed), so an output cannot be invented or swapped;
* a ``failed`` replica really had no usable answer when the claim arrived (a claim that an
  honest executor timed out while its answer sat there is refused: an invented timeout), and
  names the object it failed in (a failure with no object to check is only "-"'s, no one's);
* replaying everything gives exactly the claimed verdict: a wrong representative, a dropped
  honest output or a wrong digest changes the replay and is refused.

Example:
    >>> from bft_ray.verifier.recheck import Verdict
    >>> Verdict.VALID.value
    'valid'
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from bft_ray.config import Policy
from bft_ray.executor.envelope import EnvelopeError, parse
from bft_ray.verifier.admission import (
    Expected,
    NoAnswer,
    Status,
    admit,
    failed,
    read_by_group,
)
from bft_ray.verifier.claims import Judged, VerdictClaim
from bft_ray.verifier.decision import CallState, Judgement, Label, Step, VerdictRecord

__all__ = ["Recheck", "Verdict", "judged", "recheck", "record_of"]

# What a verifier reads for an object that the claim says an executor produced but whose id
# names another actor's task (``BftVerifier._read`` checks the producer from the object id):
# never evidence of that executor's failure, whatever the claim says it was.
FOREIGN = NoAnswer(Status.INVALID, "object not produced by that executor")

_FAILURE_STATUS = {
    "crashed": Status.CRASHED,
    "timeout": Status.TIMEOUT,
    "invalid": Status.INVALID,
    "misattributed": Status.MISATTRIBUTED,
}


class Verdict(enum.Enum):
    """Whether a verifier may vote for a claim."""

    VALID = "valid"
    INVALID = "invalid"


@dataclasses.dataclass(frozen=True)
class Recheck:
    """The result of rechecking one claim.

    Attributes:
        verdict: ``VALID`` when the replay gives exactly the claimed verdict.
        reason: Why not, for ``INVALID``.
        record: The recomputed verdict record (``VALID`` only).
        policy: The parsed policy (``VALID`` only).
    """

    verdict: Verdict
    reason: str = ""
    record: VerdictRecord | None = None
    policy: Policy | None = None

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.VALID


def _invalid(reason: str) -> Recheck:
    return Recheck(Verdict.INVALID, reason)


def recheck(claim: VerdictClaim, answers: Mapping[str, Any]) -> Recheck:
    """Replay ``claim`` on the answers this verifier read.

    Args:
        claim: The decoded claim (its dispatcher signature already checked).
        answers: Object id hex -> what this verifier got for it: the raw answer bytes, or a
            :class:`NoAnswer` when the object was not ready when the claim arrived, or had
            failed, or :data:`FOREIGN` (that very object) when its id names another actor's
            task than the executor's the claim names. Objects not read at all are absent.

    Returns:
        A :class:`Recheck`; never raises on a malformed claim or answer.
    """
    try:
        return _recheck(claim, answers)
    except Exception as exc:  # a malformed claim must never crash the verifier
        return _invalid(f"claim could not be replayed: {type(exc).__name__}: {exc}")


def _recheck(claim: VerdictClaim, answers: Mapping[str, Any]) -> Recheck:
    try:
        policy = Policy.model_validate_json(claim.policy_json)
    except Exception as exc:
        return _invalid(f"policy does not parse: {exc}")
    keys = {eid: key for eid, key, _ in claim.executors}
    if len(keys) != len(claim.executors):
        return _invalid("an executor is registered twice")
    if len(set(keys.values())) != len(keys):
        return _invalid("two executors share a key")
    if "-" in keys:
        return _invalid("'-' (no executor) cannot be registered")
    real = [r for r in claim.replicas if r.executor_id != "-"]
    slots = [r.slot for r in real]
    if len(set(slots)) != len(slots):
        return _invalid("two replicas on one slot")
    if len({r.executor_id for r in real}) != len(real):
        return _invalid("one executor holds two replicas")
    if len(claim.replicas) > int(policy.max_replicas or policy.replicas) + policy.replicas:
        return _invalid("more replicas than the policy allows")
    state = CallState(claim.task_id, policy, claim.tiebreak)
    state.start(len(claim.replicas))
    for r in claim.replicas:
        if r.executor_id == "-":
            # No executor was available: nothing was sent, nobody is judged but "-".
            if r.state != "failed" or r.failure != "crashed" or r.object_id or r.slot != "-":
                return _invalid("a replica without an executor can only have failed to start")
        elif r.executor_id not in keys:
            return _invalid(f"replica on {r.executor_id} names an unregistered executor")
        expected = Expected(
            claim.task_id, r.attempt, r.executor_id, r.slot, keys.get(r.executor_id)
        )
        if r.state == "running":
            continue
        if r.object_id and r.object_id not in answers:
            return _invalid(f"the object of {r.executor_id}'s replica was not handed over")
        got = answers.get(r.object_id) if r.object_id else None
        if r.state == "answered":
            out = admit(got, expected)
            if not out.comparable:
                return _invalid(f"the answer of {r.executor_id} is not admissible: {out.reason}")
            state.feed(out)
            continue
        # failed: there must have been no usable answer in the object this verifier read. A
        # real executor's failure always names its object: one that names none (a submission
        # that failed at the dispatcher) is listed as "-", since nothing shows it failed.
        if not r.object_id and r.executor_id != "-":
            return _invalid(f"{r.executor_id} {r.failure}: the claim names no object to check")
        if got is FOREIGN:
            # A failure "seen" in another actor's object: a dispatcher could pin any failure
            # on an honest executor this way.
            return _invalid(f"claims {r.executor_id} {r.failure} in an object another actor made")
        if isinstance(got, bytes):
            out = read_by_group(admit(got, expected))
            if out.comparable:
                return _invalid(
                    f"claims {r.executor_id} {r.failure}, but its signed answer was there"
                )
            if _misattributed(got, claim.task_id, keys.get(r.executor_id), r):
                return _invalid(
                    f"{r.executor_id}'s signed answer for this task is attributed to another "
                    "attempt, executor or slot by the claim"
                )
            if r.failure == "invalid" and out.status is Status.CRASHED:
                return _invalid(
                    f"claims {r.executor_id} {r.failure} without a signed answer to show for it"
                )
            if r.failure != out.status.value:
                return _invalid(
                    f"claims {r.executor_id} {r.failure}, but it answered ({out.status.value})"
                )
            # The executor's own signed but inadmissible answer: evidence kept. One it signed
            # for another call is MISATTRIBUTED, which flags no one: the object is named by
            # the dispatcher, so it may be an old answer pointed at, not a replay. Unsigned
            # bytes read as CRASHED (read_by_group): no evidence of a wrong answer.
            state.feed(out)
            continue
        if _FAILURE_STATUS[r.failure] in (Status.INVALID, Status.MISATTRIBUTED):
            # No bytes this verifier could read (a crashed, cancelled or erroring object, or
            # one not ready): nothing the executor signed shows an invalid answer. The
            # dispatcher chooses how the object was produced, so its word is not evidence.
            return _invalid(
                f"claims {r.executor_id} {r.failure} without a signed answer to show for it"
            )
        state.feed(failed(expected, _FAILURE_STATUS[r.failure], r.reason))
    decision = state.decide(spare=0)
    if claim.step == "accept":
        if decision.step is not Step.ACCEPT or decision.record is None:
            return _invalid(f"replay does not accept ({decision.step.value}: {decision.reason})")
        rep = decision.record.accepted
        assert rep is not None
        if rep.digest != claim.digest or rep.executor_id != claim.representative:
            return _invalid(
                f"replay accepts {rep.executor_id}'s answer, the claim {claim.representative}'s"
            )
    elif decision.step is not Step.FAIL or decision.record is None:
        return _invalid(f"replay does not fail ({decision.step.value})")
    if judged(decision.record) != claim.judgements:
        return _invalid("the claimed judgements are not the replay's (a flag or credit differs)")
    return Recheck(Verdict.VALID, record=decision.record, policy=policy)


def judged(record: VerdictRecord) -> tuple[Judged, ...]:
    """A record's judgements as a claim carries them."""
    return tuple(
        Judged(j.executor_id, j.slot, j.label.value, j.reason, j.attestation)
        for j in record.judgements
    )


def record_of(claim: VerdictClaim) -> VerdictRecord:
    """The verdict record a committed claim stands for (for reputation; no outputs needed).

    Only the judgements and the task are meaningful: ``accepted`` is ``None`` even for an
    accepted call, since the value itself is not part of the agreed state.
    """
    return VerdictRecord(
        claim.task_id,
        None,
        (),
        0,
        len(claim.replicas),
        tuple(
            Judgement(j.executor_id, j.slot, Label(j.label), j.reason, j.attestation)
            for j in claim.judgements
        ),
        claim.tiebreak,
    )


def _misattributed(raw: bytes, task_id: str, key: bytes | None, r: Any) -> bool:
    """Whether ``raw`` is a validly signed answer for ``task_id`` under ``key`` that names
    another attempt, executor or slot than the claim's replica (the claim's fault, not the
    executor's)."""
    try:
        env = parse(raw)
    except EnvelopeError:
        return False
    if key is None or env.task_id != task_id or env.public_key != key:
        return False
    if not env.attestation().verify(expected_key=key):
        return False
    return (env.attempt, env.executor_id, env.slot) != (r.attempt, r.executor_id, r.slot)
