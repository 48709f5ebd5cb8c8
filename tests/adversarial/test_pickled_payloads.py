"""Attack 2: pickled payloads. An executor answers with objects whose unpickling runs its code.

The liar (slot 3 of four; every call runs on all four, quorum 3) answers with pickle bombs: a
float look-alike whose pickle writes a marker file, an exception whose pickle (the payload of
Ray's error object) does, any object instead of its signed answer bytes
(``faults.wire``), tampered or foreign bytes, and the same for a replicated class's constructor
and methods. Claims: the marker file is never written (checked after the calls, after
``cluster.report()`` and after reading the liar's flags); the caller gets the honest value; the
liar is flagged (invalid for anything that is not a well-formed signed answer), never credited.
"""

from __future__ import annotations

import os
import pickle

import pytest
from adversarial._util import (
    Bomb,
    BombError,
    FloatBomb,
    assert_no_marker,
    bomb_output,
    by_value,
    counts,
    delta,
    drain,
    new_marker,
    raise_bomb,
    start,
    stop,
)

import bft_ray
from bft_ray import faults

pytestmark = pytest.mark.ray
by_value(__name__)

N = 4
LIAR = 3
MARKER = new_marker("pickle")


@pytest.fixture(scope="module")
def cluster():
    # Respawns are the guard's answer to an executor that raises instead of answering.
    c = start(N, max_respawns=6)
    yield c
    stop(c)
    assert_no_marker(MARKER)


@pytest.fixture(autouse=True)
def no_marker():
    yield from drain(MARKER)


@pytest.fixture
def liar(cluster):
    yield lambda spec: cluster.inject_fault(LIAR, spec)
    cluster.inject_fault(LIAR, "honest")


@bft_ray.verified_remote(replicas=N, quorum=3)
def half(x):
    return x / 2


@bft_ray.verified_remote(replicas=N, quorum=3)
class Counter:
    def __init__(self, start: float = 0.0) -> None:
        self.n = start

    def add(self, k: float) -> float:
        self.n += k
        return self.n


def _after_reading_everything(cluster) -> None:
    """Reports and flags carry the liar's evidence: reading them must not load its pickles."""
    cluster.report()
    for row in cluster.report().by_index(LIAR):
        cluster.flags(row["executor"])
    assert_no_marker(MARKER)


def _check_liar(cluster, before, calls: int, invalid: bool) -> None:
    d = delta(before, counts(cluster, LIAR))
    assert d["agreed"] == 0, f"the liar was credited: {d}"
    assert d["flagged"] == calls, d
    if invalid:
        assert d["invalid"] == calls, f"a payload that is not a signed answer is invalid: {d}"


def _check_honest(cluster, before_all) -> None:
    for i in range(N):
        if i != LIAR:
            assert counts(cluster, i)["flagged"] == before_all[i]["flagged"], i


def _honest_counts(cluster):
    return {i: counts(cluster, i) for i in range(N)}


@pytest.mark.parametrize(
    "make_fault",
    [bomb_output, raise_bomb],
    ids=["float-lookalike-bomb-output", "raised-exception-bomb"],
)
def test_a_bomb_in_the_output_is_never_unpickled(cluster, liar, make_fault):
    liar(make_fault(MARKER))
    before, before_all = counts(cluster, LIAR), _honest_counts(cluster)
    values = bft_ray.get([half.remote(3.0), half.remote(5.0)], timeout=60)
    assert values == [1.5, 2.5] and all(type(v) is float for v in values), values
    assert_no_marker(MARKER)
    _check_liar(cluster, before, 2, invalid=False)
    _check_honest(cluster, before_all)
    _after_reading_everything(cluster)


@pytest.mark.parametrize(
    "payload", ["float-bomb", "object-bomb"], ids=["float-bomb", "object-bomb"]
)
def test_a_bomb_instead_of_the_answer_bytes_is_refused_unread(cluster, liar, payload):
    marker = MARKER
    if payload == "float-bomb":
        liar(faults.wire(lambda raw, ctx: FloatBomb(marker, 1.5)))
    else:
        liar(faults.wire(lambda raw, ctx: Bomb(marker)))
    before, before_all = counts(cluster, LIAR), _honest_counts(cluster)
    assert bft_ray.get([half.remote(3.0), half.remote(5.0)], timeout=60) == [1.5, 2.5]
    assert_no_marker(MARKER)
    _check_liar(cluster, before, 2, invalid=True)
    _check_honest(cluster, before_all)
    _after_reading_everything(cluster)


def _flip(raw: bytes, at: int) -> bytes:
    at %= len(raw)
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


