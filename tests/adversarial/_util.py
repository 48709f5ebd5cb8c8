"""Helpers shared by the adversarial suites (imported as ``adversarial._util``).

Everything an attack needs inside an executor (fault callables, lying classes, pickle bombs)
travels there by value: executors cannot import test modules. :func:`by_value` registers a test
module for that.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
import ray.cloudpickle as ray_cloudpickle

import bft_ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

COUNTERS = (
    "tasks",
    "agreed",
    "disagreed",
    "unaligned",
    "invalid",
    "crashed",
    "timeouts",
    "disputed",
    "flagged",
)


def by_value(module_name: str) -> None:
    """Pickle a test module's functions and classes by value (executors cannot import it)."""
    ray_cloudpickle.register_pickle_by_value(sys.modules[module_name])


by_value(__name__)


def start(executors: int, **kw: Any) -> bft_ray.BftCluster:
    """A bft-ray pool on the session's Ray (started here if none runs), sized for 2 cores.

    Quarantine is off unless asked for, so that a liar stays in service for every test of the
    module (as in ``tests/integration/test_faults_e2e.py``).
    """
    bft_ray.shutdown()
    if not ray.is_initialized():
        from integration.conftest import start_ray

        start_ray()  # shared by the following modules (the session ends it)
    kw.setdefault("quarantine_below", 0.0)
    return bft_ray.init(
        executors=executors,
        num_cpus=executors + 2,
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        gpus_per_executor=0,
        log_to_driver=False,
        configure_logging=False,
        **kw,
    )


def stop(cluster: bft_ray.BftCluster) -> None:
    cluster.shutdown()


def counts(cluster: bft_ray.BftCluster, index: int) -> dict[str, int]:
    """Counters of pool slot ``index``, summed over all its incarnations (respawns)."""
    rows = cluster.report().by_index(index)
    assert rows, f"no executor with index {index}"
    return {k: sum(int(r.get(k, 0) or 0) for r in rows) for k in COUNTERS}


def all_counts(cluster: bft_ray.BftCluster) -> dict[int, dict[str, int]]:
    report = cluster.report()
    out: dict[int, dict[str, int]] = {}
    for r in report.executors:
        slot = out.setdefault(r["index"], dict.fromkeys(COUNTERS, 0))
        for k in COUNTERS:
            slot[k] += int(r.get(k, 0) or 0)
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in COUNTERS}


def flags_of(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]) -> dict:
    """Slot index -> new flags, for the slots that got any."""
    return {
        i: after[i]["flagged"] - before.get(i, {}).get("flagged", 0)
        for i in after
        if after[i]["flagged"] != before.get(i, {}).get("flagged", 0)
    }


def executor_slot_index(cluster: bft_ray.BftCluster) -> dict[str, int]:
    """Executor id (every incarnation) -> pool slot index, from the public report."""
    return {r["executor"]: r["index"] for r in cluster.report().executors}


# -- exact equality ------------------------------------------------------------------------


def _float_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same(a: Any, b: Any, path: str = "<root>") -> None:
    """Assert ``a`` and ``b`` are the same value: type, dtype, shape, key types and bits."""
    assert type(a) is type(b), f"{path}: {type(a).__qualname__} is not {type(b).__qualname__}"
    if isinstance(a, dict):
        ka = sorted((type(k).__qualname__, repr(k)) for k in a)
        kb = sorted((type(k).__qualname__, repr(k)) for k in b)
        assert ka == kb, f"{path}: keys {ka} != {kb}"
        by_key = {(type(k), k): k for k in b}
        for k, v in a.items():
            same(v, b[by_key[(type(k), k)]], f"{path}/{k!r}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}/{i}")
    elif isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
        assert np.shape(a) == np.shape(b), f"{path}: shape {np.shape(a)} != {np.shape(b)}"
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), f"{path}: bits differ"
    elif isinstance(a, float):
        assert _float_bits(a) == _float_bits(b), f"{path}: {a!r} and {b!r} differ in bits"
    elif isinstance(a, complex):
        assert _float_bits(a.real) + _float_bits(a.imag) == _float_bits(b.real) + _float_bits(
            b.imag
        ), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# -- pickle bombs ---------------------------------------------------------------------------


def new_marker(tag: str) -> str:
    """A path no test ever writes: if it exists, some process unpickled an executor's bomb."""
    return os.path.join(tempfile.gettempdir(), f"bft-adversarial-{tag}-{uuid.uuid4().hex}")


def _touch_code(marker: str, then: str) -> str:
    return f"__import__('pathlib').Path({marker!r}).touch() or {then}"


class FloatBomb(float):
    """Looks like a float to old canonicalisers; unpickling it writes ``marker``, then is a float.

    A canonical form that accepted float subclasses would digest it as the honest float, and
    a verifier that unpickled it would run the attacker's code and carry on with a look-alike.
    """

    marker = ""

    def __new__(cls, marker: str, value: float) -> FloatBomb:
        self = super().__new__(cls, value)
        self.marker = marker
        return self

    def __reduce__(self) -> tuple:
        return (eval, (_touch_code(self.marker, repr(float(self))),))


class Bomb:
    """Any object: unpickling it writes ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (eval, (_touch_code(self.marker, "None"),))


class BombError(Exception):
    """An exception whose pickle (the payload of Ray's error object) writes ``marker``."""

    def __init__(self, marker: str) -> None:
        super().__init__("boom")
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (eval, (_touch_code(self.marker, "ValueError('boom')"),))


def raise_bomb(marker: str):
    """A fault callable ``output -> output`` that raises a :class:`BombError`."""

    def corrupt(output: Any) -> Any:
        raise BombError(marker)

    return corrupt


def bomb_output(marker: str):
    """A fault callable ``output -> output`` that answers a :class:`FloatBomb` look-alike.

    ``None`` (a constructor's answer) passes unchanged, so replicated instances still build.
    """

    def corrupt(output: Any) -> Any:
        if output is None:
            return None
        value = float(output) if isinstance(output, int | float) else 1.0
        return FloatBomb(marker, value)

    return corrupt


UNPICKLED = "a process on the trusted side unpickled an executor's payload"


def assert_no_marker(marker: str, what: str = UNPICKLED) -> None:
    assert not os.path.exists(marker), f"{marker} exists: {what}"


def drain(marker: str, what: str = UNPICKLED) -> Iterator[None]:
    """Fixture body: the marker must not exist before or after a test."""
    if os.path.exists(marker):
        os.remove(marker)
    yield
    exists = os.path.exists(marker)
    if exists:
        os.remove(marker)  # so one failure does not fail every later test
    assert not exists, f"{marker} exists: {what}"
