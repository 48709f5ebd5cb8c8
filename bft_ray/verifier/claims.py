"""Verdict claims: what the client asks the verifier group to certify, and block payloads.

In the BFT mode the driver's dispatcher runs a call's replicas (lanes, batching, replacement;
see ``trusted.py``) and reaches its own verdict. It does not certify it: it sends a
:class:`VerdictClaim` to **every** verifier (so a Byzantine leader cannot drop it unseen). A
claim lists every replica dispatched for the call, with the id of the Ray object that carries
its answer and what the dispatcher saw of it (``answered``, ``failed`` or still ``running``),
plus the policy and the key that breaks ties among agreeing outputs. It carries no output:
each verifier reads the answers itself from the executors' objects and recomputes the verdict
(:mod:`bft_ray.verifier.recheck`). The claim is signed by the dispatcher's key, so the
leader that batches claims into a block cannot alter one.

Everything is encoded with the one canonical encoder (:mod:`bft_ray.compare.wire`) and
decoded strictly: a claim that is not exactly in this shape is refused, never coerced.

Example:
    >>> from bft_ray.crypto import SigningKey
    >>> from bft_ray.config import Policy
    >>> key = SigningKey.generate()
    >>> c = VerdictClaim("t1", "f", Policy(replicas=1).model_dump_json(), ("m", "f", "00"),
    ...     b"a" * 32, b"k" * 32, 0, (ReplicaClaim("ex0", "s0", 0, "ab" * 14, "answered"),),
    ...     "accept", b"d" * 32, "ex0", (("ex0", b"p" * 32, "aa" * 16),))
    >>> signed = c.sign(key)
    >>> SignedClaim.decode(signed.encode()).verify(key.public_bytes)
    True
    >>> decode_payload(encode_payload([signed.encode()])) == [signed.encode()]
    True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from bft_ray.compare import wire
from bft_ray.crypto import SigningKey, encode_fields, verify_signature
from bft_ray.executor.attestation import Attestation

__all__ = [
    "STATES",
    "OPERATOR_ACTIONS",
    "ClaimError",
    "Judged",
    "OperatorClaim",
    "ReplicaClaim",
    "SignedClaim",
    "SignedOperator",
    "VerdictClaim",
    "decode_entry",
    "decode_payload",
    "encode_payload",
    "entry_task_id",
]

_DOMAIN = b"bft-ray/claim/v1"
_OPERATOR_DOMAIN = b"bft-ray/operator/v1"
_OPERATOR_TAG = "operator"  # first field of a signed operator entry (a signed claim has 2 fields)
OPERATOR_ACTIONS = ("ban", "reinstate")
STATES = ("answered", "failed", "running")
STEPS = ("accept", "fail")
FAILURES = ("crashed", "timeout", "invalid", "misattributed")
_MAX_REPLICAS = 256
_MAX_ENTRIES = 10_000


class ClaimError(ValueError):
    """A claim or payload that is not exactly in the expected shape."""


@dataclasses.dataclass(frozen=True)
class ReplicaClaim:
    """One dispatched replica, as the dispatcher saw it when it decided.

    Attributes:
        executor_id: Executor incarnation it was sent to (``"-"`` if none was available).
        slot: That executor's slot.
        attempt: Dispatch attempt.
        object_id: Hex id of the Ray object carrying the answer (``""`` if nothing was sent).
        state: ``answered`` (its bytes were admitted), ``failed`` (no usable answer) or
            ``running`` (still out when the verdict was reached).
        failure: For ``failed``: ``crashed``, ``timeout`` or ``invalid``.
        reason: Human-readable reason of a failure.
    """

    executor_id: str
    slot: str
    attempt: int
    object_id: str
    state: str
    failure: str = ""
    reason: str = ""

    def _tree(self) -> list:
        return [
            self.executor_id,
            self.slot,
            self.attempt,
            self.object_id,
            self.state,
            self.failure,
            self.reason,
        ]


@dataclasses.dataclass(frozen=True)
class Judged:
    """One judgement of a claimed verdict record (see :class:`VerdictClaim`)."""

    executor_id: str
    slot: str
    label: str
    reason: str
    attestation: Attestation | None

    def _tree(self) -> list:
        att = None if self.attestation is None else self.attestation.to_dict()
        return [self.executor_id, self.slot, self.label, self.reason, att]


@dataclasses.dataclass(frozen=True)
class VerdictClaim:
    """A dispatcher's request to certify (or record the failure of) one call.

    Attributes:
        task_id: The call.
        name: Function or method name (for messages).
        policy_json: The call's :class:`~bft_ray.config.Policy` as pydantic JSON.
        function: ``(module, qualname, code digest hex)`` of the function.
        args_digest: Digest of the arguments (32 bytes).
        tiebreak: Key that chooses the value among agreeing outputs (32 bytes).
        spare: Slots the dispatcher could still have used (informative).
        replicas: Every replica dispatched, in dispatch order.
        step: ``accept`` or ``fail``: the dispatcher's own verdict.
        digest: Digest of the accepted answer (``b""`` for ``fail``).
        representative: Executor whose answer is the value (``""`` for ``fail``).
        executors: ``(executor id, registered public key, actor id hex)`` of every executor
            named in ``replicas``.
        judgements: The verdict record's judgements, in record order:
            ``(executor id, slot, label, reason, attestation)``. Verifiers recompute them
            before voting, so once committed they are the agreed record every verifier applies
            to reputation, even one that could not read the answers itself.
    """

    task_id: str
    name: str
    policy_json: str
    function: tuple[str, str, str]
    args_digest: bytes
    tiebreak: bytes
    spare: int
    replicas: tuple[ReplicaClaim, ...]
    step: str
    digest: bytes
    representative: str
    executors: tuple[tuple[str, bytes, str], ...]
    judgements: tuple[Judged, ...] = ()

    def encode(self) -> bytes:
        """Canonical bytes of the claim."""
        return wire.encode(
            [
                self.task_id,
                self.name,
                self.policy_json,
                list(self.function),
                self.args_digest,
                self.tiebreak,
                self.spare,
                [r._tree() for r in self.replicas],
                self.step,
                self.digest,
                self.representative,
                [list(e) for e in self.executors],
                [j._tree() for j in self.judgements],
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> VerdictClaim:
        """Strictly decode :meth:`encode`'s output.

        Raises:
            ClaimError: If the bytes are not a well-formed claim.
        """
        tree = _decode(data)
        f = _list(tree, 13, "claim")
        function = _list(f[3], 3, "function")
        replicas = _items(f[7], "replicas", _MAX_REPLICAS)
        executors = _items(f[11], "executors", _MAX_REPLICAS)
        claim = cls(
            task_id=_str(f[0], "task_id"),
            name=_str(f[1], "name"),
            policy_json=_str(f[2], "policy"),
            function=tuple(_str(x, "function") for x in function),  # type: ignore[arg-type]
            args_digest=_bytes(f[4], "args_digest", 32),
            tiebreak=_bytes(f[5], "tiebreak", 32),
            spare=_int(f[6], "spare"),
            replicas=tuple(_replica(r) for r in replicas),
            step=_choice(f[8], STEPS, "step"),
            digest=_bytes(f[9], "digest", None),
            representative=_str(f[10], "representative"),
            executors=tuple(_executor(e) for e in executors),
            judgements=tuple(_judged(j) for j in _items(f[12], "judgements", _MAX_REPLICAS)),
        )
        if claim.step == "accept" and len(claim.digest) != 32:
            raise ClaimError("an accept claim needs a 32-byte digest")
        if claim.step == "fail" and (claim.digest or claim.representative):
            raise ClaimError("a fail claim names no digest and no representative")
        if claim.encode() != bytes(data):
            raise ClaimError("claim bytes are not canonical")
        return claim

    def sign(self, key: SigningKey) -> SignedClaim:
        """This claim signed by the dispatcher's key."""
        body = self.encode()
        return SignedClaim(body, key.sign(_signing_bytes(body)), self)


