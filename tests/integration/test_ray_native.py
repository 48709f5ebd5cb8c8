"""Verified calls behave like Ray calls: Ray refs, async code, attach, tracebacks, close.

And the verified path holds up under load: backlogs, slow, failed and unschedulable upstream
work never count against an honest executor (issue: Ray-native verified calls).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import ray

import bft_ray
from bft_ray.errors import ConfigError, VerificationTimeoutError

pytestmark = pytest.mark.ray

N = 4


@pytest.fixture(scope="module")
def cluster(ray_module):
    c = bft_ray.init(executors=N, quarantine_below=0.0)
    yield c
    c.shutdown()


def _honest_report(cluster) -> None:
    """No executor was flagged, timed out, crashed or retired."""
    report = cluster.report()
    for row in report.executors:
        assert row["flagged"] == 0 and row["timeouts"] == 0 and row["crashed"] == 0, row
        assert row["status"] == "alive", row
    assert len(report.executors) == N  # no respawned incarnation either


@bft_ray.verified_remote(replicas=3)
def add_one(x):
    return x + 1


@bft_ray.verified_remote(replicas=3)
async def async_double(x):
    await asyncio.sleep(0.01)
    return 2 * x


# -- results are Ray results ---------------------------------------------------------------


def test_remote_returns_a_plain_object_ref(cluster):
    ref = add_one.remote(1)
    assert type(ref) is ray.ObjectRef
    assert ray.get(ref, timeout=60) == 2
    ready, pending = ray.wait([ref, add_one.remote(2)], num_returns=2, timeout=60)
    assert len(ready) == 2 and not pending
    cert = bft_ray.certificate(ref)
    assert cert.task_id == bft_ray.task_id(ref)
    assert bft_ray.verify_certificate(cert, cluster.verifier_keys(), task_id=bft_ray.task_id(ref))


def test_plain_ray_task_and_actor_consume_a_verified_result(cluster):
    @ray.remote
    def plus_ten(x):
        return x + 10

    @ray.remote
    class Sink:
        def take(self, x):
            return x * 3

    ref = add_one.remote(4)
    assert ray.get(plus_ten.remote(ref), timeout=60) == 15
    assert ray.get(Sink.remote().take.remote(ref), timeout=60) == 15
    # A verified result also feeds another verified call.
    assert ray.get(add_one.remote(ref), timeout=60) == 6


def test_await_a_verified_ref(cluster):
    async def main():
        return await add_one.remote(41)

    assert asyncio.run(main()) == 42


def test_ray_get_raises_the_bft_error_type(cluster):
    @bft_ray.verified_remote(replicas=2, max_replicas=2, tolerance=bft_ray.Tolerance(mode="exact"))
    def differs():
        import os

        return os.getpid()  # every executor answers differently

    with pytest.raises(bft_ray.NoQuorumError):
        ray.get(differs.remote(), timeout=60)
    with pytest.raises(bft_ray.NoQuorumError):
        bft_ray.get(differs.remote(), timeout=60)


# -- async, generators, num_returns ----------------------------------------------------------


def test_async_def_functions_and_methods_are_verified(cluster):
    assert bft_ray.get(async_double.remote(21), timeout=60) == 42
    assert bft_ray.certificate(async_double.remote(1)).quorum == 2

    @bft_ray.verified_remote(replicas=3)
    class Counter:
        def __init__(self):
            self.lock = None
            self.n = 0

        async def bump(self, k):
            # Loop-bound state made in one call must work in the next: one loop per executor.
            if self.lock is None:
                self.lock = asyncio.Lock()
            async with self.lock:
                self.n += k
                return self.n

    c = Counter.remote()
    assert bft_ray.get([c.bump.remote(1), c.bump.remote(2), c.bump.remote(3)], timeout=60) == [
        1,
        3,
        6,
    ]
    c.close()


def test_generator_functions_are_refused_with_advice(cluster):
    def gen(n):
        yield from range(n)

    with pytest.raises(ConfigError, match=r"generator function.*return a list"):
        bft_ray.verified_remote(replicas=3)(gen)

    @bft_ray.verified_remote(replicas=3)
    class Streams:
        def items(self):
            yield 1

    handle = Streams.remote()
    with pytest.raises(ConfigError, match="generator function"):
        handle.items.remote()
    handle.close()


def test_num_returns_splits_a_certified_tuple(cluster):
    @bft_ray.verified_remote(replicas=3, num_returns=2)
    def pair(x):
        return x, np.arange(x)

    a, b = pair.remote(3)
    assert ray.get(a, timeout=60) == 3
    np.testing.assert_array_equal(bft_ray.get(b), np.arange(3))
    # One call, one certificate, reachable from either ref.
    assert bft_ray.certificate(a).task_id == bft_ray.certificate(b).task_id

    @bft_ray.verified_remote(replicas=3, num_returns=2)
    def not_a_pair():
        return 1

    r1, r2 = not_a_pair.remote()
    with pytest.raises(ConfigError, match=r"num_returns=2.*Return a tuple of 2"):
        bft_ray.get(r1, timeout=60)
    with pytest.raises(ConfigError):
        bft_ray.get(r2, timeout=60)

    @bft_ray.verified_remote(replicas=3)
    class Splitter:
        @ray.method(num_returns=2)
        def halves(self, x):
            return x // 2, x - x // 2

    s = Splitter.remote()
    lo, hi = s.halves.remote(7)
    assert bft_ray.get([lo, hi], timeout=60) == [3, 4]
    s.close()
    with pytest.raises(ConfigError, match="num_returns"):
        bft_ray.verified_remote(replicas=3, num_returns="dynamic")(lambda: 1)


# -- user tracebacks -------------------------------------------------------------------------


def _user_code_that_fails(x):
    raise ValueError(f"bad input {x}")


def test_user_exception_shows_the_users_own_frames(cluster):
    failing = bft_ray.verified_remote(replicas=3)(_user_code_that_fails)
    for getter in (bft_ray.get, ray.get):
        with pytest.raises(ValueError, match="bad input 3") as info:
            getter(failing.remote(3), timeout=60)
        text = str(info.value)
        assert "_user_code_that_fails" in text and os.path.basename(__file__) in text
        assert 'raise ValueError(f"bad input {x}")' in text
        assert "not verified" in text  # the traceback is labelled as the executor's report
        assert "bft_ray/executor/actor.py" not in text  # bft-ray's own frames are removed


# -- instances are freed -----------------------------------------------------------------------


@bft_ray.verified_remote(replicas=3)
class Box:
    def __init__(self, v):
        self.v = v

    def get(self):
        return self.v


def _open_instances(cluster) -> int:
    return cluster.report().counters["instances"]


def test_close_frees_the_instance_and_later_calls_fail(cluster):
    before = _open_instances(cluster)
    counted = cluster.report().counters
    box = Box.remote(5)
    assert bft_ray.get(box.get.remote(), timeout=60) == 5
    assert bft_ray.get(box.get.remote(), timeout=60) == 5
    assert _open_instances(cluster) == before + 1
    # The counters count calls: the two method calls, not the constructor.
    now = cluster.report().counters
    assert now["calls"] - counted["calls"] == 2 == now["accepted"] - counted["accepted"]
    box.close()
    assert _open_instances(cluster) == before
    with pytest.raises(ConfigError, match="closed"):
        box.get.remote()
    box.close()  # idempotent


def test_a_worker_cannot_take_over_an_instances_task_ids(cluster):
    """Executors see an instance's id when they build it, and its calls are "<id>/<seq>": a
    function call submitted under either must be refused, or its verdict would replace the
    instance's certificate (any worker can call the verifier)."""
    from bft_ray.verifier.trusted import CallSpec

    assert bft_ray.get(add_one.remote(1), timeout=60) == 2  # registers add_one's function
    fn_key, _ = cluster._function_key(add_one.__wrapped__)
    box = Box.remote(3)
    assert bft_ray.get(box.get.remote(), timeout=60) == 3
    before = box.certificate(timeout=60).to_json()
    verifier = cluster._verifier
    for tid, why in ((box.instance_id, "already used"), (f"{box.instance_id}/1", "not a function")):
        forged = CallSpec(tid, "forged", add_one.policy)
        with pytest.raises(ray.exceptions.RayTaskError, match=why):
            ray.get(verifier.submit.remote(forged, fn_key, [5], {}), timeout=60)
    assert bft_ray.get(box.get.remote(), timeout=60) == 3
    assert box.certificate(timeout=60).to_json() == before
    box.close()


