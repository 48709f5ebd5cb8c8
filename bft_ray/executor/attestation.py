"""Signed attestations: an executor's claim "for task T, attempt A, from slot S, my answer has digest D".

The attestation is what makes a penalty evidence-backed: an executor that returned a wrong
output signed its digest, so anyone holding the certificate can check who said what. Every
field is covered by the signature, the public key included, under the domain tag
``bft-ray/attestation/v2``:

``task_id``, ``attempt``, ``executor_id``, ``slot``, ``kind``, ``digest``, ``public_key``.

Checking never raises: :meth:`Attestation.verify` answers ``False`` for a forged, re-labelled
or malformed attestation (wrong types, wrong lengths, an unknown kind).

Example:
    >>> from bft_ray.crypto import SigningKey
    >>> key = SigningKey.generate()
    >>> att = Attestation.create(key, "task-1", 0, "ex0", "slot0", "value", b"\\x00" * 32)
    >>> att.verify(), att.verify(expected_key=SigningKey.generate().public_bytes)
    (True, False)
    >>> import dataclasses
    >>> dataclasses.replace(att, executor_id="ex1").verify()   # every field is signed
    False
    >>> Attestation.from_dict(att.to_dict()) == att
    True
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from bft_ray.crypto import SigningKey, encode_fields, verify_signature

__all__ = ["KINDS", "Attestation"]

_DOMAIN = b"bft-ray/attestation/v2"
KINDS = ("value", "error")
_TEXT = ("task_id", "executor_id", "slot", "kind")
_BYTES = {"digest": 32, "public_key": 32, "signature": 64}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


@dataclasses.dataclass(frozen=True)
class Attestation:
    """An executor's signed claim about its answer.

    Construct one with :meth:`create` (which signs); the constructor itself accepts anything, so
    that a received, possibly malformed attestation can be represented and then rejected by
    :meth:`verify`.

    Attributes:
        task_id: Task the answer is for.
        attempt: Dispatch attempt (replicas added by escalation use higher attempts).
        executor_id: Executor incarnation that produced it.
        slot: The executor's slot (a GPU of a node); a respawn keeps it.
        kind: ``"value"`` (the digest is of a returned value) or ``"error"`` (of the record of
            an exception user code raised).
        digest: blake3 digest of the canonical answer bytes (32 bytes).
        public_key: Executor's Ed25519 public key (raw 32 bytes).
        signature: Ed25519 signature (64 bytes) over every field above.
    """

    task_id: str
    attempt: int
    executor_id: str
    slot: str
    kind: str
    digest: bytes
    public_key: bytes
    signature: bytes

    def message(self) -> bytes:
        """The signed bytes (domain-separated, length-prefixed fields)."""
        return _message(
            self.task_id,
            self.attempt,
            self.executor_id,
            self.slot,
            self.kind,
            self.digest,
            self.public_key,
        )

    @classmethod
    def create(
        cls,
        key: SigningKey,
        task_id: str,
        attempt: int,
        executor_id: str,
        slot: str,
        kind: str,
        digest: bytes,
    ) -> Attestation:
        """Sign a claim with ``key`` (runs inside the executor).

        Raises:
            ValueError: For fields that could never verify (an unknown kind, a digest that is
                not 32 bytes, non-text ids, an attempt outside 64-bit range).
        """
        digest = bytes(digest) if isinstance(digest, (bytearray, memoryview)) else digest
        fields = (task_id, attempt, executor_id, slot, kind, digest, key.public_bytes)
        if not cls(*fields, bytes(64)).well_formed():
            raise ValueError(
                "an attestation needs text task_id/executor_id/slot, an integer attempt, "
                f"kind in {KINDS} and a 32-byte digest"
            )
        return cls(*fields, key.sign(_message(*fields)))

    def well_formed(self) -> bool:
        """Whether every field has its exact type and size, and the kind is known (never raises)."""
        try:
            return (
                type(self) is Attestation
                and all(type(getattr(self, f)) is str for f in _TEXT)
                and type(self.attempt) is int
                and _INT64[0] <= self.attempt <= _INT64[1]
                and self.kind in KINDS
                and all(
                    type(getattr(self, f)) is bytes and len(getattr(self, f)) == n
                    for f, n in _BYTES.items()
                )
            )
        except Exception:
            return False

    def verify(self, expected_key: bytes | None = None) -> bool:
        """Check the signature (and that it was made by ``expected_key`` when given).

        Never raises: a malformed attestation is simply not valid.
        """
        try:
            if not self.well_formed():
                return False
            if expected_key is not None and (
                not isinstance(expected_key, (bytes, bytearray, memoryview))
                or bytes(expected_key) != self.public_key
            ):
                return False
            return verify_signature(self.public_key, self.message(), self.signature)
        except Exception:
            return False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (bytes as lowercase hex)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.hex() if isinstance(v, bytes) else v
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Attestation:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            ValueError: For missing, extra or mistyped fields, hex that is not lowercase and
                even-length, wrong lengths or an unknown kind.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        if type(data) is not dict or set(data) != set(names):
            raise ValueError(f"an attestation needs exactly the fields {names}")
        kw: dict[str, Any] = {}
        for name in names:
            v = data[name]
            if name in _BYTES:
                if type(v) is not str or not _HEX.fullmatch(v):
                    raise ValueError(f"attestation field {name} must be lowercase hex text")
                kw[name] = bytes.fromhex(v)
            elif name == "attempt":
                if type(v) is not int:
                    raise ValueError("attestation field attempt must be an integer")
                kw[name] = v
            else:
                if type(v) is not str:
                    raise ValueError(f"attestation field {name} must be text")
                kw[name] = v
        att = cls(**kw)
        if not att.well_formed():
            raise ValueError(
                f"attestation fields out of range (kind in {KINDS}, sizes {_BYTES}, 64-bit attempt)"
            )
        return att


def _message(
    task_id: str,
    attempt: int,
    executor_id: str,
    slot: str,
    kind: str,
    digest: bytes,
    public_key: bytes,
) -> bytes:
    return encode_fields(_DOMAIN, task_id, attempt, executor_id, slot, kind, digest, public_key)
