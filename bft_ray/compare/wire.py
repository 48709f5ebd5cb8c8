"""The canonical binary wire format of task outputs.

Untrusted executors return their outputs as these bytes; the trusted side parses them with a
strict decoder that never unpickles, never imports and never builds a user class. The format
is *injective*: every supported value has exactly one encoding, and the decoder accepts only
canonical encodings, so equal bytes (and equal digests) mean the same value, bit for bit.
The full layout is in ``docs/wire-format.md``; in short::

    b"BFTW" | u8 version (1) | node

    node := u8 tag | payload              (integers little-endian, u64 unless noted)
      0x00 None   0x01 False   0x02 True
      0x03 int      u64 n | u8 sign (0 +, 1 -) | n bytes magnitude (no high zero byte)
      0x04 float    8 bytes IEEE-754          0x05 complex  16 bytes (real, imag)
      0x06 str      u64 n | n bytes UTF-8     0x07 bytes    u64 n | n bytes
      0x10 list     u64 count | count nodes   0x11 tuple    u64 count | count nodes
      0x12 dict     u64 count | (key node, value node) * count, keys sorted by their bytes
      0x13 namedtuple / 0x14 dataclass
                    text module | text qualname | u64 count | (text field, node) * count
      0x20 ndarray  u8 dtype | u8 ndim | u64 * ndim shape | u64 nbytes | zero pad | data
      0x21 numpy scalar   u8 dtype | itemsize bytes
      0x22 torch tensor   u8 torch dtype | u8 ndim | u64 * ndim shape | u64 nbytes | pad | data

Array data starts at an offset that is a multiple of 64 from the start of the encoding (the
pad is zeros, checked), so :func:`decode_canonical` returns zero-copy views.

Example:
    >>> import numpy as np
    >>> w = encode({"x": np.arange(3, dtype=np.int16), 1: None})
    >>> w[:5]
    b'BFTW\\x01'
    >>> c = decode_canonical(w)
    >>> c.structure, [leaf.dtype for leaf in c.leaves]
    ('{i1:*,"x":*}', ['none', 'int16'])
    >>> decode(w)
    {1: None, 'x': array([0, 1, 2], dtype=int16)}
    >>> encode({1: 0}) == encode({"1": 0}), encode(np.float64(1.0)) == encode(1.0)
    (False, False)
    >>> encode(bytearray(b"x"))
    Traceback (most recent call last):
    ...
    bft_ray.compare.wire.UnsupportedTypeError: output at '<root>' is a bytearray...
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import keyword
import math
import pickle
import struct
import sys
import warnings
from typing import Any

import numpy as np

from bft_ray.compare.canonical import Canonical, Leaf

__all__ = [
    "ALIGN",
    "MAGIC",
    "MAX_DEPTH",
    "VERSION",
    "UnsupportedTypeError",
    "WireFormatError",
    "WireValue",
    "decode",
    "decode_canonical",
    "decode_plain",
    "encode",
    "encode_parts",
]

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("bft_ray.compare.wire assumes a little-endian host")

MAGIC = b"BFTW"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
ALIGN = 64  # array data offsets are multiples of this, from the start of the encoding
MAX_DEPTH = 1000  # containers nested deeper than this are refused (encode) / rejected (decode)
MAX_NDIM = 64
MAX_DIM = 1 << 62  # no dimension reaches this (only a zero-size array could come close)

# -- tags -------------------------------------------------------------------------------------

T_NONE, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_COMPLEX, T_STR, T_BYTES = range(8)
T_LIST, T_TUPLE, T_DICT, T_NAMEDTUPLE, T_DATACLASS = range(0x10, 0x15)
T_NDARRAY, T_NPSCALAR, T_TENSOR = range(0x20, 0x23)
_CONTAINERS = frozenset({T_LIST, T_TUPLE, T_DICT, T_NAMEDTUPLE, T_DATACLASS})
_KEY_TAGS = frozenset({T_NONE, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_BYTES})
_NOT_PLAIN = frozenset({T_COMPLEX, T_NDARRAY, T_NPSCALAR, T_TENSOR})  # refused by decode_plain

# numpy dtypes: code -> dtype (little-endian); (kind, itemsize) -> code
_NP_NAMES = (
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
)
_NP_DTYPE = {i + 1: np.dtype(n).newbyteorder("<") for i, n in enumerate(_NP_NAMES)}
_NP_CODE = {(dt.kind, dt.itemsize): code for code, dt in _NP_DTYPE.items()}
_NP_NAME = dict(enumerate(_NP_NAMES, 1))
_U8 = np.dtype(np.uint8)

# torch dtypes by name: code -> (name, itemsize, numpy dtype of the raw data or None if numpy
# has no such dtype and the leaf is widened for comparison)
_TORCH_TABLE = (
    ("bool", 1, "bool"),
    ("uint8", 1, "uint8"),
    ("int8", 1, "int8"),
    ("int16", 2, "int16"),
    ("int32", 4, "int32"),
    ("int64", 8, "int64"),
    ("uint16", 2, "uint16"),
    ("uint32", 4, "uint32"),
    ("uint64", 8, "uint64"),
    ("float16", 2, "float16"),
    ("bfloat16", 2, None),
    ("float32", 4, "float32"),
    ("float64", 8, "float64"),
    ("complex32", 4, None),
    ("complex64", 8, "complex64"),
    ("complex128", 16, "complex128"),
    ("float8_e4m3fn", 1, None),
    ("float8_e5m2", 1, None),
    ("float8_e4m3fnuz", 1, None),
    ("float8_e5m2fnuz", 1, None),
    ("float8_e8m0fnu", 1, None),
)
_TORCH = {
    i + 1: (name, size, None if np_name is None else np.dtype(np_name).newbyteorder("<"))
    for i, (name, size, np_name) in enumerate(_TORCH_TABLE)
}
_TORCH_CODE = {name: code for code, (name, _, _) in _TORCH.items()}

_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")
_ZEROS = bytes(ALIGN)


class WireFormatError(ValueError):
    """Bytes that are not exactly the canonical encoding of a supported value."""


class UnsupportedTypeError(TypeError):
    """A value with no exact canonical form (it is refused, never coerced)."""


# -- encoding ---------------------------------------------------------------------------------


def _safe_repr(x: Any, n: int = 60) -> str:
    try:
        text = repr(x)
    except Exception:  # e.g. an int too long for str()
        text = f"<{type(x).__qualname__}>"
    return text if len(text) <= n else text[: n - 3] + "..."


def _render_path(path: tuple | None) -> str:
    keys = []
    while path is not None:
        path, key = path
        keys.append(key)
    return "/".join(reversed(keys)) or "<root>"


def _int_text(k: int) -> str:
    # Decimal is readable but capped by sys.int_info.str_digits_check_threshold; hex is not.
    return str(k) if k.bit_length() <= 256 else hex(k)


def _key_path_text(k: Any) -> str:
    if type(k) is str:
        return k
    if type(k) is int:
        return _int_text(k)
    if type(k) is float or type(k) is bytes:
        return repr(k)
    return str(k)


def _key_struct_text(k: Any) -> str:
    """Unambiguous, self-delimiting text of a dict key (for ``Canonical.structure``)."""
    t = type(k)
    if t is str:
        return json.dumps(k)
    if t is bool:
        return "T" if k else "F"
    if t is int:
        return "i" + _int_text(k)
    if k is None:
        return "N"
    if t is float:
        return "f" + _F64.pack(k)[::-1].hex()
    return "b" + k.hex()


def _enc_int(x: int) -> bytes:
    mag = -x if x < 0 else x
    n = (mag.bit_length() + 7) // 8
    return b"".join(
        (bytes((T_INT,)), _U64.pack(n), b"\x01" if x < 0 else b"\x00", mag.to_bytes(n, "little"))
    )


def _enc_str(x: str, path: tuple | None) -> bytes:
    try:
        data = x.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsupportedTypeError(
            f"output at {_render_path(path)!r} is a str with a lone surrogate, which has no "
            "UTF-8 form; return bytes (for example x.encode('utf-8', 'surrogatepass')) instead"
        ) from None
    return bytes((T_STR,)) + _U64.pack(len(data)) + data


def _enc_scalar(x: Any, path: tuple | None) -> bytes | None:
    """Encoding of a scalar usable as a dict key (exact types only), or None."""
    t = type(x)
    if t is str:
        return _enc_str(x, path)
    if t is int:
        return _enc_int(x)
    if t is bool:
        return b"\x02" if x else b"\x01"
    if x is None:
        return b"\x00"
    if t is float:
        return bytes((T_FLOAT,)) + _F64.pack(x)
    if t is bytes:
        return bytes((T_BYTES,)) + _U64.pack(len(x)) + x
    return None


_EMIT = object()  # stack marker: raw bytes to append


class _Encoder:
    def __init__(self) -> None:
        self.parts: list[Any] = [HEADER]
        self.pos = len(HEADER)

    def put(self, part: Any) -> None:
        self.parts.append(part)
        self.pos += len(part)

    def put_data(self, header: bytes, data: memoryview, nbytes: int) -> None:
        """Append an array header, the zero pad that aligns the data, and the data."""
        self.put(header)
        pad = -self.pos % ALIGN
        if pad:
            self.put(_ZEROS[:pad])
        if nbytes:
            self.parts.append(data)
            self.pos += nbytes

    def run(self, root: Any) -> list[Any]:
        """Encode ``root`` into ``self.parts`` (bytes and memoryviews, in order)."""
        stack: list[tuple[Any, Any, int]] = [(root, None, 0)]
        pop, push = stack.pop, stack.append
        while stack:
            x, path, depth = pop()
            if path is _EMIT:
                self.put(x)
                continue
            t = type(x)
            if t is list or t is tuple:
                self._check_depth(depth, path)
                self.put(bytes((T_LIST if t is list else T_TUPLE,)) + _U64.pack(len(x)))
                for i in range(len(x) - 1, -1, -1):
                    push((x[i], (path, str(i)), depth + 1))
                continue
            if t is dict:
                self._check_depth(depth, path)
                entries = []
                for k, v in x.items():
                    kb = _enc_scalar(k, path)
                    if kb is None:
                        raise UnsupportedTypeError(
                            f"dict key {_safe_repr(k)} at {_render_path(path)!r} has type "
                            f"{type(k).__qualname__}; keys must be exactly str, int, bytes, "
                            "bool, None or float (convert the key, or return a list of pairs)"
                        )
                    entries.append((kb, k, v))
                entries.sort(key=lambda e: e[0])
                for a, b in itertools.pairwise(entries):
                    if a[0] == b[0]:  # only NaN keys with equal bits can get here
                        raise UnsupportedTypeError(
                            f"dict at {_render_path(path)!r} has two keys with the same "
                            f"encoding ({_safe_repr(a[1])}); use distinct keys"
                        )
                self.put(bytes((T_DICT,)) + _U64.pack(len(entries)))
                for kb, k, v in reversed(entries):
                    push((v, (path, _key_path_text(k)), depth + 1))
                    push((kb, _EMIT, 0))
                continue
            if t is np.ndarray:
                self._ndarray(x, path)
                continue
            scalar = _enc_scalar(x, path)
            if scalar is not None:
                self.put(scalar)
                continue
            if t is complex:
                self.put(bytes((T_COMPLEX,)) + _C128.pack(x.real, x.imag))
                continue
            if isinstance(x, np.generic):
                self._npscalar(x, path)
                continue
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(x, torch.Tensor):
                self._tensor(torch, x, path)
                continue
            fields = _namedtuple_fields(x)
            if fields is not None:
                self._check_depth(depth, path)
                cls = type(x)
                self._named(T_NAMEDTUPLE, cls, fields, path)
                for i in range(len(fields) - 1, -1, -1):
                    push((tuple.__getitem__(x, i), (path, fields[i]), depth + 1))
                    push((_text(fields[i]), _EMIT, 0))
                continue
            if _is_plain_dataclass(x):
                self._check_depth(depth, path)
                names = tuple(f.name for f in dataclasses.fields(x))
                self._named(T_DATACLASS, type(x), names, path)
                for name in reversed(names):
                    try:
                        field_value = getattr(x, name)
                    except AttributeError:
                        raise UnsupportedTypeError(
                            f"output at {_render_path(path)!r} is a {type(x).__qualname__} "
                            f"whose field {name!r} is not set"
                        ) from None
                    push((field_value, (path, name), depth + 1))
                    push((_text(name), _EMIT, 0))
                continue
            raise UnsupportedTypeError(_refusal(x, _render_path(path)))
        return self.parts

    @staticmethod
    def _check_depth(depth: int, path: tuple | None) -> None:
        if depth >= MAX_DEPTH:
            raise UnsupportedTypeError(
                f"output nests containers deeper than {MAX_DEPTH} levels at "
                f"{_render_path(path)[:200]!r} (or contains itself); return a flatter structure"
            )

    def _named(self, tag: int, cls: type, fields: tuple[str, ...], path: tuple | None) -> None:
        ok = len(set(fields)) == len(fields) and all(
            type(f) is str and f.isidentifier() and not keyword.iskeyword(f) for f in fields
        )
        module, qualname = getattr(cls, "__module__", None), getattr(cls, "__qualname__", None)
        if not ok or not (type(module) is str and module and type(qualname) is str and qualname):
            raise UnsupportedTypeError(
                f"output at {_render_path(path)!r} is a {cls!r} with fields {fields!r}; a "
                "namedtuple/dataclass needs a module, a name and distinct identifier fields"
            )
        try:
            head = _text(module) + _text(qualname)
        except UnicodeEncodeError:
            raise UnsupportedTypeError(
                f"output at {_render_path(path)!r}: class name {qualname!r} has no UTF-8 form"
            ) from None
        self.put(bytes((tag,)) + head + _U64.pack(len(fields)))

    def _ndarray(self, x: np.ndarray, path: tuple | None) -> None:
        dt = x.dtype
        code = _NP_CODE.get((dt.kind, dt.itemsize)) if dt.fields is None else None
        if code is None or dt.kind not in "biufc":
            raise UnsupportedTypeError(_refusal(x, _render_path(path)))
        _check_shape(x.shape, path)
        if dt.byteorder == ">":
            x = x.astype(dt.newbyteorder("<"))
        if not x.flags.c_contiguous:
            x = x.copy(order="C")  # (not ascontiguousarray: it turns 0-d into shape (1,))
        flat = x.reshape(-1).view(_U8)
        if dt.kind == "b" and flat.size and flat.max() > 1:
            flat = (flat != 0).view(_U8)  # a bool byte other than 0/1 means True
        header = struct.pack(f"<BBB{x.ndim}QQ", T_NDARRAY, code, x.ndim, *x.shape, x.nbytes)
        self.put_data(header, memoryview(flat), x.nbytes)

    def _npscalar(self, x: np.generic, path: tuple | None) -> None:
        dt = x.dtype
        code = _NP_CODE.get((dt.kind, dt.itemsize))
        if code is None or dt.kind not in "biufc" or type(x) is not dt.type:
            raise UnsupportedTypeError(_refusal(x, _render_path(path)))
        if dt.kind == "b":
            data = b"\x01" if x else b"\x00"
        else:
            data = np.asarray(x, dtype=_NP_DTYPE[code]).tobytes()
        self.put(bytes((T_NPSCALAR, code)) + data)

    def _tensor(self, torch: Any, x: Any, path: tuple | None) -> None:
        where = _render_path(path)
        if type(x) is not torch.Tensor:
            raise UnsupportedTypeError(
                f"output at {where!r} is a {type(x).__qualname__} (a torch.Tensor subclass); "
                "return a plain tensor instead (x.detach() or torch.Tensor(x))"
            )
        if x.layout != torch.strided or x.is_nested:
            raise UnsupportedTypeError(
                f"output at {where!r} is a {'nested' if x.is_nested else str(x.layout)} "
                "tensor; sparse, nested and other non-strided layouts are refused, "
                "not densified: return x.to_dense() (or the indices and values) instead"
            )
        if x.is_quantized:
            raise UnsupportedTypeError(
                f"output at {where!r} is a quantized tensor; return x.dequantize() or "
                "x.int_repr() with the scale and zero point instead"
            )
        name = str(x.dtype).removeprefix("torch.")
        code = _TORCH_CODE.get(name)
        if code is None:
            raise UnsupportedTypeError(
                f"output at {where!r} is a tensor of dtype {x.dtype}, which has no canonical "
                "form; return a tensor of a standard bool/int/float/complex dtype instead"
            )
        if x.device.type == "meta":
            raise UnsupportedTypeError(f"output at {where!r} is a meta tensor (it has no data)")
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        shape = tuple(t.shape)
        _check_shape(shape, path)
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        if name == "bool" and raw.size and raw.max() > 1:
            raw = (raw != 0).view(_U8)
        header = struct.pack(f"<BBB{len(shape)}QQ", T_TENSOR, code, len(shape), *shape, raw.size)
        self.put_data(header, memoryview(raw), raw.size)


def _check_shape(shape: tuple[int, ...], path: tuple | None) -> None:
    if len(shape) > MAX_NDIM or any(d >= MAX_DIM for d in shape):
        raise UnsupportedTypeError(
            f"output at {_render_path(path)!r} has shape {shape}: at most {MAX_NDIM} dims, "
            f"each below 2**62"
        )


def _text(s: str) -> bytes:
    data = s.encode("utf-8")
    return _U64.pack(len(data)) + data


def _namedtuple_fields(x: Any) -> tuple[str, ...] | None:
    if not isinstance(x, tuple):
        return None
    fields = getattr(type(x), "_fields", None)
    if type(fields) is not tuple or len(fields) != tuple.__len__(x):
        return None
    return fields


_BUILTIN_BASES = (int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset)


def _is_plain_dataclass(x: Any) -> bool:
    return (
        dataclasses.is_dataclass(x)
        and not isinstance(x, type)
        and not isinstance(x, (*_BUILTIN_BASES, np.ndarray, np.generic))
    )


def _refusal(x: Any, where: str) -> str:
    """Why ``x`` has no canonical form, and what to return instead."""
    name = type(x).__qualname__
    head = f"output at {where!r}"
    a_name = ("an " if name[:1].lower() in "aeiou" else "a ") + name
    if isinstance(x, np.ma.MaskedArray):
        return (
            f"{head} is a numpy masked array, whose mask would be lost; return the data and "
            "the mask separately (x.filled(fill), np.ma.getmaskarray(x))"
        )
    if isinstance(x, np.ndarray | np.generic):
        dt = x.dtype
        what = "an array" if isinstance(x, np.ndarray) else "a numpy scalar"
        if dt.fields is not None or dt.kind == "V":
            return (
                f"{head} is {what} of structured/void dtype {dt}; return a dict of one "
                "array per field instead"
            )
        if dt.kind == "O":
            return f"{head} is {what} of object dtype; return numeric arrays or a list instead"
        if dt.kind in "US":
            return f"{head} is {what} of string dtype {dt}; return a list of str/bytes instead"
        if dt.kind in "mM":
            return (
                f"{head} is {what} of datetime dtype {dt}; return x.astype('int64') (and the "
                "unit separately) instead"
            )
        if isinstance(x, np.ndarray) and type(x) is not np.ndarray:
            return f"{head} is {a_name} (an ndarray subclass); return np.asarray(x) instead"
        if isinstance(x, np.generic) and type(x) is not dt.type:
            return f"{head} is {a_name} (a numpy scalar subclass); return {dt.type.__name__}(x)"
        return (
            f"{head} is {what} of dtype {dt}, which has no portable canonical form; return "
            "a bool/int/uint/float16-64/complex64-128 dtype instead"
        )
    if isinstance(x, bool | int | float | complex | str | bytes):
        base = next(b for b in (bool, int, float, complex, str, bytes) if isinstance(x, b))
        return (
            f"{head} is {a_name}, a subclass of {base.__name__} (for example an enum); "
            f"return {base.__name__}(x) instead"
        )
    if isinstance(x, bytearray | memoryview):
        return f"{head} is {a_name}; return bytes(x) instead"
    if isinstance(x, set | frozenset):
        return f"{head} is {a_name}, which has no canonical order; return a sorted list instead"
    if isinstance(x, dict):
        return (
            f"{head} is {a_name} (a dict subclass, e.g. defaultdict/OrderedDict); return "
            "dict(x) instead"
        )
    if isinstance(x, list | tuple):
        base = "list" if isinstance(x, list) else "tuple"
        return f"{head} is {a_name}, a subclass of {base}; return {base}(x) instead"
    return (
        f"{head} has type {name}, which has no canonical form. Return exact "
        "dicts/lists/tuples, namedtuples or dataclasses of torch tensors, numpy arrays or "
        "scalars of numeric dtypes, None, bool, int, float, complex, str or bytes"
    )


def encode(value: Any) -> bytes:
    """The canonical wire bytes of ``value``.

    Each leaf's data is copied once (into the joined result); contiguous little-endian arrays
    and CPU tensors are passed as memoryviews.

    Args:
        value: A pytree of supported values (see the module docstring).

    Returns:
        The encoding: ``HEADER`` then the tree.

    Raises:
        UnsupportedTypeError: For a value with no exact canonical form; the message names
            its path and what to return instead.

    Example:
        >>> len(encode(None)), encode([True, 2])[5:]
        (6, b'\\x10\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x03\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02')
    """
    return b"".join(_Encoder().run(value))


def encode_parts(value: Any) -> tuple[list[Any], int]:
    """The encoding of ``value`` as ordered parts (bytes and zero-copy memoryviews) and its
    total length: ``b"".join(parts) == encode(value)``. For hashing or writing without
    materialising the joined bytes."""
    enc = _Encoder()
    return enc.run(value), enc.pos


# -- decoding ---------------------------------------------------------------------------------


def _fp8_table(ebits: int, bias: int, style: str) -> np.ndarray:
    """float32 values of all 256 bit patterns of a float8 format (exact)."""
    mbits = 7 - ebits
    out = np.empty(256, np.float32)
    for b in range(256):
        sign = -1.0 if b >> 7 else 1.0  # NaNs keep their sign, as torch's widening does
        e, m = (b >> mbits) & ((1 << ebits) - 1), b & ((1 << mbits) - 1)
        top = e == (1 << ebits) - 1
        if (style == "ieee" and top) or (style == "fn" and top and m == (1 << mbits) - 1):
            v = math.copysign(math.nan if m else math.inf, sign)
        elif style == "fnuz" and b == 0x80:
            v = math.nan
        elif e == 0:
            v = sign * m * 2.0 ** (1 - bias - mbits)
        else:
            v = sign * (1 + m / 2**mbits) * 2.0 ** (e - bias)
        out[b] = v
    return out


def _e8m0_table() -> np.ndarray:
    return np.array([2.0 ** (b - 127) for b in range(255)] + [math.nan], np.float32)


_WIDEN_TABLES = {
    "float8_e4m3fn": _fp8_table(4, 7, "fn"),
    "float8_e5m2": _fp8_table(5, 15, "ieee"),
    "float8_e4m3fnuz": _fp8_table(4, 8, "fnuz"),
    "float8_e5m2fnuz": _fp8_table(5, 16, "fnuz"),
    "float8_e8m0fnu": _e8m0_table(),
}
for _t in _WIDEN_TABLES.values():
    _t.setflags(write=False)


def _widen(name: str, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Exact numpy form (for comparison) of torch data numpy has no dtype for."""
    if name == "bfloat16":
        out = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    elif name == "complex32":
        out = raw.view("<f2").astype(np.float32).view(np.complex64)
    else:
        out = _WIDEN_TABLES[name][raw]
    return out.reshape(shape)


