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

__all__ = ["Application", "NullApplication", "wants_to_propose"]


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


def wants_to_propose(app: Application, round: int, parent: Block) -> bool:
    """Whether ``app`` has something to propose now (optional hook ``should_propose``).

    An application may define ``should_propose(round, parent) -> bool``; a leader whose
    application answers ``False`` does not propose in that round until the transport calls
    :meth:`~bft_ray.consensus.node.Node.poke` (new payload) or the round changes. Without the
    hook a leader always proposes, as the simulator and Twins expect. Liveness is the
    application's to keep: it must answer ``True`` while anything it holds is uncommitted,
    including the empty blocks that carry the certificates committing earlier payloads.
    """
    hook = getattr(app, "should_propose", None)
    return True if hook is None else bool(hook(round, parent))


class NullApplication:
    """Empty payloads, everything valid (tests and the simulator's default)."""

    def propose_payload(self, round: int, parent: Block) -> bytes:
        """Return ``b""``."""
        return b""

    def validate_payload(self, block: Block) -> bool:
        """Return True."""
        return True
