"""A real verifier group pins executor keys from the executors themselves (n = 4, on Ray).

The test holds the dispatcher's key, so it can play a lying dispatcher: it signs claims that
give an honest executor a key it never stated. Every verifier refuses them before reading an
answer (the pure attack and why it matters: ``tests/adversarial/test_bft_registry.py``).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import pytest
import ray
from adversarial.test_bft_registry import honest_claim
from ray import cloudpickle

from bft_ray.actor_facade import public_actor
from bft_ray.crypto import SigningKey
from bft_ray.errors import CapabilityError
from bft_ray.executor.actor import ExecutorActor
from bft_ray.executor.pool import read_info
from bft_ray.verifier.group import NAMESPACE, BftVerifier, GroupSetup, actor_name
from bft_ray.verifier.registry import registration_bytes

pytestmark = pytest.mark.ray
# Workers cannot import test modules: ship the test-side executor class by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 4


class TwoFaced(ExecutorActor):
    """A Byzantine executor that states a new key to every verifier that asks."""

    def info(self) -> bytes:
        self._key = SigningKey.generate()
        return super().info()


class Stalling(ExecutorActor):
    """A Byzantine executor that never answers a verifier's question about its key in time."""

    def info(self) -> bytes:
        time.sleep(8)
        return super().info()


@pytest.fixture(scope="module")
def group(ray_module, tmp_path_factory):
    dispatcher = SigningKey.generate()
    root = tmp_path_factory.mktemp("registry-ledgers")
    verifiers = [
        ray.remote(public_actor(BftVerifier))
        .options(num_cpus=0, name=actor_name("registry", i), namespace=NAMESPACE, max_restarts=0)
        .remote(
            GroupSetup(
                "registry",
                i,
                N,
                dispatcher.public_bytes,
                str(root / f"v{i}"),
                confirm_timeout_s=2.0,
            )
        )
        for i in range(N)
    ]
    keys = ray.get([v.public_key.remote() for v in verifiers], timeout=120)
    ray.get([v.start.remote(keys) for v in verifiers], timeout=120)
    executors = [
        ray.remote(public_actor(cls))
        .options(num_cpus=0, max_restarts=0)
        .remote(i, f"ex{i}", f"slot{i}", b"c" * 32)
        for i, cls in enumerate([ExecutorActor, ExecutorActor, ExecutorActor, TwoFaced, Stalling])
    ]
    # Up and answering, as the pool has them before it registers them (the stalling one aside).
    ray.get([e.info.remote() for e in executors[:4]], timeout=120)
    yield dispatcher, verifiers, executors
    for actor in verifiers + executors:
        ray.kill(actor, no_restart=True)


def register(dispatcher, verifiers, items, signer=None):
    sig = (signer or dispatcher).sign(registration_bytes((e, a) for e, a, _ in items))
    return ray.get([v.register_executors.remote(sig, items) for v in verifiers], timeout=120)


def items_of(executors):
    return [(f"ex{i}", h._actor_id.hex(), h) for i, h in enumerate(executors)]


def submit(dispatcher, verifiers, claim):
    entry = claim.sign(dispatcher).encode()
    return [a[0] for a in ray.get([v.submit_claims.remote([(entry, [])]) for v in verifiers])]


def test_registration_pins_the_key_each_executor_states_and_needs_the_dispatcher(group):
    dispatcher, verifiers, executors = group
    with pytest.raises(CapabilityError, match="dispatcher's signature"):
        register(dispatcher, verifiers[:1], items_of(executors[:3]), signer=SigningKey.generate())
    answers = register(dispatcher, verifiers, items_of(executors[:3]))
    for i, h in enumerate(executors[:3]):
        own = read_info(ray.get(h.info.remote()), f"ex{i}")["public_key"]
        assert [a[f"ex{i}"] for a in answers] == [{"public_key": own}] * N
    # A handle that is not the actor it is registered as is refused.
    swapped = [("ex1", executors[0]._actor_id.hex(), executors[1])]
    assert all("not" in a["ex1"].get("error", "") for a in register(dispatcher, verifiers, swapped))


def test_a_two_faced_executor_gets_a_different_key_pinned_at_each_verifier(group):
    dispatcher, verifiers, executors = group
    answers = register(dispatcher, verifiers, items_of(executors)[3:])
    assert all("public_key" in a["ex3"] for a in answers), answers
    pinned = {a["ex3"]["public_key"] for a in answers}
    # No key reaches 2f + 1 = 3 verifiers, so the dispatcher never admits it (trusted.py).
    assert len(pinned) == N


def test_an_executor_that_stalls_is_refused_within_the_confirmation_timeout(group):
    dispatcher, verifiers, executors = group
    start = time.monotonic()
    answers = register(dispatcher, verifiers, items_of(executors)[4:])
    assert all("no start-up answer within 2s" in a["ex4"]["error"] for a in answers), answers
    assert time.monotonic() - start < 8  # not held by the executor's 8 s


def test_a_claim_that_rekeys_an_honest_executor_is_refused_by_every_verifier(group):
    dispatcher, verifiers, executors = group
    register(dispatcher, verifiers, items_of(executors[:3]))
    keys = {
        f"ex{i}": read_info(ray.get(h.info.remote()), f"ex{i}")["public_key"]
        for i, h in enumerate(executors[:3])
    }
    claim, _ = honest_claim("rekey-1")
    real = tuple((e, keys[e], executors[int(e[2:])]._actor_id.hex()) for e, _, _ in claim.executors)
    honest = dataclasses.replace(claim, executors=real)
    # The honest registry passes this check (its answers are then missing: no refs were sent).
    for ack in submit(dispatcher, verifiers, honest):
        assert not ack["ok"] and "register" not in ack["reason"] and "key" not in ack["reason"]
    held = SigningKey.generate().public_bytes
    rekeyed = tuple((e, held if e == "ex0" else k, a) for e, k, a in real)
    lie = dataclasses.replace(honest, task_id="rekey-2", executors=rekeyed)
    for ack in submit(dispatcher, verifiers, lie):
        assert not ack["ok"] and "key it never stated" in ack["reason"], ack
    stranger = dataclasses.replace(
        honest, task_id="rekey-3", executors=(*real, ("ex7", held, real[0][2]))
    )
    for ack in submit(dispatcher, verifiers, stranger):
        assert "not registered" in ack["reason"] and ack["unregistered"] == ["ex7"], ack