_TRUE_LEAF = np.array(True)
_FALSE_LEAF = np.array(False)
_EMPTY_LEAF = np.zeros(0, np.uint8)
for _a in (_TRUE_LEAF, _FALSE_LEAF, _EMPTY_LEAF):
    _a.setflags(write=False)

_CLOSE = {T_LIST: "]", T_TUPLE: ")", T_DICT: "}", T_NAMEDTUPLE: ")", T_DATACLASS: ")"}


class _Frame:
    __slots__ = (
        "index",
        "items",
        "keys",
        "keyset",
        "last",
        "left",
        "module",
        "path",
        "qualname",
        "tag",
    )

    def __init__(self, tag: int, left: int, path: str) -> None:
        self.tag = tag
        self.left = left
        self.path = path
        self.index = 0
        self.items: list[Any] = []
        self.keys: list[Any] = []
        self.keyset: set[Any] = set()
        self.last: bytes | None = None


class _Parser:
    """Strict single-pass parser; ``values`` selects rebuilding values vs canonical leaves."""

    def __init__(self, buf: bytes | memoryview, values: bool, plain: bool = False) -> None:
        self.buf = buf
        self.n = len(buf)
        self.pos = 0
        self.values = values
        self.plain = plain  # values only of the built-in container and scalar types
        self.parts: list[str] = []
        self.leaves: list[Leaf] = []

    # -- primitive reads (every one bounds-checked) --

    def fail(self, msg: str) -> WireFormatError:
        return WireFormatError(f"{msg} (at byte {self.pos})")

    def need(self, k: int) -> int:
        end = self.pos + k
        if k < 0 or end > self.n:
            raise self.fail(f"truncated: {k} more bytes needed, {self.n - self.pos} left")
        return end

    def u8(self) -> int:
        if self.pos >= self.n:
            raise self.fail("truncated: a tag or byte field is missing")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u64(self) -> int:
        end = self.need(8)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos = end
        return v

    def text(self, what: str) -> str:
        n = self.u64()
        start, end = self.pos, self.need(n)
        self.pos = end
        try:
            return str(self.buf[start:end], "utf-8")
        except UnicodeDecodeError as exc:
            raise WireFormatError(f"{what} is not valid UTF-8 (at byte {start}): {exc}") from None

    def count(self, per_item: int) -> int:
        n = self.u64()
        if n * per_item > self.n - self.pos:
            raise self.fail(f"count {n} cannot fit in the {self.n - self.pos} bytes left")
        return n

    def int_body(self) -> tuple[int, int, int]:
        """Read an int payload; returns (value-or-0, start of sign byte, end)."""
        n = self.u64()
        start = self.pos
        end = self.need(n + 1)
        sign = self.buf[start]
        if sign > 1:
            raise self.fail(f"int sign byte is {sign}, not 0 or 1")
        if n == 0 and sign:
            raise self.fail("int is negative zero")
        if n and self.buf[end - 1] == 0:
            raise self.fail("int magnitude has a leading zero byte")
        self.pos = end
        return sign, start, end

    def int_value(self, sign: int, start: int, end: int) -> int:
        mag = int.from_bytes(self.buf[start + 1 : end], "little")
        return -mag if sign else mag

    def padding(self) -> None:
        pad = -self.pos % ALIGN
        end = self.need(pad)
        if pad and bytes(self.buf[self.pos : end]) != _ZEROS[:pad]:
            raise self.fail("alignment padding is not zero")
        self.pos = end

    def shape(self) -> tuple[int, ...]:
        ndim = self.u8()
        if ndim > MAX_NDIM:
            raise self.fail(f"ndim {ndim} exceeds {MAX_NDIM}")
        end = self.need(8 * ndim)
        shape = struct.unpack_from(f"<{ndim}Q", self.buf, self.pos)
        self.pos = end
        return shape

    def array_data(self, shape: tuple[int, ...], itemsize: int) -> tuple[int, int]:
        """Read nbytes, check it against the shape, skip the pad; returns (offset, nbytes)."""
        nbytes = self.u64()
        if math.prod(shape) * itemsize != nbytes:
            raise self.fail(f"data length {nbytes} does not match shape {shape} x {itemsize}")
        if any(d >= MAX_DIM for d in shape):
            raise self.fail(f"absurd shape {shape}")
        self.padding()
        off, end = self.pos, self.need(nbytes)
        self.pos = end
        return off, nbytes

    def check_bool(self, off: int, nbytes: int) -> None:
        if nbytes and np.frombuffer(self.buf, _U8, nbytes, off).max() > 1:
            raise WireFormatError(f"bool data holds a byte other than 0/1 (at byte {off})")

    def view(self, dtype: np.dtype, shape: tuple[int, ...], off: int) -> np.ndarray:
        try:
            return np.ndarray(shape, dtype, buffer=self.buf, offset=off)
        except (ValueError, TypeError) as exc:
            raise WireFormatError(f"unusable array shape {shape}: {exc}") from None

    # -- nodes --

    def parse(self) -> Any:
        if self.n < len(HEADER) or bytes(self.buf[: len(MAGIC)]) != MAGIC:
            raise WireFormatError("not bft-ray wire bytes (bad magic)")
        if self.buf[len(MAGIC)] != VERSION:
            raise WireFormatError(f"unsupported wire version {self.buf[len(MAGIC)]}")
        self.pos = len(HEADER)
        stack: list[_Frame] = []
        path = ""
        values, parts = self.values, self.parts
        while True:
            tag = self.u8()
            if tag in _CONTAINERS:
                if len(stack) >= MAX_DEPTH:
                    raise self.fail(f"containers nested deeper than {MAX_DEPTH}")
                frame = self.open(tag, path)
                if frame.left:
                    stack.append(frame)
                    path = self.next_child(frame)
                    continue
                value = self.close(frame)
            else:
                value = self.leaf(tag, path)
            while stack:
                top = stack[-1]
                if values:
                    top.items.append(value)
                top.left -= 1
                if top.left:
                    path = self.next_child(top)
                    break
                stack.pop()
                value = self.close(top)
            else:
                if self.pos != self.n:
                    raise self.fail(f"{self.n - self.pos} trailing bytes")
                if not values:
                    return Canonical("".join(parts), tuple(self.leaves), b"")
                return value

    def open(self, tag: int, path: str) -> _Frame:
        if tag in (T_LIST, T_TUPLE):
            frame = _Frame(tag, self.count(1), path)
            if not self.values:
                self.parts.append("[" if tag == T_LIST else "(")
            return frame
        if tag == T_DICT:
            frame = _Frame(tag, self.count(2), path)
            if not self.values:
                self.parts.append("{")
            return frame
        module = self.text("class module")
        qualname = self.text("class name")
        if not module or not qualname:
            raise self.fail("empty class module or name")
        frame = _Frame(tag, self.count(9), path)
        frame.module, frame.qualname = module, qualname
        if not self.values:
            kind = "nt" if tag == T_NAMEDTUPLE else "dc"
            self.parts.append(f"{kind}:{json.dumps(module)}.{json.dumps(qualname)}(")
        return frame

    def next_child(self, frame: _Frame) -> str:
        """Read what precedes the next child (a key or field name); returns its path."""
        sep = "," if frame.index else ""
        frame.index += 1
        tag = frame.tag
        if tag in (T_LIST, T_TUPLE):
            if not self.values and sep:
                self.parts.append(sep)
            key_text = str(frame.index - 1)
        elif tag == T_DICT:
            start = self.pos
            key = self.key()
            enc = bytes(self.buf[start : self.pos])
            if frame.last is not None and enc <= frame.last:
                raise WireFormatError(
                    f"dict keys out of canonical order or duplicated (at byte {start})"
                )
            frame.last = enc
            if key in frame.keyset:
                raise WireFormatError(
                    f"dict keys {key!r} of different types are equal as values (at byte {start})"
                )
            frame.keyset.add(key)
            if self.values:
                frame.keys.append(key)
            else:
                self.parts.append(f"{sep}{_key_struct_text(key)}:")
            key_text = _key_path_text(key)
        else:
            start = self.pos
            name = self.text("field name")
            if not name.isidentifier() or keyword.iskeyword(name) or name in frame.keyset:
                raise WireFormatError(f"bad or repeated field name {name!r} (at byte {start})")
            frame.keyset.add(name)
            if self.values:
                frame.keys.append(name)
            else:
                self.parts.append(f"{sep}{json.dumps(name)}=")
            key_text = name
        return f"{frame.path}/{key_text}" if frame.path else key_text

    def key(self) -> Any:
        tag = self.u8()
        if tag not in _KEY_TAGS:
            raise self.fail(f"tag 0x{tag:02x} is not an allowed dict key type")
        if tag == T_STR:
            return self.text("dict key")
        if tag == T_INT:
            return self.int_value(*self.int_body())
        if tag == T_BYTES:
            n = self.u64()
            start, end = self.pos, self.need(n)
            self.pos = end
            return bytes(self.buf[start:end])
        if tag == T_FLOAT:
            end = self.need(8)
            (v,) = _F64.unpack_from(self.buf, self.pos)
            self.pos = end
            return v
        return None if tag == T_NONE else tag == T_TRUE

    def close(self, frame: _Frame) -> Any:
        tag = frame.tag
        if not self.values:
            self.parts.append(_CLOSE[tag])
            return None
        if tag == T_LIST:
            return frame.items
        if tag == T_TUPLE:
            return tuple(frame.items)
        if tag == T_DICT:
            return dict(zip(frame.keys, frame.items))
        if self.plain:  # before any class is looked up, let alone its module imported
            raise self.fail(f"not a plain value: a class {frame.module}.{frame.qualname}")
        return _rebuild_class(tag, frame.module, frame.qualname, tuple(frame.keys), frame.items)

    def leaf(self, tag: int, path: str) -> Any:
        values = self.values
        if self.plain and tag in _NOT_PLAIN:
            raise self.fail("not a plain value: an array, numpy scalar, tensor or complex")
        if tag <= T_TRUE:
            if values:
                return None if tag == T_NONE else tag == T_TRUE
            arr = _EMPTY_LEAF if tag == T_NONE else (_TRUE_LEAF if tag == T_TRUE else _FALSE_LEAF)
            self.add(path, "none" if tag == T_NONE else "py.bool", (), arr)
            return None
        if tag == T_INT:
            sign, start, end = self.int_body()
            if values:
                return self.int_value(sign, start, end)
            self.add(path, "py.int", (), np.frombuffer(self.buf, _U8, end - start, start))
            return None
        if tag in (T_FLOAT, T_COMPLEX):
            size = 8 if tag == T_FLOAT else 16
            off = self.pos
            self.pos = self.need(size)
            if values:
                if tag == T_FLOAT:
                    return _F64.unpack_from(self.buf, off)[0]
                return complex(*_C128.unpack_from(self.buf, off))
            dt = _NP_DTYPE[12 if tag == T_FLOAT else 14]
            name = "py.float" if tag == T_FLOAT else "py.complex"
            self.add(path, name, (), self.view(dt, (), off))
            return None
        if tag in (T_STR, T_BYTES):
            n = self.u64()
            start, end = self.pos, self.need(n)
            self.pos = end
            if tag == T_STR:
                try:
                    text = str(self.buf[start:end], "utf-8")
                except UnicodeDecodeError as exc:
                    raise WireFormatError(
                        f"str is not valid UTF-8 (at byte {start}): {exc}"
                    ) from None
                if values:
                    return text
            elif values:
                return bytes(self.buf[start:end])
            kind = "str" if tag == T_STR else "bytes"
            self.add(path, kind, (), np.frombuffer(self.buf, _U8, n, start))
            return None
        if tag == T_NDARRAY:
            code = self.u8()
            dt = _NP_DTYPE.get(code)
            if dt is None:
                raise self.fail("unknown numpy dtype code")
            shape = self.shape()
            off, nbytes = self.array_data(shape, dt.itemsize)
            if dt.kind == "b":
                self.check_bool(off, nbytes)
            arr = self.view(dt, shape, off)
            if values:
                return arr
            self.add(path, _NP_NAME[code], shape, arr)
            return None
        if tag == T_NPSCALAR:
            code = self.u8()
            dt = _NP_DTYPE.get(code)
            if dt is None:
                raise self.fail("unknown numpy dtype code")
            off = self.pos
            self.pos = self.need(dt.itemsize)
            if dt.kind == "b":
                self.check_bool(off, 1)
            arr = self.view(dt, (), off)
            if values:
                return arr[()]
            self.add(path, "np." + _NP_NAME[code], (), arr)
            return None
        if tag == T_TENSOR:
            entry = _TORCH.get(self.u8())
            if entry is None:
                raise self.fail("unknown torch dtype code")
            name, itemsize, np_dt = entry
            shape = self.shape()
            off, nbytes = self.array_data(shape, itemsize)
            if name == "bool":
                self.check_bool(off, nbytes)
            # A numpy view either way, so both decoders accept exactly the same shapes.
            arr = self.view(np.dtype(f"V{itemsize}") if np_dt is None else np_dt, shape, off)
            if values:
                return _rebuild_tensor(name, shape, self.buf, off, nbytes)
            if np_dt is None:
                arr = _widen(name, np.frombuffer(self.buf, _U8, nbytes, off), shape)
            self.add(path, "torch." + name, shape, arr)
            return None
        raise WireFormatError(f"unknown tag 0x{tag:02x} (at byte {self.pos - 1})")

    def add(self, path: str, dtype: str, shape: tuple[int, ...], arr: np.ndarray) -> None:
        self.parts.append("*")
        self.leaves.append(Leaf(path, dtype, shape, arr))


