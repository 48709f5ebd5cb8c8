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

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import blake3

from bft_ray.compare.wire import decode_plain, encode
from bft_ray.consensus.blocktree import verify_commit_proof
from bft_ray.consensus.config import CommitRule
from bft_ray.consensus.crypto import CertificateVerifier, Ed25519Verifier, ValidatorSet
from bft_ray.consensus.types import Block, QuorumCert, decode_block, decode_qc

__all__ = ["OTHER_KEYS", "ProofChecker", "check_proof", "encode_proof"]

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


@dataclasses.dataclass(frozen=True)
class _Proven:
    """What one proof blob proves: its block, and the verdict of each task its payload holds."""

    block_id: bytes
    block_round: int
    verdicts: dict[str, tuple[bytes, str]]  # task id -> (digest, representative)
    error: str = ""  # why the rest of the proof fails, once the block is known


def _examine(
    blob: bytes, trusted_keys: Iterable[bytes], certs: CertificateVerifier | None
) -> _Proven | str:
    """Everything :func:`check_proof` checks that does not depend on the task; never raises."""
    from bft_ray.verifier.claims import ClaimError, SignedClaim, decode_entry, decode_payload

    try:
        parts = decode_plain(blob)  # before any signature is checked: plain values only
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
    except Exception as exc:  # strict decoders raise on anything malformed
        return f"malformed commit proof: {type(exc).__name__}: {exc}"[:200]
    try:
        head = block
        for raw in raw_chain:
            child = decode_block(raw)
            if child.parent_id != head.id:
                return _Proven(block.id, block.round, {}, "the proof's blocks do not chain")
            head = child
        qcs = tuple(decode_qc(raw) for raw in raw_proof)
        if certs is None or certs.validators.public_keys != tuple(keys):
            certs = CertificateVerifier(ValidatorSet(tuple(keys)), Ed25519Verifier(tuple(keys)))
        if not qcs or not all(certs.verify_qc(qc) for qc in qcs):
            why = "a QC of the commit proof lacks 2f + 1 valid verifier signatures"
            return _Proven(block.id, block.round, {}, why)
        if not verify_commit_proof(head.id, head.round, qcs, RULE):
            why = "the QCs do not satisfy the commit rule for the block"
            return _Proven(block.id, block.round, {}, why)
        verdicts: dict[str, tuple[bytes, str]] = {}
        for entry in decode_payload(block.payload):
            try:
                sc = decode_entry(entry)
            except ClaimError:
                continue
            if isinstance(sc, SignedClaim):
                # The first claim of a task in the payload is the one a reader finds.
                verdicts.setdefault(sc.task_id, (sc.claim.digest, sc.claim.representative))
        return _Proven(block.id, block.round, verdicts)
    except Exception as exc:  # strict decoders raise on anything malformed
        why = f"malformed commit proof: {type(exc).__name__}: {exc}"[:200]
        return _Proven(block.id, block.round, {}, why)


def _verdict_reason(
    proven: _Proven | str,
    block_id: bytes,
    block_round: int,
    task_id: str,
    digest: bytes,
    representative: str,
) -> str:
    if isinstance(proven, str):
        return proven
    if proven.block_id != block_id or proven.block_round != block_round:
        return "the proof's block is not the certificate's"
    if proven.error:
        return proven.error
    found = proven.verdicts.get(task_id)
    if found is None:
        return "the block holds no claim for this task"
    if found != (digest, representative):
        return "the block's claim for this task certifies another value"
    return ""


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
    proven = _examine(blob, trusted_keys, certs)
    return _verdict_reason(proven, block_id, block_round, task_id, digest, representative)


class ProofChecker:
    """:func:`check_proof` for one group's keys, remembering what each blob proves.

    The claims batched in one block share its commit proof, and it carries the block's whole
    payload: checking it once per claim decoded the payload once per claim (a fifth of the
    dispatcher's CPU in a burst). This decodes and verifies each distinct blob once (keyed by
    its blake3 digest, so a blob is never confused with another) and then answers per task
    from the payload's index.

    Args:
        keys: The group's verifier keys, in consensus order.
        keep: Blobs remembered (oldest forgotten first).
    """

    def __init__(self, keys: Sequence[bytes], keep: int = 256) -> None:
        self.keys = tuple(keys)
        self._certs = CertificateVerifier(ValidatorSet(self.keys), Ed25519Verifier(self.keys))
        self._seen: OrderedDict[bytes, _Proven | str] = OrderedDict()
        self._keep = keep

    def check(
        self,
        blob: bytes,
        block_id: bytes,
        block_round: int,
        task_id: str,
        digest: bytes,
        representative: str,
    ) -> str:
        """As :func:`check_proof` with this checker's keys."""
        key = blake3.blake3(blob).digest()
        proven = self._seen.get(key)
        if proven is None:
            proven = self._seen[key] = _examine(blob, self.keys, self._certs)
            if len(self._seen) > self._keep:
                self._seen.popitem(last=False)
        return _verdict_reason(proven, block_id, block_round, task_id, digest, representative)
