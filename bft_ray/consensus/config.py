"""Node configuration, commit-rule choice and the test-only seeded bugs.

Example:
    >>> from bft_ray.consensus.crypto import sim_crypto
    >>> vs, _, _ = sim_crypto(4)
    >>> NodeConfig(index=0, validators=vs).commit_rule
    <CommitRule.TWO_CHAIN: 'two_chain'>
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .crypto import ValidatorSet
from .errors import ConsensusConfigError

__all__ = ["CommitRule", "NodeConfig", "SeededBugs"]


class CommitRule(str, enum.Enum):
    """Which commit rule (and matching vote rule) the replicas run.

    ``TWO_CHAIN``: Jolteon / DiemBFT v4: a block commits when its child in the next round is
    certified; votes after a timeout need a TC whose highest high-QC the block extends.
    ``THREE_CHAIN``: chained HotStuff: a block commits when three consecutive-round
    descendants form a chain whose last block is certified; votes respect the preferred round.
    """

    TWO_CHAIN = "two_chain"
    THREE_CHAIN = "three_chain"


@dataclass(frozen=True)
class SeededBugs:
    """Deliberate bugs for proving the test suite can fail. **Test-only**; all off by default.

    Attributes:
        skip_lock_check: Vote without the lock check (two-chain: the TC high-QC comparison;
            three-chain: ``qc.round >= preferred_round``).
        vote_before_persist: Release a vote in a :class:`~bft_ray.consensus.node.Ready` that
            does not carry the safety state recording it; the state is only reported in the next
            ``Ready``. A crash in between loses the record of the vote.
        non_consecutive_commit: Commit without requiring consecutive rounds between the
            certified chain's blocks.
    """

    skip_lock_check: bool = False
    vote_before_persist: bool = False
    non_consecutive_commit: bool = False

    @property
    def any(self) -> bool:
        """True if some bug is switched on."""
        return self.skip_lock_check or self.vote_before_persist or self.non_consecutive_commit


@dataclass(frozen=True)
class NodeConfig:
    """Static configuration of one replica.

    Attributes:
        index: This replica's index in ``validators``.
        validators: The replica set (keys, ``f``, quorum, chain id).
        commit_rule: Two-chain (default) or three-chain.
        base_timeout_ticks: Ticks before a round with no progress times out.
        max_timeout_ticks: Cap of the exponential back-off.
        sync_retry_ticks: Ticks between re-sending unanswered block requests.
        max_fetch_blocks: Most blocks asked for (and served) per block request.
        future_round_window: Votes and timeouts more than this many rounds ahead are not
            collected (their certificates are still used to catch up), which bounds the memory
            a Byzantine sender can make a replica spend.
        retain_committed_blocks: Recently committed blocks kept in memory to serve peers that
            lag behind (older history comes from the application's ledger).
        bugs: Seeded bugs (test-only).
    """

    index: int
    validators: ValidatorSet
    commit_rule: CommitRule = CommitRule.TWO_CHAIN
    base_timeout_ticks: int = 10
    max_timeout_ticks: int = 160
    sync_retry_ticks: int = 5
    max_fetch_blocks: int = 32
    future_round_window: int = 64
    retain_committed_blocks: int = 256
    bugs: SeededBugs = field(default_factory=SeededBugs)

    def __post_init__(self) -> None:
        if not (0 <= self.index < self.validators.n):
            raise ConsensusConfigError(
                f"index {self.index} is not a replica of a set of {self.validators.n}"
            )
        if self.base_timeout_ticks < 1 or self.max_timeout_ticks < self.base_timeout_ticks:
            raise ConsensusConfigError(
                "need 1 <= base_timeout_ticks <= max_timeout_ticks, got "
                f"{self.base_timeout_ticks} and {self.max_timeout_ticks}"
            )
        if self.sync_retry_ticks < 1 or self.max_fetch_blocks < 1 or self.future_round_window < 1:
            raise ConsensusConfigError(
                "sync_retry_ticks, max_fetch_blocks and future_round_window must be >= 1"
            )
        object.__setattr__(self, "commit_rule", CommitRule(self.commit_rule))
