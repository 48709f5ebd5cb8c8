"""Signed attestations: an executor's claim "for task T, attempt A, my output has digest D".

The attestation is what makes a penalty evidence-backed: an executor that returned a wrong
output signed its digest, so anyone holding the certificate can check who said what.

Example:
    >>> from bft_ray.crypto import SigningKey
    >>> key = SigningKey.generate()
    >>> att = Attestation.create(key, "task-1", 0, "ex0", b"\\x00" * 32)
    >>> att.verify(), att.verify(expected_key=SigningKey.generate().public_bytes)
    (True, False)
"""

from __future__ import annotations

import dataclasses

from bft_ray.crypto import SigningKey, encode_fields, verify_signature

__all__ = ["Attestation"]

_DOMAIN = b"bft-ray/attestation/v1"


@dataclasses.dataclass(frozen=True)
class Attestation:
    """An executor's signed claim about its output.

    Attributes:
        task_id: Task the output answers.
        attempt: Execution attempt (replicas added by escalation use higher attempts).
        executor_id: Executor that produced it.
        digest: blake3 digest of the canonical output.
        public_key: Executor's Ed25519 public key (raw 32 bytes).
        signature: Signature over the fields above.
    """

    task_id: str
    attempt: int
    executor_id: str
    digest: bytes
    public_key: bytes
    signature: bytes

    @staticmethod
    def message(task_id: str, attempt: int, executor_id: str, digest: bytes) -> bytes:
        return encode_fields(_DOMAIN, task_id, attempt, executor_id, digest)

    @classmethod
    def create(
        cls, key: SigningKey, task_id: str, attempt: int, executor_id: str, digest: bytes
    ) -> Attestation:
        sig = key.sign(cls.message(task_id, attempt, executor_id, digest))
        return cls(task_id, attempt, executor_id, digest, key.public_bytes, sig)

    def verify(self, expected_key: bytes | None = None) -> bool:
        """Check the signature (and that it was made by ``expected_key`` when given)."""
        if expected_key is not None and expected_key != self.public_key:
            return False
        msg = self.message(self.task_id, self.attempt, self.executor_id, self.digest)
        return verify_signature(self.public_key, msg, self.signature)