def _as_buffer(data: Any) -> bytes | memoryview:
    if isinstance(data, bytes):
        return data
    try:
        mv = memoryview(data)
    except TypeError:
        raise WireFormatError(f"wire data must be bytes-like, not {type(data).__name__}") from None
    if mv.ndim != 1 or mv.itemsize != 1 or not mv.c_contiguous:
        return mv.tobytes()
    return mv.cast("B") if mv.format != "B" else mv


_PARSE_ERRORS = (ValueError, TypeError, IndexError, OverflowError, struct.error, MemoryError)


def decode_canonical(data: bytes | memoryview) -> Canonical:
    """Strictly parse untrusted wire bytes into their :class:`Canonical` form.

    Every length is bounds-checked; trailing bytes, unknown tags or dtype codes, non-canonical
    ints, unsorted or duplicate dict keys, invalid UTF-8, non-zero padding, bool bytes other
    than 0/1, shapes that do not match the data length and nesting deeper than
    :data:`MAX_DEPTH` are all rejected. Nothing is imported, unpickled or constructed beyond
    numpy views: a namedtuple or dataclass is only its name in ``structure``.

    Args:
        data: The bytes. Anything other than ``bytes`` is copied once into ``bytes``, so the
            leaves view an immutable buffer.

    Returns:
        The canonical form; ``wire`` is ``data`` itself and the leaves view it.

    Raises:
        WireFormatError: If ``data`` is not exactly a canonical encoding (the only
            exception this raises).

    Example:
        >>> c = decode_canonical(encode({"a": [1, 2.5]}))
        >>> c.structure, [(leaf.path, leaf.dtype) for leaf in c.leaves]
        ('{"a":[*,*]}', [('a/0', 'py.int'), ('a/1', 'py.float')])
        >>> decode_canonical(encode([1])[:-1])
        Traceback (most recent call last):
        ...
        bft_ray.compare.wire.WireFormatError: truncated: ...
    """
    if not isinstance(data, bytes):
        buf = _as_buffer(data)
        data = buf if isinstance(buf, bytes) else buf.tobytes()
    try:
        c = _Parser(data, values=False).parse()
    except WireFormatError:
        raise
    except RecursionError:  # pragma: no cover - the parser does not recurse
        raise WireFormatError("nesting too deep") from None
    except _PARSE_ERRORS as exc:
        raise WireFormatError(f"malformed wire bytes: {type(exc).__name__}: {exc}") from None
    return Canonical(c.structure, c.leaves, data)


