"""The result desk: hands out verified values for calls that reached the verifier in a batch.

Why it exists: a Ray actor call is the only way to hand a caller a real ``ObjectRef`` at once,
and on the verified path that call used to be the verifier's ``submit`` itself, one Ray call per
verified call. Ray's cost per actor call (about 0.5 ms of CPU for the receiving process) then
dominated the verifier's work, and the verifier is one process. Under a burst the driver now
makes the ref with a call to this desk instead (``result(ticket)``, a random secret, in
another process) and sends the calls themselves to the verifier in batches
(``TrustedVerifier.submit_many``, see ``bft_ray.submission``). The verifier decides each call
exactly as before; the desk pulls the verdicts in batches (``take_deliveries``); ``result`` returns
the value or raises the call's error, so ``ray.get``, ``ray.wait``, ``await`` and downstream
tasks see the same ref semantics as for a directly submitted call.

The desk is trusted like the verifier (it runs on the driver's node) but decides nothing and
holds no secret beyond its capability to poll the verifier: it only forwards what the verifier
delivered. A value travels as the certified
wire bytes and is wrapped in a :class:`~bft_ray.compare.wire.WireValue` here without decoding,
so it is decoded once, by whoever reads the ref.

The desk also tells the verifier which Ray task each ``result(ticket)`` call is (it made the
caller's ref, and ``certificate(ref)`` finds the call by it) with ``name_results``, in one call
before it hands out a batch of values, and hands out a value only once its name is
acknowledged. The verifier
takes that binding from the desk alone: the submitting worker's word would let any worker
that guesses a caller's next Ray task id bind it to a call of its own first.

If the verifier dies, every call still waiting here fails at once with a
:class:`~bft_ray.errors.VerificationError` naming the cause, never hangs: the desk keeps one
long-polling call to the verifier open, whose failure it watches.

Example:
    >>> Delivery("t1", "ok", b"...", 1).status
    'ok'
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from collections import OrderedDict
from typing import Any

import ray

from bft_ray.compare.wire import WireItem, WireValue
from bft_ray.errors import VerificationError

__all__ = ["Delivery", "ResultDesk"]

logger = logging.getLogger(__name__)

_KEEP_UNCLAIMED = 100_000  # delivered verdicts nobody asked for yet (or whose ask was cancelled)


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One decided call, as the verifier hands it to the desk.

    Attributes:
        ticket: The caller's secret for this call (the key its ``result`` call waits on; see
            ``TrustedVerifier.submit_many`` for why it is not the task id).
        status: ``ok`` or ``error``.
        payload: For ``ok``, the accepted answer's certified wire bytes; for ``error``, the
            exception to raise (what ``submit`` would have raised).
        num_returns: How many refs the caller holds (``ok`` only): with more than one, each
            gets one item of the encoded sequence (the verifier checked its length).
    """

    ticket: str
    status: str
    payload: Any
    num_returns: int = 1


