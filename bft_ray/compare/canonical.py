"""Canonical form of task outputs.

An output is a pytree: dicts, lists, tuples, namedtuples and dataclasses whose leaves are torch
tensors (any device; moved to the CPU), numpy arrays, Python scalars, ``str``, ``bytes`` or
``None``. :func:`canonicalize` flattens it into a structure string plus a list of
:class:`Leaf` records, each holding a C-contiguous little-endian numpy array. Two outputs have
the same canonical form exactly when they have the same structure, leaf kinds, dtypes, shapes and
bytes; that is what the digest hashes and what the tolerance rules compare.

Why these choices:

* Dict keys are sorted, so insertion order (which differs between honest replicas that build a
  dict in a different order) never changes the answer.
* Leaf kinds are part of the form: a torch tensor and a numpy array with equal values are
  different answers, as are ``1`` and ``1.0``, so a replica cannot pass off a different type.
* Dtypes numpy lacks (``torch.bfloat16``, float8) are widened exactly to float32 for comparison
  and hashing, with the original dtype kept in the leaf header.

Example:
    >>> import numpy as np
    >>> c = canonicalize({"b": np.arange(3, dtype=np.int32), "a": 1.5})
    >>> c.structure
    'dict{a:*,b:*}'
    >>> [(leaf.path, leaf.dtype, leaf.shape) for leaf in c.leaves]
    [('a', 'py.float', ()), ('b', 'int32', (3,))]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Canonical", "Leaf", "canonicalize", "tree_map"]

_FLOAT_KINDS = "fc"  # numpy dtype kinds compared with a tolerance: float, complex
_BYTE_STRING_TAGS = frozenset({"str", "bytes", "py.int", "none"})


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One leaf of a canonical output.

    Attributes:
        path: Slash-separated location in the tree (``""`` for a bare leaf).
        dtype: Source dtype tag: numpy dtype name (``float32``), ``torch.<dtype>`` for tensors,
            ``py.<type>`` for Python scalars, ``str``, ``bytes`` or ``none``.
        shape: Shape of the leaf (``()`` for scalars).
        array: C-contiguous little-endian numpy array holding the value (UTF-8 bytes as
            ``uint8`` for ``str``; arbitrary-precision ints as their decimal text).
    """

    path: str
    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray

    @property
    def is_float(self) -> bool:
        """Whether a numeric tolerance applies to this leaf."""
        return self.array.dtype.kind in _FLOAT_KINDS

    @property
    def display_path(self) -> str:
        return self.path or "<root>"


@dataclasses.dataclass(frozen=True)
class Canonical:
    """Canonical form of one output: a structure string and its leaves in order."""

    structure: str
    leaves: tuple[Leaf, ...]

    @property
    def nbytes(self) -> int:
        return sum(leaf.array.nbytes for leaf in self.leaves)


