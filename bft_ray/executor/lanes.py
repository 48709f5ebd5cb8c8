"""When a replica's time limit starts: per-executor lanes of the work the verifier sent.

An executor actor runs one call at a time, in the order the verifier submitted them (Ray keeps
per-caller order for an actor with ``max_concurrency=1``, and the verifier only submits a call
once its arguments exist). So a replica queued behind others on a busy executor has not started,
and counting its queue time against ``timeout_s`` would punish an honest executor for a
backlog. Each executor therefore has a *lane*: the FIFO of work the verifier sent it and has
not yet seen answered. An item's clock starts when it reaches the head of its lane, that is,
when it was sent to an idle executor or when everything sent before it has been answered.

The clock never depends on what the executor says about itself: an executor that claims to be
busy gains nothing, and one that stalls the item at the head of its lane is detected after
``timeout_s`` like any stall. Work the verifier did not send (a layer that drives executors
directly through ``BftCluster.executor_handles``) is invisible to the lanes and does delay
verified calls: keep ``timeout_s`` above it.

Pure code with an explicit clock, so the rule tests in microseconds.

Example:
    >>> lanes = Lanes()
    >>> lanes.enqueue("ex0", "a", now=0.0)
    True
    >>> lanes.enqueue("ex0", "b", now=1.0)   # queued behind "a": its clock has not started
    False
    >>> lanes.started_at("ex0", "b") is None
    True
    >>> lanes.finish("ex0", "a", now=5.0)    # "a" answered: "b" starts now
    ['b']
    >>> lanes.started_at("ex0", "b")
    5.0
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["Lanes"]


class Lanes:
    """FIFO lanes of outstanding work, one per executor, with each item's start time."""

    def __init__(self) -> None:
        # executor id -> token -> start time (None while queued behind other items)
        self._lanes: dict[str, OrderedDict[Hashable, float | None]] = {}

    def enqueue(self, executor_id: str, token: Hashable, now: float) -> bool:
        """Record work sent to ``executor_id``; returns whether its clock started at once.

        Call it when the work is submitted, before any later work to the same executor.
        """
        lane = self._lanes.setdefault(executor_id, OrderedDict())
        if token in lane:
            raise ValueError(f"token {token!r} already queued on {executor_id}")
        lane[token] = now if not lane else None
        return lane[token] is not None

    def finish(self, executor_id: str, token: Hashable, now: float) -> list[Hashable]:
        """The item answered (or failed); returns the tokens whose clocks start now.

        An item answered out of order (ahead of earlier ones) just leaves the lane: the head is
        still running, so nothing new starts.
        """
        lane = self._lanes.get(executor_id)
        if lane is None or token not in lane:
            return []
        was_head = next(iter(lane)) == token
        del lane[token]
        if not lane:
            del self._lanes[executor_id]
            return []
        if not was_head:
            return []
        head = next(iter(lane))
        if lane[head] is not None:
            return []
        lane[head] = now
        return [head]

    def started_at(self, executor_id: str, token: Hashable) -> float | None:
        """When the item's clock started, or ``None`` while it waits behind earlier work."""
        lane = self._lanes.get(executor_id)
        return None if lane is None else lane.get(token)

    def depth(self, executor_id: str) -> int:
        """Items sent to the executor and not answered yet (its load)."""
        lane = self._lanes.get(executor_id)
        return 0 if lane is None else len(lane)

    def load(self) -> dict[str, int]:
        """Executor id -> outstanding items, for load-aware assignment."""
        return {eid: len(lane) for eid, lane in self._lanes.items()}
