"""The trusted verifier: one async actor that replicates, compares and decides.

This is the ``verifiers=1`` mode of the design: the same replication, comparison, escalation and
reputation as the BFT group, with a single verifier whose signature is the certificate. It is the
right mode for a team hunting silent data corruption in its own cluster.

Data path of one call (``submit``):

1. Pick ``r`` executors deterministically from the task id (distinct executors, distinct nodes
   when possible) and send each the call with retries off. Arguments travel as object refs, so
   the verifier never deserialises them.
2. As each replica answers, check its attestation (registered key, task, attempt, signature,
   digest of the output actually returned) and cluster what has arrived.
3. Accept as soon as a cluster is a strict majority of everything that can still arrive; judge
   stragglers in the background for their reputation. Replace crashed or stalled replicas;
   escalate with more replicas on disagreement; fail with a diff when no quorum is possible.
4. Return the value: the caller's ``VerifiedRef.ref`` resolves only to verified data (or raises
   the verification error). The signed certificate is kept in a bounded store and fetched on
   demand by ``bft_ray.certificate``.

The actor is async so hundreds of calls are in flight at once; the per-call state lives in the
coroutine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from bft_ray.compare.canonical import Canonical, Leaf, canonicalize
from bft_ray.compare.diff import render_disagreement, render_leaf_diff
from bft_ray.compare.digest import digest_canonical
from bft_ray.compare.tolerance import compare
from bft_ray.config import Policy
from bft_ray.crypto import SigningKey
from bft_ray.errors import CertificateError, ExecutorUnavailableError, NoQuorumError
from bft_ray.executor.actor import TaskSpec
from bft_ray.executor.attestation import Attestation
from bft_ray.executor.pool import ExecutorPool, PoolSetup, Slot
from bft_ray.trust.reputation import QuarantinePolicy, Reputation
from bft_ray.verifier.certificate import Certificate, Dissent
from bft_ray.verifier.verdict import Evaluation, escalation_size, evaluate

__all__ = ["CallSpec", "TrustedVerifier"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """One verified call as the driver describes it to the verifier."""

    task_id: str
    name: str
    policy: Policy
    call_options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Outcome:
    executor_id: str
    attempt: int
    status: str  # ok | error | crashed | timeout | invalid
    output: Any = None
    canonical: Canonical | None = None
    digest: bytes | None = None
    attestation: Attestation | None = None
    reason: str = ""
    exception: BaseException | None = None

    @property
    def comparable(self) -> bool:
        return self.status in ("ok", "error")


def _error_canonical(exc: BaseException) -> Canonical:
    """Canonical form of a raised exception, so replicas raising the same error agree."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}"
    leaf = Leaf("message", "str", (), np.frombuffer(text.encode(), dtype=np.uint8))
    return Canonical(f"error:{type(cause).__module__}.{type(cause).__qualname__}", (leaf,))


@dataclasses.dataclass
class _Instance:
    """A replicated instance: who holds replicas, and the log needed to build a new one.

    Honest replicas of a deterministic class hold the same state because they ran the same
    constructor and the same calls in the same order. So a replica lost to a crash or a
    divergence is repaired by building a fresh one on a spare executor and replaying the log,
    as in state machine replication. The log is bounded (``max_log``); past it, lost replicas
    are no longer repaired.
    """

    instance_id: str
    name: str
    policy: Policy
    holders: list[str]
    cls_ref: Any = None
    ctor_args: list = dataclasses.field(default_factory=list)
    ctor_kwargs: dict = dataclasses.field(default_factory=dict)
    log: list | None = dataclasses.field(default_factory=list)  # (method, args, kwargs)
    ever_used: set = dataclasses.field(default_factory=set)
    next_seq: int = 0
    cond: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)
    max_log: int = 10_000
    repairs: int = 0


Invoke = Callable[[Slot, TaskSpec], Any]  # returns the ObjectRef of (output, attestation)