def decode(data: bytes | memoryview) -> Any:
    """Rebuild the exact value from wire bytes (type, dtype, shape and bits).

    ``decode(encode(v))`` equals ``v`` for every supported value, up to canonicalisation:
    numpy arrays come back little-endian and C-ordered, as read-only views of ``data``
    (zero-copy); torch tensors come back on the CPU, as writable copies; dataclasses are built
    with their ``__init__`` and then every field is set to its encoded value. Namedtuple and
    dataclass classes are looked up in ``sys.modules`` (importing the module if needed); a
    class that cannot be found, or is not a namedtuple/dataclass with exactly the encoded
    fields, is an error.

    The parse is as strict as :func:`decode_canonical`; use this only on bytes already
    certified, since it may import modules and runs dataclass constructors.

    Raises:
        WireFormatError: If ``data`` is malformed or a class cannot be rebuilt.

    Example:
        >>> decode(encode({"k": (1, b"x", None, 2**70)}))
        {'k': (1, b'x', None, 1180591620717411303424)}
    """
    buf = _as_buffer(data)
    try:
        return _Parser(buf, values=True).parse()
    except WireFormatError:
        raise
    except (*_PARSE_ERRORS, RuntimeError) as exc:
        raise WireFormatError(f"malformed wire bytes: {type(exc).__name__}: {exc}") from None


