"""Attack 4: digest grinding at the tolerance edge.

Five executors, every call on all five (replicas=5, quorum=3), ``allclose`` with ``atol=t``,
``rtol=0``. Three honest executors whose arithmetic differs a little return (in units of t
above 1.0) ``a = 0``, ``b = 0.5`` and ``c = 0.9``: pairwise within the tolerance. Two colluders
answer at once (they skip the work) with

* ``x = 1.2``: within t of b and c, not of a; x grinds its low bits until its digest sorts
  below b's and c's, so a digest-based tie-break among the best-connected outputs (b, c and x
  each agree with three outputs, themselves included) picks x as the representative;
* ``y = 2.05``: within t of x only, giving x its extra peer.

A rule that takes the representative's neighbourhood then leaves honest ``a`` out and flags it.
Claims, over 30 calls: no honest executor is ever flagged or quarantined; every returned value
is within t of an honest output. And for a replicated instance: no honest replica is ever
dropped as diverged (``handle.holders()`` keeps all three).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from adversarial._util import by_value, counts, start, stop

import bft_ray
from bft_ray import faults

pytestmark = pytest.mark.ray
by_value(__name__)

N = 5
T = 1e-3
TOL = bft_ray.Tolerance(rtol=0.0, atol=T)
HONEST = {0: 0.0, 1: 0.5 * T, 2: 0.9 * T}  # slot -> offset above 1.0
X, Y = 3, 4
CALLS = 30


@pytest.fixture(scope="module")
def cluster():
    c = start(N)
    yield c
    stop(c)


class HonestNoise(faults.Behaviour):
    """An honest executor whose arithmetic differs by ``offset``, on a slower device."""

    name = "honest_noise"

    def __init__(self, offset: float, delay: float) -> None:
        self.offset = offset
        self.delay = delay

    def before(self, ctx):
        time.sleep(self.delay)

    def corrupt(self, output, ctx):
        return output if output is None else output + self.offset


class Grinder(faults.Behaviour):
    """Colluder x: 1.2t above 1.0, its digest ground below the digests of b and c."""

    name = "grinder"

    def corrupt(self, output, ctx):
        if output is None:
            return None
        from bft_ray.compare.digest import digest

        targets = [digest(output + HONEST[1]), digest(output + HONEST[2])]
        base = output + 1.2 * T
        for k in range(4096):
            candidate = base + k * 1e-12 * T  # far below the tolerance
            if digest(candidate) < min(targets):
                return candidate
        return base


class Sidekick(faults.Behaviour):
    """Colluder y: within the tolerance of x only."""

    name = "sidekick"

    def corrupt(self, output, ctx):
        return output if output is None else output + 2.05 * T


@pytest.fixture
def layout(cluster):
    for i, off in HONEST.items():
        # a is the slowest: a rule that decides early leaves it out before it arrives.
        cluster.inject_fault(i, HonestNoise(off, 0.15 if i == 0 else 0.05))
    cluster.inject_fault(X, Grinder())
    cluster.inject_fault(Y, Sidekick())
    yield
    for i in range(N):
        cluster.inject_fault(i, "honest")


def _check_layout():
    """The numbers do what the docstring says (pure arithmetic, no Ray)."""
    a, b, c = (1.0 + HONEST[i] for i in range(3))
    x, y = 1.0 + 1.2 * T, 1.0 + 2.05 * T
    agree = lambda u, v: abs(u - v) <= T  # noqa: E731
    assert agree(a, b) and agree(a, c) and agree(b, c)
    assert agree(x, b) and agree(x, c) and not agree(x, a) and agree(x, y)
    assert not (agree(y, a) or agree(y, b) or agree(y, c))


def _honest_flags(cluster) -> dict[int, int]:
    return {i: counts(cluster, i)["flagged"] for i in HONEST}


def _within_an_honest_output(v: float) -> bool:
    return any(abs(v - (1.0 + off)) <= T for off in HONEST.values())


@bft_ray.verified_remote(replicas=N, quorum=3, tolerance=TOL)
def centre(call: int):
    return np.array([1.0])


def test_colluders_at_the_tolerance_edge_never_get_an_honest_executor_flagged(cluster, layout):
    _check_layout()
    before = _honest_flags(cluster)
    refs = [centre.remote(k) for k in range(CALLS)]
    for v in bft_ray.get(refs, timeout=180):
        assert v.shape == (1,) and v.dtype == np.float64
        assert _within_an_honest_output(float(v[0])), float(v[0])
    after = _honest_flags(cluster)
    assert after == before, f"honest executors were flagged: {before} -> {after}"
    for row in cluster.report().executors:
        if row["index"] in HONEST:
            assert row["status"] != "quarantined", row
    assert counts(cluster, Y)["flagged"] > 0, "the sidekick, alone with x, should be flagged"


@bft_ray.verified_remote(replicas=N, quorum=3, tolerance=TOL)
class Sensor:
    def __init__(self) -> None:
        self.calls = 0

    def read(self, k: int):
        self.calls += 1
        return np.array([1.0])


def test_an_honest_replica_is_never_dropped_as_diverged(cluster, layout):
    handle = Sensor.remote()
    holders = set(handle.holders(timeout=60))
    live = {r["index"]: r["executor"] for r in cluster.report().executors if r["status"] == "alive"}
    honest_ids = {live[i] for i in HONEST}
    assert honest_ids <= holders, (honest_ids, holders)
    before = _honest_flags(cluster)
    for k in range(CALLS):
        v = bft_ray.get(handle.read.remote(k), timeout=60)
        assert _within_an_honest_output(float(v[0])), float(v[0])
        assert honest_ids <= set(handle.holders(timeout=60)), (
            f"call {k}: an honest replica was dropped as diverged: {handle.holders()}"
        )
    assert _honest_flags(cluster) == before


def test_an_output_outside_every_honest_tolerance_is_never_credited(cluster, layout):
    """y is more than t away from every honest output: whatever value is accepted, y's answer
    is not one an honest executor could have given, so it must never count as agreeing (the
    README: an executor cannot "be credited for a wrong answer"). It is within t of x, so a
    rule that credits whatever agrees with the chosen representative credits y whenever x is
    chosen."""
    before = counts(cluster, Y)
    refs = [centre.remote(k) for k in range(CALLS)]
    bft_ray.get(refs, timeout=180)
    d = counts(cluster, Y)
    assert d["agreed"] == before["agreed"], (
        f"the sidekick was credited {d['agreed'] - before['agreed']} times of {CALLS} for an "
        "answer outside the tolerance of every honest output"
    )
