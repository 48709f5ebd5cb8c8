"""Exception hierarchy of bft-ray.

Every error subclasses :class:`ray.exceptions.RayError`, so code that already handles Ray
failures keeps working, and every message says how to fix the cause.

Errors cross process boundaries (raised in a verifier actor, re-raised in the driver), so each
one pickles with its message and structured fields intact.

Example:
    >>> from bft_ray.errors import NoQuorumError, VerificationError
    >>> issubclass(NoQuorumError, VerificationError)
    True
"""

from __future__ import annotations

from typing import Any

from ray.exceptions import GetTimeoutError, RayError

__all__ = [
    "BftRayError",
    "CapabilityError",
    "CertificateError",
    "ConfigError",
    "ExecutorUnavailableError",
    "NoQuorumError",
    "TrustStateError",
    "UserCodeError",
    "VerificationError",
    "VerificationTimeoutError",
]


class BftRayError(RayError):
    """Base class of all bft-ray errors.

    Args:
        message: Human-readable explanation, including how to fix the cause.
        **details: Structured fields (task id, executors, ...) kept for programs.
    """

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls: type[BftRayError], message: str, details: dict[str, Any]) -> BftRayError:
    return cls(message, **details)


class ConfigError(BftRayError, ValueError):
    """A configuration (policy, tolerance, cluster spec, option) is invalid.

    Raised at decoration or ``init`` time, before any work is submitted.
    """


class VerificationError(BftRayError):
    """A verified task could not produce a certified result."""


class NoQuorumError(VerificationError):
    """Replicas disagreed and no agreement cluster reached the quorum.

    The message contains a readable diff of the disagreeing outputs.
    """


class ExecutorUnavailableError(VerificationError):
    """Not enough live executors to run the required replicas."""


class VerificationTimeoutError(VerificationError, GetTimeoutError):
    """The verdict was not reached within the allowed time.

    Also a ``ray.exceptions.GetTimeoutError`` (and a ``TimeoutError``), so code that handles
    ``ray.get`` timeouts handles this one too.
    """


class CertificateError(BftRayError):
    """A certificate failed an offline check (bad signature, too few signers, ...)."""


class TrustStateError(BftRayError):
    """BFT mode: fewer than ``f + 1`` verifiers report the same trust state.

    Then no honest verifier is known to vouch for any one state, so none is returned. A group
    still committing its last blocks can cause it; retrying usually succeeds.
    """


class CapabilityError(BftRayError, PermissionError):
    """A caller without the driver's capability tried to steer an executor or the verifier."""


class UserCodeError(VerificationError):
    """The replicas agree that user code raised an exception whose type is not importable here.

    Exceptions of importable types are re-raised as themselves; this one carries the certified
    type name and message instead.
    """