def test_dropping_the_last_handle_frees_the_instance(cluster):
    before = _open_instances(cluster)
    box = Box.remote(1)
    assert bft_ray.get(box.get.remote(), timeout=60) == 1
    del box
    gc.collect()
    deadline = time.monotonic() + 30
    while _open_instances(cluster) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _open_instances(cluster) == before


def test_a_handle_cannot_leave_its_process(cluster):
    box = Box.remote(1)

    @ray.remote
    def use(handle):
        return 1

    with pytest.raises(TypeError, match="cannot be passed to another process"):
        ray.get(use.remote(box))
    box.close()


# -- from plain Ray tasks and actors, and from a second driver --------------------------------


def test_verified_calls_from_inside_a_plain_ray_actor_and_task(cluster):
    @ray.remote
    class Stage:
        def run(self, x):
            return bft_ray.get(add_one.remote(x), timeout=60)

    @ray.remote
    def task(x):
        ref = add_one.remote(x)
        return bft_ray.get(ref, timeout=60), bft_ray.certificate(ref).task_id

    assert ray.get(Stage.remote().run.remote(9), timeout=120) == 10
    value, tid = ray.get(task.remote(1), timeout=120)
    assert value == 2 and tid.startswith("add_one-")


def test_a_second_driver_attaches_by_name(cluster, tmp_path):
    script = tmp_path / "second_driver.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import ray, bft_ray
            ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False)
            try:
                bft_ray.init(executors={N + 1})
            except bft_ray.ConfigError as exc:
                assert "already runs with {N} executors" in str(exc), exc
            c = bft_ray.init()  # finds the running cluster by name
            assert not c.owner and c.executors == {N}

            @bft_ray.verified_remote(replicas=3)
            def mul(a, b):
                return a * b

            ref = mul.remote(6, 7)
            cert = bft_ray.certificate(ref)
            ok = bft_ray.verify_certificate(cert, c.verifier_keys(), value=42)
            # A burst from this process goes through the cluster's result desk too.
            burst = [mul.remote(i, 2) for i in range(30)]
            assert bft_ray.get(burst, timeout=120) == [2 * i for i in range(30)]
            assert c._submitter.counters["batched"] > 0, c._submitter.counters
            last = bft_ray.certificate(burst[-1])
            ok = ok and bft_ray.verify_certificate(last, c.verifier_keys(), value=58)
            try:
                c.inject_fault(0, "zeros")
                steer = "allowed"
            except bft_ray.CapabilityError:
                steer = "refused"
            print("RESULT", bft_ray.get(ref), ok, steer)
            c.shutdown()  # detaches only
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=180, check=False
    )
    assert "RESULT 42 True refused" in out.stdout, out.stdout + out.stderr
    assert bft_ray.get(add_one.remote(0), timeout=60) == 1  # the owner's cluster still runs


