"""Trust: executor reputation (flags with evidence, trust scores)."""

from bft_ray.trust.reputation import ExecutorRecord, Flag, QuarantinePolicy, Reputation

__all__ = ["ExecutorRecord", "Flag", "QuarantinePolicy", "Reputation"]
