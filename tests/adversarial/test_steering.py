"""Attack 7: steering. Whoever holds an executor's or the verifier's actor handle, but not the
driver's capability, tries to change an honest executor's behaviour or state.

Four executors, every call on all four (replicas=4, quorum=3). The attacker (this test process
with handles but no capability, or a Byzantine executor holding another one's handle) calls the
steering methods with a wrong token and with no token at all (the signature of an unprotected
API). Claims: each attempt raises; nothing it asked for happens (no marker file from code it
tried to run); later verified calls are correct and flag nobody; the verifier's fault
injection, instance drops and shutdown refuse callers without the driver's capability.
"""

from __future__ import annotations

import os

import pytest
import ray
from adversarial._util import (
    all_counts,
    assert_no_marker,
    by_value,
    drain,
    flags_of,
    new_marker,
    start,
    stop,
)

import bft_ray

pytestmark = pytest.mark.ray
by_value(__name__)

N = 4
VICTIM = 0
ATTACKER = 3
WRONG = b"\x00" * 32
MARKER = new_marker("steer")
RAN = "an executor ran code for a caller without the capability"


@pytest.fixture(scope="module")
def cluster():
    c = start(N)
    yield c
    stop(c)


@pytest.fixture(autouse=True)
def isolated(cluster):
    """No marker before or after; the victim healed after each test (by the driver), so one
    successful steering attempt does not spill into the next test."""
    try:
        yield from drain(MARKER, RAN)
    finally:
        cluster.inject_fault(VICTIM, "honest")


@bft_ray.verified_remote(replicas=N, quorum=3)
def triple(x):
    return 3 * x


def _victim_handle(cluster):
    entry = next(e for e in cluster.executor_handles() if e["index"] == VICTIM)
    return entry["handle"]


def _refused(call) -> bool:
    """Whether a steering attempt raised (True) or went through (False)."""
    try:
        ray.get(call(), timeout=30)
    except Exception:
        return True
    return False


def _still_honest(cluster, before) -> None:
    values = bft_ray.get([triple.remote(k) for k in range(4)], timeout=60)
    assert values == [0, 3, 6, 9]
    assert flags_of(before, all_counts(cluster)) == {}, "a steered executor was flagged"


def _touch(marker):
    def fn(*_a, **_k):
        open(marker, "w").close()
        return 0

    return fn


class Touch:
    def __init__(self, marker):
        open(marker, "w").close()


def _spec():
    from bft_ray.executor.actor import TaskSpec

    return TaskSpec("steer-task", 0, "steer")


ATTEMPTS = {
    "set_fault-wrong-token": lambda h: h.set_fault.remote(WRONG, "zeros"),
    "set_fault-no-token": lambda h: h.set_fault.remote("zeros"),
    "set_fault-none-token": lambda h: h.set_fault.remote(None, "zeros"),
    "run-wrong-token": lambda h: h.run.remote(WRONG, _spec(), "k", _touch(MARKER)),
    "run-no-token": lambda h: h.run.remote(_spec(), "k", _touch(MARKER)),
    "create_instance-wrong-token": lambda h: h.create_instance.remote(
        WRONG, _spec(), "inst", Touch, MARKER
    ),
    "create_instance-no-token": lambda h: h.create_instance.remote("inst", Touch, MARKER),
}


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_a_handle_without_the_capability_cannot_steer_an_executor(cluster, attempt):
    before = all_counts(cluster)
    handle = _victim_handle(cluster)
    assert _refused(lambda: ATTEMPTS[attempt](handle)), f"{attempt} went through"
    assert_no_marker(MARKER, RAN)
    _still_honest(cluster, before)
    assert_no_marker(MARKER, RAN)


@bft_ray.verified_remote(replicas=N, quorum=3)
class Tally:
    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> int:
        self.n += 1
        return self.n


def test_a_handle_without_the_capability_cannot_drop_a_replica(cluster):
    inst = Tally.remote()
    holders = set(inst.holders(timeout=60))
    assert bft_ray.get(inst.bump.remote(), timeout=60) == 1
    before = all_counts(cluster)
    handle = _victim_handle(cluster)
    iid = inst.instance_id
    assert _refused(lambda: handle.drop_instance.remote(WRONG, iid))
    assert _refused(lambda: handle.drop_instance.remote(iid))
    verifier = cluster._verifier
    assert _refused(lambda: verifier.drop_instance.remote(WRONG, iid))
    assert _refused(lambda: verifier.drop_instance.remote(iid))
    assert [bft_ray.get(inst.bump.remote(), timeout=60) for _ in range(2)] == [2, 3]
    assert set(inst.holders(timeout=60)) == holders
    assert flags_of(before, all_counts(cluster)) == {}


