"""Conversion of aggregator inputs to one ``(n, d)`` torch matrix and back.

Aggregators accept an ``(n, d)`` (or ``(n, *shape)``) numpy array or torch tensor, or a list of
``n`` pytrees (nested dict / list / tuple whose leaves are tensors, arrays or Python numbers).
Everything is flattened into a single floating-point torch matrix, the rule computes on it, and the
result goes back to the caller's type: a numpy input gives numpy out, a torch input gives torch
out (same device), a list of pytrees gives a pytree shaped like the first input.

Why one internal representation: every rule is written once, in torch, and the training loop,
which already holds torch tensors, pays no conversion (numpy float arrays are wrapped, not copied).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bft_ray.errors import ConfigError

__all__ = ["Layout", "to_matrix"]

_LEAF_TYPES = (torch.Tensor, np.ndarray, np.generic, float, int)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the rules compute in for an input of ``dtype``.

    float64 stays float64; float32 stays float32 (gradients are float32 and doubling them would
    double the memory); half types and integers are widened so sums and norms do not overflow.
    """
    if dtype == torch.float64:
        return torch.float64
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.float32
    return torch.float64


@dataclass(frozen=True)
class _Leaf:
    """How to rebuild one leaf: its original kind, shape and dtype."""

    kind: str  # "torch" | "numpy" | "scalar"
    shape: tuple[int, ...]
    dtype: Any
    device: Any = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def rebuild(self, flat: Tensor) -> Any:
        out_float = flat.reshape(self.shape)
        if self.kind == "torch":
            dtype = self.dtype if self.dtype.is_floating_point else flat.dtype
            return out_float.to(device=self.device, dtype=dtype)
        if self.kind == "numpy":
            arr = out_float.detach().cpu().numpy()
            dtype = self.dtype if np.issubdtype(self.dtype, np.floating) else arr.dtype
            return arr.astype(dtype, copy=False)
        return float(out_float.item())


@dataclass(frozen=True)
class _Spec:
    """Structure of one pytree: a leaf, or a container with child specs."""

    kind: str  # "leaf" | "dict" | "list" | "tuple" | "namedtuple"
    children: tuple[_Spec, ...] = ()
    keys: tuple[Any, ...] = ()
    leaf: _Leaf | None = None
    ctor: Any = None

    def structure(self) -> Any:
        """A hashable description used to compare two trees (shapes, not dtypes)."""
        if self.kind == "leaf":
            assert self.leaf is not None
            return ("leaf", self.leaf.shape)
        return (self.kind, self.keys, tuple(c.structure() for c in self.children))


def _leaf_spec(x: Any) -> tuple[_Leaf, Tensor]:
    if isinstance(x, torch.Tensor):
        return _Leaf("torch", tuple(x.shape), x.dtype, x.device), x.detach().reshape(-1)
    if isinstance(x, np.ndarray | np.generic):
        arr = np.asarray(x)
        if not (
            np.issubdtype(arr.dtype, np.integer)
            or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == np.bool_
        ):
            raise ConfigError(f"cannot aggregate an array of dtype {arr.dtype}: pass reals")
        return _Leaf("numpy", tuple(arr.shape), arr.dtype), torch.as_tensor(arr).reshape(-1)
    if isinstance(x, bool):
        raise ConfigError("cannot aggregate a bool leaf: use numbers")
    return _Leaf("scalar", (), None), torch.tensor([float(x)], dtype=torch.float64)


def _flatten(tree: Any, leaves: list[Tensor]) -> _Spec:
    """Append ``tree``'s leaves (flattened) to ``leaves``; return its structure."""
    if isinstance(tree, _LEAF_TYPES) and not isinstance(tree, bool):
        leaf, flat = _leaf_spec(tree)
        leaves.append(flat)
        return _Spec("leaf", leaf=leaf)
    if isinstance(tree, Mapping):
        # Sorted keys: two workers that build the same dict in a different insertion order
        # must still flatten to the same coordinates.
        try:
            keys = tuple(sorted(tree))
        except TypeError:
            keys = tuple(tree)
        children = tuple(_flatten(tree[k], leaves) for k in keys)
        return _Spec("dict", children=children, keys=keys)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        children = tuple(_flatten(v, leaves) for v in tree)
        return _Spec("namedtuple", children=children, keys=tuple(tree._fields), ctor=type(tree))
    if isinstance(tree, list | tuple):
        kind = "list" if isinstance(tree, list) else "tuple"
        return _Spec(kind, children=tuple(_flatten(v, leaves) for v in tree))
    raise ConfigError(
        f"cannot aggregate a value of type {type(tree).__name__}: leaves must be torch tensors, "
        "numpy arrays or numbers, containers dict/list/tuple"
    )


def _unflatten(spec: _Spec, flat: Tensor, offset: int) -> tuple[Any, int]:
    if spec.kind == "leaf":
        assert spec.leaf is not None
        size = spec.leaf.size
        return spec.leaf.rebuild(flat[offset : offset + size]), offset + size
    values = []
    for child in spec.children:
        value, offset = _unflatten(child, flat, offset)
        values.append(value)
    if spec.kind == "dict":
        return dict(zip(spec.keys, values)), offset
    if spec.kind == "namedtuple":
        return spec.ctor(*values), offset
    if spec.kind == "tuple":
        return tuple(values), offset
    return values, offset


