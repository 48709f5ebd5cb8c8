"""Bursts of verified calls take the batched path (result desk + submit_many) on Ray, and keep
every promise of the direct path: Ray refs, certificates, user errors, num_returns, a liar
outvoted, and no call left hanging when the verifier dies (see ``bft_ray.submission``)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import ray

import bft_ray
from bft_ray.errors import VerificationError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(ray_module):
    c = bft_ray.init(executors=4, quarantine_below=0.0, faults={3: "bitflip"})
    yield c
    c.shutdown()


@bft_ray.verified_remote(replicas=3)
def square(x):
    return x * x


@bft_ray.verified_remote(replicas=3, num_returns=2)
def split(x):
    return x, -x


@bft_ray.verified_remote(replicas=3)
def fails_on_odd(x):
    if x % 2:
        raise KeyError(f"odd {x}")
    return x


def _burst(fn, n: int) -> list:
    return [fn.remote(i) for i in range(n)]


def _burst_of_one_batch(cluster, fn, n: int) -> list:
    """``n`` calls that count as one burst however the machine is loaded: a pause of more than
    the submitter's 2 ms window between two calls would send the next one direct."""
    sub = cluster._submitter
    window, sub.window_s = sub.window_s, 5.0
    try:
        return _burst(fn, n)
    finally:
        sub.window_s = window


def test_a_burst_is_batched_and_its_refs_are_ray_refs_with_certificates(cluster):
    before = dict(cluster._submitter.counters)
    refs = _burst(square, 200)
    after = cluster._submitter.counters
    assert after["batched"] - before["batched"] >= 150  # all but the first few
    assert all(type(r) is ray.ObjectRef for r in refs)
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=120)
    assert len(ready) == len(refs)
    assert not pending
    # Executor 3 flips bits in every answer it gives: it is outvoted, never the value.
    assert ray.get(refs) == [i * i for i in range(200)]
    keys = cluster.verifier_keys()
    for ref in (refs[1], refs[100], refs[-1]):
        cert = bft_ray.certificate(ref)
        assert cert.task_id == bft_ray.task_id(ref)
        assert bft_ray.verify_certificate(cert, keys, task_id=bft_ray.task_id(ref))
    assert ray.get(cluster._desk.stats.remote())["waiting"] == 0


def test_batched_refs_feed_plain_ray_tasks_and_asyncio(cluster):
    @ray.remote
    def total(*xs):
        return sum(xs)

    refs = _burst(square, 20)
    assert ray.get(total.remote(*refs), timeout=120) == sum(i * i for i in range(20))

    async def main():
        return await asyncio.gather(*[square.remote(i) for i in range(10)])

    assert asyncio.run(main()) == [i * i for i in range(10)]


def test_user_errors_in_a_burst_keep_their_type_and_the_users_frames(cluster):
    refs = _burst(fails_on_odd, 20)
    for i, ref in enumerate(refs):
        if i % 2 == 0:
            assert ray.get(ref, timeout=120) == i
            continue
        with pytest.raises(KeyError) as info:
            ray.get(ref, timeout=120)
        assert "fails_on_odd" in str(info.value) and f"odd {i}" in str(info.value)
    assert cluster._submitter.counters["batched"] > 0


def test_num_returns_in_a_burst(cluster):
    pairs = [split.remote(i) for i in range(30)]
    assert [ray.get(p, timeout=120) for p in pairs] == [[i, -i] for i in range(30)]
    cert = bft_ray.certificate(pairs[-1][1])
    assert bft_ray.verify_certificate(cert, cluster.verifier_keys())


def test_the_liar_is_flagged_on_batched_calls_and_no_honest_executor_is(cluster):
    bft_ray.get(_burst(square, 60), timeout=120)
    rows = {r["slot"]: r for r in cluster.report().executors}
    liar = [r for r in rows.values() if r["fault"] == "bitflip"]
    assert liar and all(r["flagged"] > 0 for r in liar)
    assert all(r["flagged"] == 0 for r in rows.values() if r["fault"] != "bitflip")


def test_a_timeout_says_where_batched_calls_stand(cluster):
    """A batched call's ref is named to the verifier only when its value is handed out, so
    the driver names its own pending calls by task id for the timeout message."""

    @bft_ray.verified_remote(replicas=3)
    def dawdle(x):
        import time

        time.sleep(3)
        return x

    refs = _burst_of_one_batch(cluster, dawdle, 4)
    assert cluster._submitter.counters["batched"] >= 3
    deadline = time.monotonic() + 30
    while True:  # until the batch is in and its replicas run (a loaded machine takes a while)
        with pytest.raises(bft_ray.VerificationTimeoutError) as info:
            bft_ray.get(refs[1:], timeout=0.1)
        text = str(info.value)
        if "not received" not in text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "replicas:" in text and "not received" not in text
    assert bft_ray.get(refs, timeout=60) == list(range(4))


