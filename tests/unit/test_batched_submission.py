"""The batched verified path without Ray: the driver's Submitter and the result desk.

Integration tests (``tests/integration/test_ray_native.py``) run the same path on Ray; these
pin the rules each part follows: which calls are batched, that nothing queued is lost, that a
verdict reaches exactly its own caller, and that a dead verifier fails every waiting call.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from types import SimpleNamespace

import pytest
import ray

from bft_ray.compare.wire import encode
from bft_ray.errors import VerificationError
from bft_ray.submission import Submitter
from bft_ray.verifier.results import Delivery, ResultDesk

# -- the driver's submitter -----------------------------------------------------------------


class _Ref:
    def __init__(self, name: str) -> None:
        self.name = name

    def task_id(self) -> SimpleNamespace:
        return SimpleNamespace(hex=lambda: f"task-{self.name}")


class _Method:
    def __init__(self, log: list, name: str, num_returns: int = 1) -> None:
        self.log, self.name, self.num_returns = log, name, num_returns

    def options(self, num_returns: int = 1) -> _Method:
        return _Method(self.log, self.name, num_returns)

    def remote(self, *args):
        self.log.append((self.name, args))
        if self.num_returns == 1:
            return _Ref(f"{self.name}{len(self.log)}")
        return [_Ref(f"{self.name}{len(self.log)}.{i}") for i in range(self.num_returns)]


class _Actor:
    def __init__(self, log: list, *methods: str) -> None:
        for m in methods:
            setattr(self, m, _Method(log, m))


class _Recording(Submitter):
    """A submitter whose verifier acks each batch when the test says so."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Semaphore(0)

    def _wait_for(self, ack) -> None:
        self.release.acquire(timeout=5)


def _call(task_id: str, num_returns: int = 1) -> SimpleNamespace:
    return SimpleNamespace(task_id=task_id, num_returns=num_returns)


def _setup(**kwargs):
    log: list = []
    verifier = _Actor(log, "submit", "submit_many")
    desk = _Actor(log, "result")
    return log, _Recording(verifier, desk, **kwargs)


def _batches(log: list) -> list:
    return [args[0] for name, args in log if name == "submit_many"]


def _wait_until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_a_quiet_call_goes_direct_and_a_burst_goes_to_the_desk_in_batches():
    log, s = _setup(window_s=60.0)
    first = s.submit(_call("t0"), "fn", [1], {})
    assert log[0][0] == "submit" and first.name == "submit1"
    refs = [s.submit(_call(f"t{i}"), "fn", [i], {}) for i in range(1, 6)]
    assert all(r.name.startswith("result") for r in refs)
    # Each burst call's ref is the desk's result call for a secret ticket of its own, never its
    # task id (executors see task ids: one could ask the desk for another caller's result).
    tickets = [args[0] for name, args in log if name == "result"]
    assert len(set(tickets)) == 5 and not set(tickets) & {f"t{i}" for i in range(6)}
    assert all(len(t) == 32 for t in tickets)
    _wait_until(lambda: len(_batches(log)) == 1)
    for _ in range(3):
        s.release.release()
    _wait_until(lambda: s._queue == [] and not s._in_flight)
    entries = [e for b in _batches(log) for e in b]
    assert [e[0] for e in entries] == [f"t{i}" for i in range(1, 6)]
    # The entry carries the ticket and the pickled call, and never names the Ray task of the
    # caller's ref (the desk names it to the verifier: any worker can send entries).
    assert all(len(e) == 3 for e in entries)
    assert [e[1] for e in entries] == tickets
    call, fn_key, args, kwargs = pickle.loads(entries[2][2])
    assert (call.task_id, fn_key, args, kwargs) == ("t3", "fn", [3], {})
    assert s.counters == {"direct": 1, "batched": 5, "batches": len(_batches(log))}
    s.close()


def test_one_batch_in_flight_so_calls_arriving_meanwhile_form_the_next():
    log, s = _setup(window_s=60.0)
    s.submit(_call("t0"), "fn", [0], {})
    s.submit(_call("t1"), "fn", [1], {})
    _wait_until(lambda: len(_batches(log)) == 1)
    for i in range(2, 12):
        s.submit(_call(f"t{i}"), "fn", [i], {})
    time.sleep(0.05)
    assert len(_batches(log)) == 1  # the first batch is not acked: the others wait
    s.release.release()
    _wait_until(lambda: len(_batches(log)) == 2)
    assert [e[0] for e in _batches(log)[1]] == [f"t{i}" for i in range(2, 12)]
    s.release.release()
    s.close()


def test_calls_holding_ray_refs_or_large_arguments_go_direct_even_in_a_burst():
    log, s = _setup(window_s=60.0, max_entry_bytes=1000)
    s.submit(_call("t0"), "fn", [0], {})
    ref = ray.ObjectRef.from_random()
    s.submit(_call("t1"), "fn", [{"nested": [ref]}], {})
    s.submit(_call("t2"), "fn", [b"x" * 5000], {})
    assert [name for name, _ in log] == ["submit", "submit", "submit"]
    assert s.counters["batched"] == 0
    del ref
    s.close()


def test_a_large_call_is_not_pickled_past_the_entry_bound():
    """Pickling stops at max_entry_bytes: a call with a 100 MB argument goes direct anyway, so
    the probe must not copy all of it first. Whatever comes after the bound is never reached
    (here an object whose pickling would fail and count how often it was tried). Pickle
    writes in frames of 64 KiB and objects past that size straight through, so the bound
    holds to within a frame."""
    tried = []

    class Tripwire:
        def __reduce__(self):
            tried.append(1)
            raise TypeError("pickled past the bound")

    s = Submitter(None, None, max_entry_bytes=1000)
    assert s._pack(_call("t"), "fn", [b"x" * 200_000, Tripwire()], {}) is None
    assert tried == []
    small = s._pack(_call("t"), "fn", [b"x" * 10], {})
    assert small is not None and len(small) <= 1000
    assert pickle.loads(small)[2] == [b"x" * 10]