@dataclass(frozen=True)
class Layout:
    """Everything needed to turn rows of the internal matrix back into the caller's type."""

    kind: str  # "torch" | "numpy" | "pytree"
    row_shape: tuple[int, ...] = ()
    dtype: Any = None
    device: Any = None
    spec: _Spec | None = None

    def vector(self, v: Tensor) -> Any:
        """Convert one ``(d,)`` result (an aggregate) to the caller's type."""
        if self.kind == "pytree":
            assert self.spec is not None
            return _unflatten(self.spec, v, 0)[0]
        out = v.reshape(self.row_shape)
        if self.kind == "torch":
            dtype = self.dtype if self.dtype.is_floating_point else out.dtype
            return out.to(device=self.device, dtype=dtype)
        arr = out.detach().cpu().numpy()
        dtype = self.dtype if np.issubdtype(self.dtype, np.floating) else arr.dtype
        return arr.astype(dtype, copy=False)

    def matrix(self, m: Tensor) -> Any:
        """Convert an ``(m, d)`` result (pre-aggregated rows, attack rows) to the caller's type."""
        if self.kind == "pytree":
            return [self.vector(row) for row in m]
        out = m.reshape((m.shape[0], *self.row_shape))
        if self.kind == "torch":
            dtype = self.dtype if self.dtype.is_floating_point else out.dtype
            return out.to(device=self.device, dtype=dtype)
        arr = out.detach().cpu().numpy()
        dtype = self.dtype if np.issubdtype(self.dtype, np.floating) else arr.dtype
        return arr.astype(dtype, copy=False)


def to_matrix(vectors: Any) -> tuple[Tensor, Layout]:
    """Flatten aggregator input into a floating ``(n, d)`` torch matrix.

    Args:
        vectors: An ``(n, d)`` or ``(n, *shape)`` numpy array or torch tensor, or a non-empty
            list/tuple of ``n`` pytrees with identical structure and leaf shapes.

    Returns:
        ``(matrix, layout)``; ``layout.vector`` / ``layout.matrix`` convert results back. The
        matrix may share memory with the input: rules must never modify it in place.

    Raises:
        ConfigError: Empty input, a 0-d/1-d array, or pytrees whose structures differ.

    Example:
        >>> import numpy as np
        >>> m, layout = to_matrix(np.array([[1.0, 2.0], [3.0, 4.0]]))
        >>> tuple(m.shape), layout.kind
        ((2, 2), 'numpy')
    """
    if isinstance(vectors, torch.Tensor | np.ndarray):
        if isinstance(vectors, np.ndarray) and not (
            np.issubdtype(vectors.dtype, np.integer)
            or np.issubdtype(vectors.dtype, np.floating)
            or vectors.dtype == np.bool_
        ):
            raise ConfigError(f"cannot aggregate an array of dtype {vectors.dtype}: pass reals")
        if isinstance(vectors, torch.Tensor) and vectors.is_complex():
            raise ConfigError(f"cannot aggregate a tensor of dtype {vectors.dtype}: pass reals")
        x = torch.as_tensor(vectors) if isinstance(vectors, np.ndarray) else vectors.detach()
        if x.ndim < 2 or x.shape[0] == 0:
            raise ConfigError(
                f"expected an (n, d) array of n >= 1 vectors, got shape {tuple(x.shape)}"
            )
        n = x.shape[0]
        layout = Layout(
            kind="torch" if isinstance(vectors, torch.Tensor) else "numpy",
            row_shape=tuple(x.shape[1:]),
            dtype=vectors.dtype,
            device=vectors.device if isinstance(vectors, torch.Tensor) else None,
        )
        matrix = x.reshape(n, -1)
        return matrix.to(_compute_dtype(matrix.dtype)), layout
    if isinstance(vectors, Sequence) and not isinstance(vectors, str | bytes):
        if len(vectors) == 0:
            raise ConfigError("cannot aggregate an empty list of vectors")
        rows: list[Tensor] = []
        first: _Spec | None = None
        for i, tree in enumerate(vectors):
            leaves: list[Tensor] = []
            spec = _flatten(tree, leaves)
            if first is None:
                first = spec
            elif spec.structure() != first.structure():
                raise ConfigError(
                    f"vector {i} has a different structure or leaf shapes than vector 0: every "
                    "worker must send the same pytree layout"
                )
            rows.append(torch.cat(leaves) if leaves else torch.zeros(0, dtype=torch.float64))
        assert first is not None
        # float64 if any leaf needs it (float64 or integer data), else float32.
        wide = any(r.dtype == torch.float64 or not r.dtype.is_floating_point for r in rows)
        dtype = torch.float64 if wide else torch.float32
        matrix = torch.stack([r.to(dtype) for r in rows])
        return matrix, Layout(kind="pytree", spec=first)
    raise ConfigError(
        f"cannot aggregate {type(vectors).__name__}: pass an (n, d) numpy array or torch tensor, "
        "or a list of pytrees of tensors"
    )
