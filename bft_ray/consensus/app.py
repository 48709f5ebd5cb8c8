"""Application hooks: what a leader proposes and whether a replica may vote for a payload.

Payloads are opaque bytes to the core. The verifier group uses :meth:`Application.validate_payload`
to recompute every verdict in a proposed block before its replica votes.

Example:
    >>> from bft_ray.consensus.types import genesis_block
    >>> NullApplication().propose_payload(1, genesis_block())
    b''
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .types import Block

__all__ = ["Application", "NullApplication"]


@runtime_checkable
class Application(Protocol):
    """Hooks the core calls; both must be deterministic functions of their inputs and app state."""

    def propose_payload(self, round: int, parent: Block) -> bytes:
        """Payload of the block this replica proposes in ``round`` on top of ``parent``."""
        ...

    def validate_payload(self, block: Block) -> bool:
        """True iff this replica may vote for ``block``'s payload.

        Called before voting. The parent block may not be stored locally yet (the core fetches
        it later), so a validator should judge the payload on its own.
        """
        ...


class NullApplication:
    """Empty payloads, everything valid (tests and the simulator's default)."""

    def propose_payload(self, round: int, parent: Block) -> bytes:
        """Return ``b""``."""
        return b""

    def validate_payload(self, block: Block) -> bool:
        """Return True."""
        return True
