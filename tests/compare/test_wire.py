"""The canonical wire format: one encoding per value, a strict decoder, exact round trips."""

from __future__ import annotations

import builtins
import collections
import dataclasses
import enum
import math
import pickle
import re
import struct
import sys
import typing
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bft_ray.compare import (
    Canonical,
    Leaf,
    UnsupportedTypeError,
    WireFormatError,
    WireValue,
    canonicalize,
    compare,
    decode,
    decode_canonical,
    digest,
    digest_canonical,
    digest_wire,
    encode,
    wire,
)
from bft_ray.config import Tolerance

pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")

Pair = collections.namedtuple("Pair", "a b")
Other = collections.namedtuple("Other", "a b")


class Typed(typing.NamedTuple):
    x: typing.Any
    y: typing.Any = None


@dataclasses.dataclass
class State:
    w: typing.Any
    step: typing.Any


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: typing.Any
    derived: typing.Any = dataclasses.field(init=False, default=None)

    def __post_init__(self):
        object.__setattr__(self, "derived", "computed")


# The repo profile ("ci": 60 examples, "full": 500) sets the budget; the costlier properties
# run a fraction of it.
N = settings().max_examples
FEW = settings(max_examples=max(10, N // 3), suppress_health_check=[HealthCheck.too_slow])


# -- exact equality: type, dtype, shape and bits ----------------------------------------------


def _bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _key_order(k):
    v = _bits(k) if type(k) is float else (0 if k is None else k)
    return (type(k).__name__, v)


def same(a, b) -> bool:
    """Identical in type, dtype, shape and bits (recursively)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and _tensor_bytes(a) == _tensor_bytes(b)
    if type(a) is float:
        return _bits(a) == _bits(b)
    if type(a) is complex:
        return _bits(a.real) == _bits(b.real) and _bits(a.imag) == _bits(b.imag)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        ka, kb = sorted(a, key=_key_order), sorted(b, key=_key_order)
        return len(ka) == len(kb) and all(same(x, y) and same(a[x], b[y]) for x, y in zip(ka, kb))
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


# -- strategies -------------------------------------------------------------------------------

NP_NAMES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]
TORCH_NAMES = [
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex32",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
]
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)


@st.composite
def raw_data(draw, itemsize: int, is_bool: bool):
    shape = draw(shapes)
    n = math.prod(shape) * itemsize
    raw = draw(st.binary(min_size=n, max_size=n))  # every bit pattern: NaN payloads, -0.0
    if is_bool:
        raw = bytes(b & 1 for b in raw)
    return shape, raw


@st.composite
def np_arrays(draw):
    dt = np.dtype(draw(st.sampled_from(NP_NAMES)))
    shape, raw = draw(raw_data(dt.itemsize, dt.kind == "b"))
    return np.frombuffer(raw, dt).reshape(shape).copy()


@st.composite
def np_scalars(draw):
    dt = np.dtype(draw(st.sampled_from(NP_NAMES)))
    raw = draw(st.binary(min_size=dt.itemsize, max_size=dt.itemsize))
    if dt.kind == "b":
        raw = bytes(b & 1 for b in raw)
    return np.frombuffer(raw, dt)[0]


@st.composite
def tensors(draw):
    dtype = getattr(torch, draw(st.sampled_from(TORCH_NAMES)))
    shape, raw = draw(raw_data(dtype.itemsize, dtype == torch.bool))
    flat = (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.empty(0, dtype=torch.uint8)
    )
    return flat.view(dtype).reshape(shape)


py_floats = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf]),
    st.integers(0, 2**64 - 1).map(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]),
)
py_ints = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 255, 256, -256, 2**63, -(2**63), 2**64]),
    st.sampled_from([1, -1]).map(lambda sign: sign * 10**5000),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    py_ints,
    py_floats,
    st.builds(complex, py_floats, py_floats),
    st.text(max_size=8),
    st.binary(max_size=8),
)
leaves = st.one_of(scalars, np_arrays(), np_scalars(), tensors())
keys = st.one_of(
    st.text(max_size=4),
    st.integers(-300, 300),
    st.binary(max_size=3),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
pytrees = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(keys, kids, max_size=3),
        st.builds(Pair, kids, kids),
        st.tuples(kids, kids).map(lambda t: Typed(*t)),
        st.builds(State, kids, kids),
    ),
    max_leaves=8,
)


# -- (a) exact round trips --------------------------------------------------------------------


def _short_id(v) -> str:
    if type(v) is int and v.bit_length() > 64:
        return f"int{v.bit_length()}bits"
    return repr(v)[:30]


def _quiet(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


@given(pytrees)
def test_decode_of_encode_is_the_same_value(v):
    w = encode(v)
    out = decode(w)
    assert same(out, v)
    assert encode(out) == w
    c = decode_canonical(w)
    assert c.wire == w and c == canonicalize(v)


@pytest.mark.parametrize(
    "v",
    [
        np.empty((0, 3)),
        np.empty((3, 0, 2), np.int8),
        np.zeros((), np.complex64),
        torch.empty(0, 3),
        torch.empty((2, 0), dtype=torch.bfloat16),
        10**5000,
        -(10**5000),
        2**64 - 1,
        -0.0,
        struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0],  # signalling NaN payload
        "",
        "héllo \U0001f600",
        b"",
        [],
        (),
        {},
        [np.empty(0), np.empty(0)],  # zero-size data at the very end of the buffer
    ],
    ids=lambda v: _short_id(v),
)
def test_edge_values_round_trip(v):
    assert same(decode(encode(v)), v)
    decode_canonical(encode(v))
    assert len(digest(v)) == 32


def test_big_endian_and_non_contiguous_inputs_canonicalise():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert encode(base.T) == encode(np.ascontiguousarray(base.T))
    assert encode(base.astype(">f8")) == encode(base)
    out = decode(encode(base.astype(">f8").T))
    assert out.dtype == np.dtype("<f8") and out.flags.c_contiguous
    np.testing.assert_array_equal(out, base.T)
    t = torch.arange(6.0).reshape(2, 3)
    assert encode(t.T) == encode(t.T.contiguous())
    z = torch.tensor([1 + 2j, 3 - 4j])
    assert z.conj().is_conj() and same(decode(encode(z.conj())), z.conj().resolve_conj())


def test_bool_bytes_other_than_0_and_1_mean_true():
    odd = np.frombuffer(b"\x00\x02\x01", np.uint8).view(np.bool_)
    assert encode(odd) == encode(np.array([False, True, True]))
    t = torch.tensor([0, 7], dtype=torch.uint8).view(torch.bool)
    assert encode(t) == encode(torch.tensor([False, True]))


def test_array_data_is_aligned_and_zero_copy():
    w = encode({"a": np.arange(5, dtype=np.int8), "b": [1, np.ones((3, 3))], "c": torch.ones(7)})
    base = np.frombuffer(w, np.uint8)
    start = base.__array_interface__["data"][0]
    c = decode_canonical(w)
    for leaf in c.leaves:
        if leaf.dtype in ("int8", "float64", "torch.float32"):
            assert (leaf.array.__array_interface__["data"][0] - start) % wire.ALIGN == 0
            assert np.shares_memory(leaf.array, base)
    arr = decode(w)["b"][1]
    assert np.shares_memory(arr, base) and not arr.flags.writeable


def test_decoded_tensors_are_writable_copies():
    w = encode(torch.arange(4.0))
    t = decode(w)
    t.add_(1)
    assert t.tolist() == [1.0, 2.0, 3.0, 4.0] and decode(w).tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("name", [n for n in TORCH_NAMES if n.startswith("float8")])
def test_float8_widening_is_exact_for_every_bit_pattern(name):
    t = torch.arange(256, dtype=torch.uint8).view(getattr(torch, name))
    leaf = canonicalize(t).leaves[0]
    ref = t.to(torch.float32).numpy()
    assert leaf.dtype == f"torch.{name}" and leaf.array.dtype == np.float32
    nan = np.isnan(ref)
    assert (np.isnan(leaf.array) == nan).all()
    assert (leaf.array.view(np.uint32)[~nan] == ref.view(np.uint32)[~nan]).all()
    assert (np.signbit(leaf.array[nan]) == np.signbit(ref[nan])).all()


def test_bfloat16_and_complex32_widen_exactly():
    bits = torch.arange(0, 65536, 97, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    leaf = canonicalize(bits).leaves[0]
    expected = (bits.view(torch.int16).numpy().view(np.uint16).astype(np.uint32) << 16).view(
        np.float32
    )
    assert leaf.dtype == "torch.bfloat16" and leaf.array.tobytes() == expected.tobytes()
    c = torch.tensor([1.5 - 2j, 0.25j], dtype=torch.complex32)
    leaf = canonicalize(c).leaves[0]
    assert leaf.array.dtype == np.complex64
    np.testing.assert_array_equal(leaf.array, np.array([1.5 - 2j, 0.25j], np.complex64))


# -- (b) different values, different encodings and digests ------------------------------------


@FEW
@given(pytrees, pytrees, st.booleans())
def test_encodings_are_equal_iff_values_are_identical(a, b, copy):
    if copy:
        b = decode(encode(a))
    wa, wb = encode(a), encode(b)
    assert (wa == wb) == same(a, b)
    assert (digest(a) == digest(b)) == (wa == wb)
    assert digest(a) == digest_wire(wa) == digest_canonical(decode_canonical(wa))


@FEW
@given(pytrees, pytrees)
def test_equal_structures_mean_equal_leaf_paths(a, b):
    ca, cb = canonicalize(a), canonicalize(b)
    if ca.structure == cb.structure:
        assert [leaf.path for leaf in ca.leaves] == [leaf.path for leaf in cb.leaves]
    # Leaves never change the structure: replacing every leaf with None keeps it.
    assert canonicalize(_skeleton(a)).structure == ca.structure


def _skeleton(v):
    if type(v) is list:
        return [_skeleton(x) for x in v]
    if type(v) is tuple:
        return tuple(_skeleton(x) for x in v)
    if type(v) is dict:
        return {k: _skeleton(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return type(v)(*(_skeleton(x) for x in v))
    if dataclasses.is_dataclass(v):
        return dataclasses.replace(
            v, **{f.name: _skeleton(getattr(v, f.name)) for f in dataclasses.fields(v)}
        )
    return None


@pytest.mark.parametrize(
    "x, y",
    [
        ({1: 0}, {"1": 0}),  # typed keys
        ({1: 0}, {1.0: 0}),
        ({1: 0}, {True: 0}),
        ({b"1": 0}, {"1": 0}),
        ({None: 0}, {"None": 0}),
        ({"a:*,b": 1}, {"a": 1, "b": 1}),  # keys holding the old separators
        ({"a,b": 1}, {"a": {"b": 1}}),
        ({"a/b": 1}, {"a": {"b": 1}}),
        ({'a"': 1}, {"a": 1}),
        (np.zeros(()), np.zeros(1)),  # 0-d vs (1,)
        (torch.zeros(()), torch.zeros(1)),
        (np.float64(1.0), 1.0),  # numpy scalar vs Python scalar
        (np.float64(1.0), np.array(1.0)),  # numpy scalar vs 0-d array
        (np.bool_(True), True),
        (np.int64(3), 3),
        (np.float32(1.0), np.float64(1.0)),
        (1, True),
        (1, 1.0),
        ("ab", b"ab"),
        ([], ()),
        ([], {}),
        ((), None),
        (Pair(1, 2), (1, 2)),
        (Pair(1, 2), Other(1, 2)),  # same fields, another class
        (State(1, 2), {"w": 1, "step": 2}),
        (torch.ones(2), np.ones(2, np.float32)),
        (torch.ones(2, dtype=torch.bfloat16), torch.ones(2)),
        (2**100, 2**100 + 1),
        (10**5000, 10**5000 + 1),
        (0.0, -0.0),
        ([np.ones(1), np.ones(2)], [np.ones(2), np.ones(1)]),  # leaf boundaries
    ],
    ids=lambda v: type(v).__name__,
)
def test_former_collisions_now_differ(x, y):
    assert encode(x) != encode(y)
    assert digest(x) != digest(y)
    ca, cb = canonicalize(x), canonicalize(y)
    if ca.structure == cb.structure:  # then the difference is in the leaves' kinds or values
        assert any(
            (la.dtype, la.shape, la.array.tobytes()) != (lb.dtype, lb.shape, lb.array.tobytes())
            for la, lb in zip(ca.leaves, cb.leaves, strict=True)
        )
    assert not compare(x, y, Tolerance.exact()).agree  # a disagreement, never an exception


class LyingInt(int):
    def __str__(self):
        return "2"

    __repr__ = __str__


class LyingList(list):
    def __iter__(self):
        return iter([0])


class LyingDict(dict):
    def items(self):
        return [("a", 0)]

    def __iter__(self):
        return iter(["a"])


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class MyTuple(tuple):
    pass


def _nested(depth: int):
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


def _self_containing():
    v: list = []
    v.append(v)
    return v


@pytest.mark.parametrize(
    "value, hint",
    [
        (bytearray(b"x"), "bytes\\(x\\)"),
        (memoryview(b"x"), "bytes\\(x\\)"),
        ({1, 2}, "sorted list"),
        (frozenset(), "sorted list"),
        (collections.defaultdict(int), "dict\\(x\\)"),
        (collections.OrderedDict(a=1), "dict\\(x\\)"),
        (collections.Counter("ab"), "dict\\(x\\)"),
        (LyingDict(b=1), "dict\\(x\\)"),
        (LyingList([1, 2]), "list\\(x\\)"),
        (MyTuple((1,)), "tuple\\(x\\)"),
        (LyingInt(1), "int\\(x\\)"),
        (Color.RED, "int\\(x\\)"),
        (MyStr("a"), "str\\(x\\)"),
        (np.ma.array([1.0, 2.0], mask=[0, 1]), "mask"),
        (np.zeros(2, dtype="i4,f8"), "one array per field"),
        (np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]), "one array per field"),
        (np.zeros(2, dtype="V4"), "per field"),
        (np.void(b"ab"), "per field"),
        (np.array([object()]), "object"),
        (np.array(["a"]), "list of str"),
        (np.array([b"a"]), "list of str"),
        (np.str_("a"), "list of str"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "int64"),
        (np.timedelta64(1, "s"), "int64"),
        (np.zeros(2, np.longdouble), "float16-64"),
        (_quiet(lambda: np.matrix([[1.0]])), "np.asarray"),
        (torch.zeros(3).to_sparse(), "to_dense"),
        (torch.nn.Parameter(torch.zeros(1)), "detach"),
        (
            _quiet(lambda: torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8)),
            "dequantize",
        ),
        ({(1, 2): 3}, "keys must be exactly"),
        ({np.int64(1): 2}, "keys must be exactly"),
        ({1.5j: 2}, "keys must be exactly"),
        ({"k": object()}, "no canonical form"),
        ("\ud800", "surrogate"),
        ({float("nan"): 1, float("nan"): 2}, "same encoding"),  # two NaN objects, same bits
        (_nested(wire.MAX_DEPTH + 5), "deeper than"),
        (_self_containing(), "contains itself"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) or len(v) < 3 else "hint",
)
def test_values_without_a_canonical_form_are_refused(value, hint):
    with pytest.raises(UnsupportedTypeError, match=hint) as info:
        encode(value)
    assert isinstance(info.value, TypeError) and "'" in str(info.value)  # names the path
    with pytest.raises(UnsupportedTypeError):
        canonicalize(value)
    with pytest.raises(UnsupportedTypeError):
        digest(value)


def test_refusal_names_the_path():
    with pytest.raises(UnsupportedTypeError, match=r"'model/layers/1/w'.*bytearray"):
        encode({"model": {"layers": [0, {"w": bytearray(2)}]}})


def test_namedtuple_with_bad_field_names_is_refused():
    bad = type("Bad", (tuple,), {"_fields": ("a", "a")})((1, 2))
    with pytest.raises(UnsupportedTypeError, match="distinct identifier"):
        encode(bad)


# -- (c) the strict decoder -------------------------------------------------------------------

_CLASS_NAME = re.compile(r'(?:nt|dc):("(?:[^"\\]|\\.)*"\."(?:[^"\\]|\\.)*")')


@st.composite
def mutated(draw):
    v = draw(pytrees)
    w = bytearray(encode(v))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        i = draw(st.integers(0, max(0, len(w) - 1)))
        if op == "flip" and w:
            w[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and w:
            w[i] = draw(st.integers(0, 255))
        elif op == "insert":
            w[i:i] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del w[i : i + draw(st.integers(1, 9))]
        elif op == "truncate":
            del w[i:]
        else:
            w += draw(st.binary(min_size=1, max_size=4))
    return v, bytes(w)


@settings(max_examples=N * 4, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_bytes_are_rejected_or_exactly_canonical(case):
    original, data = case
    try:
        c = decode_canonical(data)
    except WireFormatError:
        c = None
    if c is None:
        with pytest.raises(WireFormatError):
            decode(data)
        return
    assert isinstance(c, Canonical) and c.wire == data
    # decode may import a module named in the bytes: only when it is one the test itself used.
    ours = set(_CLASS_NAME.findall(canonicalize(original).structure))
    if not set(_CLASS_NAME.findall(c.structure)) <= ours:
        return
    try:
        value = decode(data)
    except WireFormatError as exc:  # only a class that no longer matches its fields
        assert "namedtuple" in str(exc) or "dataclass" in str(exc) or "rebuild" in str(exc)
        return
    assert encode(value) == data
    assert decode_canonical(encode(value)).structure == c.structure


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _node(v) -> bytes:
    """Encoding of one scalar node (no header, no alignment)."""
    return encode(v)[len(wire.HEADER) :]


H = wire.HEADER


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "magic"),
        (b"BFTX\x01\x00", "magic"),
        (b"BFTW\x02\x00", "version"),
        (H, "truncated"),
        (H + b"\x00\x00", "trailing"),
        (H + b"\x7f", "unknown tag"),
        (H + b"\x03" + _u64(1) + b"\x00\x00", "leading zero"),
        (H + b"\x03" + _u64(0) + b"\x01", "negative zero"),
        (H + b"\x03" + _u64(1) + b"\x02\x05", "sign byte"),
        (H + b"\x03" + _u64(2**63) + b"\x00", "truncated"),
        (H + b"\x06" + _u64(1) + b"\xff", "UTF-8"),
        (H + b"\x06" + _u64(3) + b"\xed\xa0\x80", "UTF-8"),  # an encoded surrogate
        (H + b"\x06" + _u64(2**64 - 1), "truncated"),
        (H + b"\x10" + _u64(2**60), "cannot fit"),
        (H + b"\x12" + _u64(1) + b"\x10" + _u64(0) + b"\x00", "not an allowed dict key"),
        (H + b"\x21\x63" + b"\x00" * 8, "dtype code"),
        (H + b"\x21\x01\x02", "0/1"),
        (H + b"\x13" + _u64(0) + _u64(1) + b"P" + _u64(0), "empty class"),
        (H + b"\x13" + _u64(1) + b"m" + _u64(1) + b"P" + _u64(1) + _u64(1) + b"1\x00", "field"),
        (H + b"\x13" + _u64(1) + b"m" + _u64(1) + b"P" + _u64(1) + _u64(3) + b"def\x00", "field"),
    ],
)
def test_malformed_bytes_are_rejected(data, why):
    with pytest.raises(WireFormatError, match=why):
        decode_canonical(data)
    with pytest.raises(WireFormatError):
        decode(data)


def _array_bytes(code: int, shape: tuple, nbytes: int, fill: bytes = b"") -> bytes:
    head = H + struct.pack(f"<BBB{len(shape)}QQ", 0x20, code, len(shape), *shape, nbytes)
    return head + bytes(-len(head) % 64) + fill


@pytest.mark.parametrize(
    "data, why",
    [
        (_array_bytes(12, (3,), 16, bytes(16)), "does not match"),  # float64 x3 is 24 bytes
        (_array_bytes(12, (2**62, 0), 0), "absurd"),
        (_array_bytes(12, (2**30, 2**30), 2**63), "truncated"),
        (_array_bytes(12, (2**63, 2**63), 0), "does not match"),
        (_array_bytes(1, (2,), 2, b"\x00\x02"), "0/1"),
        (_array_bytes(12, (1,), 8, bytes(4)), "truncated"),
        (H + struct.pack("<BBB", 0x20, 12, 65), "ndim"),
    ],
)
def test_array_headers_are_checked(data, why):
    with pytest.raises(WireFormatError, match=why):
        decode_canonical(data)


def test_padding_must_be_zero():
    w = bytearray(encode(np.ones(2)))
    header = len(H) + 3 + 8 + 8
    assert w[header:64] == bytes(64 - header)
    w[header] = 1
    with pytest.raises(WireFormatError, match="padding"):
        decode_canonical(bytes(w))


def test_deep_nesting_is_an_error_not_a_recursion_error():
    data = H + (b"\x10" + _u64(1)) * (wire.MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(WireFormatError, match="deeper than"):
        decode_canonical(data)
    ok = H + (b"\x10" + _u64(1)) * wire.MAX_DEPTH + b"\x00"
    assert decode_canonical(ok).structure.count("[") == wire.MAX_DEPTH
    assert encode(decode(ok)) == ok
    with pytest.raises(WireFormatError, match="cannot fit"):
        decode_canonical(H + b"\x10" + _u64(1))


def test_decode_canonical_accepts_memoryview_and_rejects_non_bytes():
    w = encode([1, np.arange(3)])
    assert decode_canonical(memoryview(w)) == decode_canonical(w)
    assert decode_canonical(memoryview(b"xx" + w)[2:]).wire == w
    with pytest.raises(WireFormatError):
        decode_canonical("not bytes")  # type: ignore[arg-type]


def test_decode_canonical_never_imports_or_unpickles():
    w = encode(
        {
            "nt": Pair(1, 2),
            "dc": State(np.ones(2), torch.ones(2, dtype=torch.bfloat16)),
            "t": torch.ones(2),
        }
    )
    foreign = bytearray(w)
    i = foreign.index(b"tests.compare.test_wire")
    foreign[i : i + 5] = b"xyzzy"  # a module nobody has
    real_import, real_loads = builtins.__import__, pickle.loads

    def no_import(name, *args, **kwargs):
        # Looking up a module numpy has already loaded is not importing one.
        if name in sys.modules and args:
            return real_import(name, *args, **kwargs)
        raise AssertionError(f"decode_canonical imported or unpickled {name}")

    loaded = set(sys.modules)

    builtins.__import__, pickle.loads = no_import, no_import
    try:
        c = decode_canonical(w)
        c2 = decode_canonical(bytes(foreign))
    finally:
        builtins.__import__, pickle.loads = real_import, real_loads
    assert set(sys.modules) == loaded
    assert 'nt:"tests.compare.test_wire"."Pair"("a"=*,"b"=*)' in c.structure
    assert '"xyzzy' in c2.structure
    with pytest.raises(WireFormatError, match=r"cannot import|not found"):
        decode(bytes(foreign))


# -- (d) dict key order -----------------------------------------------------------------------


@given(
    st.dictionaries(
        st.one_of(st.text(max_size=3), st.integers(-9, 999)), st.integers(), min_size=2, max_size=5
    ).flatmap(lambda d: st.tuples(st.just(d), st.permutations(range(len(d)))))
)
def test_decoder_rejects_reordered_or_duplicated_keys(case):
    d, order = case
    entries = _sort_by_key(d)
    assert H + b"\x12" + _u64(len(d)) + b"".join(entries) == encode(d)
    if order == sorted(order):
        order = order[1:] + order[:1]  # any other order
    shuffled = [entries[i] for i in order]
    with pytest.raises(WireFormatError, match="order"):
        decode_canonical(H + b"\x12" + _u64(len(d)) + b"".join(shuffled))
    dup = [*entries[:1], *entries]
    with pytest.raises(WireFormatError, match=r"order|duplicated"):
        decode_canonical(H + b"\x12" + _u64(len(d) + 1) + b"".join(dup))


def _sort_by_key(d: dict) -> list[bytes]:
    return [_node(k) + _node(v) for k, v in sorted(d.items(), key=lambda kv: _node(kv[0]))]


@pytest.mark.parametrize("k1, k2", [(1, True), (1, 1.0), (0, -0.0), (0.0, False), (1.0, True)])
def test_decoder_rejects_keys_that_are_equal_as_python_values(k1, k2):
    a, b = sorted([_node(k1), _node(k2)])
    data = H + b"\x12" + _u64(2) + a + _node(None) + b + _node(None)
    with pytest.raises(WireFormatError, match="equal as values"):
        decode_canonical(data)


def test_nan_keys_round_trip():
    nan2 = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]
    d = {math.nan: 1, nan2: 2}
    out = decode(encode(d))
    assert sorted(_bits(k) for k in out) == sorted(_bits(k) for k in d)


# -- decode: classes ----------------------------------------------------------------------------


def test_namedtuples_and_dataclasses_rebuild_exactly():
    v = {"p": Pair(1, [2.0]), "t": Typed(np.ones(2)), "s": State(torch.ones(1), 3)}
    out = decode(encode(v))
    assert type(out["p"]) is Pair and type(out["t"]) is Typed and type(out["s"]) is State
    assert same(out, v)
    f = Frozen(5)
    object.__setattr__(f, "derived", "as returned")
    out = decode(encode(f))
    assert type(out) is Frozen and out.a == 5 and out.derived == "as returned"


def test_decode_refuses_classes_that_do_not_match():
    def fake(module: str, qualname: str, fields=("a", "b")):
        cls = collections.namedtuple("X", fields)
        cls.__module__, cls.__qualname__ = module, qualname
        return encode(cls(1, 2))

    with pytest.raises(WireFormatError, match="not a namedtuple"):
        decode(fake(__name__, "State"))  # a dataclass, not a namedtuple
    with pytest.raises(WireFormatError, match="not a namedtuple"):
        decode(fake(__name__, "Pair", ("a", "c")))  # other fields
    with pytest.raises(WireFormatError, match="not found"):
        decode(fake(__name__, "Missing"))
    with pytest.raises(WireFormatError, match="cannot import"):
        decode(fake("no_such_module_for_bft_ray_tests", "X"))
    local = collections.namedtuple("Local", "a")
    local.__module__ = __name__
    local.__qualname__ = "f.<locals>.Local"
    w = encode(local(1))
    assert "Local" in decode_canonical(w).structure
    with pytest.raises(WireFormatError, match="not found"):
        decode(w)


# -- WireValue --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_wire_value_unpickles_as_the_decoded_value(protocol):
    v = {"a": np.arange(4.0), "t": torch.ones(3, dtype=torch.bfloat16), "p": Pair(1, "x")}
    out = pickle.loads(pickle.dumps(WireValue(encode(v)), protocol=protocol))
    assert same(out, v)


def test_wire_value_goes_out_of_band_with_protocol_5():
    v = np.arange(1 << 16, dtype=np.float32)
    buffers: list = []
    data = pickle.dumps(WireValue(encode(v)), protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1 and len(data) < 200
    out = pickle.loads(data, buffers=buffers)
    assert same(out, v)
    wv = WireValue(memoryview(encode(v)))
    assert wv == WireValue(encode(v)) and len(wv) == len(encode(v)) and same(wv.value(), v)


# -- tolerance and digests on the new forms ---------------------------------------------------


def test_compare_never_crashes_on_equal_structures_with_unequal_leaves():
    leaf = Leaf("a", "float64", (1,), np.zeros(1))
    a = Canonical("[*,*]", (leaf, leaf), b"x")
    b = Canonical("[*,*]", (leaf,), b"y")
    c = compare(a, b, Tolerance())
    assert not c.agree and "leaf count" in c.reason
    other = Canonical("[*,*]", (leaf, Leaf("b", "float64", (1,), np.zeros(1))), b"z")
    assert "path differs" in compare(a, other, Tolerance()).leaf_diffs[0].reason


def test_huge_int_leaves_compare_exactly_and_render():
    c = compare(10**5000, 10**5000 + 2, Tolerance(rtol=1.0, atol=10.0))
    assert not c.agree and "int of" in c.leaf_diffs[0].reason
    assert compare(10**5000, 10**5000, Tolerance.exact()).agree
    assert "value differs: -3 vs 3" in compare(-3, 3, Tolerance()).leaf_diffs[0].reason


def test_numpy_scalars_and_tensors_compare_with_tolerance():
    assert compare(np.float32(1.0), np.float32(1.0 + 1e-9), Tolerance(rtol=1e-6)).agree
    bf = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert compare(bf, bf.clone(), Tolerance()).agree
    assert "dtype differs" in compare(bf, bf.float(), Tolerance()).leaf_diffs[0].reason


def test_digest_forms_agree():
    v = {"x": np.ones(3), "n": [1, None, "s"]}
    w = encode(v)
    assert digest(v) == digest_wire(w) == digest_wire(memoryview(w)) == digest(canonicalize(v))
    big = np.ones(1 << 19)  # 4 MiB: the multithreaded path
    assert digest(big) == digest_wire(encode(big))
    assert len(digest(None)) == 32 and digest(None) != digest_wire(b"")


def test_decode_plain_takes_plain_values_and_refuses_everything_else():
    import collections
    import dataclasses

    from bft_ray.compare.wire import decode_plain

    plain = [1, -(2**70), 2.5, "text", b"\x00", None, True, (1, [2]), {"k": {b"b": 3}}]
    assert decode_plain(encode(plain)) == plain

    @dataclasses.dataclass
    class D:
        x: int = 0

    refused = [
        collections.namedtuple("P", "x")(1),
        D(1),
        np.zeros(2),
        np.float32(1.0),
        1j,
        [{"deep": (np.int64(3),)}],
    ]
    for value in refused:
        with pytest.raises(WireFormatError, match="not a plain value"):
            decode_plain(encode(value))
