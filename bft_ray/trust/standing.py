"""Standing of each executor: earned trust per function, status, credit, taint, drift.

Pure state, changed only by verdict records, canary results and explicit operator actions,
so it is deterministic: the same records in the same order give the same standing (which is
what lets a group of verifiers derive it from committed verdicts).

* **Earned trust** is per executor x function: a run of consecutive *verified* agreements
  (``streak``). An executor may run a call of a spot-checked function alone only once its
  streak reaches the plan's ``warmup``; after a flag it needs ``max(warmup, cooldown)`` again.
  A lone, unaudited result never extends the streak: trust is earned only under observation.
* **Status**: ``active``; ``suspect`` (its noise drifted, :mod:`bft_ray.trust.drift`; it still
  works but is always replicated); ``quarantined`` (no real work; it is on probation and runs
  canary tasks; ``readmit_after`` correct canaries in a row re-admit it); ``banned`` (no work
  at all until an operator reinstates it).
* **Credit** (a compute market's account): ``reward`` for each accepted result an executor is
  credited for, minus ``stake`` for each proven wrong result (a disagreement with the accepted
  value backed by its signed attestation, an invalid answer, or a failed canary), minus
  ``crash_penalty`` per crash or stall (0 by default: a crash is not a lie).
* **Taint**: every result accepted from an executor alone and not audited is remembered
  (bounded); once the executor is proven wrong those results are *tainted* and can be
  re-verified (``cluster.reverify_tainted()``).

Example:
    >>> from bft_ray.trust.plans import spot_check
    >>> s = Standing()
    >>> s.register("ex0")
    >>> plan = spot_check(0.1, warmup=2)
    >>> s.may_run_alone("ex0", "f", plan)
    False
    >>> s.verified("ex0", "f", agreed=True); s.verified("ex0", "f", agreed=True)
    >>> s.may_run_alone("ex0", "f", plan)
    True
    >>> s.unverified("ex0", "f", "t9", b"d" * 32)
    >>> s.proven_wrong("ex0", "f", "t10")
    [TaintedResult(task_id='t9', function='f', digest='6464646464646464...')]
    >>> s.may_run_alone("ex0", "f", plan), s.account("ex0")["balance"]
    (False, -7.0)
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
from collections import deque
from typing import Any

import blake3
from pydantic import ConfigDict, Field

from bft_ray.config import _Model
from bft_ray.trust.drift import DriftDetector

__all__ = ["ExecutorStanding", "Prices", "Standing", "Status", "TaintedResult", "state_digest"]

_DIGEST_KEY = b"bft-ray/standing/v1".ljust(32, b"\0")  # blake3 keyed mode: domain separation


class Status(enum.Enum):
    ACTIVE = "active"
    SUSPECT = "suspect"
    QUARANTINED = "quarantined"
    BANNED = "banned"

    @property
    def works(self) -> bool:
        """Whether the executor receives real (non-canary) work."""
        return self in (Status.ACTIVE, Status.SUSPECT)


class Prices(_Model):
    """Prices of the credit accounts (any currency unit).

    Args:
        reward: Credited per accepted result the executor is credited for.
        stake: Debited per proven wrong result.
        crash_penalty: Debited per crash or stall.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    reward: float = Field(1.0, ge=0.0)
    stake: float = Field(10.0, ge=0.0)
    crash_penalty: float = Field(0.0, ge=0.0)


@dataclasses.dataclass(frozen=True)
class TaintedResult:
    """A result accepted from one executor alone, without an audit."""

    task_id: str
    function: str
    digest: str  # hex, shortened in repr

    def __repr__(self) -> str:
        return (
            f"TaintedResult(task_id={self.task_id!r}, function={self.function!r}, "
            f"digest='{self.digest[:16]}...')"
        )


@dataclasses.dataclass
class _FnStanding:
    streak: int = 0
    needed_extra: int = 0  # cooldown owed after a flag
    verified: int = 0
    alone: int = 0
    audited: int = 0


@dataclasses.dataclass
class ExecutorStanding:
    executor_id: str
    group: str = ""
    status: Status = Status.ACTIVE
    earned: float = 0.0
    penalties: float = 0.0
    credited: int = 0
    proven_wrong: int = 0
    crashes: int = 0
    canaries_passed: int = 0
    canaries_failed: int = 0
    canary_streak: int = 0
    reason: str = ""

    @property
    def balance(self) -> float:
        return self.earned - self.penalties