def test_an_argument_that_cannot_be_pickled_fails_in_the_callers_remote():
    _, s = _setup(window_s=60.0)
    s.submit(_call("t0"), "fn", [0], {})
    with pytest.raises(TypeError):
        s.submit(_call("t1"), "fn", [threading.Lock()], {})
    assert s.counters["batched"] == 0 and not s._queue
    s.close()


def test_num_returns_takes_that_many_refs_from_the_desk():
    log, s = _setup(window_s=60.0)
    s.submit(_call("t0"), "fn", [0], {})
    refs = s.submit(_call("t1", num_returns=3), "fn", [1], {})
    assert isinstance(refs, list) and len(refs) == 3
    _wait_until(lambda: len(_batches(log)) == 1)
    assert _batches(log)[0][0][0] == "t1"
    assert [name for name, _ in log].count("result") == 1  # one desk call makes the 3 refs
    s.release.release()
    s.close()


def test_close_sends_everything_queued_first():
    log, s = _setup(window_s=60.0, max_batch=4)
    s.submit(_call("t0"), "fn", [0], {})
    for i in range(1, 11):
        s.submit(_call(f"t{i}"), "fn", [i], {})
    for _ in range(10):
        s.release.release()
    s.close()
    sent = [e[0] for b in _batches(log) for e in b]
    assert sent == [f"t{i}" for i in range(1, 11)]
    assert all(len(b) <= 4 for b in _batches(log))


def test_without_a_desk_every_call_goes_direct():
    log: list = []
    s = Submitter(_Actor(log, "submit", "submit_many"), None, window_s=60.0)
    for i in range(5):
        s.submit(_call(f"t{i}"), "fn", [i], {})
    assert [name for name, _ in log] == ["submit"] * 5


# -- the result desk -------------------------------------------------------------------------


class _Verifier:
    """Stands for the verifier actor: take_deliveries returns what the test feeds."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.take_deliveries = SimpleNamespace(remote=self._take)
        self.capabilities: list = []

    async def _take(self, capability):
        self.capabilities.append(capability)
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


async def _started_desk() -> tuple[_Verifier, ResultDesk]:
    v = _Verifier()
    desk = ResultDesk(v, b"cap")
    await desk.start()
    return v, desk


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def _wire(value) -> bytes:
    return encode(value)


def test_each_caller_gets_its_own_verdict_whichever_arrives_first():
    async def main():
        v, desk = await _started_desk()
        early = asyncio.ensure_future(desk.result("a"))
        await asyncio.sleep(0)
        await v.queue.put([Delivery("b", "ok", _wire(20)), Delivery("a", "ok", _wire(10))])
        await asyncio.sleep(0.01)
        late = await desk.result("b")  # its verdict came before its ask
        assert v.capabilities and set(v.capabilities) == {b"cap"}  # the desk's own, each poll
        return await early, late, await desk.stats()

    early, late, stats = _run(main())
    assert pickle.loads(pickle.dumps(early, protocol=5)) == 10
    assert pickle.loads(pickle.dumps(late, protocol=5)) == 20
    assert stats["waiting"] == 0 and stats["unclaimed"] == 0 and stats["handed_out"] == 2


def test_an_error_verdict_is_raised_and_num_returns_splits_the_value():
    async def main():
        v, desk = await _started_desk()
        await v.queue.put(
            [
                Delivery("e", "error", VerificationError("no quorum")),
                Delivery("t", "ok", _wire((1, "two", 3.0)), 3),
            ]
        )
        await asyncio.sleep(0.01)
        with pytest.raises(VerificationError, match="no quorum"):
            await desk.result("e")
        return await desk.result("t")

    items = _run(main())
    assert [pickle.loads(pickle.dumps(x, protocol=5)) for x in items] == [1, "two", 3.0]


def test_a_dead_verifier_fails_every_waiting_and_later_call():
    async def main():
        v, desk = await _started_desk()
        waiting = [asyncio.ensure_future(desk.result(f"t{i}")) for i in range(3)]
        await asyncio.sleep(0)
        await v.queue.put(ray.exceptions.RayActorError())
        results = await asyncio.gather(*waiting, return_exceptions=True)
        try:
            await desk.result("later")
        except VerificationError as exc:
            results.append(exc)
        return results

    results = _run(main())
    assert len(results) == 4
    assert all(isinstance(r, VerificationError) and "verifier died" in str(r) for r in results)


def test_shutdown_fails_waiting_calls_with_a_message_that_says_so():
    async def main():
        v, desk = await _started_desk()
        waiting = asyncio.ensure_future(desk.result("t"))
        await asyncio.sleep(0)
        await v.queue.put(None)
        return await asyncio.gather(waiting, return_exceptions=True)

    (exc,) = _run(main())
    assert isinstance(exc, VerificationError) and "shut down" in str(exc)


def test_a_cancelled_ask_drops_its_verdict_instead_of_keeping_it_forever():
    async def main():
        v, desk = await _started_desk()
        ask = asyncio.ensure_future(desk.result("t"))
        await asyncio.sleep(0)
        ask.cancel()
        await asyncio.gather(ask, return_exceptions=True)
        await v.queue.put([Delivery("t", "ok", _wire(1))])
        await asyncio.sleep(0.01)
        return await desk.stats()

    stats = _run(main())
    assert stats["unclaimed"] == 0 and stats["waiting"] == 0 and stats["delivered"] == 1
