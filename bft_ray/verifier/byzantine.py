"""Byzantine verifier behaviours at the application seam (pure; used by the actor and tests).

The consensus core is never modified to misbehave: a faulty verifier runs the honest core with
an application that lies (:class:`FaultyApp`), and the transport (``group.py``) drops, forges
or splits what it sends. Names and descriptions are in :data:`bft_ray.faults.VERIFIER_FAULTS`.

Example:
    >>> from bft_ray.crypto import SigningKey
    >>> app = FaultyApp(SigningKey.generate().public_bytes)
    >>> app.fault = "censor"
    >>> app.fault
    'censor'
"""

from __future__ import annotations

import dataclasses

from bft_ray.consensus.types import Block
from bft_ray.verifier.claims import (
    OperatorClaim,
    ReplicaClaim,
    SignedClaim,
    SignedOperator,
    decode_entry,
    decode_payload,
    encode_payload,
)
from bft_ray.verifier.recheck import Recheck, Verdict
from bft_ray.verifier.replica import VerdictApp

__all__ = ["FaultyApp", "rewrite_claim"]


class FaultyApp(VerdictApp):
    """Application seams of the Byzantine behaviours (see :data:`bft_ray.faults.VERIFIER_FAULTS`)."""

    fault: str = "honest"

    def offer(self, entry: bytes, result: Recheck) -> bool:
        if self.fault == "wrong_vote" and not result.ok:
            sc = self.decode(entry)
            result = Recheck(Verdict.VALID, record=None) if sc else result
        return super().offer(entry, result)

    def validate_payload(self, block: Block) -> bool:
        if self.fault == "wrong_vote":
            self._remember(block)
            return True
        return super().validate_payload(block)

    def propose_payload(self, round: int, parent: Block) -> bytes:
        payload = super().propose_payload(round, parent)
        if self.fault == "censor":
            return b""
        if self.fault == "bad_verdict" and payload:
            return encode_payload([rewrite_claim(e) for e in decode_payload(payload)])
        return payload


def rewrite_claim(entry: bytes) -> bytes:
    """A claim rewritten by a Byzantine leader (keeping the dispatcher's signature)."""
    sc = decode_entry(entry)
    if isinstance(sc, SignedOperator):  # the opposite action, under the original signature
        op = sc.op
        flipped = OperatorClaim(
            op.op_id, "reinstate" if op.action == "ban" else "ban", op.executor_id
        )
        return SignedOperator(flipped.encode(), sc.signature, flipped).encode()
    c = sc.claim
    answered = [i for i, r in enumerate(c.replicas) if r.state == "answered"]
    others = [r.executor_id for r in c.replicas if r.state == "answered"]
    if c.step == "accept" and len(others) > 1:
        rep = next(e for e in others if e != c.representative)
        c2 = dataclasses.replace(c, representative=rep)  # another representative
    elif answered:
        reps = list(c.replicas)
        r = reps[answered[0]]
        reps[answered[0]] = ReplicaClaim(
            r.executor_id, r.slot, r.attempt, r.object_id, "failed", "timeout", "invented"
        )
        c2 = dataclasses.replace(c, replicas=tuple(reps))  # an invented timeout
    else:
        c2 = dataclasses.replace(c, replicas=c.replicas[1:])  # a dropped replica
    return SignedClaim(c2.encode(), sc.signature, c2).encode()
