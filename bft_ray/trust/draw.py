"""Audit draws an executor can neither predict nor influence.

A lone result is audited when a keyed hash of the call falls under the audit rate. The key is
the verifier's secret, drawn at start and never sent to an executor, so whether a call will be
audited looks like a fair coin to the executor that runs it: an executor that behaves well
only when it expects to be watched gains nothing. The draw is taken only after the executor's
signed attestation (its commitment to the output) has arrived, and it binds the committed
digest, so an executor cannot first learn the draw and then pick its answer.

Each call's draw can be proved afterwards: :meth:`AuditDraw.reveal` gives the per-call key
``blake3(secret, "audit" || task_id)``, which shows how that call's coin fell without
revealing anything about other calls.

Example:
    >>> d = AuditDraw(b"s" * 32)
    >>> u = d.value("task-1", "ex0", b"digest")
    >>> 0.0 <= u < 1.0
    True
    >>> d.audited("task-1", "ex0", b"digest", rate=1.0)
    True
    >>> AuditDraw.check(d.reveal("task-1"), "ex0", b"digest") == u
    True
"""

from __future__ import annotations

import os

import blake3

__all__ = ["AuditDraw"]

_SCALE = float(1 << 64)


class AuditDraw:
    """Keyed, per-call audit coin (see the module docstring)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)
        if len(self._secret) != 32:
            raise ValueError("the audit secret must be 32 bytes")

    def reveal(self, task_id: str) -> bytes:
        """The per-call key that lets anyone recompute this call's draw (and no other)."""
        return blake3.blake3(b"audit\x00" + task_id.encode(), key=self._secret).digest()

    @staticmethod
    def check(call_key: bytes, executor_id: str, digest: bytes) -> float:
        """The draw in ``[0, 1)`` from a revealed per-call key."""
        h = blake3.blake3(executor_id.encode() + b"\x00" + digest, key=call_key).digest(8)
        return int.from_bytes(h, "little") / _SCALE

    def value(self, task_id: str, executor_id: str, digest: bytes) -> float:
        """The draw in ``[0, 1)`` for a committed output."""
        return self.check(self.reveal(task_id), executor_id, digest)

    def audited(self, task_id: str, executor_id: str, digest: bytes, rate: float) -> bool:
        """Whether this committed output is audited at ``rate``."""
        return self.value(task_id, executor_id, digest) < rate