class ResultDesk:
    """Async actor: ``result`` waits for a call's delivery, which the desk pulls from the
    verifier.

    Verdicts are *pulled* (one long-polling ``take_deliveries`` call to the verifier at a
    time), not pushed into the desk: a push would be an incoming call, which could queue
    behind more waiting ``result`` calls than the actor's concurrency allows and deadlock.
    The poll doubles as the verifier's liveness watch.

    Args:
        verifier: Handle of the verifier (or dispatcher) actor whose verdicts come here.
        capability: The desk's capability for ``take_deliveries``
            (``bft_ray.verifier.trusted.desk_capability``).
    """

    def __init__(self, verifier: Any, capability: bytes) -> None:
        from bft_ray.executor import guard

        guard.install()  # it reads no executor object, but keep the rule of trusted processes
        self._verifier = verifier
        self._capability = capability
        self._waiting: dict[str, asyncio.Future] = {}
        self._unclaimed: OrderedDict[str, Delivery] = OrderedDict()
        self._dropped: OrderedDict[str, None] = OrderedDict()  # asks that were cancelled
        self._dead: BaseException | None = None
        self._pull: asyncio.Task | None = None
        # (ticket, Ray task id, acknowledged) waiting to be named to the verifier this turn.
        self._names: list[tuple[str, str, asyncio.Future]] = []
        # Waiting asks: ticket -> (Ray task id, acknowledged), named when their delivery comes.
        self._asks: dict[str, tuple[str, asyncio.Future]] = {}
        self._naming: asyncio.Handle | None = None
        self._reporting: set[asyncio.Task] = set()
        self.counters = {"delivered": 0, "handed_out": 0, "batches": 0, "named": 0}

    async def start(self) -> None:
        """Start pulling verdicts (idempotent)."""
        if self._pull is None:
            self._pull = asyncio.get_running_loop().create_task(
                self._pull_loop(), context=contextvars.Context()
            )

    async def _pull_loop(self) -> None:
        try:
            while True:
                batch = await self._verifier.take_deliveries.remote(self._capability)
                if batch is None:
                    cause: BaseException = VerificationError(
                        "the bft-ray cluster was shut down before this call was decided"
                    )
                    break
                self.counters["batches"] += 1
                # Name the asks these deliveries answer (only those: the verifier holds their
                # entries, and an ask nobody will answer names nothing), bound before any of
                # these values is handed out.
                for d in batch:
                    ask = self._asks.pop(d.ticket, None) if isinstance(d, Delivery) else None
                    if ask is not None:
                        self._names.append((d.ticket, ask[0], ask[1]))
                named = self._send_names()
                if named is not None:
                    await named
                for d in batch:
                    self._hand(d)
        except Exception as exc:  # the verifier died: its pending calls cannot be decided
            cause = VerificationError(
                f"the verifier died before this call was decided ({type(exc).__name__}: "
                f"{exc}); no executor was judged for it"
            )
        self._dead = cause
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(cause)
        for fut in [f for _, _, f in self._names] + [f for _, f in self._asks.values()]:
            if not fut.done():
                fut.set_result(cause)  # nothing to name to a verifier that is gone
        self._names = []
        self._asks = {}

    def _hand(self, d: Delivery) -> None:
        self.counters["delivered"] += 1
        if self._dropped.pop(d.ticket, "absent") is None:
            return  # its ask was cancelled
        fut = self._waiting.get(d.ticket)
        if fut is not None and not fut.done():
            fut.set_result(d)
            return
        # The caller's ask has not arrived yet (another Ray call, from another process): keep
        # the verdict until it does.
        self._unclaimed[d.ticket] = d
        while len(self._unclaimed) > _KEEP_UNCLAIMED:
            old, _ = self._unclaimed.popitem(last=False)
            logger.warning("result of %s was never asked for; dropped", old)

    def _name(self, ticket: str, ray_task: str) -> asyncio.Future:
        """Queue ``ticket -> ray_task`` for the verifier now; the future resolves once that
        is acknowledged (with ``None``, or the error: naming only serves certificate lookups,
        so it never fails the call).

        Names leave in batches, only when a value is about to be handed out: before the pull
        loop hands out a batch of deliveries (the asks those answer), and at the end of the
        turn for an ask whose delivery was already here. Naming every ask at once cost one Ray
        call per turn of this loop, and named asks nobody would ever answer.
        """
        fut = asyncio.get_running_loop().create_future()
        self._names.append((ticket, ray_task, fut))
        return fut

    def _name_soon(self) -> None:
        if self._naming is None and self._names:
            # From no caller's context: a cancelled caller's ray.cancel is recursive, and the
            # names of other callers' refs travel in the same call (see trusted._detached_context).
            self._naming = asyncio.get_running_loop().call_soon(
                self._send_names, context=contextvars.Context()
            )

    def _send_names(self) -> asyncio.Task | None:
        if self._naming is not None:
            self._naming.cancel()
            self._naming = None
        batch, self._names = self._names, []
        if not batch:
            return None
        task = asyncio.get_running_loop().create_task(
            self._report_names(batch), context=contextvars.Context()
        )
        self._reporting.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._reporting.discard)
        return task

    async def _report_names(self, batch: list[tuple[str, str, asyncio.Future]]) -> None:
        outcome: BaseException | None = None
        try:
            await self._verifier.name_results.remote(
                self._capability, [(t, r) for t, r, _ in batch]
            )
            self.counters["named"] += len(batch)
        except Exception as exc:
            outcome = exc
            logger.debug("naming %d refs failed: %s", len(batch), exc)
        for _, _, fut in batch:
            if not fut.done():
                fut.set_result(outcome)

    async def result(self, ticket: str) -> Any:
        """The value of the call with this ticket once delivered (or its error, raised)."""
        await self.start()
        ray_task = _current_task()
        named: asyncio.Future | None = None
        delivery = self._unclaimed.pop(ticket, None)
        if delivery is not None:
            if ray_task is not None:
                named = self._name(ticket, ray_task)  # its delivery came first
        else:
            if self._dead is not None:
                raise self._dead
            fut = self._waiting.get(ticket)
            if fut is None:
                fut = self._waiting[ticket] = asyncio.get_running_loop().create_future()
            if ray_task is not None:
                named = asyncio.get_running_loop().create_future()
                self._asks[ticket] = (ray_task, named)
            try:
                delivery = await fut
            except asyncio.CancelledError:
                self._dropped[ticket] = None  # ray.cancel on the ref: drop its delivery
                while len(self._dropped) > _KEEP_UNCLAIMED:
                    self._dropped.popitem(last=False)
                raise
            finally:
                self._waiting.pop(ticket, None)
                ask = self._asks.pop(ticket, None)
                if ask is not None and delivery is not None and ray_task is not None:
                    # Asked while its batch was being named: name it on its own.
                    self._names.append((ticket, ray_task, ask[1]))
        # Named before the ref is ready: certificate(ref) asks only then, and must find it.
        if named is not None and not named.done():
            self._name_soon()
            await asyncio.shield(named)
        self.counters["handed_out"] += 1
        if delivery.status != "ok":
            raise delivery.payload
        data = delivery.payload
        if delivery.num_returns == 1:
            return WireValue(data)
        return [WireItem(data, i) for i in range(delivery.num_returns)]

    async def stats(self) -> dict[str, int]:
        """Counters, and how many calls wait and how many verdicts wait for their caller."""
        return {
            **self.counters,
            "waiting": len(self._waiting),
            "unclaimed": len(self._unclaimed),
        }


def _current_task() -> str | None:
    """The Ray task id (hex) of the ``result`` call running now; ``None`` outside a worker
    (the unit tests drive the desk without Ray)."""
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return None
    return ctx.get_task_id()
