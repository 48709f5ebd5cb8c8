"""One lying executor against the verdict path, through the public API only.

Each test plays an attack with fault callables (they run inside the executor process, so they
control every byte it returns) and asserts the claim it defends: the caller gets the honest
value or a clear error, the liar is flagged, no honest executor is flagged, tampering is caught.
One cluster of five executors for the module; faults are injected at run time and healed after
each test.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import sys
import tempfile

import numpy as np
import pytest
import ray
import ray.cloudpickle as cloudpickle
from _support import row_for_slot

import bft_ray
from bft_ray import faults

pytestmark = pytest.mark.ray
# The attacks' classes travel into the executors by value: workers cannot import test modules.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 5
LIAR = 4
MARKER = os.path.join(tempfile.gettempdir(), f"bft-ray-adversarial-{os.getpid()}")


@pytest.fixture(scope="module")
def cluster(ray_module):
    c = bft_ray.init(executors=N, quarantine_below=0.0)
    yield c
    c.shutdown()


@pytest.fixture
def liar(cluster):
    injected = []

    def inject(spec, index=LIAR):
        injected.append(index)
        return cluster.inject_fault(index, spec)

    yield inject
    for index in injected:
        cluster.inject_fault(index, "honest")


@pytest.fixture(autouse=True)
def no_marker():
    if os.path.exists(MARKER):
        os.remove(MARKER)
    yield
    assert not os.path.exists(MARKER), "an executor's pickle was loaded on the trusted side"


def _same(a, b) -> bool:
    """Equal in type, dtype, shape and bits, recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return (
            a.keys() == b.keys()
            and all(
                type(k1) is type(k2) for k1, k2 in zip(sorted(a, key=repr), sorted(b, key=repr))
            )
            and all(_same(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray | np.generic):
        return a.dtype == b.dtype and np.shape(a) == np.shape(b) and a.tobytes() == b.tobytes()
    return a == b


@bft_ray.verified_remote(replicas=N, quorum=3)
def produce(kind: str):
    return HONEST[kind]


HONEST = {
    "int_key": {1: 2.0},
    "zero_d": np.array(3.0),
    "py_float": 1.5,
    "py_bool": True,
    "bytes": b"abc",
    "dict": {"a": 1},
    "int": 7,
    "list": [1, 2],
}


class LyingInt(int):
    def __repr__(self) -> str:
        return "7"

    __str__ = __repr__


class LyingList(list):
    def __iter__(self):
        return iter([1, 2])


class LyingDict(dict):
    def keys(self):
        return {"a": 1}.keys()


LOOKALIKE = {
    "int_key": lambda: {"1": 2.0},
    "zero_d": lambda: np.array([3.0]),
    "py_float": lambda: np.float64(1.5),
    "py_bool": lambda: np.bool_(True),
    "bytes": lambda: bytearray(b"abc"),
    "dict": lambda: collections.OrderedDict(a=1),
    "int": lambda: LyingInt(8),
    "list": lambda: LyingList([9, 9]),
}


@pytest.mark.parametrize("kind", sorted(HONEST))
def test_a_lookalike_never_passes_for_the_honest_value(cluster, liar, kind):
    make = LOOKALIKE[kind]
    liar(lambda out: make())
    before = row_for_slot(cluster.report(), LIAR)
    ref = produce.remote(kind)
    value = bft_ray.get(ref, timeout=60)
    assert _same(value, HONEST[kind]), (value, HONEST[kind])
    after = row_for_slot(cluster.report(), LIAR)
    assert after["agreed"] == before["agreed"]
    assert after["flagged"] == before["flagged"] + 1
    cert = bft_ray.certificate(ref)
    assert "ex4" not in cert.signers
    assert bft_ray.verify_certificate(
        cert, cluster.verifier_keys(), task_id=bft_ray.task_id(ref), value=value
    )


class MarkerBomb:
    def __reduce__(self):
        return (open, (MARKER, "w"))


class MarkerError(Exception):
    def __reduce__(self):
        return (open, (MARKER, "w"))


def _bomb_answer(raw, ctx):
    return MarkerBomb()


def _bomb_error(raw, ctx):
    raise MarkerError("boom")


@pytest.mark.parametrize("attack", [_bomb_answer, _bomb_error], ids=["pickle", "exception"])
def test_pickled_payloads_are_never_loaded(cluster, liar, attack):
    liar(faults.wire(attack))
    before = row_for_slot(cluster.report(), LIAR)
    assert bft_ray.get(produce.remote("int"), timeout=60) == 7
    after = row_for_slot(cluster.report(), LIAR)
    assert after["flagged"] == before["flagged"] + 1
    assert after["agreed"] == before["agreed"]


def test_pickled_payloads_from_replicated_instances_are_never_loaded(cluster, liar):
    liar(faults.wire(_bomb_answer))

    @bft_ray.verified_remote(replicas=3, quorum=2)
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    handle = Counter.remote()
    assert [bft_ray.get(handle.add.remote(1), timeout=60) for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda raw: raw[:-1],  # truncated
        lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:],  # a flipped bit
        lambda raw: b"BFTE" + os.urandom(200),  # garbage
        lambda raw: pickle.dumps(MarkerBomb()),  # a pickle, as bytes
    ],
    ids=["truncated", "bitflip", "garbage", "pickle-bytes"],
)
def test_malformed_answer_bytes_are_invalid(cluster, liar, tamper):
    liar(faults.wire(lambda raw, ctx: tamper(raw)))
    before = row_for_slot(cluster.report(), LIAR)
    assert bft_ray.get(produce.remote("int"), timeout=60) == 7
    after = row_for_slot(cluster.report(), LIAR)
    assert after["invalid"] == before["invalid"] + 1


