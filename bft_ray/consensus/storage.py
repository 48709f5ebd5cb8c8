"""What a replica persists, and an in-memory store used by the simulator and tests.

A durable store must keep, per replica: the latest :class:`~bft_ray.consensus.safety.SafetyData`
(written synchronously before the messages of the same ``Ready`` are sent), the blocks of
``Ready.blocks``, the highest QC and TC of ``Ready.certificates``, and the id of the last
applied committed block. :class:`RecoveryState` is that content; pass it to ``Node(...,
recovery=...)`` after a crash.

Example:
    >>> store = MemoryStore()
    >>> store.recovery().safety.last_voted_round
    0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .safety import SafetyData
from .types import Block, QuorumCert, TimeoutCert, genesis_block

if TYPE_CHECKING:
    from .node import Ready

__all__ = ["MemoryStore", "RecoveryState"]


@dataclass(frozen=True)
class RecoveryState:
    """Persisted state a replica is rebuilt from.

    Attributes:
        safety: Last persisted safety data.
        blocks: Stored blocks (any order).
        certificates: Highest QC and TC persisted (any QCs/TCs are accepted).
        committed_id: Id of the last committed block the application applied.
    """

    safety: SafetyData = field(default_factory=SafetyData)
    blocks: tuple[Block, ...] = ()
    certificates: tuple[QuorumCert | TimeoutCert, ...] = ()
    committed_id: bytes = field(default_factory=lambda: genesis_block().id)


class MemoryStore:
    """In-memory persistence following the ``Ready`` contract (simulation and tests).

    Use :meth:`persist` before sending ``ready.messages`` and :meth:`apply` after applying
    ``ready.committed``.
    """

    def __init__(self) -> None:
        self.safety = SafetyData()
        self.blocks: dict[bytes, Block] = {}
        self.high_qc: QuorumCert | None = None
        self.high_tc: TimeoutCert | None = None
        self.committed_id = genesis_block().id
        self.committed_round = 0
        self.safety_writes = 0

    def persist(self, ready: Ready) -> None:
        """Durably record the safety state, blocks and certificates of ``ready``."""
        if ready.safety_state is not None:
            self.safety = ready.safety_state
            self.safety_writes += 1
        for b in ready.blocks:
            self.blocks[b.id] = b
        for c in ready.certificates:
            if isinstance(c, QuorumCert):
                if self.high_qc is None or c.data.round > self.high_qc.data.round:
                    self.high_qc = c
            elif self.high_tc is None or c.round > self.high_tc.round:
                self.high_tc = c

    def apply(self, ready: Ready) -> None:
        """Record that ``ready.committed`` was applied, and drop blocks nothing builds on."""
        if not ready.committed:
            return
        last = ready.committed[-1].block
        self.committed_id = last.id
        self.committed_round = last.round
        self.blocks[last.id] = last
        cr = self.committed_round
        self.blocks = {k: b for k, b in self.blocks.items() if b.round >= cr}

    def recovery(self) -> RecoveryState:
        """Snapshot for rebuilding a node after a crash."""
        certs: list[QuorumCert | TimeoutCert] = []
        if self.high_qc is not None:
            certs.append(self.high_qc)
        if self.high_tc is not None:
            certs.append(self.high_tc)
        return RecoveryState(
            safety=self.safety,
            blocks=tuple(self.blocks.values()),
            certificates=tuple(certs),
            committed_id=self.committed_id,
        )
