"""Executor reputation: what each executor did, with the evidence for every flag.

Each outcome of a replica updates its executor's record. A *flag* is raised for outputs that
disagreed with the accepted answer, invalid attestations, crashes and stalls; flags for wrong
answers carry the executor's own signed attestation, so a penalty is backed by evidence.

The trust score is the posterior mean of a Beta(1, 1) prior over "this executor answers
correctly", updated by agreements (successes) and flags (failures):
``(agreed + 1) / (agreed + flagged + 2)``. A new executor starts at 0.5; one that keeps agreeing
approaches 1.

Example:
    >>> rep = Reputation()
    >>> rep.register("ex0", index=0, node_id="n1")
    >>> rep.record("ex0", "agreed", "t1")
    >>> rep.record("ex0", "disagreed", "t2", reason="values differ")
    >>> r = rep.get("ex0")
    >>> (r.tasks, r.agreed, r.flagged, round(r.trust, 2))
    (2, 1, 1, 0.5)
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Literal

__all__ = ["ExecutorRecord", "Flag", "Outcome", "QuarantinePolicy", "Reputation"]

Outcome = Literal[
    "agreed", "unaligned", "disagreed", "disputed", "invalid", "crashed", "timeout", "error"
]
_FLAGGING = frozenset({"disagreed", "invalid", "crashed", "timeout"})


@dataclasses.dataclass(frozen=True)
class Flag:
    """One penalty with its evidence."""

    task_id: str
    outcome: str
    reason: str
    evidence: Any = None  # the executor's signed Attestation, when there is one


@dataclasses.dataclass
class ExecutorRecord:
    """Counters and recent flags of one executor."""

    executor_id: str
    index: int
    node_id: str
    tasks: int = 0
    agreed: int = 0
    disagreed: int = 0
    disputed: int = 0
    unaligned: int = 0
    invalid: int = 0
    crashed: int = 0
    timeouts: int = 0
    errors: int = 0
    flags: deque = dataclasses.field(default_factory=lambda: deque(maxlen=100))
    status: str = "alive"

    @property
    def flagged(self) -> int:
        return self.disagreed + self.invalid + self.crashed + self.timeouts

    @property
    def trust(self) -> float:
        return (self.agreed + 1) / (self.agreed + self.flagged + 2)

    def as_row(self) -> dict[str, Any]:
        return {
            "executor": self.executor_id,
            "index": self.index,
            "node": self.node_id[:8],
            "status": self.status,
            "tasks": self.tasks,
            "agreed": self.agreed,
            "disagreed": self.disagreed,
            "disputed": self.disputed,
            "unaligned": self.unaligned,
            "invalid": self.invalid,
            "crashed": self.crashed,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "flagged": self.flagged,
            "trust": round(self.trust, 3),
        }


class Reputation:
    """Records of all executors, keyed by executor id."""

    def __init__(self) -> None:
        self._records: dict[str, ExecutorRecord] = {}

    def register(self, executor_id: str, index: int, node_id: str) -> None:
        self._records.setdefault(executor_id, ExecutorRecord(executor_id, index, node_id))

    def get(self, executor_id: str) -> ExecutorRecord:
        return self._records[executor_id]

    def set_status(self, executor_id: str, status: str) -> None:
        if executor_id in self._records:
            self._records[executor_id].status = status

    def record(
        self,
        executor_id: str,
        outcome: Outcome,
        task_id: str,
        reason: str = "",
        evidence: Any = None,
    ) -> None:
        """Count one replica outcome; flagging outcomes keep their evidence."""
        r = self._records[executor_id]
        r.tasks += 1
        field = {
            "agreed": "agreed",
            "disagreed": "disagreed",
            "disputed": "disputed",
            "unaligned": "unaligned",
            "invalid": "invalid",
            "crashed": "crashed",
            "timeout": "timeouts",
            "error": "errors",
        }[outcome]
        setattr(r, field, getattr(r, field) + 1)
        if outcome in _FLAGGING:
            r.flags.append(Flag(task_id, outcome, reason, evidence))

    def apply(self, record: Any) -> list[str]:
        """Apply a verdict record (:class:`~bft_ray.verifier.decision.VerdictRecord`).

        This is the only way verdicts change reputation: every flag is a judgement of a
        record, with the executor's signed attestation as evidence. Executors must be
        registered first. Returns the ids of executors flagged by this record.
        """
        flagged = []
        for j in record.judgements:
            if j.executor_id not in self._records:
                continue
            self.record(j.executor_id, j.label.value, record.task_id, j.reason, j.attestation)
            if j.label.flags:
                flagged.append(j.executor_id)
        return flagged

    def records(self) -> list[ExecutorRecord]:
        return sorted(self._records.values(), key=lambda r: (r.index, r.executor_id))


@dataclasses.dataclass(frozen=True)
class QuarantinePolicy:
    """When a flagged executor stops receiving work.

    An executor is quarantined once it has at least ``min_tasks`` outcomes and its trust score
    is below ``below``. At most a minority of the pool is ever quarantined (``keep`` executors
    stay in service): the threat model assumes faulty executors are a minority, so quarantining
    more would mean the flags themselves are suspect.

    Example:
        >>> p = QuarantinePolicy(below=0.3, min_tasks=4, keep=3)
        >>> r = ExecutorRecord("ex2", 2, "n", tasks=4, disagreed=4)
        >>> p.should_quarantine(r, in_service=4)
        True
        >>> p.should_quarantine(r, in_service=3)
        False
    """

    below: float = 0.3
    min_tasks: int = 4
    keep: int = 1

    def should_quarantine(self, record: ExecutorRecord, in_service: int) -> bool:
        if self.below <= 0 or record.tasks < self.min_tasks:
            return False
        return record.trust < self.below and in_service - 1 >= self.keep
