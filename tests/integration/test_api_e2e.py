"""The public API end to end on a local Ray with four (logical) GPU executors, all honest."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import numpy as np
import pytest
import ray
import torch

import bft_ray
from bft_ray.errors import CertificateError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(ray_module):
    c = bft_ray.init(executors=4)
    yield c
    c.shutdown()


@bft_ray.verified_remote(
    replicas=3, quorum=2, num_gpus=1, tolerance=bft_ray.Tolerance(rtol=1e-5, atol=1e-6)
)
def matmul(a, b):
    return a @ b


@bft_ray.verified_remote(replicas=3)
def mlp_forward(seed: int, batch: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.randn(batch, 16)
    with torch.no_grad():
        logits = model(x.to(bft_ray.device()))
    return {"logits": logits, "argmax": logits.argmax(dim=1)}


@bft_ray.verified_remote(replicas=3)
def where_am_i():
    import os

    # Each executor sees its own GPU id, so report only whether one is set.
    return {
        "has_gpu_id": bool(os.environ.get("CUDA_VISIBLE_DEVICES")),
        "device": str(bft_ray.device()),
    }


def test_honest_calls_return_the_value_and_a_valid_certificate(cluster):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 30)), rng.standard_normal((30, 20))
    ref = matmul.remote(a, b)
    value = bft_ray.get(ref, timeout=60)
    np.testing.assert_allclose(value, a @ b)
    cert = bft_ray.certificate(ref)
    assert cert.task_id == bft_ray.task_id(ref) and cert.quorum == 2 and len(cert.agreeing) >= 2
    assert bft_ray.verify_certificate(cert, cluster.verifier_keys(), value=value)
    assert bft_ray.verify_certificate(
        cert, cluster.verifier_keys(), executor_keys=cluster.executor_keys().values()
    )
    # The replicas ran on distinct executors.
    assert len(set(cert.signers)) == len(cert.signers)


def test_certificate_checks_fail_on_tampering(cluster):
    ref = matmul.remote(np.eye(3), np.ones((3, 3)))
    value = bft_ray.get(ref)
    cert = bft_ray.certificate(ref)
    keys = cluster.verifier_keys()
    assert not bft_ray.verify_certificate(cert, keys, value=value + 1)  # another value
    assert not bft_ray.verify_certificate(dataclasses.replace(cert, quorum=1), keys)  # edited body
    assert not bft_ray.verify_certificate(cert, [b"\x00" * 32])  # unknown verifier
    forged = dataclasses.replace(cert.agreeing[0], digest=b"\x01" * 32)
    with pytest.raises(CertificateError):
        bft_ray.verify_certificate(
            dataclasses.replace(cert, agreeing=(forged, *cert.agreeing[1:])),
            keys,
            raise_on_failure=True,
        )


def test_plain_object_ref_resolves_to_the_verified_value(cluster):
    ref = matmul.remote(np.eye(2), np.full((2, 2), 3.0))
    np.testing.assert_array_equal(ray.get(ref), np.full((2, 2), 3.0))

    @ray.remote
    def consume(x):
        return float(x.sum())

    # The value ref feeds ordinary Ray tasks, which only ever see the verified value.
    assert ray.get(consume.remote(ref)) == 12.0


def test_torch_outputs_and_cpu_fallback(cluster):
    value = bft_ray.get(mlp_forward.remote(7, 5), timeout=60)
    assert isinstance(value["logits"], torch.Tensor) and value["logits"].shape == (5, 4)
    info = bft_ray.get(where_am_i.remote())
    assert info["has_gpu_id"]  # Ray assigned a (logical) GPU ...
    assert info["device"] == "cpu"  # ... but there is no device behind it here.


def test_wait_splits_ready_and_pending(cluster):
    refs = [matmul.remote(np.eye(2) * i, np.eye(2)) for i in range(4)]
    ready, pending = bft_ray.wait(refs, num_returns=4, timeout=60)
    assert ready == refs and pending == []
    ready, pending = bft_ray.wait(refs, num_returns=1)
    assert len(ready) >= 1 and len(ready) + len(pending) == 4


def test_wait_mirrors_ray_wait(cluster):
    ref = matmul.remote(np.eye(2), np.eye(2))
    ready, pending = bft_ray.wait(ref, timeout=60)  # a single ref
    assert ready == [ref] and pending == []
    plain = ray.put(1)
    ready, pending = bft_ray.wait([plain, ref], num_returns=2, timeout=60, fetch_local=False)
    assert ready == [plain, ref] and pending == []
    with pytest.raises(ValueError, match="same ref twice"):
        bft_ray.wait([ref, ref])
    with pytest.raises(ray.exceptions.GetTimeoutError):  # a bft-ray timeout is a Ray timeout
        bft_ray.get(slow_one.remote(), timeout=0.05)


@bft_ray.verified_remote(replicas=2)
def slow_one():
    import time

    time.sleep(2)
    return 1


def test_verified_ref_is_awaitable_inside_an_async_actor(cluster):
    @ray.remote
    class Consumer:
        async def total(self, boxed):
            values = await asyncio.gather(*boxed)
            return float(sum(v.sum() for v in values))

    refs = [matmul.remote(np.eye(2), np.full((2, 2), float(i))) for i in range(3)]
    consumer = Consumer.remote()
    assert ray.get(consumer.total.remote(refs)) == pytest.approx(4 * (0 + 1 + 2))


def test_verified_ref_is_awaitable_in_driver_asyncio(cluster):
    async def main():
        return await matmul.remote(np.eye(2), np.eye(2))

    np.testing.assert_array_equal(asyncio.run(main()), np.eye(2))


def test_stateful_class_replicas_stay_in_step(cluster):
    @bft_ray.verified_remote(replicas=3)
    class Accumulator:
        def __init__(self, start):
            self.total = np.asarray(start, dtype=np.float64)

        def add(self, x):
            self.total = self.total + x
            return self.total.copy()

    acc = Accumulator.remote([0.0, 0.0])
    refs = [acc.add.remote(np.array([i, 2 * i], dtype=np.float64)) for i in range(25)]
    values = bft_ray.get(refs, timeout=120)
    expected = np.cumsum([[i, 2 * i] for i in range(25)], axis=0)
    np.testing.assert_array_equal(np.stack(values), expected)  # order preserved on every replica
    holders = acc.holders()
    assert len(set(holders)) == 3


def test_lost_replica_is_rebuilt_by_replaying_the_call_log(cluster):
    @bft_ray.verified_remote(replicas=3)
    class Counter:
        def __init__(self, start):
            self.n = start

        def add(self, k):
            self.n += k
            return self.n

    c = Counter.remote(100)
    assert bft_ray.get([c.add.remote(i) for i in range(10)]) == [
        100 + sum(range(i + 1)) for i in range(10)
    ]
    holders = c.holders()
    victim = int(holders[0].removeprefix("ex").split(".")[0])
    cluster.inject_fault(victim, "zeros")
    try:
        # The victim diverges on the next call and is dropped; later calls run on a new replica
        # that replayed all earlier calls, so its state (and answers) match.
        values = bft_ray.get([c.add.remote(1) for _ in range(5)])
        assert values == [145 + i + 1 for i in range(5)]
        # The repair happens before the next call is dispatched.
        assert bft_ray.get(c.add.remote(0)) == 150
        info = c.info()
        assert (
            info["repairs"] == 1 and holders[0] not in info["holders"] and len(info["holders"]) == 3
        )
        before = {r["executor"]: r["agreed"] for r in cluster.report().executors}
        assert bft_ray.get(c.add.remote(0)) == 150
        after = {r["executor"]: r["agreed"] for r in cluster.report().executors}
        # All three current holders, the rebuilt one included, agreed: its replayed state is right.
        assert all(after[h] == before.get(h, 0) + 1 for h in info["holders"])
    finally:
        cluster.inject_fault(victim, "honest")


def test_user_exception_propagates_like_ray(cluster):
    @bft_ray.verified_remote(replicas=3)
    def boom(x):
        raise ValueError(f"bad input {x}")

    with pytest.raises(ValueError, match="bad input 3"):
        bft_ray.get(boom.remote(3), timeout=60)


def test_constructor_exception_propagates(cluster):
    @bft_ray.verified_remote(replicas=2)
    class Broken:
        def __init__(self):
            raise RuntimeError("no weights")

        def f(self):
            return 1

    handle = Broken.remote()
    with pytest.raises(RuntimeError, match="no weights"):
        bft_ray.get(handle.f.remote(), timeout=60)


def test_a_constructor_is_verified_like_a_call(cluster, tmp_path):
    # The first replica to construct raises (it wins an O_EXCL race on a marker file), the
    # others build: a quorum built it, so the instance exists without the dissenter, the
    # constructor has a certificate, and the lost replica is rebuilt before the first call.
    @bft_ray.verified_remote(replicas=3)
    class FirstFails:
        def __init__(self, marker):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            raise RuntimeError("the first constructor fails")

        def seven(self):
            return 7

    def disagreed():
        return {r["executor"]: r["disagreed"] for r in cluster.report().executors}

    before = disagreed()
    h = FirstFails.remote(str(tmp_path / "marker"))
    cert = h.certificate(timeout=60)
    assert bft_ray.verify_certificate(cert, cluster.verifier_keys(), task_id=h.instance_id)
    assert cert.kind == "value" and len(cert.signers) == 2
    after = disagreed()
    (dissenter,) = [e for e in after if after[e] == before.get(e, 0) + 1]  # flagged once
    assert dissenter not in cert.signers and dissenter not in h.holders()
    # The certificate is issued at the verdict: the dissent is on it if it had arrived by then.
    for d in cert.dissenting:
        if d.executor_id == dissenter:
            assert d.outcome == "disagreed" and d.attestation is not None  # signed evidence
    assert bft_ray.get(h.seven.remote(), timeout=60) == 7
    holders = h.holders()
    assert len(holders) == 3 and dissenter not in holders  # rebuilt on a spare

    # A constructor that the replicas agree raised has no certificate: the error is the user's.
    @bft_ray.verified_remote(replicas=3)
    class AlwaysFails:
        def __init__(self):
            raise RuntimeError("no weights")

    with pytest.raises(RuntimeError, match="no weights"):
        AlwaysFails.remote().certificate(timeout=60)


def test_escalation_adds_replicas_until_a_quorum(cluster):
    # Replica 0 of 2 answers wrongly in a way only this function can: outputs depend on which
    # executor runs them, so two replicas disagree and escalation must add a third to decide.
    cluster.inject_fault(3, "zeros")
    try:

        @bft_ray.verified_remote(replicas=2, quorum=2, max_replicas=4)
        def ones(n):
            return np.ones(n)

        refs = [ones.remote(4) for _ in range(8)]
        for v in bft_ray.get(refs, timeout=60):
            np.testing.assert_array_equal(v, np.ones(4))
        assert cluster.report().counters["escalations"] >= 1
    finally:
        cluster.inject_fault(3, "honest")


def test_options_override_policy_and_pass_ray_options(cluster):
    f = matmul.options(replicas=4, quorum=3, name="matmul-x4")
    assert f.policy.replicas == 4 and f.policy.quorum == 3
    cert = bft_ray.certificate(f.remote(np.eye(2), np.eye(2)))
    assert cert.quorum >= 3


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(replicas=5), "replicas=5 but the pool has 4 executors"),
        (dict(num_gpus=2), "num_gpus=2 but each executor holds 1"),
        (dict(num_cpus=4), "num_cpus=4 but each executor holds 1"),
    ],
)
def test_config_that_does_not_fit_the_pool_fails_at_decoration(cluster, options, match):
    with pytest.raises(bft_ray.ConfigError, match=match):
        bft_ray.verified_remote(**options)(lambda x: x)


def test_second_init_is_refused(cluster):
    with pytest.raises(bft_ray.ConfigError, match="already called"):
        bft_ray.init(executors=2)


def test_direct_call_is_an_error(cluster):
    with pytest.raises(TypeError, match=r"matmul.remote\(\)"):
        matmul(np.eye(2), np.eye(2))


def test_timeout_on_get_raises_verification_timeout(cluster):
    @bft_ray.verified_remote(replicas=2)
    def sleepy():
        import time

        time.sleep(3)
        return 1

    ref = sleepy.remote()
    with pytest.raises(bft_ray.VerificationTimeoutError):
        bft_ray.get(ref, timeout=0.2)
    assert bft_ray.get(ref, timeout=60) == 1