# -- timeouts never punish honest executors ---------------------------------------------------


def test_a_backlog_of_short_calls_flags_no_honest_executor(cluster):
    # The limit is well above a replica's own run time (0.1 s), so that a loaded machine's
    # scheduling lag is not a stall; the backlog is what exceeds it.
    @bft_ray.verified_remote(replicas=3, timeout_s=1.0)
    def short(i):
        time.sleep(0.1)
        return i

    # 40 calls x 3 replicas of 100 ms on 4 executors: each executor's queue holds ~3 s of work,
    # three times the time limit.
    n = 40
    assert bft_ray.get([short.remote(i) for i in range(n)], timeout=300) == list(range(n))
    _honest_report(cluster)
    assert cluster.report().counters["replacements"] == 0


def test_an_upstream_task_slower_than_the_time_limit(cluster):
    @ray.remote
    def slow_upstream():
        time.sleep(3.0)
        return 5

    @bft_ray.verified_remote(replicas=3, timeout_s=1.0)
    def consume(x):
        return x * 2

    assert bft_ray.get(consume.remote(slow_upstream.remote()), timeout=120) == 10
    _honest_report(cluster)


def test_a_failed_upstream_task_fails_the_call_with_its_own_error(cluster):
    @ray.remote(max_retries=0)
    def broken_upstream():
        raise KeyError("upstream broke")

    @bft_ray.verified_remote(replicas=3, timeout_s=1.0)
    def consume(x):
        return x

    with pytest.raises(KeyError, match="upstream broke"):
        bft_ray.get(consume.remote(broken_upstream.remote()), timeout=60)
    _honest_report(cluster)


