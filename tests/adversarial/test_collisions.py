"""Attack 1: canonical-form collisions. One Byzantine executor of four answers a look-alike.

Every call runs on all four executors (replicas=4, quorum=3), so the liar (slot 3) votes in each
one. Claims, per look-alike: the caller receives exactly the honest value (type, dtype, shape,
key types, bits); the liar is flagged (disagreed or invalid), never credited as agreeing; no
honest executor is flagged; the certificate verifies for the task and the returned value.

And when the honest function itself returns something with no exact canonical form, the call
fails with a clear TypeError naming the type, every replica refuses it alike, and nobody is
flagged for it.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from adversarial._util import all_counts, by_value, delta, flags_of, same, start, stop

import bft_ray

pytestmark = pytest.mark.ray
by_value(__name__)

N = 4
LIAR = 3


@pytest.fixture(scope="module")
def cluster():
    c = start(N)
    yield c
    stop(c)


@pytest.fixture
def liar(cluster):
    injected = []

    def inject(spec):
        injected.append(LIAR)
        return cluster.inject_fault(LIAR, spec)

    yield inject
    for index in injected:
        cluster.inject_fault(index, "honest")


class LyingInt(int):
    """An int that prints, compares and hashes as 7 whatever it holds."""

    def __repr__(self) -> str:
        return "7"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return other == 7

    def __hash__(self) -> int:
        return hash(7)


class LyingList(list):
    """A list that iterates, indexes and prints as [1, 2] whatever it holds."""

    def __iter__(self):
        return iter([1, 2])

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return [1, 2][i]

    def __repr__(self) -> str:
        return "[1, 2]"


class LyingDict(dict):
    """A dict that shows {"a": 1} through every accessor whatever it holds."""

    def keys(self):
        return {"a": 1}.keys()

    def items(self):
        return {"a": 1}.items()

    def values(self):
        return {"a": 1}.values()

    def __iter__(self):
        return iter(["a"])

    def __getitem__(self, k):
        return {"a": 1}[k]

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "{'a': 1}"


def _structured(values):
    arr = np.asarray(values, dtype=np.float64)
    return np.frombuffer(arr.tobytes(), dtype=[("a", "<f8")])


# case -> (honest value, liar's look-alike as a function of the honest output, tolerance)
CASES = {
    "int-key-vs-str-key": ({1: 2.0}, lambda out: {"1": 2.0}, None),
    "str-key-vs-int-key": ({"1": 2.0}, lambda out: {1: 2.0}, None),
    "0d-array-vs-shape-1": (np.array(3.0), lambda out: np.array([3.0]), None),
    "shape-1-vs-0d-array": (np.array([3.0]), lambda out: np.array(3.0), None),
    "float-vs-np-float64": (1.5, lambda out: np.float64(1.5), None),
    "np-float64-vs-float": (np.float64(1.5), lambda out: 1.5, None),
    "bool-vs-np-bool": (True, lambda out: np.bool_(True), None),
    "np-bool-vs-bool": (np.bool_(True), lambda out: True, None),
    "bool-vs-int": (True, lambda out: 1, None),
    "int-vs-float": (3, lambda out: 3.0, None),
    "bytes-vs-bytearray": (b"abc", lambda out: bytearray(b"abc"), None),
    "bytes-vs-str": (b"abc", lambda out: "abc", None),
    "tuple-vs-list": ((1, 2), lambda out: [1, 2], None),
    "dict-vs-ordereddict": ({"a": 1}, lambda out: collections.OrderedDict(a=1), None),
    "dict-vs-defaultdict": (
        {"a": 1},
        lambda out: collections.defaultdict(int, a=1),
        None,
    ),
    "int-vs-lying-int-subclass": (7, lambda out: LyingInt(8), None),
    "list-vs-lying-list-subclass": ([1, 2], lambda out: LyingList([9, 9]), None),
    "dict-vs-lying-dict-subclass": ({"a": 1}, lambda out: LyingDict(a=2), None),
    "array-vs-masked-array": (
        np.array([1.0, 2.0]),
        lambda out: np.ma.masked_array([1.0, 2.0], mask=[False, True]),
        None,
    ),
    "array-vs-structured-array": (np.array([1.0, 2.0]), lambda out: _structured(out), None),
    "float32-vs-float64-array": (
        np.array([1.5, 2.5], dtype=np.float32),
        lambda out: np.array([1.5, 2.5], dtype=np.float64),
        None,
    ),
    "nested-key-path-vs-flat": ({"a": {"b": 1.0}}, lambda out: {"a:b": 1.0}, None),
    "flat-key-vs-nested-path": ({"a/b": 1.0}, lambda out: {"a": {"b": 1.0}}, None),
    "zero-vs-negative-zero-exact": (0.0, lambda out: -0.0, bft_ray.Tolerance.exact()),
}


@bft_ray.verified_remote(replicas=N, quorum=3)
def produce(case: str):
    return CASES[case][0]


@pytest.mark.parametrize("case", list(CASES))
def test_a_lookalike_never_passes_for_the_honest_value(cluster, liar, case):
    honest, lookalike, tolerance = CASES[case]
    liar(lookalike)
    fn = produce.options(tolerance=tolerance) if tolerance is not None else produce
    before = all_counts(cluster)
    ref = fn.remote(case)
    value = bft_ray.get(ref, timeout=60)
    same(value, honest)
    after = all_counts(cluster)
    d = delta(before[LIAR], after[LIAR])
    assert d["agreed"] == 0, f"the liar was credited for its look-alike: {d}"
    assert d["disagreed"] + d["invalid"] == 1 and d["flagged"] == 1, d
    assert flags_of(before, after) == {LIAR: 1}, "an honest executor was flagged"
    cert = bft_ray.certificate(ref)
    assert bft_ray.verify_certificate(
        cert, cluster.verifier_keys(), task_id=bft_ray.task_id(ref), value=value
    )
    liar_ids = {r["executor"] for r in cluster.report().by_index(LIAR)}
    assert not liar_ids & set(cert.signers), "the liar signs the certificate of the honest value"


def test_the_certificate_of_a_value_does_not_vouch_for_its_lookalikes(cluster):
    ref = produce.remote("float-vs-np-float64")
    value = bft_ray.get(ref, timeout=60)
    cert = bft_ray.certificate(ref)
    keys = cluster.verifier_keys()
    assert bft_ray.verify_certificate(cert, keys, value=value)
    for other in (np.float64(1.5), np.float32(1.5), np.array(1.5), [1.5], 1.5000000000000002):
        assert not bft_ray.verify_certificate(cert, keys, value=other), other


# The honest function returns a value with no exact canonical form: a set has no order, a
# masked array would lose its mask, a structured or object array and a plain object have no
# exact encoding, a dict subclass could lie about itself.
class Plain:
    pass


UNSUPPORTED = {
    "set": ({1, 2}, "set"),
    "frozenset": (frozenset({1}), "frozenset"),
    "set-nested-in-a-dict": ({"a": [1, {2}]}, "set"),
    "masked-array": (np.ma.masked_array([1.0, 2.0], mask=[False, True]), "masked"),
    "structured-array": (np.zeros(2, dtype=[("a", "<f8"), ("b", "<i4")]), "structured"),
    "object-array": (np.array([1, "x"], dtype=object), "object"),
    "ordereddict": (collections.OrderedDict(a=1), "OrderedDict"),
    "plain-object": (Plain(), "Plain"),
}


@bft_ray.verified_remote(replicas=N, quorum=3)
def produce_unsupported(case: str):
    return UNSUPPORTED[case][0]


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_an_unsupported_honest_output_fails_clearly_and_flags_nobody(cluster, case):
    before = all_counts(cluster)
    _, name = UNSUPPORTED[case]
    with pytest.raises(TypeError, match=name):
        bft_ray.get(produce_unsupported.remote(case), timeout=60)
    after = all_counts(cluster)
    assert flags_of(before, after) == {}, "an executor was flagged for the caller's own output"
    for i in range(N):
        d = delta(before[i], after[i])
        # Every replica refused the value the same way (an agreed refusal), none was judged
        # to disagree.
        assert d["disagreed"] == d["invalid"] == 0, (i, d)


# The honest output has no exact form; the liar offers a look-alike instead (a supported one,
# or the same array under other field names, which a lax canonical form would not tell apart).
LOOKALIKE_FOR_UNSUPPORTED = {
    "set-vs-sorted-list": lambda out: sorted(out),
    "masked-vs-its-data": lambda out: np.asarray(out.data),
    "structured-vs-renamed-fields": lambda out: out.astype([("b", "<f8"), ("a", "<i4")]),
}
_UNSUPPORTED_OF = {
    "set-vs-sorted-list": "set",
    "masked-vs-its-data": "masked-array",
    "structured-vs-renamed-fields": "structured-array",
}


@pytest.mark.parametrize("case", list(LOOKALIKE_FOR_UNSUPPORTED))
def test_a_supported_lookalike_of_an_unsupported_output_is_never_returned(cluster, liar, case):
    liar(LOOKALIKE_FOR_UNSUPPORTED[case])
    source = _UNSUPPORTED_OF[case]
    before = all_counts(cluster)
    with pytest.raises(TypeError, match=UNSUPPORTED[source][1]):
        bft_ray.get(produce_unsupported.remote(source), timeout=60)
    after = all_counts(cluster)
    assert set(flags_of(before, after)) <= {LIAR}, "an honest executor was flagged"
    assert delta(before[LIAR], after[LIAR])["agreed"] == 0
