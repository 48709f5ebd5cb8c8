"""The deserialisation guard on a real Ray: guarded actors' objects are never unpickled."""

from __future__ import annotations

import os
import tempfile

import pytest
import ray

from bft_ray.executor import guard

pytestmark = pytest.mark.ray

MARKER = os.path.join(tempfile.gettempdir(), f"bft-ray-guard-marker-{os.getpid()}")


def _touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("unpickled")


class Bomb:
    """Writes the marker file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


class BombError(Exception):
    def __init__(self, path: str) -> None:
        super().__init__("boom")
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


@ray.remote(num_cpus=0)
class Producer:
    def raw(self) -> bytes:
        return b"answer"

    def bomb(self, path: str) -> Bomb:
        return Bomb(path)

    def bomb_error(self, path: str) -> None:
        raise BombError(path)

    def nested(self, path: str) -> list:
        return [ray.put(Bomb(path))]

    def die(self) -> None:
        os._exit(1)


@ray.remote(num_cpus=0)
class Reader:
    """A trusted async actor that reads a guarded producer's objects."""

    async def read(self, producer: list, method: str, path: str) -> str:
        guard.guard_actor(producer[0])
        try:
            value = await getattr(producer[0], method).remote(*([path] if path else []))
        except Exception as exc:
            return type(exc).__name__
        return repr(value)


@pytest.fixture(scope="module")
def producer(ray_module):
    p = Producer.remote()
    guard.guard_actor(p)
    yield p
    guard.unguard_actor(p)


@pytest.fixture(autouse=True)
def no_marker():
    if os.path.exists(MARKER):
        os.remove(MARKER)
    yield
    assert not os.path.exists(MARKER), "an executor's pickle was loaded on the trusted side"


def test_raw_bytes_pass(producer):
    assert ray.get(producer.raw.remote()) == b"answer"


@pytest.mark.parametrize(
    "method, error",
    [
        ("bomb", guard.UntrustedPayloadError),
        ("nested", guard.UntrustedPayloadError),
        ("bomb_error", guard.UntrustedPayloadError),  # an exception object is a pickle too
    ],
)
def test_anything_else_is_refused_unread(producer, method, error):
    with pytest.raises(error):
        ray.get(getattr(producer, method).remote(MARKER))


def test_async_reads_in_an_actor_are_guarded_too(producer):
    reader = Reader.remote()
    assert ray.get(reader.read.remote([producer], "raw", "")) == "b'answer'"
    assert ray.get(reader.read.remote([producer], "bomb", MARKER)) == "UntrustedPayloadError"
    assert ray.get(reader.read.remote([producer], "bomb_error", MARKER)) == "UntrustedPayloadError"


def test_unguarded_actors_and_plain_objects_are_untouched(ray_module):
    other = Producer.remote()
    out = ray.get(other.bomb.remote(MARKER + ".plain"))  # not guarded: Ray unpickles as usual
    assert out is None and os.path.exists(MARKER + ".plain")
    os.remove(MARKER + ".plain")
    assert ray.get(ray.put({"a": 1})) == {"a": 1}


def test_a_dead_executor_reads_as_a_crash(ray_module):
    p = Producer.remote()
    guard.guard_actor(p)
    with pytest.raises(guard.ExecutorCrashedError, match=r"ACTOR_DIED|WORKER_DIED"):
        ray.get(p.die.remote())


def test_probes_report_ready_without_reading_and_raise_upstream_errors(ray_module):
    @ray.remote
    def fails():
        raise ValueError("upstream")

    ref = ray.put(Bomb(MARKER))
    guard.probe_begin(ref)
    try:
        assert ray.get(ref) is guard.READY
    finally:
        guard.probe_end(ref)
    bad = fails.remote()
    guard.probe_begin(bad)
    try:
        with pytest.raises(ValueError, match="upstream"):
            ray.get(bad)
    finally:
        guard.probe_end(bad)