TAMPER = {
    "truncated-by-one-byte": lambda raw, ctx: raw[:-1],
    "truncated-to-the-header": lambda raw, ctx: raw[:12],
    "empty-bytes": lambda raw, ctx: b"",
    "bit-flip-in-the-middle": lambda raw, ctx: _flip(raw, len(raw) // 2),
    "bit-flip-in-the-last-byte": lambda raw, ctx: _flip(raw, -1),
    "appended-byte": lambda raw, ctx: raw + b"\x00",
    "random-bytes": lambda raw, ctx: os.urandom(len(raw)),
    "pickle-of-a-bomb-as-bytes": lambda raw, ctx: pickle.dumps(Bomb(MARKER)),
    "bytearray-of-the-answer": lambda raw, ctx: bytearray(raw),
    "answer-inside-a-list": lambda raw, ctx: [raw],
    "an-int": lambda raw, ctx: 7,
}


@pytest.mark.parametrize("tamper", list(TAMPER))
def test_tampered_or_foreign_answers_are_invalid(cluster, liar, tamper):
    liar(faults.wire(TAMPER[tamper]))
    before, before_all = counts(cluster, LIAR), _honest_counts(cluster)
    assert bft_ray.get(half.remote(3.0), timeout=60) == 1.5
    _check_liar(cluster, before, 1, invalid=True)
    _check_honest(cluster, before_all)
    _after_reading_everything(cluster)


class Replay:
    """Answer each call with the signed answer of the previous one (another task)."""

    def __init__(self) -> None:
        self.last = None

    def __call__(self, raw, ctx):
        last, self.last = self.last, raw
        return raw if last is None else last


def test_a_replayed_answer_of_another_task_is_invalid(cluster, liar):
    liar(faults.wire(Replay()))
    assert bft_ray.get(half.remote(1.0), timeout=60) == 0.5  # answered honestly, kept
    before, before_all = counts(cluster, LIAR), _honest_counts(cluster)
    assert bft_ray.get(half.remote(3.0), timeout=60) == 1.5  # gets the 0.5 answer replayed
    _check_liar(cluster, before, 1, invalid=True)
    _check_honest(cluster, before_all)


def test_a_bomb_answering_a_replicated_constructor_is_refused(cluster, liar):
    marker = MARKER
    # A bomb for the constructor only (method calls have task ids "<instance>/<seq>").
    liar(faults.wire(lambda raw, ctx: raw if "/" in ctx.task_id else Bomb(marker)))
    before = counts(cluster, LIAR)
    handle = Counter.remote(1.0)
    holders = handle.holders(timeout=60)
    assert_no_marker(MARKER)
    liar_ids = {r["executor"] for r in cluster.report().by_index(LIAR)}
    assert not liar_ids & set(holders), f"the liar holds a replica after a bomb answer: {holders}"
    assert [bft_ray.get(handle.add.remote(1.0), timeout=60) for _ in range(3)] == [2.0, 3.0, 4.0]
    d = delta(before, counts(cluster, LIAR))
    assert d["agreed"] == 0
    assert d["invalid"] >= 1 and d["flagged"] >= 1, f"the constructor's bomb went unflagged: {d}"
    _after_reading_everything(cluster)


@pytest.mark.parametrize("level", ["wire", "output"])
def test_bombs_answering_replicated_method_calls_are_refused(cluster, liar, level):
    handle = Counter.remote(0.0)
    liar_ids = {r["executor"] for r in cluster.report().by_index(LIAR)}
    assert liar_ids & set(handle.holders(timeout=60)), "the liar should hold a replica"
    marker = MARKER
    if level == "wire":
        liar(faults.wire(lambda raw, ctx: FloatBomb(marker, 99.0)))
    else:
        liar(bomb_output(marker))
    before, before_all = counts(cluster, LIAR), _honest_counts(cluster)
    values = [bft_ray.get(handle.add.remote(1.5), timeout=60) for _ in range(3)]
    assert values == [1.5, 3.0, 4.5] and all(type(v) is float for v in values), values
    assert_no_marker(MARKER)
    d = delta(before, counts(cluster, LIAR))
    assert d["agreed"] == 0 and d["flagged"] >= 1, d
    if level == "wire":
        assert d["invalid"] >= 1, d
    _check_honest(cluster, before_all)
    _after_reading_everything(cluster)


def _raise_bomb_on_the_wire(marker):
    def fn(raw, ctx):
        raise BombError(marker)

    return fn


def test_a_bomb_raised_instead_of_the_answer_is_never_unpickled(cluster, liar):
    """Ray carries a raised exception as a pickled error object; it must be refused unread.

    An executor's object that Ray tagged as an error is read as "no answer" (the executor
    might as well have crashed), so the liar is flagged as crashed or invalid and its slot
    respawned. Last in the module: the respawns change the liar's identity.
    """
    liar(faults.wire(_raise_bomb_on_the_wire(MARKER)))
    before, before_all = counts(cluster, LIAR), _honest_counts(cluster)
    assert bft_ray.get(half.remote(3.0), timeout=60) == 1.5
    assert_no_marker(MARKER)
    d = delta(before, counts(cluster, LIAR))
    assert d["agreed"] == 0 and d["flagged"] >= 1, d
    assert d["invalid"] + d["crashed"] >= 1, d
    _check_honest(cluster, before_all)
    _after_reading_everything(cluster)