def decode_plain(data: bytes | memoryview) -> Any:
    """:func:`decode` for bytes nobody vouched for yet, that must hold plain values only.

    Only lists, tuples, dicts, str, bytes, int, float, bool and ``None`` are accepted: a class
    (namedtuple, dataclass), an array, a numpy scalar, a tensor or a complex is an error, found
    before anything is imported or constructed. For records whose signature is checked after
    they are decoded (claims, commit proofs) and for an executor's yes/no answer.

    Raises:
        WireFormatError: If ``data`` is malformed or holds anything but plain values.

    Example:
        >>> decode_plain(encode([1, "a", {"b": None}]))
        [1, 'a', {'b': None}]
        >>> import collections
        >>> decode_plain(encode(collections.namedtuple("P", "x")(1)))
        Traceback (most recent call last):
        ...
        bft_ray.compare.wire.WireFormatError: not a plain value: a class ...
    """
    buf = _as_buffer(data)
    try:
        return _Parser(buf, values=True, plain=True).parse()
    except WireFormatError:
        raise
    except (*_PARSE_ERRORS, RuntimeError) as exc:
        raise WireFormatError(f"malformed wire bytes: {type(exc).__name__}: {exc}") from None


def _resolve_class(module: str, qualname: str) -> Any:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            raise WireFormatError(f"cannot import module {module!r}: {exc}") from None
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise WireFormatError(f"class {module}.{qualname} not found")
    if not isinstance(obj, type):
        raise WireFormatError(f"{module}.{qualname} is not a class")
    return obj


