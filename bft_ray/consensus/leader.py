"""Leader election: who proposes in a round. Round robin by default; pluggable.

Example:
    >>> RoundRobin(4).leader(5)
    1
    >>> FixedSchedule({1: 3}, fallback=RoundRobin(4)).leader(1)
    3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["FixedSchedule", "LeaderElection", "RoundRobin"]


@runtime_checkable
class LeaderElection(Protocol):
    """Maps a round to the index of its leader. Must be deterministic and equal on all replicas."""

    def leader(self, round: int) -> int:
        """Index of the leader of ``round``."""
        ...


class RoundRobin:
    """``order[round % len(order)]``; ``order`` defaults to ``0..n-1``.

    A custom order can weight replicas (an index may appear several times).
    """

    def __init__(self, n: int, order: Sequence[int] | None = None) -> None:
        self._order = tuple(order) if order is not None else tuple(range(n))
        if not self._order or any(not (0 <= i < n) for i in self._order):
            raise ValueError(f"leader order must be non-empty indices in 0..{n - 1}")

    def leader(self, round: int) -> int:
        """Index of the leader of ``round``."""
        return self._order[round % len(self._order)]


class FixedSchedule:
    """An explicit leader per round (Twins scenarios), ``fallback`` elsewhere."""

    def __init__(self, leaders: Mapping[int, int], fallback: LeaderElection) -> None:
        self._leaders = dict(leaders)
        self._fallback = fallback

    def leader(self, round: int) -> int:
        """Index of the leader of ``round``."""
        got = self._leaders.get(round)
        return self._fallback.leader(round) if got is None else got