class CrashOnceThenLie(faults.Behaviour):
    """Crash on the slot's first call ever (a file marks it), then, as the respawn, lie."""

    name = "crash_once_then_lie"

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def corrupt(self, output, ctx):
        if not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)
        return -999


def test_a_respawned_slot_never_votes_twice(cluster, tmp_path):
    @bft_ray.verified_remote(replicas=3, quorum=2)
    def seven(k):
        return 7

    cluster.inject_fault(2, CrashOnceThenLie(str(tmp_path / "crashed")))
    try:
        # Which 3 of the 5 slots a call uses follows from its random task id: go on until
        # slot 2 was picked (0.4**30 = 1e-12 to miss it in 30 calls).
        for k in range(30):
            ref = seven.remote(k)
            assert bft_ray.get(ref, timeout=60) == 7
            slots = [a.slot for a in bft_ray.certificate(ref).agreeing]
            assert len(slots) == len(set(slots)) and "slot2" not in slots
            if k >= 9 and (tmp_path / "crashed").exists():
                break
        assert (tmp_path / "crashed").exists()  # slot 2 did crash and come back as a respawn
        rows = cluster.report().by_index(2)
        assert any(r["executor"].startswith("ex2.") for r in rows)
        assert all(r["agreed"] == 0 for r in rows if r["executor"] != "ex2")
    finally:
        cluster.inject_fault(2, "honest")


@bft_ray.verified_remote(
    replicas=5, quorum=3, tolerance=bft_ray.Tolerance(rtol=0.0, atol=1e-3), max_replicas=5
)
def centre(call: int):
    return np.array([1.0])


class EdgeColluder(faults.Behaviour):
    """Inside the honest outputs' tolerance, placed to push one honest output out."""

    name = "edge"

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def corrupt(self, output, ctx):
        return output + self.offset


class HonestNoise(faults.Behaviour):
    """An honest executor whose arithmetic differs a little (pairwise within the tolerance)."""

    name = "noise"

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def corrupt(self, output, ctx):
        return output + self.offset


