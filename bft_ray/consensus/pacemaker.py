"""Pacemaker on logical ticks with exponential back-off.

The round itself is advanced by certificates (a QC or TC of round ``r`` moves a replica to
``r + 1``); the pacemaker only decides *when the local timer fires*. Each firing without an
intervening QC doubles the next wait, up to a cap, so that after the network stabilises the
honest replicas' timeouts eventually exceed the real message delay (partial synchrony).

Example:
    >>> pm = Pacemaker(base_ticks=2, max_ticks=8)
    >>> [pm.tick() for _ in range(2)]
    [False, True]
    >>> pm.current_timeout
    4
"""

from __future__ import annotations

__all__ = ["Pacemaker"]


class Pacemaker:
    """Local round timer.

    Args:
        base_ticks: Wait of a round entered after a QC.
        max_ticks: Cap of the back-off.
    """

    __slots__ = ("_base", "_elapsed", "_failures", "_max", "current_timeout")

    def __init__(self, base_ticks: int, max_ticks: int) -> None:
        self._base = base_ticks
        self._max = max_ticks
        self._failures = 0
        self._elapsed = 0
        self.current_timeout = base_ticks

    def _timeout_for(self, failures: int) -> int:
        # Shift capped to keep the integer small; the max clamps the value anyway.
        return min(self._base << min(failures, 30), self._max)

    def enter_round(self, after_qc: bool) -> None:
        """Restart the timer for a new round; a QC resets the back-off, a TC keeps it."""
        if after_qc:
            self._failures = 0
        self._elapsed = 0
        self.current_timeout = self._timeout_for(self._failures)

    def tick(self) -> bool:
        """Advance one tick; True when the timer fires (then it re-arms with a longer wait)."""
        self._elapsed += 1
        if self._elapsed < self.current_timeout:
            return False
        self._elapsed = 0
        self._failures += 1
        self.current_timeout = self._timeout_for(self._failures)
        return True