class Standing:
    """Standing of every executor (see the module docstring).

    Args:
        prices: Credit prices.
        readmit_after: Correct canaries in a row that re-admit a quarantined executor.
        keep_unverified: Lone unaudited results remembered per executor (for taint).
        drift: The drift detector (default parameters if omitted).
    """

    def __init__(
        self,
        prices: Prices | None = None,
        readmit_after: int = 5,
        keep_unverified: int = 10_000,
        drift: DriftDetector | None = None,
    ) -> None:
        self.prices = prices or Prices()
        self.readmit_after = readmit_after
        self.keep_unverified = keep_unverified
        self.drift = drift or DriftDetector()
        self.executors: dict[str, ExecutorStanding] = {}
        self._fn: dict[tuple[str, str], _FnStanding] = {}
        self._unverified: dict[str, deque] = {}
        self.tainted: dict[str, list[TaintedResult]] = {}

    # -- membership ----------------------------------------------------------------------

    def register(self, executor_id: str, group: str = "") -> None:
        s = self.executors.setdefault(executor_id, ExecutorStanding(executor_id, group))
        if group and not s.group:
            s.group = group

    def get(self, executor_id: str) -> ExecutorStanding:
        return self.executors[executor_id]

    def _fs(self, executor_id: str, fn: str) -> _FnStanding:
        return self._fn.setdefault((executor_id, fn), _FnStanding())

    # -- decisions -----------------------------------------------------------------------

    def may_run_alone(self, executor_id: str, fn: str, plan: Any) -> bool:
        """Whether ``executor_id`` has earned running ``fn`` alone under ``plan``."""
        s = self.executors.get(executor_id)
        if s is None or s.status is not Status.ACTIVE:
            return False
        fs = self._fs(executor_id, fn)
        return fs.streak >= max(int(plan.warmup), fs.needed_extra)

    def receives_work(self, executor_id: str) -> bool:
        s = self.executors.get(executor_id)
        return s is None or s.status.works

    # -- inputs: verdicts -------------------------------------------------------------------

    def verified(self, executor_id: str, fn: str, agreed: bool) -> None:
        """A result of ``executor_id`` was compared with others: agreed (credited) or not."""
        self.register(executor_id)
        fs = self._fs(executor_id, fn)
        if agreed:
            fs.streak += 1
            fs.verified += 1
            if fs.needed_extra and fs.streak >= fs.needed_extra:
                fs.needed_extra = 0  # the cooldown is served; the warmup still applies
            self._credit(executor_id)
        else:
            fs.streak = 0

    def audited(self, executor_id: str, fn: str) -> None:
        self._fs(executor_id, fn).audited += 1

    def unverified(self, executor_id: str, fn: str, task_id: str, digest: bytes) -> None:
        """A result accepted from ``executor_id`` alone without an audit (paid, remembered)."""
        self.register(executor_id)
        fs = self._fs(executor_id, fn)
        fs.alone += 1
        self._credit(executor_id)
        log = self._unverified.setdefault(executor_id, deque(maxlen=self.keep_unverified))
        log.append(TaintedResult(task_id, fn, digest.hex()))

    def proven_wrong(self, executor_id: str, fn: str, task_id: str, cooldown: int = 50) -> list:
        """``executor_id`` was proven wrong on ``task_id``: penalise it, reset its earned trust
        for every function, and return its lone results that are now tainted."""
        self.register(executor_id)
        s = self.executors[executor_id]
        s.proven_wrong += 1
        s.penalties += self.prices.stake
        s.reason = f"proven wrong on {task_id}"
        for (eid, _), fs in self._fn.items():
            if eid == executor_id:
                fs.streak = 0
                fs.needed_extra = cooldown
        fs = self._fs(executor_id, fn)
        fs.streak, fs.needed_extra = 0, cooldown
        newly = list(self._unverified.pop(executor_id, ()))
        if newly:
            self.tainted.setdefault(executor_id, []).extend(newly)
        return newly

    def apply(
        self, record: Any, fn: str, *, alone: bool = False, cooldown: int = 50
    ) -> list[TaintedResult]:
        """Apply a verdict record (:class:`~bft_ray.verifier.decision.VerdictRecord`).

        ``alone`` marks a result accepted from a single executor without an audit. Returns
        the results that became tainted (their executor was just proven wrong).
        """
        digest = record.accepted.digest if record.accepted is not None else None
        labels = [(j.executor_id, j.label.value) for j in record.judgements]
        return self.apply_labels(record.task_id, fn, labels, alone, digest, cooldown)

    def apply_labels(
        self,
        task_id: str,
        fn: str,
        labels: list[tuple[str, str]],
        alone: bool = False,
        digest: bytes | None = None,
        cooldown: int = 50,
    ) -> list[TaintedResult]:
        """:meth:`apply` on ``(executor id, label)`` pairs (the simulator's entry point).

        Labels are those of :class:`~bft_ray.verifier.decision.Label`: ``agreed`` is credited
        and extends the streak; ``disagreed`` and ``invalid`` are proven wrong; ``crashed`` and
        ``timeout`` restart the streak; ``unaligned`` and ``disputed`` are neither credited
        nor penalised, and restart the streak.
        """
        if alone:
            ((eid, label),) = labels
            if label == "agreed":
                self.unverified(eid, fn, task_id, digest or b"")
            return []
        tainted: list[TaintedResult] = []
        for eid, label in labels:
            if eid == "-":
                continue  # a replica that could not be placed
            if label == "agreed":
                self.verified(eid, fn, agreed=True)
            elif label in ("disagreed", "invalid"):
                tainted += self.proven_wrong(eid, fn, task_id, cooldown)
            elif label in ("crashed", "timeout"):
                self.crashed(eid, fn)
            else:
                self.verified(eid, fn, agreed=False)
        return tainted

    def crashed(self, executor_id: str, fn: str) -> None:
        """A crash or stall: not a lie, but the streak restarts (it is not observed agreeing)."""
        self.register(executor_id)
        s = self.executors[executor_id]
        s.crashes += 1
        s.penalties += self.prices.crash_penalty
        self._fs(executor_id, fn).streak = 0

    def _credit(self, executor_id: str) -> None:
        s = self.executors[executor_id]
        s.credited += 1
        s.earned += self.prices.reward

    # -- drift ------------------------------------------------------------------------------

    def observe_distance(self, executor_id: str, ratio: float) -> bool:
        """Feed drift detection; True when the executor just became ``suspect``."""
        self.register(executor_id)
        fired = self.drift.observe(executor_id, ratio)
        s = self.executors[executor_id]
        if fired and s.status is Status.ACTIVE:
            s.status = Status.SUSPECT
            s.reason = "noise drifted from the pool's (CUSUM)"
            return True
        return False

    # -- quarantine, probation, canaries, operator ------------------------------------------

    def quarantine(self, executor_id: str, reason: str) -> None:
        self.register(executor_id)
        s = self.executors[executor_id]
        if s.status is not Status.BANNED:
            s.status = Status.QUARANTINED
            s.canary_streak = 0
            s.reason = reason

    def canary(self, executor_id: str, passed: bool, fn: str = "", task_id: str = "") -> str:
        """A canary (known-answer task) result. Returns ``"readmitted"``, ``"failed"`` or ``""``.

        A failed canary is a proven wrong result (the known answer is the evidence).
        """
        self.register(executor_id)
        s = self.executors[executor_id]
        if passed:
            s.canaries_passed += 1
            s.canary_streak += 1
            if s.status is Status.QUARANTINED and s.canary_streak >= self.readmit_after:
                s.status = Status.ACTIVE
                s.reason = f"re-admitted after {s.canary_streak} correct canaries"
                s.canary_streak = 0
                return "readmitted"
            return ""
        s.canaries_failed += 1
        s.canary_streak = 0
        self.proven_wrong(executor_id, fn, task_id or "canary")
        return "failed"

    def reinstate(self, executor_id: str) -> None:
        """Operator: back in service (its earned trust is not restored: it is replicated first)."""
        self.register(executor_id)
        s = self.executors[executor_id]
        s.status = Status.ACTIVE
        s.canary_streak = 0
        s.reason = "reinstated by the operator"
        self.drift.clear(executor_id)
        for (eid, _), fs in self._fn.items():
            if eid == executor_id:
                fs.streak = 0

    def ban(self, executor_id: str) -> None:
        """Operator: no work, no canaries, until reinstated."""
        self.register(executor_id)
        s = self.executors[executor_id]
        s.status = Status.BANNED
        s.reason = "banned by the operator"

    def clear_tainted(self, executor_id: str, task_ids: set[str]) -> None:
        left = [t for t in self.tainted.get(executor_id, []) if t.task_id not in task_ids]
        if left:
            self.tainted[executor_id] = left
        else:
            self.tainted.pop(executor_id, None)

    # -- reports and persistence ------------------------------------------------------------

    def account(self, executor_id: str) -> dict[str, Any]:
        s = self.executors[executor_id]
        return {
            "executor": executor_id,
            "group": s.group,
            "status": s.status.value,
            "credited": s.credited,
            "earned": s.earned,
            "penalties": s.penalties,
            "balance": s.balance,
            "proven_wrong": s.proven_wrong,
            "crashes": s.crashes,
            "canaries_passed": s.canaries_passed,
            "canaries_failed": s.canaries_failed,
            "tainted": len(self.tainted.get(executor_id, ())),
            "suspect_cusum": round(self.drift.states[executor_id].cusum, 3)
            if executor_id in self.drift.states
            else 0.0,
            "reason": s.reason,
        }

    def functions(self, executor_id: str) -> dict[str, dict[str, int]]:
        return {
            fn: dataclasses.asdict(fs)
            for (eid, fn), fs in sorted(self._fn.items())
            if eid == executor_id
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "prices": self.prices.model_dump(),
            "readmit_after": self.readmit_after,
            "executors": {
                e: {**dataclasses.asdict(s), "status": s.status.value}
                for e, s in self.executors.items()
            },
            "functions": [[e, f, dataclasses.asdict(fs)] for (e, f), fs in self._fn.items()],
            "unverified": {
                e: [dataclasses.asdict(t) for t in q] for e, q in self._unverified.items()
            },
            "tainted": {e: [dataclasses.asdict(t) for t in v] for e, v in self.tainted.items()},
            "drift": self.drift.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], keep_unverified: int = 10_000) -> Standing:
        if data.get("version") != 1:
            raise ValueError(f"unknown trust state version {data.get('version')!r}")
        s = cls(Prices(**data["prices"]), data["readmit_after"], keep_unverified)
        for e, row in data["executors"].items():
            s.executors[e] = ExecutorStanding(**{**row, "status": Status(row["status"])})
        for e, f, fs in data["functions"]:
            s._fn[(e, f)] = _FnStanding(**fs)
        for e, rows in data["unverified"].items():
            s._unverified[e] = deque((TaintedResult(**r) for r in rows), maxlen=keep_unverified)
        s.tainted = {e: [TaintedResult(**r) for r in v] for e, v in data["tainted"].items()}
        s.drift = DriftDetector.from_json(data["drift"])
        return s

    def digest(self) -> bytes:
        """Digest of the whole state (:func:`state_digest` of :meth:`to_json`).

        Equal on two verifiers exactly when they hold the same standing, so the BFT group
        compares it (``VerdictApp.standing_digest``) and a reader of ``f + 1`` verifiers'
        states recomputes it rather than trusting a reported one.
        """
        return state_digest(self.to_json())

    def save(self, path: str) -> None:
        """Write the state atomically (a crash mid-write leaves the previous file)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".trust-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_json(), fh)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Standing:
        with open(path) as fh:
            return cls.from_json(json.load(fh))


def state_digest(data: dict[str, Any]) -> bytes:
    """Digest of a :meth:`Standing.to_json` state, independent of insertion order.

    Canonical JSON (sorted keys, no spaces, the per-function rows sorted) under a keyed
    blake3: two states that differ in any field, streak or float differ in digest. Floats are
    written by ``repr`` (shortest round-trip), so the same arithmetic gives the same text.
    """
    canon = dict(data)
    canon["functions"] = sorted(data.get("functions", []), key=lambda r: (r[0], r[1]))
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return blake3.blake3(text.encode(), key=_DIGEST_KEY).digest()
