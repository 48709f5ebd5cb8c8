"""Deterministic replica assignment.

The executors of a task are derived from the task id, the set of live executors and their
current load, never chosen freely by whoever schedules (in the BFT mode a Byzantine leader must
not be able to route a task to its accomplices). Rendezvous (highest-random-weight) hashing
gives every task its own pseudo-random order of executors; a stable sort by load then prefers
idle executors, so a burst of calls spreads evenly instead of queueing where the hash happened
to point, and ties keep the hash order. From that order we take executors on distinct nodes
first, so the replicas of one task only share a node when there are fewer nodes than replicas.

Example:
    >>> cands = [Candidate("a", "n1"), Candidate("b", "n1"), Candidate("c", "n2")]
    >>> picked = assign("task-7", cands, 2)
    >>> len(picked), len({c.node_id for c in picked})
    (2, 2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

import blake3

__all__ = ["Candidate", "assign", "rendezvous_order"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A live executor that may receive a replica."""

    executor_id: str
    node_id: str
    slot: str = ""  # the slot (a GPU of a node); a respawn keeps it. Defaults to the id.
    group: str = ""  # owner or collusion group: one task never runs on two of the same group

    @property
    def slot_key(self) -> str:
        return self.slot or self.executor_id


def rendezvous_order(key: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates sorted by their rendezvous weight for ``key`` (deterministic)."""

    def weight(c: Candidate) -> bytes:
        return blake3.blake3(f"{key}\x00{c.executor_id}".encode()).digest()

    return sorted(candidates, key=lambda c: (weight(c), c.executor_id))


def assign(
    key: str,
    candidates: Sequence[Candidate],
    k: int,
    exclude: Collection[str] = (),
    avoid_nodes: Collection[str] = (),
    load: Mapping[str, int] | None = None,
    avoid_groups: Collection[str] = (),
) -> list[Candidate]:
    """Pick up to ``k`` distinct executors for ``key``.

    Args:
        key: Task (or instance) id; the same key and candidates always give the same answer.
        candidates: Live executors.
        k: How many to pick.
        exclude: Slots (or executor ids) that must not be picked: they already ran this task.
            Identity is by slot, so a respawned executor never runs a task twice.
        avoid_nodes: Nodes already holding a replica of this task; used only when no other
            node is left.
        load: Calls in flight per executor id; less loaded executors come first.
        avoid_groups: Owner groups already holding a replica of this task. Unlike nodes this
            is a hard rule (anti-collusion): executors of a group never share a task, even if
            that leaves fewer than ``k``. The empty group is no group.

    Returns:
        At most ``k`` candidates, on distinct nodes whenever enough nodes exist, and never two
        of the same non-empty group.
    """
    order = [
        c
        for c in rendezvous_order(key, candidates)
        if c.slot_key not in exclude
        and c.executor_id not in exclude
        and not (c.group and c.group in avoid_groups)
    ]
    if load:
        order.sort(key=lambda c: load.get(c.executor_id, 0))  # stable: ties keep hash order
    picked: list[Candidate] = []
    used_nodes = set(avoid_nodes)
    used_groups: set[str] = set()

    def free(c: Candidate) -> bool:
        return not (c.group and c.group in used_groups)

    for c in order:  # first pass: one per node
        if len(picked) == k:
            return picked
        if c.node_id not in used_nodes and free(c):
            picked.append(c)
            used_nodes.add(c.node_id)
            used_groups.add(c.group)
    for c in order:  # then fill from nodes already used
        if len(picked) == k:
            break
        if c not in picked and free(c):
            picked.append(c)
            used_groups.add(c.group)
    return picked
