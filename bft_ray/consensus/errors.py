"""Plain exceptions of the consensus core.

The core must not import Ray (not even through :mod:`bft_ray.errors`), so these are ordinary
Python exceptions. The Ray transport (verifier group) may wrap them in ``bft_ray.errors`` types.

Example:
    >>> from bft_ray.consensus.errors import ConsensusConfigError, ConsensusError
    >>> issubclass(ConsensusConfigError, ConsensusError)
    True
"""

from __future__ import annotations

__all__ = [
    "ConsensusConfigError",
    "ConsensusError",
    "DecodeError",
    "SafetyViolationError",
    "UnsafeActionError",
]


class ConsensusError(Exception):
    """Base class of every error raised by :mod:`bft_ray.consensus`."""


class ConsensusConfigError(ConsensusError, ValueError):
    """The replica set or node configuration is invalid (for example ``n < 3f + 1``)."""


class DecodeError(ConsensusError, ValueError):
    """Bytes are not the canonical encoding of a consensus object."""


class UnsafeActionError(ConsensusError):
    """Safety rules refused to sign a vote, timeout or proposal.

    This is the normal way the core declines an unsafe action; it never leaves
    :meth:`bft_ray.consensus.Node.step`.
    """


class SafetyViolationError(ConsensusError):
    """The core was asked to commit a block that conflicts with its committed chain.

    With at most ``f`` Byzantine replicas and a correct core this cannot happen; seeing it means
    the fault assumption is broken or the core has a bug. The node stops making progress.
    """
