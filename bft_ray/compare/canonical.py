"""Canonical form of task outputs.

An output is a pytree: exact ``dict``/``list``/``tuple``, namedtuples and dataclasses whose
leaves are torch tensors (any device; moved to the CPU), numpy arrays and numpy scalars of
numeric dtypes, Python ``None``/``bool``/``int``/``float``/``complex``/``str``/``bytes``. The
single source of truth is the binary wire encoding of :mod:`bft_ray.compare.wire`:
:func:`canonicalize` is ``decode_canonical(encode(value))``, and a :class:`Canonical` keeps the
wire bytes it was parsed from next to a view of them that the tolerance rules can compare:

* ``structure``: the skeleton (container kinds, typed dict keys, class and field names,
  leaf positions) as an unambiguous string, so equal structures mean the same leaves at the
  same paths;
* ``leaves``: one :class:`Leaf` per leaf in order, each a numpy array viewing the wire bytes;
* ``wire``: the canonical bytes, which the digest hashes.

Two outputs have the same wire bytes (and so the same digest) exactly when they have the same
structure, leaf kinds, dtypes, shapes and bits. Values that have no exact canonical form
(``bytearray``, ``set``, subclasses of builtins, masked arrays, ...) are refused with
:class:`~bft_ray.compare.wire.UnsupportedTypeError`, never coerced.

Example:
    >>> import numpy as np
    >>> c = canonicalize({"b": np.arange(3, dtype=np.int32), "a": 1.5})
    >>> c.structure
    '{"a":*,"b":*}'
    >>> [(leaf.path, leaf.dtype, leaf.shape) for leaf in c.leaves]
    [('a', 'py.float', ()), ('b', 'int32', (3,))]
    >>> canonicalize({1: 0}).structure, canonicalize({"1": 0}).structure
    ('{i1:*}', '{"1":*}')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Canonical", "Leaf", "canonicalize", "tree_map"]

_FLOAT_KINDS = "fc"  # numpy dtype kinds compared with a tolerance: float, complex

# Leaf dtype tags whose array holds a byte string (its length is data, not shape).
BYTE_STRING_TAGS = frozenset({"str", "bytes", "py.int", "none"})


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One leaf of a canonical output.

    Attributes:
        path: Slash-separated location in the tree (``""`` for a bare leaf). For display and
            tolerance overrides only: it is not injective (key ``"a/b"`` and a nested ``b``
            under ``a`` share it); ``Canonical.structure`` is.
        dtype: Exact leaf kind: a numpy dtype name for an ndarray (``float32``),
            ``np.<dtype>`` for a numpy scalar (``np.float64``), ``torch.<dtype>`` for a
            tensor, ``py.bool``/``py.int``/``py.float``/``py.complex`` for Python scalars,
            ``str``, ``bytes`` or ``none``.
        shape: Shape of the leaf (``()`` for scalars, ``str``, ``bytes``, ``None``).
        array: Little-endian C-order numpy array holding the value, usually a read-only view
            of the wire bytes: ``str`` as UTF-8 ``uint8``, ``bytes`` as ``uint8``, a Python
            ``int`` as the ``uint8`` bytes of its canonical sign-magnitude encoding,
            ``torch.bfloat16``/float8 widened exactly to ``float32`` and ``torch.complex32`` to
            ``complex64``.
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


@dataclasses.dataclass(frozen=True, eq=False)
class Canonical:
    """Canonical form of one output: structure string, leaves in order, and the wire bytes.

    Equality and hashing are those of ``wire`` (the encoding is injective, so equal wire bytes
    mean the same value); forms built by hand without wire bytes compare their leaves.
    """

    structure: str
    leaves: tuple[Leaf, ...] = dataclasses.field(repr=False)
    wire: bytes = dataclasses.field(default=b"", repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of leaf data (the arrays as compared, after any widening)."""
        return sum(leaf.array.nbytes for leaf in self.leaves)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Canonical):
            return NotImplemented
        if self.wire or other.wire:
            return self.wire == other.wire
        # Hand-built forms without wire bytes: compare what they hold.
        return self.structure == other.structure and [_key(x) for x in self.leaves] == [
            _key(x) for x in other.leaves
        ]

    def __hash__(self) -> int:
        return hash(self.wire or self.structure)


def _key(leaf: Leaf) -> tuple:
    return (leaf.path, leaf.dtype, leaf.shape, leaf.array.dtype.str, leaf.array.tobytes())


def canonicalize(output: Any) -> Canonical:
    """The canonical form of ``output``: ``decode_canonical(encode(output))``.

    Args:
        output: A pytree of supported leaves (see the module docstring).

    Returns:
        The :class:`Canonical` form (a :class:`Canonical` is returned unchanged).

    Raises:
        UnsupportedTypeError: (a ``TypeError``) for a value with no exact canonical form; the
            message names the path and what to return instead.
    """
    if isinstance(output, Canonical):
        return output
    from bft_ray.compare.wire import decode_canonical, encode

    return decode_canonical(encode(output))


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """Apply ``fn`` to every leaf of ``tree``, keeping containers and their types.

    Containers are dicts, lists, tuples, namedtuples and dataclasses (as for :func:`canonicalize`);
    everything else is a leaf. ``fn`` receives the original leaf object (a tensor stays a
    tensor).

    Example:
        >>> tree_map(lambda v: v * 2, {"a": [1, 2], "b": (3,)})
        {'a': [2, 4], 'b': (6,)}
    """
    if isinstance(tree, dict):
        mapped = [(k, tree_map(fn, v)) for k, v in tree.items()]
        if type(tree) is dict:
            return dict(mapped)
        try:
            out = tree.copy()  # keeps a subclass's own state (defaultdict's factory, ...)
            out.clear()
            out.update(mapped)
            return out
        except Exception:
            return type(tree)(mapped)
    if _is_namedtuple(tree):
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(tree_map(fn, v) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {
            f.name: tree_map(fn, getattr(tree, f.name)) for f in dataclasses.fields(tree) if f.init
        }
        return dataclasses.replace(tree, **changes)
    return fn(tree)