def test_cancelling_batched_calls_fails_their_refs_and_punishes_no_executor(cluster, tmp_path):
    @bft_ray.verified_remote(replicas=3)
    def linger(path, x):
        import pathlib
        import time

        deadline = time.monotonic() + 60
        while not pathlib.Path(path, "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # held until the test has cancelled the calls
        return x

    before = {r["executor"]: r for r in cluster.report().executors}
    before_calls = cluster.report().counters["calls"]
    sub = cluster._submitter
    window, sub.window_s = sub.window_s, 5.0
    try:
        refs = [linger.remote(str(tmp_path), i) for i in range(6)]
    finally:
        sub.window_s = window
    for ref in refs:
        ray.cancel(ref)
    for ref in refs:
        with pytest.raises(ray.exceptions.TaskCancelledError):
            bft_ray.get(ref, timeout=60)
    (tmp_path / "release").touch()
    # The verifier goes on with the calls and decides them; the honest executors were not
    # flagged for them, and nothing was replaced.
    deadline = time.monotonic() + 60
    while cluster.report().counters["calls"] < before_calls + 6:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert bft_ray.get(square.remote(3), timeout=120) == 9
    for row in cluster.report().executors:
        if row["fault"] != "bitflip":
            assert row["status"] == "alive", row
            assert row["flagged"] == before[row["executor"]]["flagged"] == 0, row


def test_a_worker_that_knows_the_task_ids_cannot_take_their_results(cluster):
    # Executors see the task ids of the calls they run, and any Ray worker can call a named
    # actor: one that asked the desk for those tasks' results, or took verdicts from the
    # verifier, would leave the real callers waiting forever.
    @bft_ray.verified_remote(replicas=3)
    def nap(x):
        import time

        time.sleep(0.3)
        return x

    refs = [nap.remote(i) for i in range(8)]
    task_ids = [bft_ray.task_id(r) for r in refs]

    @ray.remote(num_cpus=0)
    def thief(ids):
        desk = ray.get_actor("results:default", namespace="bft_ray")
        verifier = ray.get_actor("verifier:default", namespace="bft_ray")
        try:
            ray.get(verifier.take_deliveries.remote(b"\0" * 32), timeout=30)
            took = "took deliveries"
        except Exception as exc:
            took = str(exc)
        stolen = [desk.result.remote(t) for t in ids]
        ready, _ = ray.wait(stolen, num_returns=len(stolen), timeout=5)
        return took, len(ready)

    took, stolen = ray.get(thief.remote(task_ids), timeout=120)
    assert "capability" in took and stolen == 0
    assert ray.get(refs, timeout=120) == list(range(8))
    # Nor can it make another process's certificate(ref) find its own call. The entry does
    # not say which Ray task made the ref: a worker could guess a caller's next Ray task id
    # (derived from the caller's task and a counter) and bind it to a call of its own before
    # the caller's ref exists. A fresh id stands for such a guess. The desk names refs, with
    # a capability the worker lacks.
    verifier = ray.get_actor("verifier:default", namespace="bft_ray")
    guess = os.urandom(24).hex()
    ray.get(verifier.submit_many.remote([("square-forged", guess, "0" * 32, b"junk")]))
    ray.get(verifier.submit_many.remote([("square-forged2", "3" * 32, b"junk")]))
    with pytest.raises(ray.exceptions.RayTaskError, match="capability"):
        ray.get(verifier.name_results.remote(b"\0" * 32, [("3" * 32, guess)]))
    assert ray.get(verifier.task_ids.remote([guess])) == [None]
    victim = refs[-1].task_id().hex()
    assert ray.get(verifier.task_ids.remote([victim])) == [task_ids[-1]]

    # A real batched call's pickle, replayed by a worker that saw it: (1) under the victim's
    # task id, so that the victim's certificate would become this call's; (2) again under
    # its own task id, so that its certificate would be replaced by a second run's.
    sub, captured = cluster._submitter, []
    enqueue = sub._enqueue
    sub._enqueue = lambda entry: (captured.append(entry), enqueue(entry))
    try:
        more = [nap.remote(100 + i) for i in range(4)]
    finally:
        sub._enqueue = enqueue
    assert ray.get(more, timeout=120) == [100, 101, 102, 103] and captured
    # The desk named each ref before handing out its value: any process finds the call by it.
    named = ray.get(verifier.task_ids.remote([r.task_id().hex() for r in more]))
    assert named == [bft_ray.task_id(r) for r in more]
    real_task, _, blob = captured[-1]
    (real_ref,) = [r for r in more if bft_ray.task_id(r) == real_task]
    before = bft_ray.certificate(real_ref).to_json()
    forged = [(task_ids[-1], "1" * 32, blob), (real_task, "2" * 32, blob)]
    ray.get(verifier.submit_many.remote(forged))
    deadline = time.monotonic() + 3  # a second run of nap would land within about 0.5 s
    while time.monotonic() < deadline:
        assert ray.get(verifier.task_ids.remote([victim])) == [task_ids[-1]]
        assert bft_ray.certificate(real_ref).to_json() == before
        time.sleep(0.25)


def test_calls_waiting_at_the_desk_fail_when_the_verifier_dies(ray_module):
    bft_ray.shutdown()  # one cluster per process: this module's is done (keep this test last)
    c = bft_ray.init(executors=2, name="doomed", quarantine_below=0.0)
    try:

        @bft_ray.verified_remote(replicas=2)
        def slow(x):
            import time

            time.sleep(2)
            return x

        handles = [e["handle"] for e in c.executor_handles()]
        refs = _burst_of_one_batch(c, slow, 6)
        assert c._submitter.counters["batched"] >= 4
        ray.get(c._desk.stats.remote())  # the batch is in
        ray.kill(c._verifier, no_restart=True)
        for ref in refs[1:]:  # refs[0] went direct: the verifier's own call, ActorDiedError
            with pytest.raises(VerificationError, match="verifier died"):
                ray.get(ref, timeout=60)
    finally:
        for h in handles:
            ray.kill(h, no_restart=True)
        c.shutdown()