def test_an_unschedulable_upstream_argument_waits_and_names_the_cause(cluster):
    @ray.remote(resources={"no_such_resource": 1})
    def never_scheduled():
        return 1

    @bft_ray.verified_remote(replicas=3, timeout_s=1.0)
    def consume(x):
        return x

    upstream = never_scheduled.remote()
    ref = consume.remote(upstream)
    with pytest.raises(VerificationTimeoutError, match="waiting for its arguments"):
        bft_ray.get(ref, timeout=3)  # three times the limit
    _honest_report(cluster)
    ray.cancel(upstream)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        bft_ray.get(ref, timeout=60)
    _honest_report(cluster)


def test_cancelling_an_instance_call_keeps_the_instance_order(cluster):
    """Calls of a replicated instance are dispatched strictly in the caller's order. A call
    cancelled while it waited for its turn never took it, so every later call of the instance
    waited forever; the call now goes on (every replica runs it) and only its ref fails."""

    @bft_ray.verified_remote(replicas=3)
    class Tally:
        def __init__(self):
            import time

            time.sleep(1.0)  # calls wait for the construction, in order
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    t = Tally.remote()
    first = t.add.remote(1)
    second = t.add.remote(10)
    time.sleep(0.3)
    ray.cancel(second)  # while it waits for its turn
    with pytest.raises(ray.exceptions.TaskCancelledError):
        bft_ray.get(second, timeout=60)
    # The cancelled call still ran on every replica, in its place.
    assert bft_ray.get([first, t.add.remote(100)], timeout=60) == [1, 111]
    t.close()
    _honest_report(cluster)


# -- batching of short replicas (keep last: it stalls and replaces an executor) ---------------


def test_short_replicas_travel_in_batches_and_a_stall_in_a_batch_is_caught(cluster):
    from bft_ray import faults

    # A burst of trivial calls: replicas for one executor share Ray calls.
    before = cluster.report().counters
    values = bft_ray.get([add_one.remote(i) for i in range(300)], timeout=300)
    assert values == [i + 1 for i in range(300)]
    after = cluster.report().counters
    assert after["batches"] > before["batches"]
    assert after["batched_replicas"] - before["batched_replicas"] >= 2 * (
        after["batches"] - before["batches"]
    )
    _honest_report(cluster)

    # Now one executor stalls every replica: the batch it holds runs past items x timeout_s,
    # is timed out, the executor is replaced, and every call still gets its value.
    @bft_ray.verified_remote(replicas=3, timeout_s=0.5)
    def quick(i):
        return i

    assert bft_ray.get([quick.remote(i) for i in range(60)], timeout=120) == list(range(60))
    cluster.inject_fault(1, faults.slow(30.0))
    try:
        refs = [quick.remote(i) for i in range(60)]
        assert bft_ray.get(refs, timeout=300) == list(range(60))
        rows = cluster.report().by_index(1)
        assert sum(r["timeouts"] for r in rows) >= 1
    finally:
        cluster.inject_fault(1, "honest")
