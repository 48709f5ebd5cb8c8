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

If the verifier dies, every call still waiting here fails at once with a
:class:`~bft_ray.errors.VerificationError` naming the cause, never hangs: the desk keeps one
long-polling call to the verifier open, whose failure it watches.

Example:
    >>> Delivery("t1", "ok", b"...", 1).status
    'ok'
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from typing import Any

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
        self.counters = {"delivered": 0, "handed_out": 0, "batches": 0}

    async def start(self) -> None:
        """Start pulling verdicts (idempotent)."""
        if self._pull is None:
            self._pull = asyncio.ensure_future(self._pull_loop())

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

    async def result(self, ticket: str) -> Any:
        """The value of the call with this ticket once delivered (or its error, raised)."""
        await self.start()
        delivery = self._unclaimed.pop(ticket, None)
        if delivery is None:
            if self._dead is not None:
                raise self._dead
            fut = self._waiting.get(ticket)
            if fut is None:
                fut = self._waiting[ticket] = asyncio.get_running_loop().create_future()
            try:
                delivery = await fut
            except asyncio.CancelledError:
                self._dropped[ticket] = None  # ray.cancel on the ref: drop its delivery
                while len(self._dropped) > _KEEP_UNCLAIMED:
                    self._dropped.popitem(last=False)
                raise
            finally:
                self._waiting.pop(ticket, None)
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
