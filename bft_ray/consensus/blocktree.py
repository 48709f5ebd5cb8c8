"""Block tree and the two commit rules.

Blocks are stored by id with their parent link (``block.qc.block_id``); certificates are stored
by the id of the block they certify, whether or not that block has arrived yet. The commit
rules are pure functions of certificates, because a vote signs the parent's id and round:

* two-chain (Jolteon / DiemBFT v4): a QC for ``B`` (round ``r``) whose parent ``P`` has round
  ``r - 1`` commits ``P``;
* three-chain (HotStuff): QCs for ``B2`` and its parent ``B1`` with ``B0 <- B1 <- B2`` in
  consecutive rounds commit ``B0``.

Committing a block commits its uncommitted ancestors too; :meth:`BlockTree.take_commits` walks
from the target down to the last committed block and reports a missing block so the node can
fetch it.

Example:
    >>> from bft_ray.consensus.types import VoteData, QuorumCert
    >>> qc = QuorumCert(VoteData(b"B" * 32, 5, b"P" * 32, 4), ())
    >>> two_chain_commit(qc)[:2] == (b"P" * 32, 4)
    True
    >>> two_chain_commit(QuorumCert(VoteData(b"B" * 32, 5, b"P" * 32, 3), ())) is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CommitRule, SeededBugs
from .errors import SafetyViolationError
from .types import GENESIS_QC, Block, QuorumCert, genesis_block

__all__ = [
    "BlockTree",
    "CommitTarget",
    "CommittedBlock",
    "three_chain_commit",
    "two_chain_commit",
    "verify_commit_proof",
]

CommitTarget = tuple[bytes, int, tuple[QuorumCert, ...]]
"""``(block id, block round, proof)``: the block a rule commits and the QCs that prove it."""


def two_chain_commit(qc: QuorumCert, bugs: SeededBugs | None = None) -> CommitTarget | None:
    """Two-chain rule: the parent of the certified block commits iff its round is ``qc.round - 1``.

    Args:
        qc: A valid QC.
        bugs: Test-only; ``non_consecutive_commit`` drops the round check.
    """
    d = qc.data
    if d.round == 0:
        return None
    if d.parent_round + 1 == d.round or (bugs is not None and bugs.non_consecutive_commit):
        return (d.parent_id, d.parent_round, (qc,))
    return None


def three_chain_commit(
    qc: QuorumCert, parent_qc: QuorumCert | None, bugs: SeededBugs | None = None
) -> CommitTarget | None:
    """Three-chain rule: ``B0 <- B1 <- B2`` in consecutive rounds, ``B2`` certified, commits ``B0``.

    Args:
        qc: A valid QC of ``B2``.
        parent_qc: A valid QC of ``B1`` (``qc``'s parent), or None if unknown.
        bugs: Test-only; ``non_consecutive_commit`` drops the round checks.
    """
    if parent_qc is None or qc.data.round == 0:
        return None
    d, p = qc.data, parent_qc.data
    if p.block_id != d.parent_id or p.round == 0:
        return None
    consecutive = d.parent_round + 1 == d.round and p.parent_round + 1 == p.round
    if consecutive or (bugs is not None and bugs.non_consecutive_commit):
        return (p.parent_id, p.parent_round, (parent_qc, qc))
    return None


def verify_commit_proof(
    block_id: bytes, block_round: int, proof: tuple[QuorumCert, ...], rule: CommitRule
) -> bool:
    """Check that ``proof`` (already signature-checked QCs) satisfies ``rule`` for a block.

    Example:
        >>> from bft_ray.consensus.types import VoteData, QuorumCert
        >>> qc = QuorumCert(VoteData(b"B" * 32, 5, b"P" * 32, 4), ())
        >>> verify_commit_proof(b"P" * 32, 4, (qc,), CommitRule.TWO_CHAIN)
        True
    """
    if CommitRule(rule) is CommitRule.TWO_CHAIN:
        if len(proof) != 1:
            return False
        got = two_chain_commit(proof[0])
    else:
        if len(proof) != 2:
            return False
        got = three_chain_commit(proof[1], proof[0])
    return got is not None and got[0] == block_id and got[1] == block_round


@dataclass(frozen=True)
class CommittedBlock:
    """A block the commit rule committed, in commit order.

    Attributes:
        block: The committed block.
        head_id: Id of the block the rule committed directly in this batch (``block`` is it
            or one of its ancestors).
        commit_proof: QCs proving the rule for ``head_id`` (see :func:`verify_commit_proof`).
    """

    block: Block
    head_id: bytes
    commit_proof: tuple[QuorumCert, ...]


class BlockTree:
    """Blocks, certificates and the committed prefix of one replica.

    Args:
        rule: Commit rule.
        bugs: Test-only seeded bugs (``non_consecutive_commit``).
        retain_committed: How many recently committed blocks to keep for serving lagging peers.
    """

    def __init__(
        self,
        rule: CommitRule = CommitRule.TWO_CHAIN,
        bugs: SeededBugs | None = None,
        retain_committed: int = 256,
    ) -> None:
        g = genesis_block()
        #: Recently committed blocks (oldest first), served to peers that fetch them.
        self.history: dict[bytes, Block] = {}
        self._retain = retain_committed
        self.blocks: dict[bytes, Block] = {g.id: g}
        #: QC certifying each block id (the block itself may be unknown).
        self.qcs: dict[bytes, QuorumCert] = {g.id: GENESIS_QC}
        # Three-chain: a QC whose parent is the key, so a late parent QC can complete a chain.
        self._child_qc: dict[bytes, QuorumCert] = {}
        self.committed_id = g.id
        self.committed_round = 0
        self.target: CommitTarget | None = None
        self._two_chain = CommitRule(rule) is CommitRule.TWO_CHAIN
        self._bugs = bugs

    def add_block(self, block: Block) -> bool:
        """Store a verified block; True if it was new. Blocks at or below the committed round
        are not stored (nothing can build on them any more)."""
        bid = block.id
        if bid in self.blocks or block.round <= self.committed_round:
            return False
        self.blocks[bid] = block
        return True

    def add_qc(self, qc: QuorumCert) -> bool:
        """Store a verified QC and evaluate the commit rule; True if it was new."""
        bid = qc.data.block_id
        if bid in self.qcs or qc.data.round <= self.committed_round:
            return False
        self.qcs[bid] = qc
        if self._two_chain:
            self._consider(two_chain_commit(qc, self._bugs))
        else:
            self._child_qc[qc.data.parent_id] = qc
            self._consider(three_chain_commit(qc, self.qcs.get(qc.data.parent_id), self._bugs))
            child = self._child_qc.get(bid)
            if child is not None:
                self._consider(three_chain_commit(child, qc, self._bugs))
        return True

    def _consider(self, target: CommitTarget | None) -> None:
        if target is None or target[1] <= self.committed_round:
            return
        if self.target is None or target[1] > self.target[1]:
            self.target = target

    def take_commits(self) -> tuple[list[CommittedBlock], bytes | None]:
        """Blocks newly committed (oldest first), and the id of a missing block if any.

        Raises:
            SafetyViolationError: If the target does not extend the committed chain.
        """
        if self.target is None:
            return [], None
        head_id, head_round, proof = self.target
        path: list[Block] = []
        bid = head_id
        cid, cr = self.committed_id, self.committed_round
        while bid != cid:
            b = self.blocks.get(bid)
            if b is None:
                return [], bid
            path.append(b)
            bid = b.qc.data.block_id
            # The parent's round is known from the QC, so a fork below the committed block is
            # detected without needing (pruned) older blocks.
            if bid != cid and b.qc.data.round <= cr:
                raise SafetyViolationError(
                    f"commit target {head_id.hex()[:12]} (round {head_round}) does not extend the "
                    f"committed block {cid.hex()[:12]} (round {cr}): more than f faulty "
                    "replicas or a core bug"
                )
        path.reverse()
        self.target = None
        history = self.history
        for b in path:
            history[b.id] = b
        while len(history) > self._retain:
            del history[next(iter(history))]
        out = [CommittedBlock(b, head_id, proof) for b in path]
        self.committed_id = head_id
        self.committed_round = head_round
        self._prune()
        return out, None

    def get(self, block_id: bytes) -> Block | None:
        """A stored or recently committed block."""
        b = self.blocks.get(block_id)
        return b if b is not None else self.history.get(block_id)

    def set_committed(self, block_id: bytes) -> None:
        """Recovery: mark ``block_id`` (a stored block) as the last committed block."""
        b = self.blocks.get(block_id)
        if b is None:
            raise KeyError(f"committed block {block_id.hex()[:12]} is not in the block store")
        self.committed_id = block_id
        self.committed_round = b.round
        self._prune()

    def _prune(self) -> None:
        # Everything at or below the committed round is either committed (only the tip is
        # needed, as the parent anchor) or on a dead fork.
        cr = self.committed_round
        cid = self.committed_id
        self.blocks = {k: b for k, b in self.blocks.items() if b.round > cr or k == cid}
        self.qcs = {k: q for k, q in self.qcs.items() if q.data.round >= cr}
        if self._child_qc:
            self._child_qc = {k: q for k, q in self._child_qc.items() if q.data.round > cr}