@dataclasses.dataclass(frozen=True)
class SignedClaim:
    """A claim's canonical bytes with the dispatcher's signature over them.

    ``claim`` is the decoded form of ``body`` (never trusted before :meth:`verify`).
    """

    body: bytes
    signature: bytes
    claim: VerdictClaim

    @property
    def task_id(self) -> str:
        return self.claim.task_id

    def encode(self) -> bytes:
        """Canonical bytes: ``[body, signature]``."""
        return wire.encode([self.body, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedClaim:
        """Strictly decode; the signature is not checked here (see :meth:`verify`).

        Raises:
            ClaimError: If the bytes are not a well-formed signed claim.
        """
        f = _list(_decode(data), 2, "signed claim")
        body = _bytes(f[0], "body", None)
        sig = _bytes(f[1], "signature", 64)
        return cls(body, sig, VerdictClaim.decode(body))

    def verify(self, dispatcher_key: bytes) -> bool:
        """Whether the dispatcher signed exactly these bytes."""
        return verify_signature(dispatcher_key, _signing_bytes(self.body), self.signature)


@dataclasses.dataclass(frozen=True)
class OperatorClaim:
    """An operator's action on one executor, ordered by the group like a verdict.

    In BFT mode ``cluster.ban(id)`` and ``cluster.reinstate(id)`` do not change the
    dispatcher's state: the dispatcher signs one of these (after checking the driver's
    capability) and every verifier applies it to its standing in commit order, so the
    operator's word is on the record and every honest verifier holds the same standing.

    Attributes:
        op_id: Unique id (``op-<hex>``); a committed id is never applied twice, so a
            replayed entry is a no-op.
        action: ``ban`` or ``reinstate``.
        executor_id: The executor acted on.
    """

    op_id: str
    action: str
    executor_id: str

    @property
    def task_id(self) -> str:
        return self.op_id

    def encode(self) -> bytes:
        """Canonical bytes of the record."""
        return wire.encode([self.op_id, self.action, self.executor_id])

    @classmethod
    def decode(cls, data: bytes) -> OperatorClaim:
        """Strictly decode :meth:`encode`'s output.

        Raises:
            ClaimError: If the bytes are not a well-formed operator record.
        """
        f = _list(_decode(data), 3, "operator record")
        op = cls(
            _str(f[0], "op_id"),
            _choice(f[1], OPERATOR_ACTIONS, "action"),
            _str(f[2], "executor_id"),
        )
        if not op.op_id.startswith("op-") or not op.executor_id:
            raise ClaimError("an operator record needs an op- id and an executor")
        if op.encode() != bytes(data):
            raise ClaimError("operator record bytes are not canonical")
        return op

    def sign(self, key: SigningKey) -> SignedOperator:
        """This record signed by the dispatcher's key (under its own domain)."""
        body = self.encode()
        return SignedOperator(body, key.sign(encode_fields(_OPERATOR_DOMAIN, body)), self)


@dataclasses.dataclass(frozen=True)
class SignedOperator:
    """An operator record's bytes with the dispatcher's signature (a payload entry)."""

    body: bytes
    signature: bytes
    op: OperatorClaim

    @property
    def task_id(self) -> str:
        return self.op.op_id

    def encode(self) -> bytes:
        """Canonical bytes: ``["operator", body, signature]``."""
        return wire.encode([_OPERATOR_TAG, self.body, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedOperator:
        """Strictly decode; the signature is not checked here (see :meth:`verify`).

        Raises:
            ClaimError: If the bytes are not a well-formed signed operator record.
        """
        f = _list(_decode(data), 3, "signed operator record")
        if type(f[0]) is not str or f[0] != _OPERATOR_TAG:
            raise ClaimError("not an operator record")
        body = _bytes(f[1], "body", None)
        sig = _bytes(f[2], "signature", 64)
        out = cls(body, sig, OperatorClaim.decode(body))
        if out.encode() != bytes(data):
            raise ClaimError("signed operator record bytes are not canonical")
        return out

    def verify(self, dispatcher_key: bytes) -> bool:
        """Whether the dispatcher signed exactly these bytes as an operator record."""
        return verify_signature(
            dispatcher_key, encode_fields(_OPERATOR_DOMAIN, self.body), self.signature
        )


def decode_entry(entry: bytes) -> SignedClaim | SignedOperator:
    """A payload entry: a signed verdict claim or a signed operator record.

    The two shapes cannot be confused: a signed claim is a list of 2 fields, an operator
    record a list of 3 whose first is ``"operator"``, and each is signed under its own domain.

    Decoding is pure and its results are immutable, so the last few thousand entries are
    cached: a verifier decodes each claim once, not once per use (intake, the block's
    validation, the ledger's row check), which was the largest CPU cost of a commit.

    Raises:
        ClaimError: If the entry is neither.
    """
    if not isinstance(entry, bytes | bytearray | memoryview):
        raise ClaimError(f"expected bytes, got {type(entry).__name__}")
    return _decode_entry(bytes(entry))


@functools.lru_cache(maxsize=4096)
def _decode_entry(entry: bytes) -> SignedClaim | SignedOperator:
    try:
        return _strictly(SignedClaim.decode, entry)
    except ClaimError as first:
        try:
            return _strictly(SignedOperator.decode, entry)
        except ClaimError:
            raise first from None


def _strictly(decode: Any, entry: bytes) -> Any:
    # The decoders raise ClaimError for every malformed input they foresee; anything else
    # that escapes is malformed input too, and callers rely on ClaimError alone.
    try:
        return decode(entry)
    except ClaimError:
        raise
    except Exception as exc:
        raise ClaimError(f"malformed entry: {type(exc).__name__}: {exc}") from None


def encode_payload(entries: Sequence[bytes]) -> bytes:
    """A block payload: the encoded signed claims, in proposal order (``b""`` when empty)."""
    if not entries:
        return b""
    return wire.encode([bytes(e) for e in entries])


def decode_payload(payload: bytes) -> list[bytes]:
    """The entries of a block payload (the inverse of :func:`encode_payload`).

    Raises:
        ClaimError: If the payload is malformed.
    """
    if payload == b"":
        return []
    tree = _decode(payload)
    entries = _items(tree, "payload", _MAX_ENTRIES)
    out = [_bytes(e, "entry", None) for e in entries]
    if not out or encode_payload(out) != bytes(payload):
        raise ClaimError("payload bytes are not canonical")
    return out


def entry_task_id(entry: bytes) -> str:
    """Task id of one payload entry (a signed claim).

    Raises:
        ClaimError: If the entry is malformed.
    """
    sc = decode_entry(entry)
    if not isinstance(sc, SignedClaim):
        raise ClaimError("an operator record, not a signed claim")
    return sc.task_id


# -- strict decoding helpers ----------------------------------------------------------------


def _signing_bytes(body: bytes) -> bytes:
    return encode_fields(_DOMAIN, body)


def _decode(data: Any) -> Any:
    if not isinstance(data, bytes | memoryview):
        raise ClaimError(f"expected bytes, got {type(data).__name__}")
    try:
        # Plain values only: these bytes are decoded before their signature is checked, so
        # nothing in them may import a module or run a constructor (decode would).
        return wire.decode_plain(bytes(data))
    except Exception as exc:  # malformed wire bytes of any kind
        raise ClaimError(f"malformed claim bytes: {exc}") from None


def _list(v: Any, n: int, what: str) -> list:
    if type(v) is not list or len(v) != n:
        raise ClaimError(f"{what}: expected a list of {n} fields")
    return v


def _items(v: Any, what: str, limit: int) -> list:
    if type(v) is not list:
        raise ClaimError(f"{what}: expected a list")
    if len(v) > limit:
        raise ClaimError(f"{what}: more than {limit} items")
    return v


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise ClaimError(f"{what}: expected text")
    return v


def _int(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v < 1 << 31:
        raise ClaimError(f"{what}: expected a small non-negative integer")
    return v


def _bytes(v: Any, what: str, size: int | None) -> bytes:
    if type(v) is not bytes or (size is not None and len(v) != size):
        raise ClaimError(f"{what}: expected {size or 'some'} bytes")
    return v


def _choice(v: Any, allowed: tuple[str, ...], what: str) -> str:
    if type(v) is not str or v not in allowed:
        raise ClaimError(f"{what}: expected one of {allowed}")
    return v


def _replica(v: Any) -> ReplicaClaim:
    f = _list(v, 7, "replica")
    r = ReplicaClaim(
        _str(f[0], "executor_id"),
        _str(f[1], "slot"),
        _int(f[2], "attempt"),
        _str(f[3], "object_id"),
        _choice(f[4], STATES, "state"),
        _str(f[5], "failure"),
        _str(f[6], "reason"),
    )
    if r.state == "failed" and r.failure not in FAILURES:
        raise ClaimError(f"replica failure: expected one of {FAILURES}")
    if r.state != "failed" and r.failure:
        raise ClaimError("only a failed replica names a failure")
    if r.state == "answered" and not r.object_id:
        raise ClaimError("an answered replica names the object carrying its answer")
    return r


def _judged(v: Any) -> Judged:
    f = _list(v, 5, "judgement")
    att = None
    if f[4] is not None:
        try:
            att = Attestation.from_dict(f[4])
        except ValueError as exc:
            raise ClaimError(f"judgement attestation: {exc}") from None
    return Judged(
        _str(f[0], "executor_id"),
        _str(f[1], "slot"),
        _str(f[2], "label"),
        _str(f[3], "reason"),
        att,
    )


def _executor(v: Any) -> tuple[str, bytes, str]:
    f = _list(v, 3, "executor")
    return (_str(f[0], "executor_id"), _bytes(f[1], "public_key", 32), _str(f[2], "actor_id"))
