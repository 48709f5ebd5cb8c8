"""``bft_ray.get(refs, progress=...)``: a progress bar, and otherwise exactly ``bft_ray.get``.

Same values in the same order (duplicates, single refs, plain Ray refs), bft-ray errors
unwrapped, the timeout message that says where pending calls stand.
"""

from __future__ import annotations

import time

import pytest
import ray

import bft_ray
from bft_ray.errors import VerificationTimeoutError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(ray_module):
    c = bft_ray.init(executors=3, quarantine_below=0.0)
    yield c
    c.shutdown()


@bft_ray.verified_remote(replicas=3)
def square(x):
    return x * x


@bft_ray.verified_remote(replicas=3)
def fails(x):
    raise ValueError(f"bad input {x}")


@bft_ray.verified_remote(replicas=2, max_replicas=2, tolerance=bft_ray.Tolerance(mode="exact"))
def differs():
    import os

    return os.getpid()  # every executor answers differently


def test_progress_returns_the_same_values(cluster, capsys):
    refs = [square.remote(i) for i in range(8)]
    expected = [i * i for i in range(8)]
    assert bft_ray.get(refs, timeout=120, progress=True) == expected
    assert bft_ray.get(refs, timeout=60) == expected
    # Duplicates and order are kept, as ray.get keeps them; a single ref gives one value.
    twice = [refs[3], refs[0], refs[3]]
    assert bft_ray.get(twice, timeout=60, progress=True) == [9, 0, 9]
    assert bft_ray.get(refs[5], timeout=60, progress="one call") == 25
    assert bft_ray.get(tuple(refs[:2]), progress=True) == [0, 1]
    err = capsys.readouterr().err
    assert "verified calls" in err and "8/8" in err
    assert "one call" in err and "1/1" in err


def test_progress_description_and_plain_ray_refs(cluster, capsys):
    @ray.remote(num_cpus=0)
    def plain(x):
        time.sleep(0.05 * x)
        return x + 1

    refs = [plain.remote(i) for i in range(5)]
    assert bft_ray.get(refs, timeout=60, progress="plain tasks") == [1, 2, 3, 4, 5]
    err = capsys.readouterr().err
    assert "plain tasks" in err and "5/5" in err


def test_progress_raises_bft_errors_unwrapped(cluster):
    with pytest.raises(ValueError, match="bad input 7"):
        bft_ray.get([square.remote(1), fails.remote(7)], timeout=60, progress=True)
    with pytest.raises(bft_ray.NoQuorumError):
        bft_ray.get([differs.remote()], timeout=60, progress=True)
    with pytest.raises(TypeError, match="ObjectRef"):
        bft_ray.get([1, 2], progress=True)


def test_progress_timeout_says_where_calls_stand(cluster):
    @bft_ray.verified_remote(replicas=3)
    def slow(x):
        import time

        time.sleep(3)
        return x

    ref = slow.remote(1)
    with pytest.raises(VerificationTimeoutError, match="pending") as info:
        bft_ray.get([square.remote(2), ref], timeout=0.5, progress=True)
    assert isinstance(info.value, ray.exceptions.GetTimeoutError)
    assert "not ready within 0.5s" in str(info.value)
    assert bft_ray.get(ref, timeout=60, progress=True) == 1