def _little_endian_contiguous(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.kind == "O":
        raise TypeError(
            "object arrays have no canonical byte form; convert the output to numeric arrays"
        )
    # ascontiguousarray is a no-op (no copy) for arrays that already are contiguous.
    return np.ascontiguousarray(arr)


def _torch_leaf(tensor: Any) -> tuple[str, np.ndarray]:
    import torch

    t = tensor.detach()
    if t.is_sparse:
        t = t.to_dense()
    if t.device.type != "cpu":
        t = t.cpu()
    dtype = str(t.dtype)  # e.g. "torch.float32"
    if t.dtype in (torch.bfloat16,) or "float8" in dtype:
        # numpy has no such dtypes; the widening to float32 is exact, so no two distinct
        # tensors share a canonical form.
        t = t.to(torch.float32)
    if t.is_conj():
        t = t.resolve_conj()
    return dtype, _little_endian_contiguous(t.contiguous().numpy())


def _is_torch_tensor(x: Any) -> bool:
    mod = type(x).__module__
    if not mod.startswith("torch"):
        return False
    import torch

    return isinstance(x, torch.Tensor)


def _scalar_leaf(x: Any) -> tuple[str, np.ndarray] | None:
    if x is None:
        return "none", np.zeros(0, dtype=np.uint8)
    if isinstance(x, bool | np.bool_):
        return "py.bool", np.asarray(bool(x))
    if isinstance(x, int) and not isinstance(x, np.integer):
        # Python ints are unbounded: keep their exact decimal text.
        return "py.int", np.frombuffer(str(x).encode(), dtype=np.uint8)
    if isinstance(x, float):
        return "py.float", np.asarray(x, dtype=np.float64)
    if isinstance(x, complex):
        return "py.complex", np.asarray(x, dtype=np.complex128)
    if isinstance(x, str):
        return "str", np.frombuffer(x.encode("utf-8"), dtype=np.uint8)
    if isinstance(x, bytes | bytearray | memoryview):
        return "bytes", np.frombuffer(bytes(x), dtype=np.uint8)
    if isinstance(x, np.generic):
        arr = np.asarray(x)
        return arr.dtype.name, _little_endian_contiguous(arr)
    return None


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def canonicalize(output: Any) -> Canonical:
    """Flatten ``output`` into its canonical form.

    Args:
        output: A pytree of supported leaves (see the module docstring).

    Returns:
        The :class:`Canonical` form.

    Raises:
        TypeError: For a leaf type with no canonical form (for example an arbitrary object);
            the message names the path and the supported types.
    """
    leaves: list[Leaf] = []
    parts: list[str] = []

    def visit(x: Any, path: str) -> None:
        if isinstance(x, np.ndarray):
            arr = _little_endian_contiguous(x)
            leaves.append(Leaf(path, arr.dtype.name, tuple(arr.shape), arr))
            parts.append("*")
            return
        if _is_torch_tensor(x):
            dtype, arr = _torch_leaf(x)
            leaves.append(Leaf(path, dtype, tuple(arr.shape), arr))
            parts.append("*")
            return
        scalar = _scalar_leaf(x)
        if scalar is not None:
            dtype, arr = scalar
            # Text, bytes and big ints are stored as byte strings: their length is data, not shape.
            shape = () if dtype in _BYTE_STRING_TAGS else tuple(arr.shape)
            leaves.append(Leaf(path, dtype, shape, arr))
            parts.append("*")
            return
        if isinstance(x, dict):
            try:
                keys = sorted(x)
            except TypeError:
                keys = sorted(x, key=repr)
            parts.append("dict{")
            for i, k in enumerate(keys):
                if i:
                    parts.append(",")
                parts.append(f"{k!s}:")
                visit(x[k], _join(path, k))
            parts.append("}")
            return
        if _is_namedtuple(x):
            cls = type(x)
            parts.append(f"nt:{cls.__module__}.{cls.__qualname__}(")
            for i, name in enumerate(cls._fields):
                if i:
                    parts.append(",")
                parts.append(f"{name}=")
                visit(getattr(x, name), _join(path, name))
            parts.append(")")
            return
        if isinstance(x, list | tuple):
            parts.append("list[" if isinstance(x, list) else "tuple(")
            for i, item in enumerate(x):
                if i:
                    parts.append(",")
                visit(item, _join(path, i))
            parts.append("]" if isinstance(x, list) else ")")
            return
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            cls = type(x)
            parts.append(f"dc:{cls.__module__}.{cls.__qualname__}(")
            for i, field in enumerate(dataclasses.fields(x)):
                if i:
                    parts.append(",")
                parts.append(f"{field.name}=")
                visit(getattr(x, field.name), _join(path, field.name))
            parts.append(")")
            return
        raise TypeError(
            f"output leaf at {path or '<root>'!r} has type {type(x).__qualname__}, which has no "
            "canonical form. Return dicts/lists/tuples/namedtuples/dataclasses of torch "
            "tensors, numpy arrays, Python scalars, str or bytes."
        )

    visit(output, "")
    return Canonical("".join(parts), tuple(leaves))


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """Apply ``fn`` to every leaf of ``tree``, keeping containers and their types.

    Leaves are the same as for :func:`canonicalize`; ``fn`` receives the original leaf object
    (a tensor stays a tensor).

    Example:
        >>> tree_map(lambda v: v * 2, {"a": [1, 2], "b": (3,)})
        {'a': [2, 4], 'b': (6,)}
    """
    if isinstance(tree, dict):
        return type(tree)((k, tree_map(fn, v)) for k, v in tree.items())
    if _is_namedtuple(tree):
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(tree_map(fn, v) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {f.name: tree_map(fn, getattr(tree, f.name)) for f in dataclasses.fields(tree)}
        return dataclasses.replace(tree, **changes)
    return fn(tree)
