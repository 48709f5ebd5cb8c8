"""Safety rules: the only code that signs votes, timeouts and proposals.

Modelled on Diem's SafetyRules (DiemBFT v4 / Jolteon for the two-chain rule, DiemBFT v3 /
chained HotStuff for the three-chain rule). Everything a replica must remember to stay safe
across crashes is in :class:`SafetyData`; every method that signs first computes the new
safety data, so the caller can persist it before anything signed leaves the replica
(persist-before-send, see :class:`bft_ray.consensus.node.Ready`).

Rules (``r`` = block round, ``qc`` = the block's QC, ``tc`` = TC of round ``r - 1``):

* vote: ``r > last_voted_round`` and
  two-chain: ``r == qc.round + 1`` or (``r == tc.round + 1`` and
  ``qc.round >= tc.highest_hqc_round``) -- the TC transmits the signers' locks;
  three-chain: ``qc.round >= preferred_round`` (the lock).
  Voting records ``last_voted_round = r``, ``locked_round = max(., qc.round)`` and
  ``preferred_round = max(., qc.parent_round)``.
* timeout of round ``t``: ``t >= last_voted_round`` and two-chain: (``t == hqc.round + 1`` or
  ``t == tc.round + 1``) and ``hqc.round >= locked_round``; three-chain: ``t > preferred_round``.
  Timing out records ``last_voted_round = max(., t)`` (no vote in a round after giving it up)
  and ``highest_timeout_round``.
* proposal: ``r > last_voted_round`` (a leader votes for its own block at once, so a restarted
  leader never proposes twice in a round).

Example:
    >>> from bft_ray.consensus.crypto import sim_crypto
    >>> from bft_ray.consensus.types import GENESIS_QC, Block
    >>> vs, signers, _ = sim_crypto(4)
    >>> rules = SafetyRules(SafetyData(), signers[0], vs.domain)
    >>> vote = rules.vote(Block(1, GENESIS_QC, b"x", 1), None)
    >>> rules.data.last_voted_round
    1
    >>> rules.vote(Block(1, GENESIS_QC, b"y", 1), None)
    Traceback (most recent call last):
    ...
    bft_ray.consensus.errors.UnsafeActionError: vote for round 1: already voted or timed out in round 1
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import CommitRule, SeededBugs
from .crypto import Signer
from .encoding import Reader, u64
from .errors import UnsafeActionError
from .types import (
    Block,
    Proposal,
    QuorumCert,
    Timeout,
    TimeoutCert,
    Vote,
    proposal_signing_bytes,
    timeout_signing_bytes,
    vote_signing_bytes,
)

__all__ = ["SafetyData", "SafetyRules", "decode_safety_data"]


@dataclass(frozen=True)
class SafetyData:
    """What a replica must persist to never sign conflicting statements.

    All fields only grow.

    Attributes:
        last_voted_round: Highest round voted in or timed out of.
        preferred_round: Three-chain lock: highest round of a certified block's parent
            (the head of a two-chain) seen in a voted block.
        locked_round: Two-chain lock: highest QC round seen in a voted block or own timeout.
        highest_timeout_round: Highest round this replica timed out of.
    """

    last_voted_round: int = 0
    preferred_round: int = 0
    locked_round: int = 0
    highest_timeout_round: int = 0

    def encode(self) -> bytes:
        """Canonical encoding (tag 10 followed by the four rounds)."""
        return (
            b"\x0a"
            + u64(self.last_voted_round)
            + u64(self.preferred_round)
            + u64(self.locked_round)
            + u64(self.highest_timeout_round)
        )

    def dominates(self, other: SafetyData) -> bool:
        """True iff no field is lower than in ``other`` (safety data never goes back)."""
        return (
            self.last_voted_round >= other.last_voted_round
            and self.preferred_round >= other.preferred_round
            and self.locked_round >= other.locked_round
            and self.highest_timeout_round >= other.highest_timeout_round
        )


def decode_safety_data(data: bytes) -> SafetyData:
    """Decode :meth:`SafetyData.encode` output."""
    r = Reader(data)
    r.expect_tag(10, "SafetyData")
    out = SafetyData(r.u64(), r.u64(), r.u64(), r.u64())
    r.finish()
    return out


class SafetyRules:
    """Holds the signing key and the safety data; refuses unsafe signatures.

    Args:
        data: Safety data restored from storage (``SafetyData()`` for a fresh replica).
        signer: This replica's signer.
        domain: Signing domain (``ValidatorSet.domain``).
        commit_rule: Which vote/timeout rules apply.
        bugs: Test-only seeded bugs.

    Every successful call bumps :attr:`version`; the node reports new data for persistence.
    """

    def __init__(
        self,
        data: SafetyData,
        signer: Signer,
        domain: bytes,
        commit_rule: CommitRule = CommitRule.TWO_CHAIN,
        bugs: SeededBugs | None = None,
    ) -> None:
        self.data = data
        self.version = 0
        self._signer = signer
        self._domain = domain
        self._two_chain = CommitRule(commit_rule) is CommitRule.TWO_CHAIN
        self._bugs = bugs or SeededBugs()

    def _set(self, data: SafetyData) -> None:
        if data != self.data:
            self.data = data
            self.version += 1

    # -- rules as predicates (pure; unit-tested on their own) ---------------------------------

    def check_vote(self, block: Block, tc: TimeoutCert | None) -> None:
        """Raise :class:`UnsafeActionError` unless voting for ``block`` is safe."""
        d = self.data
        r = block.round
        qc = block.qc.data
        if r <= d.last_voted_round:
            raise UnsafeActionError(
                f"vote for round {r}: already voted or timed out in round {d.last_voted_round}"
            )
        if qc.round >= r:
            raise UnsafeActionError(f"vote for round {r}: its QC is from round {qc.round}")
        skip_lock = self._bugs.skip_lock_check
        if self._two_chain:
            if r == qc.round + 1:
                return
            if tc is None or r != tc.round + 1:
                raise UnsafeActionError(
                    f"vote for round {r}: QC round {qc.round} is not the previous round and "
                    "no TC of the previous round"
                )
            if not skip_lock and qc.round < tc.highest_hqc_round:
                raise UnsafeActionError(
                    f"vote for round {r}: QC round {qc.round} is below the TC's highest "
                    f"high-QC round {tc.highest_hqc_round} (lock)"
                )
        elif not skip_lock and qc.round < d.preferred_round:
            raise UnsafeActionError(
                f"vote for round {r}: QC round {qc.round} below preferred round "
                f"{d.preferred_round} (lock)"
            )

    def check_timeout(self, round: int, high_qc: QuorumCert, high_tc: TimeoutCert | None) -> None:
        """Raise :class:`UnsafeActionError` unless timing out of ``round`` is safe."""
        d = self.data
        if round < d.last_voted_round:
            raise UnsafeActionError(
                f"timeout of round {round}: already moved on to round {d.last_voted_round}"
            )
        if self._two_chain:
            tc_round = high_tc.round if high_tc is not None else 0
            if round != high_qc.round + 1 and round != tc_round + 1:
                raise UnsafeActionError(
                    f"timeout of round {round}: not justified by QC {high_qc.round} or TC {tc_round}"
                )
            if high_qc.round < d.locked_round:
                raise UnsafeActionError(
                    f"timeout of round {round}: high QC {high_qc.round} below lock {d.locked_round}"
                )
        elif round <= d.preferred_round:
            raise UnsafeActionError(
                f"timeout of round {round}: not above preferred round {d.preferred_round}"
            )

    # -- signing -------------------------------------------------------------------------------

    def vote(self, block: Block, tc: TimeoutCert | None) -> Vote:
        """Sign a vote for ``block`` if safe, recording it in the safety data first.

        Raises:
            UnsafeActionError: If the vote could conflict with an earlier one.
        """
        self.check_vote(block, tc)
        qc = block.qc.data
        d = self.data
        self._set(
            replace(
                d,
                last_voted_round=block.round,
                locked_round=max(d.locked_round, qc.round),
                preferred_round=max(d.preferred_round, qc.parent_round),
            )
        )
        data = block.vote_data()
        sig = self._signer.sign(vote_signing_bytes(self._domain, data))
        return Vote(data, self._signer.index, sig)

    def timeout(self, round: int, high_qc: QuorumCert, high_tc: TimeoutCert | None) -> Timeout:
        """Sign a timeout of ``round`` if safe, recording it in the safety data first.

        The returned timeout carries ``high_tc`` when it is the TC of ``round - 1``.

        Raises:
            UnsafeActionError: If the timeout would contradict the safety data.
        """
        self.check_timeout(round, high_qc, high_tc)
        d = self.data
        self._set(
            replace(
                d,
                last_voted_round=max(d.last_voted_round, round),
                highest_timeout_round=max(d.highest_timeout_round, round),
            )
        )
        sig = self._signer.sign(timeout_signing_bytes(self._domain, round, high_qc.round))
        last_tc = high_tc if high_tc is not None and high_tc.round == round - 1 else None
        return Timeout(round, high_qc, self._signer.index, sig, last_tc)

    def propose(self, block: Block, tc: TimeoutCert | None) -> Proposal:
        """Sign a proposal of ``block`` (this replica is its author) if its round is fresh.

        Raises:
            UnsafeActionError: If this replica already voted or timed out in that round.
        """
        if block.author != self._signer.index:
            raise UnsafeActionError("a replica only signs its own proposals")
        if block.round <= self.data.last_voted_round:
            raise UnsafeActionError(
                f"proposal for round {block.round}: already voted in round "
                f"{self.data.last_voted_round}"
            )
        sig = self._signer.sign(proposal_signing_bytes(self._domain, block.id))
        return Proposal(block, tc, sig)