def test_colluders_at_the_tolerance_edge_never_get_an_honest_executor_flagged(cluster):
    t = 1e-3
    # Honest 0, 1, 2 at 1.0, 1.0+0.6t, 1.0+0.9t agree pairwise; colluders 3 and 4 each agree
    # with two of the three, so a value taken from a colluder leaves one honest output out.
    layout = {
        1: HonestNoise(0.6 * t),
        2: HonestNoise(0.9 * t),
        3: EdgeColluder(-0.2 * t),
        4: EdgeColluder(1.5 * t),
    }
    for i, b in layout.items():
        cluster.inject_fault(i, b)
    try:
        before = {i: row_for_slot(cluster.report(), i) for i in range(3)}
        refs = [centre.remote(k) for k in range(30)]
        for v in bft_ray.get(refs, timeout=120):
            assert abs(float(v[0]) - 1.0) <= 2 * t
        report = cluster.report()
        for i in range(3):
            after = row_for_slot(report, i)
            assert after["flagged"] == before[i]["flagged"], (i, after)
    finally:
        for i in layout:
            cluster.inject_fault(i, "honest")


def test_certificate_rewrites_and_replays_are_detected(cluster, liar):
    liar(lambda out: out + 1)
    keys = cluster.verifier_keys()
    # The liar's dissent is in the certificate when it answered before the verdict.
    for _ in range(30):
        ref_a, ref_b = produce.remote("int"), produce.remote("int")
        assert bft_ray.get([ref_a, ref_b], timeout=60) == [7, 7]
        cert = bft_ray.certificate(ref_a)
        if any(d.attestation is not None for d in cert.dissenting):
            break
    assert bft_ray.verify_certificate(cert, keys, task_id=bft_ray.task_id(ref_a), value=7)
    # Replaying another task's certificate for the same output.
    assert not bft_ray.verify_certificate(
        bft_ray.certificate(ref_b), keys, task_id=bft_ray.task_id(ref_a)
    )
    dissent = next(d for d in cert.dissenting if d.attestation is not None)
    agree = cert.agreeing[0]
    rewrites = {
        "dissent executor id": dataclasses.replace(dissent, executor_id="ex0"),
        "dissent attestation task": dataclasses.replace(
            dissent, attestation=dataclasses.replace(dissent.attestation, task_id="other")
        ),
        "dissent attestation attempt": dataclasses.replace(
            dissent, attestation=dataclasses.replace(dissent.attestation, attempt=9)
        ),
        "dissent attestation key": dataclasses.replace(
            dissent,
            attestation=dataclasses.replace(dissent.attestation, public_key=agree.public_key),
        ),
        "dissent outcome": dataclasses.replace(dissent, outcome="unaligned"),
    }
    for what, forged in rewrites.items():
        bad = dataclasses.replace(
            cert, dissenting=tuple(forged if d is dissent else d for d in cert.dissenting)
        )
        assert not bft_ray.verify_certificate(bad, keys), what
    for what, bad in {
        "digest": dataclasses.replace(cert, digest=bytes(32)),
        "quorum": dataclasses.replace(cert, quorum=1),
        "agreeing slot": dataclasses.replace(
            cert, agreeing=(dataclasses.replace(agree, slot="slot9"), *cert.agreeing[1:])
        ),
        "function": dataclasses.replace(
            cert, function=dataclasses.replace(cert.function, qualname="other")
        ),
        "args": dataclasses.replace(cert, args_digest=bytes(32)),
        "tiebreak": dataclasses.replace(cert, tiebreak=bytes(32)),
    }.items():
        assert not bft_ray.verify_certificate(bad, keys), what
    # JSON: a process that never ran Ray can check it; a changed digest in the text fails.
    text = cert.to_json()
    assert bft_ray.verify_certificate(bft_ray.Certificate.from_json(text), keys, value=7)
    forged_text = text.replace(cert.digest.hex(), bytes(32).hex())
    assert not bft_ray.verify_certificate(bft_ray.Certificate.from_json(forged_text), keys)


