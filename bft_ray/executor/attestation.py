"""Signed attestations: an executor's claim "for task T, attempt A, from slot S, my answer has digest D".

The attestation is what makes a penalty evidence-backed: an executor that returned a wrong
output signed its digest, so anyone holding the certificate can check who said what. Every
field is covered by the signature, the public key included.

Example:
    >>> from bft_ray.crypto import SigningKey
    >>> key = SigningKey.generate()
    >>> att = Attestation.create(key, "task-1", 0, "ex0", "slot0", "value", b"\\x00" * 32)
    >>> att.verify(), att.verify(expected_key=SigningKey.generate().public_bytes)
    (True, False)
    >>> Attestation.from_dict(att.to_dict()) == att
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bft_ray.crypto import SigningKey, encode_fields, verify_signature

__all__ = ["KINDS", "Attestation"]

_DOMAIN = b"bft-ray/attestation/v2"
KINDS = ("value", "error")
_BYTES = {"digest": 32, "public_key": 32, "signature": 64}


@dataclasses.dataclass(frozen=True)
class Attestation:
    """An executor's signed claim about its answer.

    Attributes:
        task_id: Task the answer is for.
        attempt: Dispatch attempt (replicas added by escalation use higher attempts).
        executor_id: Executor incarnation that produced it.
        slot: The executor's slot (a GPU of a node); a respawn keeps it.
        kind: ``"value"`` (the digest is of a returned value) or ``"error"`` (of the record of
            an exception user code raised).
        digest: blake3 digest of the canonical answer bytes.
        public_key: Executor's Ed25519 public key (raw 32 bytes).
        signature: Signature over every field above.
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
        """The signed bytes."""
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
        msg = _message(task_id, attempt, executor_id, slot, kind, digest, key.public_bytes)
        return cls(
            task_id, attempt, executor_id, slot, kind, digest, key.public_bytes, key.sign(msg)
        )

    def well_formed(self) -> bool:
        """Whether every field has its type and size (never raises)."""
        try:
            return (
                all(
                    type(getattr(self, f)) is str
                    for f in ("task_id", "executor_id", "slot", "kind")
                )
                and type(self.attempt) is int
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
        if not self.well_formed():
            return False
        if expected_key is not None and expected_key != self.public_key:
            return False
        try:
            return verify_signature(self.public_key, self.message(), self.signature)
        except Exception:
            return False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (bytes as hex)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.hex() if isinstance(v, bytes) else v
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Attestation:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            ValueError: For missing, extra or mistyped fields.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or set(data) != set(names):
            raise ValueError(f"an attestation needs exactly the fields {names}")
        kw: dict[str, Any] = {}
        for name in names:
            v = data[name]
            if name in _BYTES:
                if not isinstance(v, str):
                    raise ValueError(f"attestation field {name} must be hex text")
                kw[name] = bytes.fromhex(v)
            elif name == "attempt":
                if type(v) is not int:
                    raise ValueError("attestation field attempt must be an integer")
                kw[name] = v
            else:
                if not isinstance(v, str):
                    raise ValueError(f"attestation field {name} must be text")
                kw[name] = v
        return cls(**kw)


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
