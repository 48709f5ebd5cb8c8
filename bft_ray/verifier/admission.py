"""Admission: from the bytes one replica returned to an :class:`Outcome` the verdict can use.

Pure code, no Ray. The trusted verifier, the BFT verifiers' payload validation and the robust
training fan-out all admit executor answers through :func:`admit`, so there is one place where
"is this answer what it claims to be" is decided.

An answer is admitted (``OK`` for a value, ``ERROR`` for a record of an exception raised by user
code) only when every check passes, in this order:

1. the transport handed over raw bytes (a :class:`NoAnswer` is a crash, a time-out or a payload
   the deserialisation guard refused);
2. the envelope parses strictly;
3. it names exactly the expected task, attempt, executor and slot, and carries the executor's
   registered public key (an answer the executor signed for another task or attempt is
   ``MISATTRIBUTED``, not ``INVALID``: see :class:`Status`);
4. the payload parses strictly as canonical wire bytes (an error record must have the error
   record's shape);
5. the executor's signature verifies over the digest of the payload actually received.

Example:
    >>> from bft_ray.compare.wire import encode
    >>> from bft_ray.crypto import SigningKey
    >>> from bft_ray.executor import envelope
    >>> key = SigningKey.generate()
    >>> raw = envelope.build(key, "value", "t1", 0, "ex0", "slot0", encode([1.0, 2.0]))
    >>> exp = Expected("t1", 0, "ex0", "slot0", key.public_bytes)
    >>> admit(raw, exp).status
    <Status.OK: 'ok'>
    >>> admit(raw, Expected("t2", 0, "ex0", "slot0", key.public_bytes)).status
    <Status.MISATTRIBUTED: 'misattributed'>
    >>> own_object(admit(raw, Expected("t2", 0, "ex0", "slot0", key.public_bytes))).status
    <Status.INVALID: 'invalid'>
    >>> admit(raw, Expected("t1", 0, "ex0", "slot0", SigningKey.generate().public_bytes)).status
    <Status.INVALID: 'invalid'>
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from bft_ray.compare.canonical import Canonical
from bft_ray.compare.wire import WireFormatError, decode_canonical
from bft_ray.executor.attestation import Attestation
from bft_ray.executor.envelope import ERROR, EnvelopeError, parse

__all__ = [
    "Expected",
    "NoAnswer",
    "Outcome",
    "Status",
    "admit",
    "error_record",
    "failed",
    "own_object",
]


class Status(enum.Enum):
    """What one replica produced."""

    OK = "ok"  # a value, signed
    ERROR = "error"  # a signed record that user code raised; compared like a value
    CRASHED = "crashed"  # no answer: the actor or its object died
    TIMEOUT = "timeout"  # no answer within the replica's time limit
    INVALID = "invalid"  # an answer that failed admission (malformed, wrong executor, unsigned)
    # A well-formed answer, signed with the expected executor's registered key, for another task
    # or attempt. In BFT mode the dispatcher names the object a replica answered in, so such an
    # object is no evidence against the executor for *this* call: it is neither compared nor
    # flagged (the call runs another replica). The trusted verifier, which submitted the call
    # and holds the object itself, treats it as INVALID (a replay).
    MISATTRIBUTED = "misattributed"

    @property
    def comparable(self) -> bool:
        return self in (Status.OK, Status.ERROR)


@dataclasses.dataclass(frozen=True)
class NoAnswer:
    """What the transport hands admission when no bytes arrived (crash, time-out, refusal)."""

    status: Status
    reason: str


@dataclasses.dataclass(frozen=True)
class Expected:
    """What the verifier knows a replica's answer must say about itself."""

    task_id: str
    attempt: int
    executor_id: str
    slot: str
    public_key: bytes | None  # registered key; None means none is registered (never admitted)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The admitted result of one replica.

    Attributes:
        executor_id: The incarnation that ran it.
        slot: Its slot (a GPU of a node; a respawn keeps it).
        attempt: The dispatch attempt.
        status: See :class:`Status`.
        canonical: Parsed canonical form (comparable outcomes only).
        digest: Digest of the canonical payload (comparable outcomes only).
        attestation: The executor's signed attestation (admitted answers only; for an
            ``INVALID`` answer whose signature did verify, it is kept as evidence).
        reason: Why the outcome is not ``OK``, for reports and errors.
        unsigned: Set by :func:`read_by_group` on an inadmissible, unsigned answer it counts
            as ``CRASHED``: the executor answered, so nothing shows it died or stalled.
        note: Display text from the executor (an error's traceback); unverified.
    """

    executor_id: str
    slot: str
    attempt: int
    status: Status
    canonical: Canonical | None = None
    digest: bytes | None = None
    attestation: Attestation | None = None
    reason: str = ""
    note: str = ""
    unsigned: bool = False

    @property
    def comparable(self) -> bool:
        return self.status.comparable


def failed(expected: Expected, status: Status, reason: str) -> Outcome:
    """An outcome for a replica that produced no admissible answer."""
    return Outcome(expected.executor_id, expected.slot, expected.attempt, status, reason=reason)


def error_record(canonical: Canonical) -> tuple[str, str] | None:
    """``(type, message)`` of a canonical error record, or ``None`` if it has another shape."""
    if canonical.structure != _ERROR_STRUCTURE:
        return None
    leaves = {leaf.path: leaf for leaf in canonical.leaves}
    try:
        kind, message = (bytes(leaves[p].array).decode("utf-8") for p in _ERROR_PATHS)
    except (KeyError, UnicodeDecodeError):
        return None
    return kind, message


def _error_template() -> tuple[str, tuple[str, str]]:
    from bft_ray.compare.wire import encode

    canon = decode_canonical(encode({"type": "", "message": ""}))
    paths = {leaf.path for leaf in canon.leaves}
    type_path = next(p for p in paths if p.endswith("type"))
    message_path = next(p for p in paths if p.endswith("message"))
    return canon.structure, (type_path, message_path)


_ERROR_STRUCTURE, _ERROR_PATHS = _error_template()


def admit(raw: Any, expected: Expected) -> Outcome:
    """Admit one replica's answer (see the module docstring for the checks)."""
    if isinstance(raw, NoAnswer):
        return failed(expected, raw.status, raw.reason)
    if isinstance(raw, BaseException):
        return failed(expected, Status.INVALID, f"{type(raw).__name__}: {raw}")
    if not isinstance(raw, bytes):
        return failed(expected, Status.INVALID, f"answer is {type(raw).__name__}, not bytes")
    try:
        env = parse(raw)
    except EnvelopeError as exc:
        return failed(expected, Status.INVALID, f"malformed answer: {exc}")
    claimed = (env.task_id, env.attempt, env.executor_id, env.slot)
    wanted = (expected.task_id, expected.attempt, expected.executor_id, expected.slot)
    if claimed != wanted:
        reason = f"answer names task/attempt/executor/slot {claimed}, expected {wanted}"
        if (
            claimed[2:] == wanted[2:]
            and expected.public_key is not None
            and env.public_key == expected.public_key
            and env.attestation().verify(expected_key=expected.public_key)
        ):
            # The executor's own signed answer, to another call: see Status.MISATTRIBUTED.
            return failed(expected, Status.MISATTRIBUTED, reason)
        return failed(expected, Status.INVALID, reason)
    if expected.public_key is None or env.public_key != expected.public_key:
        return failed(expected, Status.INVALID, "answer is not signed with the registered key")
    att = env.attestation()
    if not att.verify(expected_key=expected.public_key):
        return failed(expected, Status.INVALID, "bad signature over the answer's digest")
    try:
        canon = decode_canonical(env.payload)
    except WireFormatError as exc:
        return Outcome(
            *_ids(expected), Status.INVALID, attestation=att, reason=f"malformed payload: {exc}"
        )
    status = Status.OK
    if env.kind == ERROR:
        if error_record(canon) is None:
            return Outcome(
                *_ids(expected), Status.INVALID, attestation=att, reason="malformed error record"
            )
        status = Status.ERROR
    return Outcome(
        *_ids(expected),
        status,
        canonical=canon,
        digest=att.digest,
        attestation=att,
        note=env.note,
        reason="user code raised" if status is Status.ERROR else "",
    )


def own_object(outcome: Outcome) -> Outcome:
    """``outcome`` as judged by whoever submitted the call and read the answer from its own ref.

    Such a reader knows the object belongs to this call, so an answer the executor signed for
    another task or attempt inside it is the executor's replay: ``MISATTRIBUTED`` becomes
    ``INVALID`` (flagged). Only a reader that got the object id from someone else (a BFT
    verifier reading the dispatcher's claim) must keep ``MISATTRIBUTED``.
    """
    if outcome.status is not Status.MISATTRIBUTED:
        return outcome
    return dataclasses.replace(
        outcome, status=Status.INVALID, reason=f"replayed answer: {outcome.reason}"
    )


def read_by_group(outcome: Outcome) -> Outcome:
    """``outcome`` as a BFT verifier may judge it: only what the executor signed is evidence.

    The dispatcher names the object a replica answered in and chooses how it was produced: a
    call with a wrong capability, another method's bytes or a killed actor read as an
    inadmissible answer from an honest executor. So an ``INVALID`` answer without the
    executor's valid signature (malformed, unsigned, a pickle, an error object) counts as
    ``CRASHED``: no answer, reputation only, never a flag of a wrong answer. A signed but
    malformed payload stays ``INVALID``: the executor signed it.
    """
    if outcome.status is not Status.INVALID or outcome.attestation is not None:
        return outcome
    return dataclasses.replace(
        outcome, status=Status.CRASHED, reason=f"no signed answer: {outcome.reason}", unsigned=True
    )


def _ids(expected: Expected) -> tuple[str, str, int]:
    return expected.executor_id, expected.slot, expected.attempt