@pytest.mark.parametrize(
    "junk",
    [None, {}, "certificate", 42, [1, 2], b"\x00" * 64],
)
def test_malformed_certificates_return_false(cluster, junk):
    assert bft_ray.verify_certificate(junk, cluster.verifier_keys()) is False


def test_malformed_certificate_fields_return_false(cluster):
    ref = produce.remote("int")
    bft_ray.get(ref, timeout=60)
    cert = bft_ray.certificate(ref)
    for field in ("digest", "task_id", "agreeing", "quorum", "function", "executor_keys"):
        for junk in (None, -3, "x", (None,)):
            bad = dataclasses.replace(cert, **{field: junk})
            assert bft_ray.verify_certificate(bad, cluster.verifier_keys()) is False


HONEST_EDGE = {
    "empty": np.empty((0, 3)),
    "huge int": 10**5000,
    "colliding structure strings": [{"a:b": 1, "a": {"b": 1}}, {"a": {"b:": 1}}],
    "nested empties": {"x": [], "y": (), "z": {}, "w": [[], [()]]},
}


@bft_ray.verified_remote(replicas=3)
def edge(kind: str):
    return HONEST_EDGE[kind]


@pytest.mark.parametrize("kind", sorted(HONEST_EDGE))
def test_honest_edge_values_round_trip(cluster, kind):
    assert _same(bft_ray.get(edge.remote(kind), timeout=60), HONEST_EDGE[kind])


def test_unsupported_outputs_fail_clearly_and_flag_nobody(cluster):
    @bft_ray.verified_remote(replicas=3)
    def a_set():
        return {1, 2}

    before = cluster.report()
    with pytest.raises(TypeError, match="set"):
        bft_ray.get(a_set.remote(), timeout=60)
    after = cluster.report()
    assert sum(r["flagged"] for r in after.executors) == sum(r["flagged"] for r in before.executors)


@ray.remote
def failing_upstream():
    raise ValueError("upstream broke")


@bft_ray.verified_remote(replicas=3)
def double(x):
    return x * 2


def test_a_failed_first_argument_does_not_poison_later_calls(cluster):
    before = cluster.report()
    with pytest.raises(ValueError, match="upstream broke"):
        bft_ray.get(double.remote(failing_upstream.remote()), timeout=60)
    assert bft_ray.get(double.remote(21), timeout=60) == 42
    after = cluster.report()
    assert sum(r["flagged"] for r in after.executors) == sum(r["flagged"] for r in before.executors)


def test_a_chain_of_dependent_calls_completes_and_flags_nobody(cluster):
    @bft_ray.verified_remote(replicas=3, timeout_s=5)
    def step(x):
        return x + 1

    before = cluster.report()
    cur = step.remote(0)
    for _ in range(8):
        cur = step.remote(cur)
    assert bft_ray.get(cur, timeout=120) == 9
    after = cluster.report()
    assert sum(r["flagged"] for r in after.executors) == sum(r["flagged"] for r in before.executors)


def test_executors_cannot_be_steered_without_the_capability(cluster):
    entry = cluster.executor_handles()[0]
    handle = entry["handle"]
    with pytest.raises(ray.exceptions.RayError):
        ray.get(handle.set_fault.remote(b"x" * 32, "zeros"), timeout=30)
    with pytest.raises(ray.exceptions.RayError):
        ray.get(handle.drop_instance.remote(None, "anything"), timeout=30)
    verifier = cluster._verifier
    with pytest.raises(ray.exceptions.RayError):
        ray.get(verifier.inject_fault.remote(b"y" * 32, 0, "zeros"), timeout=30)
    with pytest.raises(ray.exceptions.RayError):
        ray.get(verifier.shutdown.remote(b"y" * 32), timeout=30)
    before = row_for_slot(cluster.report(), 0)
    assert bft_ray.get(produce.remote("int"), timeout=60) == 7
    assert row_for_slot(cluster.report(), 0)["flagged"] == before["flagged"]
