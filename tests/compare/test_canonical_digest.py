"""Canonical form and digests: what makes two outputs the same answer."""

from __future__ import annotations

import collections
import dataclasses
from collections import namedtuple

import numpy as np
import pytest
import torch

from bft_ray.compare import UnsupportedTypeError, canonicalize, digest, tree_map

Pair = namedtuple("Pair", "a b")


@dataclasses.dataclass
class State:
    w: np.ndarray
    step: int


def test_dict_key_order_does_not_matter():
    assert digest({"a": 1, "b": np.ones(2)}) == digest({"b": np.ones(2), "a": 1})


@pytest.mark.parametrize(
    "x, y",
    [
        (np.ones(3, np.float32), np.ones(3, np.float64)),  # dtype
        (np.ones((2, 3)), np.ones((3, 2))),  # shape
        (np.ones(3), torch.ones(3, dtype=torch.float64)),  # numpy vs torch
        (1, 1.0),  # int vs float
        (True, 1),  # bool vs int
        ([1, 2], (1, 2)),  # list vs tuple
        (Pair(1, 2), (1, 2)),  # namedtuple vs tuple
        ("ab", b"ab"),  # str vs bytes
        ({"a": 1}, {"b": 1}),  # keys
        (State(np.zeros(1), 1), {"w": np.zeros(1), "step": 1}),  # dataclass vs dict
        (np.zeros(2), np.array([0.0, -0.0])),  # signed zero is a different bit pattern
        ([np.ones(1), np.ones(2)], [np.ones(2), np.ones(1)]),  # leaf boundaries
    ],
)
def test_different_answers_have_different_digests(x, y):
    assert digest(x) != digest(y)


def test_digest_is_deterministic_and_32_bytes():
    out = {"logits": torch.arange(6.0).reshape(2, 3), "ids": [1, 2, 3], "meta": ("x", b"y", None)}
    assert digest(out) == digest(out) and len(digest(out)) == 32


def test_non_contiguous_and_big_endian_arrays_canonicalise_to_the_same_bytes():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert digest(base.T) == digest(np.ascontiguousarray(base.T))
    assert digest(base.astype(">f8")) == digest(base)


def test_torch_bfloat16_keeps_its_dtype_tag_and_exact_value():
    t = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    c = canonicalize(t)
    assert c.leaves[0].dtype == "torch.bfloat16"
    np.testing.assert_array_equal(c.leaves[0].array, np.array([1.5, -2.25, 3.0], np.float32))
    assert digest(t) != digest(t.to(torch.float32))


def test_big_python_ints_are_exact():
    assert digest(2**100) != digest(2**100 + 1)


def test_paths_name_every_leaf():
    c = canonicalize({"model": [np.zeros(1), Pair(a=1, b=State(np.ones(1), 3))]})
    assert [leaf.path for leaf in c.leaves] == [
        "model/0",
        "model/1/a",
        "model/1/b/w",
        "model/1/b/step",
    ]


def test_unsupported_leaf_is_a_clear_error():
    with pytest.raises(TypeError, match=r"'x'.*object.*no canonical form"):
        canonicalize({"x": object()})


def test_structure_names_classes_fields_and_typed_keys():
    c = canonicalize({"p": Pair(1, 2), "s": State(np.zeros(1), 1), 7: [None], b"k": ()})
    assert c.structure == (
        '{i7:[*],"p":nt:"tests.compare.test_canonical_digest"."Pair"("a"=*,"b"=*),'
        '"s":dc:"tests.compare.test_canonical_digest"."State"("w"=*,"step"=*),b6b:()}'
    )
    assert [leaf.path for leaf in c.leaves] == ["7/0", "p/a", "p/b", "s/w", "s/step"]


def test_leaf_kinds_are_exact():
    kinds = [
        leaf.dtype
        for leaf in canonicalize(
            [1, 1.0, True, 1j, np.float64(1), np.array(1.0), np.bool_(True), torch.ones(()), "s"]
        ).leaves
    ]
    assert kinds == [
        "py.int",
        "py.float",
        "py.bool",
        "py.complex",
        "np.float64",
        "float64",
        "np.bool",
        "torch.float32",
        "str",
    ]
    assert canonicalize(np.zeros(())).leaves[0].shape == ()  # 0-d stays 0-d


@pytest.mark.parametrize(
    "value",
    [bytearray(b"ab"), memoryview(b"ab"), {"a"}, collections.OrderedDict(a=1)],
    ids=lambda v: type(v).__name__,
)
def test_values_once_coerced_are_refused(value):
    # Formerly bytearray/memoryview became bytes and dict subclasses became dicts, so distinct
    # values shared a canonical form.
    with pytest.raises(UnsupportedTypeError):
        canonicalize(value)


def test_tree_map_keeps_container_types():
    tree = {"a": [1, 2], "p": Pair(3, 4), "s": State(np.ones(1), 5)}
    out = tree_map(lambda v: v * 2, tree)
    assert out["a"] == [2, 4] and out["p"] == Pair(6, 8) and isinstance(out["s"], State)
    assert out["s"].step == 10
    dd = tree_map(lambda v: v + 1, collections.defaultdict(list, {"a": 1}))
    assert dd == {"a": 2} and dd.default_factory is list
