"""Attack 6 (the control group): honest results with no adversary must come back exactly.

Edge values a canonical form could mangle or confuse (empty arrays, huge integers, keys that
look like structure or paths, nested empty containers) return exactly, with a certificate that
verifies for them. A call whose argument failed upstream fails with that error, and later calls
of the same function still work on every executor. A chain of nine dependent verified calls
completes and flags nobody.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from adversarial._util import all_counts, by_value, flags_of, same, start, stop

import bft_ray

pytestmark = pytest.mark.ray
by_value(__name__)

N = 4

EDGE = {
    "empty-0x3-float64": np.empty((0, 3)),
    "empty-int8": np.empty((0,), dtype=np.int8),
    "empty-2x0x3-float32": np.zeros((2, 0, 3), dtype=np.float32),
    "10**5000": 10**5000,
    "-(10**5000)": -(10**5000),
    "2**64": 2**64,
    "-(2**63)-1": -(2**63) - 1,
    "colliding-structure-strings": {"a:b": 1, "a": {"b": 1}},
    "path-like-keys": {"a/b": 1, "a": {"b": 2}, "a.b": 3, "": 4, "*": 5, '"': 6, "{}": 7},
    "structure-chars-in-strings": ["{a:*}", "[*,*]", "(*)", "\x00", "a\x00b"],
    "mixed-key-types": {1: "int", "1": "str", b"1": "bytes", 1.5: "float", None: "none"},
    "nested-empties": {"x": [], "y": (), "z": {}, "w": [[], [()], {}, ""], "v": b""},
    "deep-nesting": [[[[[[[[[[[]]]]]]]]]]],
    "non-finite-floats": [float("inf"), -float("inf"), -0.0, 5e-324],
    "zero-d-arrays": [np.array(1.5), np.array(True), np.array(-3, dtype=np.int16)],
    "numpy-scalars": [np.float32(0.1), np.int8(-1), np.uint64(2**64 - 1), np.complex64(1j)],
    "unicode": {"ключ": "значение", "🔑": "\u200b"},
}


@bft_ray.verified_remote(replicas=3)
def edge(case: str):
    return EDGE[case]


@pytest.fixture(scope="module")
def cluster():
    c = start(N)
    yield c
    stop(c)


@pytest.mark.parametrize("case", list(EDGE))
def test_honest_edge_values_come_back_exactly(cluster, case):
    before = all_counts(cluster)
    ref = edge.remote(case)
    value = bft_ray.get(ref, timeout=60)
    same(value, EDGE[case])
    cert = bft_ray.certificate(ref)
    assert bft_ray.verify_certificate(
        cert, cluster.verifier_keys(), task_id=bft_ray.task_id(ref), value=value
    )
    assert flags_of(before, all_counts(cluster)) == {}


@ray.remote
def broken_upstream():
    raise ValueError("upstream broke")


@bft_ray.verified_remote(replicas=N, quorum=3)
def double_first_failed(x):
    return x * 2


def test_a_failed_first_argument_fails_that_call_only(cluster):
    """The very first call of a function has a failed argument: it must fail with the upstream
    error, and must not leave executors believing they hold the function."""
    before = all_counts(cluster)
    with pytest.raises(Exception, match="upstream broke") as err:
        bft_ray.get(double_first_failed.remote(broken_upstream.remote()), timeout=60)
    assert isinstance(err.value, ValueError | ray.exceptions.RayTaskError), err.value
    assert [bft_ray.get(double_first_failed.remote(k), timeout=60) for k in (21, 5)] == [42, 10]
    assert flags_of(before, all_counts(cluster)) == {}


@bft_ray.verified_remote(replicas=3, timeout_s=10)
def step(x):
    return x + 1


def test_a_chain_of_nine_dependent_calls_completes_and_flags_nobody(cluster):
    before = all_counts(cluster)
    cur = step.remote(0)
    refs = [cur]
    for _ in range(8):
        cur = step.remote(cur)
        refs.append(cur)
    assert bft_ray.get(cur, timeout=120) == 9
    assert bft_ray.get(refs, timeout=60) == list(range(1, 10))
    after = all_counts(cluster)
    assert flags_of(before, after) == {}, "honest executors were flagged in a chain"
    assert sum(a["timeouts"] - before[i]["timeouts"] for i, a in after.items()) == 0
