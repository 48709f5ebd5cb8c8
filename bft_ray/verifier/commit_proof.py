"""A BFT certificate's proof that its block committed, checkable with the verifiers' keys only.

The blob (:func:`encode_proof`, canonical wire bytes) holds the committed block that carries
the call's claim, the blocks from it to the block the commit rule committed directly (each
one's embedded QC certifies its parent, so they chain by id), the QC(s) that satisfy the
two-chain rule for that head, and the verifiers' keys in consensus index order.

:func:`check_proof` decodes it strictly and checks: the keys are exactly the trusted ones; the
block is the certificate's (id and round); the chain links by parent id; every QC of the
commit proof carries ``2f + 1`` valid Ed25519 signatures of distinct verifiers over its vote
data under the group's signing domain; the commit rule holds for the head; and the block's
payload holds a claim for the certificate's task with the certified digest and
representative. So a third party learns from the certificate itself that ``2f + 1``
verifiers voted the chain that committed this verdict, in addition to the ``2f + 1``
post-commit signatures over the certificate body.

Example:
    >>> check_proof(b"junk", b"", 0, "t", b"", "", [])  # doctest: +ELLIPSIS
    'malformed commit proof: ...'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bft_ray.compare.wire import decode, encode
from bft_ray.consensus.blocktree import verify_commit_proof
from bft_ray.consensus.config import CommitRule
from bft_ray.consensus.crypto import CertificateVerifier, Ed25519Verifier, ValidatorSet
from bft_ray.consensus.types import Block, QuorumCert, decode_block, decode_qc

__all__ = ["OTHER_KEYS", "check_proof", "encode_proof"]

#: :func:`check_proof`'s reason when the caller trusts another key set than the proof's group.
OTHER_KEYS = "the proof's verifier keys are not the trusted group's"

# The group's nodes use NodeConfig's default rule (verifier/group.py sets no other).
RULE = CommitRule.TWO_CHAIN
_MAX_CHAIN = 64


def encode_proof(
    block: Block, chain: Sequence[Block], proof: Sequence[QuorumCert], keys: Sequence[bytes]
) -> bytes:
    """The proof blob: ``block``, its committed descendants up to the head, the head's QCs."""
    return encode(
        [block.encode(), [b.encode() for b in chain], [q.encode() for q in proof], list(keys)]
    )


def check_proof(
    blob: bytes,
    block_id: bytes,
    block_round: int,
    task_id: str,
    digest: bytes,
    representative: str,
    trusted_keys: Iterable[bytes],
    certs: CertificateVerifier | None = None,
) -> str:
    """Why ``blob`` does not prove the commit of the certificate's verdict ("" when it does).

    ``certs``: a QC checker to reuse (it remembers the QCs it verified) for the same keys in
    the same order as the proof's; a fresh one is built otherwise. Never raises: anything
    malformed is a reason.
    """
    from bft_ray.verifier.claims import ClaimError, SignedClaim, decode_entry, decode_payload

    try:
        parts = decode(blob)
        if not (isinstance(parts, list) and len(parts) == 4):
            return "malformed commit proof: not [block, chain, proof, keys]"
        raw_block, raw_chain, raw_proof, keys = parts
        if not (
            isinstance(raw_block, bytes)
            and isinstance(raw_chain, list)
            and isinstance(raw_proof, list)
            and isinstance(keys, list)
            and all(isinstance(x, bytes) for x in (*raw_chain, *raw_proof, *keys))
            and len(raw_chain) <= _MAX_CHAIN
        ):
            return "malformed commit proof: wrong field types"
        trusted = set(trusted_keys)
        if len(keys) != len(set(keys)) or set(keys) != trusted:
            return OTHER_KEYS
        block = decode_block(raw_block)
        if block.id != block_id or block.round != block_round:
            return "the proof's block is not the certificate's"
        head = block
        for raw in raw_chain:
            child = decode_block(raw)
            if child.parent_id != head.id:
                return "the proof's blocks do not chain"
            head = child
        qcs = tuple(decode_qc(raw) for raw in raw_proof)
        if certs is None or certs.validators.public_keys != tuple(keys):
            certs = CertificateVerifier(ValidatorSet(tuple(keys)), Ed25519Verifier(tuple(keys)))
        if not qcs or not all(certs.verify_qc(qc) for qc in qcs):
            return "a QC of the commit proof lacks 2f + 1 valid verifier signatures"
        if not verify_commit_proof(head.id, head.round, qcs, RULE):
            return "the QCs do not satisfy the commit rule for the block"
        for entry in decode_payload(block.payload):
            try:
                sc = decode_entry(entry)
            except ClaimError:
                continue
            if isinstance(sc, SignedClaim) and sc.task_id == task_id:
                c = sc.claim
                if c.digest == digest and c.representative == representative:
                    return ""
                return "the block's claim for this task certifies another value"
        return "the block holds no claim for this task"
    except Exception as exc:  # strict decoders raise on anything malformed
        return f"malformed commit proof: {type(exc).__name__}: {exc}"[:200]