def _steer_from_inside(victim, marker):
    """A fault callable: while answering, try to make the victim Byzantine, then answer
    honestly (so only the victim could be disturbed)."""

    def attack(output):
        from bft_ray.executor.actor import TaskSpec

        spec = TaskSpec("inside-job", 0, "steer")
        for call in (
            lambda: victim.set_fault.remote(b"\x00" * 32, "zeros"),
            lambda: victim.set_fault.remote("zeros"),
            lambda: victim.run.remote(b"\x00" * 32, spec, "k", _touch(marker)),
            lambda: victim.run.remote(spec, "k", _touch(marker)),
        ):
            try:
                ray.get(call(), timeout=20)
            except Exception:
                pass
        return output

    return attack


def test_an_executor_holding_another_ones_handle_cannot_steer_it(cluster):
    victim = _victim_handle(cluster)
    cluster.inject_fault(ATTACKER, _steer_from_inside(victim, MARKER))
    try:
        before = all_counts(cluster)
        assert bft_ray.get([triple.remote(k) for k in (1, 2)], timeout=120) == [3, 6]
        assert_no_marker(MARKER, RAN)
    finally:
        cluster.inject_fault(ATTACKER, "honest")
    _still_honest(cluster, before)
    assert_no_marker(MARKER, RAN)


def test_the_verifier_refuses_steering_without_the_drivers_capability(cluster):
    verifier = cluster._verifier
    before = all_counts(cluster)
    attempts = {
        "inject_fault-wrong-token": lambda: verifier.inject_fault.remote(WRONG, VICTIM, "zeros"),
        "inject_fault-no-token": lambda: verifier.inject_fault.remote(VICTIM, "zeros"),
        "executor_handles-wrong-token": lambda: verifier.executor_handles.remote(WRONG),
    }
    for name, call in attempts.items():
        assert _refused(call), f"{name} went through"
    _still_honest(cluster, before)
    try:
        ray.get(verifier.inject_fault.remote(WRONG, VICTIM, "zeros"), timeout=30)
    except Exception as exc:
        assert isinstance(exc, bft_ray.CapabilityError) or "capabilit" in str(exc).lower(), exc


def test_no_private_method_of_a_trusted_actor_or_an_executor_is_callable_through_ray(cluster):
    """Ray makes every method of an actor class an actor task, underscores included, and any
    worker can look a named actor up. The private methods take no capability (only the actor
    itself was to call them): ``_adopt_view`` would quarantine honest executors, ``_store``
    rewrite a certificate, ``_answer`` make an honest executor sign an output it never
    computed. Only public methods reach Ray (bft_ray/actor_facade.py)."""
    verifier = ray.get_actor("verifier:default", namespace="bft_ray")
    desk = ray.get_actor("results:default", namespace="bft_ray")
    executor = _victim_handle(cluster)
    before = all_counts(cluster)
    for handle, name in [
        (verifier, "_adopt_view"),
        (verifier, "_store"),
        (verifier, "_deliver"),
        (desk, "_hand"),
        (executor, "_answer"),
        (executor, "_authorise"),
    ]:
        with pytest.raises(AttributeError):
            getattr(handle, name).remote()
    # The public API is all there: a verified call still works, and so does the desk.
    assert bft_ray.get(triple.remote(5), timeout=120) == 15
    _still_honest(cluster, before)


def test_the_verifier_refuses_shutdown_without_the_drivers_capability(cluster):
    """Last in the module: an unprotected shutdown would stop the executors for good."""
    verifier = cluster._verifier
    before = all_counts(cluster)
    assert _refused(lambda: verifier.shutdown.remote(WRONG)), "shutdown with a wrong token"
    assert _refused(lambda: verifier.shutdown.remote()), "shutdown without a token"
    _still_honest(cluster, before)
    assert all(r["status"] == "alive" for r in cluster.report().executors)
    assert not os.path.exists(MARKER)