class TrustedVerifier:
    """Async actor deciding verdicts in the trusted-verifier mode.

    Args:
        setup: The executor pool created by the driver.
        verifier_id: Name used in certificates.
        quarantine: When flagged executors stop receiving work (default: never).
        keep_certificates: How many recent certificates stay retrievable.
    """

    def __init__(
        self,
        setup: PoolSetup,
        verifier_id: str = "verifier0",
        quarantine: QuarantinePolicy | None = None,
        keep_certificates: int = 20_000,
    ) -> None:
        self.pool = ExecutorPool(setup)
        self.quarantine = quarantine or QuarantinePolicy(below=0.0)
        self.verifier_id = verifier_id
        self._key = SigningKey.generate()
        self.reputation = Reputation()
        self.instances: dict[str, _Instance] = {}
        # Certificates (or the errors) of recent calls, fetched lazily by bft_ray.certificate().
        # Bounded: the verdict ref is what callers hold; certificates are evidence on demand.
        self.keep_certificates = keep_certificates
        self._verdicts: OrderedDict[str, Any] = OrderedDict()
        self._background: set[asyncio.Task] = set()
        self._functions_sent: dict[str, set[str]] = {}  # executor id -> function keys it holds
        self.counters = {
            "calls": 0,
            "accepted": 0,
            "failed": 0,
            "escalations": 0,
            "replacements": 0,
        }
        for eid in self.pool.infos:
            self._register(eid)

    # -- public actor methods -------------------------------------------------------------

    async def public_key(self) -> bytes:
        return self._key.public_bytes

    async def executor_keys(self) -> dict[str, bytes]:
        return dict(self.pool.keys)

    async def submit(self, call: CallSpec, fn_box: list, args: list, kwargs: dict) -> Any:
        """Verify one function call.

        ``fn_box`` holds the function's object ref, boxed in a list so Ray does not resolve it
        here; ``args``/``kwargs`` hold values or object refs and are forwarded as top-level
        arguments, so Ray resolves them on the executors, never in the verifier.
        """
        fn_ref = fn_box[0]
        fn_key = fn_ref.hex()

        def invoke(slot: Slot, spec: TaskSpec) -> Any:
            # Send the function itself only on an executor's first call with it.
            sent = self._functions_sent.setdefault(slot.info.executor_id, set())
            first = fn_key not in sent
            sent.add(fn_key)
            return slot.handle.run.options(**call.call_options).remote(
                spec, fn_key, fn_ref if first else None, *args, **kwargs
            )

        async def run() -> tuple[Any, Callable[[], Certificate]]:
            self.pool.require(int(call.policy.quorum or 1), call.name)
            rep = _Replication(self, call, invoke, instance=None)
            rep.start(rep.pick(call.policy.replicas))
            return await rep.finish()

        return await self._verdict(call.task_id, run())

    async def create_instance(
        self, call: CallSpec, cls_box: list, args: list, kwargs: dict
    ) -> list[str]:
        """Construct ``r`` replicas of a class instance on distinct executors."""
        policy = call.policy
        quorum = int(policy.quorum or 1)
        self.pool.require(quorum, f"{call.name} instance")
        holders: list[str] = []
        tried: set[str] = set()
        budget = policy.replicas * 2  # bound on constructor attempts, crashes included
        while len(holders) < policy.replicas and budget > 0:
            nodes = {self.pool.node_of(h) for h in holders}
            picks = self.pool.pick(call.task_id, policy.replicas - len(holders), tried, nodes)
            if not picks:
                break
            budget -= len(picks)
            tried.update(p.info.executor_id for p in picks)
            refs = [
                p.handle.create_instance.remote(call.task_id, cls_box[0], *args, **kwargs)
                for p in picks
            ]
            results = await asyncio.gather(
                *(asyncio.wait_for(_as_future(r), policy.timeout_s) for r in refs),
                return_exceptions=True,
            )
            for slot, res in zip(picks, results):
                eid = slot.info.executor_id
                if isinstance(res, ray.exceptions.RayTaskError):
                    # The constructor itself raised: the user's error, not an executor fault.
                    raise (res.cause or res) from None
                if isinstance(res, BaseException):
                    status = "timeout" if isinstance(res, asyncio.TimeoutError) else "crashed"
                    self._fail(_Outcome(eid, 0, status, reason=type(res).__name__), call.task_id)
                else:
                    holders.append(eid)
        if len(holders) < quorum:
            raise ExecutorUnavailableError(
                f"could only place {len(holders)} of {policy.replicas} replicas of {call.name} "
                f"(quorum {quorum}); executors crashed or stalled. Add executors.",
                placed=holders,
            )
        self.instances[call.task_id] = _Instance(
            call.task_id,
            call.name,
            policy,
            holders,
            cls_box[0],
            list(args),
            dict(kwargs),
            ever_used=set(tried),
        )
        return holders

    async def call_method(
        self,
        call: CallSpec,
        instance_id: str,
        ready_box: list,
        seq: int,
        method: str,
        args: list,
        kwargs: dict,
    ) -> Any:
        """Verify one method call on a replicated instance, in the caller's order (``seq``).

        Ray may start an async actor's calls out of order, so the driver numbers the calls of
        each instance and the dispatch to executors happens strictly in that order; from there
        Ray keeps per-caller order on each executor. ``ready_box`` holds the ref returned by
        ``create_instance``: awaiting it orders the first call after the construction and
        re-raises a failed construction.
        """
        return await self._verdict(
            call.task_id, self._call_method(call, instance_id, ready_box, seq, method, args, kwargs)
        )

    async def _call_method(
        self,
        call: CallSpec,
        instance_id: str,
        ready_box: list,
        seq: int,
        method: str,
        args: list,
        kwargs: dict,
    ) -> tuple[Any, Callable[[], Certificate]]:
        await _as_future(ready_box[0])
        inst = self.instances.get(instance_id)
        if inst is None:
            raise ExecutorUnavailableError(f"unknown or dropped instance {instance_id!r}")

        def invoke(slot: Slot, spec: TaskSpec) -> Any:
            return slot.handle.call.options(**call.call_options).remote(
                spec, instance_id, method, *args, **kwargs
            )

        async with inst.cond:
            await inst.cond.wait_for(lambda: inst.next_seq == seq)
            try:
                self._repair(inst)
                rep = _Replication(self, call, invoke, instance=inst)
                rep.start([self.pool.by_id[h] for h in rep.live_holders()])
                if inst.log is not None:
                    inst.log.append((method, args, kwargs))
                    if len(inst.log) > inst.max_log:
                        inst.log = None  # too long to replay: stop repairing this instance
            finally:
                inst.next_seq += 1
                inst.cond.notify_all()
        return await rep.finish()

    async def certificate(self, task_id: str) -> tuple[str, Any]:
        """``("ok", Certificate)`` or ``("error", exception)`` for a decided call.

        The caller asks only once the call's value ref is ready (the verdict is stored before
        the value is returned). Never raises: an error result is re-raised by the caller's
        ``bft_ray.certificate``, so no error object is left unread in the object store.
        """
        if task_id in self._verdicts:
            status, payload = self._verdicts[task_id]
            if status == "ok" and not isinstance(payload, Certificate):
                payload = payload()  # sign now, once
                self._verdicts[task_id] = (status, payload)
            return status, payload
        return "error", CertificateError(
            f"no certificate for task {task_id!r}: unknown, or older than the last "
            f"{self.keep_certificates} calls (raise keep_certificates in bft_ray.init)."
        )

    async def _verdict(self, task_id: str, work: Any) -> Any:
        """Run a call's verification and keep its certificate issuer (or error) for later."""
        try:
            value, cert = await work
        except Exception as exc:
            self._store(task_id, ("error", exc))
            raise
        self._store(task_id, ("ok", cert))
        return value

    def _store(self, task_id: str, result: tuple[str, Any]) -> None:
        self._verdicts[task_id] = result
        while len(self._verdicts) > self.keep_certificates:
            self._verdicts.popitem(last=False)

    async def instance_info(self, instance_id: str, ready_box: list) -> dict[str, Any]:
        """Current holders and repair count of a replicated instance."""
        await _as_future(ready_box[0])
        inst = self.instances[instance_id]
        return {"holders": list(inst.holders), "repairs": inst.repairs}

    def _repair(self, inst: _Instance) -> None:
        """Replace lost replicas of ``inst`` by fresh ones that replay its call log.

        Runs under the instance's lock, before a call is dispatched, and only submits work, so
        the constructor and the replayed calls reach the new executor before any later call.
        """
        inst.holders = [h for h in inst.holders if self.pool.is_alive(h)]
        while inst.log is not None and len(inst.holders) < inst.policy.replicas:
            nodes = {self.pool.node_of(h) for h in inst.holders}
            spare = self.pool.pick(inst.instance_id, 1, inst.ever_used, nodes)
            if not spare:
                return
            slot = spare[0]
            eid = slot.info.executor_id
            inst.ever_used.add(eid)
            slot.handle.create_instance.remote(
                inst.instance_id, inst.cls_ref, *inst.ctor_args, **inst.ctor_kwargs
            )
            for seq, (method, args, kwargs) in enumerate(inst.log):
                # Replayed answers are discarded: only the state they leave behind matters.
                spec = TaskSpec(f"{inst.instance_id}/{seq}", -1, f"{inst.name}.{method} (replay)")
                slot.handle.call.remote(spec, inst.instance_id, method, *args, **kwargs)
            inst.holders.append(eid)
            inst.repairs += 1
            logger.info(
                "%s: new replica on %s after replaying %d calls",
                inst.instance_id,
                eid,
                len(inst.log),
            )

    async def drop_instance(self, instance_id: str) -> None:
        inst = self.instances.pop(instance_id, None)
        if inst:
            for eid in inst.holders:
                if self.pool.is_alive(eid):
                    self.pool.by_id[eid].handle.drop_instance.remote(instance_id)

    async def report(self, settle: bool = True) -> dict[str, Any]:
        """Per-executor records and verifier counters.

        With ``settle``, first waits for stragglers to be judged and, for a few seconds, for
        respawns in progress (a respawn waiting for a lost node's resources shows as
        ``respawning``).
        """
        if settle:
            await self.settle(respawn_timeout=5.0)
        for eid in self.pool.infos:
            self._register(eid)
            slot = self.pool.by_id[eid]
            status = slot.status if slot.info.executor_id == eid else "replaced"
            self.reputation.set_status(eid, status)
        rows = [r.as_row() for r in self.reputation.records()]
        for row in rows:
            row["fault"] = self.pool.infos[row["executor"]].fault
        return {"executors": rows, "counters": dict(self.counters)}

    async def inject_fault(self, index: int, fault: Any) -> str:
        """Change the behaviour of pool slot ``index`` now and for its future respawns."""
        slot = self.pool.slots[index]
        slot.fault = fault
        if slot.status == "respawning":
            await self.pool.settle()
        description = await _as_future(slot.handle.set_fault.remote(fault))
        self.pool.infos[slot.info.executor_id] = dataclasses.replace(slot.info, fault=description)
        slot.info = self.pool.infos[slot.info.executor_id]
        return description

    async def executor_handles(self, include_quarantined: bool = False) -> list[dict[str, Any]]:
        """Executors in service: ``index``, ``executor_id``, ``node_id``, ``status``, ``fault``
        (the injected behaviour now) and the actor ``handle``.

        For layers that place their own long-lived work on the pool without replication (robust
        data-parallel training hosts one worker per executor). Quarantine is about verified
        work; such layers may still want quarantined executors (``include_quarantined``).
        """
        wanted = {"alive", "quarantined"} if include_quarantined else {"alive"}
        return [
            {
                "index": s.index,
                "executor_id": s.info.executor_id,
                "node_id": s.info.node_id,
                "status": s.status,
                "fault": s.info.fault,
                "handle": s.handle,
            }
            for s in sorted(self.pool.slots.values(), key=lambda s: s.index)
            if s.status in wanted
        ]

    async def flags(self, executor_id: str) -> list:
        """The flags (with evidence) raised against one executor."""
        return list(self.reputation.get(executor_id).flags)

    async def settle(self, respawn_timeout: float = 15.0) -> None:
        """Wait until stragglers are judged and (up to ``respawn_timeout``) respawns finish."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.pool.settle(respawn_timeout)

    async def shutdown(self) -> None:
        """Stop all executors; calls in flight fail."""
        self.pool.shutdown()

    # -- bookkeeping shared by replications ------------------------------------------------

    def _register(self, eid: str) -> None:
        info = self.pool.infos.get(eid)
        if info is not None:
            self.reputation.register(eid, info.index, info.node_id)

    def _fail(self, out: _Outcome, task_id: str, instance: _Instance | None = None) -> None:
        """Record a replica that produced no comparable answer, and retire its executor."""
        if out.status == "timeout":
            self.pool.retire(out.executor_id, out.reason, kill=True)
        elif out.status == "crashed":
            self.pool.retire(out.executor_id, out.reason)
        if instance is not None and out.executor_id in instance.holders:
            instance.holders.remove(out.executor_id)
        self._register(out.executor_id)
        self.reputation.record(out.executor_id, out.status, task_id, out.reason, out.attestation)
        self._maybe_quarantine(out.executor_id)

    def _maybe_quarantine(self, eid: str) -> None:
        if not self.pool.is_alive(eid):
            return
        if self.quarantine.should_quarantine(self.reputation.get(eid), len(self.pool.live())):
            self.pool.quarantine(eid)

    def _judge(
        self, task_id: str, rep: _Outcome, out: _Outcome, policy: Policy, instance: _Instance | None
    ) -> Dissent | None:
        """Record a comparable answer against the accepted one; returns a dissent if it differs."""
        self._register(out.executor_id)
        if out.digest == rep.digest:
            agreed, reason = True, ""
        else:
            comp = compare(rep.canonical, out.canonical, policy.tolerance)
            agreed = comp.agree
            reason = (
                ""
                if agreed
                else (render_leaf_diff(comp.leaf_diffs[0]) if comp.leaf_diffs else comp.reason)
            )
        if agreed:
            self.reputation.record(out.executor_id, "agreed", task_id)
            return None
        self.reputation.record(out.executor_id, "disagreed", task_id, reason, out.attestation)
        self._maybe_quarantine(out.executor_id)
        if instance is not None and out.executor_id in instance.holders:
            # Its copy of the instance state has diverged: never ask it again.
            instance.holders.remove(out.executor_id)
        return Dissent(out.executor_id, "disagreed", reason, out.attestation)

    def _track(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _Replication:
    """The life of one verified call: dispatch, collect, decide, record."""

    def __init__(
        self, verifier: TrustedVerifier, call: CallSpec, invoke: Invoke, instance: _Instance | None
    ) -> None:
        self.v = verifier
        self.pool = verifier.pool
        self.call = call
        self.policy = call.policy
        self.invoke = invoke
        self.instance = instance
        self.outcomes: list[_Outcome] = []
        self.comparable: dict[str, _Outcome] = {}
        self.running: set[asyncio.Task] = set()
        self.used: set[str] = set()
        self.attempt = 0
        self.replacements_left = self.policy.replicas  # bound on re-execution after failures
        self.started = time.monotonic()

    def live_holders(self) -> list[str]:
        assert self.instance is not None
        inst = self.instance
        inst.holders = [h for h in inst.holders if self.pool.is_alive(h)]
        quorum = int(self.policy.quorum or 1)
        if len(inst.holders) < quorum:
            raise ExecutorUnavailableError(
                f"{self.call.name}: only {len(inst.holders)} healthy replicas of the instance "
                f"remain (quorum {quorum}); the others crashed or diverged. Create a new instance.",
                live=list(inst.holders),
            )
        return list(inst.holders)

    def pick(self, k: int) -> list[Slot]:
        nodes = {self.pool.node_of(e) for e in self.used}
        picked = self.pool.pick(self.call.task_id, k, self.used, nodes)
        if len(picked) < k:
            logger.info("%s: only %d of %d more replicas available", self.call.name, len(picked), k)
        return picked

    def start(self, slots: list[Slot]) -> None:
        """Dispatch one replica per slot. Synchronous: the calls leave in this order."""
        for slot in slots:
            eid = slot.info.executor_id
            self.used.add(eid)
            spec = TaskSpec(self.call.task_id, self.attempt, self.call.name)
            try:
                refs = self.invoke(slot, spec)
            except Exception as exc:
                refs = exc
            self.pool.inflight[eid] += 1
            self.running.add(asyncio.ensure_future(self._collect(eid, self.attempt, refs)))
        if slots:
            self.attempt += 1

    async def _collect(self, eid: str, attempt: int, refs: Any) -> _Outcome:
        try:
            return await self._collect_one(eid, attempt, refs)
        finally:
            self.pool.inflight[eid] -= 1
            if self.pool.inflight[eid] <= 0:
                del self.pool.inflight[eid]

    async def _collect_one(self, eid: str, attempt: int, refs: Any) -> _Outcome:
        if isinstance(refs, BaseException):
            return _Outcome(eid, attempt, "crashed", reason=f"submit failed: {refs}")
        timeout = self.policy.timeout_s
        try:
            # One object per replica, (output, attestation): the verifier needs both anyway, and
            # one ref instead of two halves the cross-thread wake-ups per call.
            output, att = await asyncio.wait_for(_as_future(refs), timeout=timeout)
        except asyncio.TimeoutError:
            return _Outcome(eid, attempt, "timeout", reason=f"no answer within {timeout:g}s")
        except ray.exceptions.RayTaskError as exc:
            canon = _error_canonical(exc)
            cause = exc.cause or exc
            return _Outcome(
                eid,
                attempt,
                "error",
                canonical=canon,
                digest=digest_canonical(canon),
                exception=cause,
                reason=f"raised {type(cause).__name__}",
            )
        except ray.exceptions.RayError as exc:  # actor died, object lost, worker crashed
            return _Outcome(eid, attempt, "crashed", reason=type(exc).__name__)
        return self._check_answer(eid, attempt, att, output)

    def _check_answer(self, eid: str, attempt: int, att: Any, output: Any) -> _Outcome:
        if not isinstance(att, Attestation):
            return _Outcome(eid, attempt, "invalid", reason="no attestation")
        if (att.executor_id, att.task_id, att.attempt) != (eid, self.call.task_id, attempt):
            return _Outcome(
                eid,
                attempt,
                "invalid",
                attestation=att,
                reason="attestation names another executor, task or attempt",
            )
        if not att.verify(expected_key=self.pool.keys.get(eid)):
            return _Outcome(
                eid, attempt, "invalid", attestation=att, reason="bad signature or unregistered key"
            )
        try:
            canon = canonicalize(output)
        except TypeError as exc:
            return _Outcome(eid, attempt, "invalid", attestation=att, reason=str(exc))
        dig = digest_canonical(canon)
        if dig != att.digest:
            return _Outcome(
                eid,
                attempt,
                "invalid",
                attestation=att,
                reason="attested digest does not match the output",
            )
        return _Outcome(
            eid, attempt, "ok", output=output, canonical=canon, digest=dig, attestation=att
        )

    def _evaluate(self) -> Evaluation:
        return evaluate(
            {k: v.canonical for k, v in self.comparable.items()},
            {k: v.digest for k, v in self.comparable.items()},
            len(self.running),
            self.policy,
        )

    async def finish(self) -> tuple[Any, Callable[[], Certificate]]:
        counters = self.v.counters
        counters["calls"] += 1
        evaluation = self._evaluate()
        while self.running and evaluation.accepted is None:
            done, _ = await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self.running.discard(task)
                out = task.result()
                self.outcomes.append(out)
                if out.comparable:
                    self.comparable[out.executor_id] = out
                    continue
                self.v._fail(out, self.call.task_id, self.instance)
                if self.instance is None and self.replacements_left > 0:
                    more = self.pick(1)
                    self.replacements_left -= len(more)
                    counters["replacements"] += len(more)
                    self.start(more)
            evaluation = self._evaluate()
            if evaluation.accepted is None and not self.running and self.instance is None:
                k = escalation_size(evaluation.best_size, len(self.comparable), self.policy)
                extra = self.pick(k) if k else []
                if k and len(extra) == k:
                    counters["escalations"] += 1
                    logger.info(
                        "%s %s: no quorum among %d outputs, adding %d replicas",
                        self.call.name,
                        self.call.task_id,
                        len(self.comparable),
                        k,
                    )
                    self.start(extra)
        if evaluation.accepted is None:
            counters["failed"] += 1
            raise self._no_verdict(evaluation)
        cert = self._conclude(evaluation)
        counters["accepted"] += 1
        rep = self.comparable[evaluation.accepted.representative]
        if self.running:
            self.v._track(self._judge_late(rep))
        logger.debug(
            "%s %s accepted in %.3fs",
            self.call.name,
            self.call.task_id,
            time.monotonic() - self.started,
        )
        if rep.status == "error":
            # Replicas agree the user's code raised: the caller gets that exception, as with Ray.
            raise rep.exception  # type: ignore[misc]
        return rep.output, cert

    def _no_verdict(self, evaluation: Evaluation) -> Exception:
        for eid in sorted(self.comparable):
            self.v._register(eid)
            self.v.reputation.record(
                eid, "disputed", self.call.task_id, "no quorum", self.comparable[eid].attestation
            )
        name, tid = self.call.name, self.call.task_id
        if not self.comparable:
            return ExecutorUnavailableError(
                f"{name} ({tid}): no replica produced an answer: "
                + "; ".join(f"{o.executor_id} {o.status} ({o.reason})" for o in self.outcomes)
                + ". Check executor health with cluster.report(), or add executors.",
                task_id=tid,
            )
        diff = render_disagreement(
            evaluation.clusters,
            {k: v.canonical for k, v in self.comparable.items()},
            self.policy.tolerance,
        )
        return NoQuorumError(
            f"{name} ({tid}): replicas disagree and no cluster reached the quorum "
            f"({evaluation.best_size} agreeing of {len(self.comparable)} compared, "
            f"{evaluation.needed} needed, max_replicas={self.policy.max_replicas}).\n{diff}\n"
            "If the differences are honest numeric noise, loosen the tolerance; otherwise raise "
            "max_replicas (or add executors) so more replicas can outvote the faulty ones.",
            task_id=tid,
        )

    def _conclude(self, ev: Evaluation) -> Callable[[], Certificate]:
        accepted = ev.accepted
        assert accepted is not None
        rep = self.comparable[accepted.representative]
        agreeing: list[Attestation] = []
        dissent: list[Dissent] = []
        for eid in sorted(self.comparable):
            out = self.comparable[eid]
            if eid in accepted.members:
                self.v._register(eid)
                self.v.reputation.record(eid, "agreed", self.call.task_id)
                if out.attestation is not None:
                    agreeing.append(out.attestation)
            else:
                d = self.v._judge(self.call.task_id, rep, out, self.policy, self.instance)
                # Outside the cluster means it disagrees with the representative.
                dissent.append(
                    d or Dissent(eid, "disagreed", "outside the accepted cluster", out.attestation)
                )
        dissent += [
            Dissent(o.executor_id, o.status, o.reason, o.attestation)
            for o in self.outcomes
            if not o.comparable
        ]
        # Signing is deferred to the first bft_ray.certificate() call: most callers never ask,
        # and the verdict's latency should not pay for an Ed25519 signature.
        fields = dict(
            task_id=self.call.task_id,
            name=self.call.name,
            digest=rep.digest,
            tolerance=self.policy.tolerance,
            quorum=ev.needed,
            compared=len(self.comparable) + len(self.running),
            representative=rep.executor_id,
            agreeing=tuple(agreeing),
            dissenting=tuple(dissent),
        )
        key, verifier_id = self.v._key, self.v.verifier_id

        def issue() -> Certificate:
            tol = fields.pop("tolerance")
            return Certificate.issue(key, verifier_id, tolerance=tol.describe(), **fields)

        return issue

    async def _judge_late(self, rep: _Outcome) -> None:
        """Judge replicas still running at verdict time, for their reputation only."""
        for task in list(self.running):
            try:
                out = await task
            except Exception as exc:
                logger.warning("late replica of %s failed to report: %s", self.call.task_id, exc)
                continue
            if out.comparable:
                self.v._judge(self.call.task_id, rep, out, self.policy, self.instance)
            else:
                self.v._fail(out, self.call.task_id, self.instance)


def _as_future(ref: Any) -> asyncio.Future:
    """An asyncio future for an ObjectRef, awaitable from the actor's event loop."""
    return asyncio.wrap_future(ref.future())