def _rebuild_class(tag: int, module: str, qualname: str, names: tuple, items: list) -> Any:
    cls = _resolve_class(module, qualname)
    where = f"{module}.{qualname}"
    if tag == T_NAMEDTUPLE:
        if not issubclass(cls, tuple) or tuple(getattr(cls, "_fields", ())) != names:
            raise WireFormatError(f"{where} is not a namedtuple with fields {names}")
        try:
            return tuple.__new__(cls, items)
        except Exception as exc:
            raise WireFormatError(f"cannot rebuild {where}: {exc}") from None
    if not dataclasses.is_dataclass(cls) or tuple(f.name for f in dataclasses.fields(cls)) != names:
        raise WireFormatError(f"{where} is not a dataclass with fields {names}")
    fields = dataclasses.fields(cls)
    try:
        obj = cls(**{f.name: v for f, v in zip(fields, items) if f.init})
        for f, v in zip(fields, items):
            object.__setattr__(obj, f.name, v)
    except Exception as exc:
        raise WireFormatError(f"cannot rebuild {where}: {type(exc).__name__}: {exc}") from None
    return obj


def _rebuild_tensor(name: str, shape: tuple, buf: Any, off: int, nbytes: int) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if dtype is None:
        raise WireFormatError(f"this torch has no dtype {name}")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.from_numpy(np.frombuffer(buf, _U8, nbytes, off).copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is "experimental"
        return raw.view(dtype).reshape(shape)


# -- values that travel as wire bytes ---------------------------------------------------------


def _from_wire(data: Any) -> Any:
    return decode(data)


class WireValue:
    """Wire bytes that unpickle as the value they encode.

    A trusted verifier returns a ``WireValue`` of certified bytes; pickling keeps only the
    bytes (out of band, through :class:`pickle.PickleBuffer`, with protocol 5 as Ray uses),
    and unpickling calls :func:`decode`, so every consumer (``ray.get``, a downstream task)
    receives the decoded value, never a ``WireValue``.

    Example:
        >>> import pickle
        >>> pickle.loads(pickle.dumps(WireValue(encode({"a": (1, 2.0)})), protocol=5))
        {'a': (1, 2.0)}
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data if isinstance(data, bytes) else bytes(data)

    def value(self) -> Any:
        """The decoded value."""
        return decode(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WireValue) and self.data == other.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"WireValue(<{len(self.data)} bytes>)"

    def __reduce_ex__(self, protocol: Any) -> tuple:
        if isinstance(protocol, int) and protocol >= 5:
            return _from_wire, (pickle.PickleBuffer(self.data),)
        return _from_wire, (self.data,)


def sequence_length(data: bytes | memoryview) -> int | None:
    """Item count of an encoded top-level list or tuple, ``None`` for any other value.

    Reads the header only; ``data`` must already be a valid encoding (for example bytes that
    :func:`decode_canonical` accepted).
    """
    view = memoryview(data)
    if len(view) < 14 or bytes(view[:4]) != MAGIC or view[5] not in (T_LIST, T_TUPLE):
        return None
    return _U64.unpack_from(view, 6)[0]


def _item_from_wire(data: Any, index: int) -> Any:
    return decode(data)[index]


class WireItem(WireValue):
    """Item ``index`` of the list or tuple encoded by ``data``; unpickles as that item.

    A verified call with ``num_returns=n`` certifies one sequence of ``n`` items; each of its
    ``n`` refs holds the certified bytes of the whole sequence and resolves to one item.
    """

    __slots__ = ("index",)

    def __init__(self, data: bytes | memoryview, index: int) -> None:
        super().__init__(data)
        self.index = index

    def value(self) -> Any:
        return _item_from_wire(self.data, self.index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WireItem) and (self.data, self.index) == (other.data, other.index)

    def __hash__(self) -> int:
        return hash((self.data, self.index))

    def __repr__(self) -> str:
        return f"WireItem(<{len(self.data)} bytes>, index={self.index})"

    def __reduce_ex__(self, protocol: Any) -> tuple:
        if isinstance(protocol, int) and protocol >= 5:
            return _item_from_wire, (pickle.PickleBuffer(self.data), self.index)
        return _item_from_wire, (self.data, self.index)
