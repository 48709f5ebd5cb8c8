"""Tolerant comparison of canonical outputs.

:func:`compare` decides whether two canonical outputs agree under a
:class:`~bft_ray.config.Tolerance` and, when they do not, says why in a
:class:`Comparison` that :mod:`bft_ray.compare.diff` renders for humans.

The numeric kernels work through the arrays in cache-sized chunks with preallocated buffers
and in-place ufuncs. ``numpy.allclose`` builds half a dozen full-size temporaries; on large
outputs that is memory traffic, not arithmetic, and the chunked loop avoids it (measured in
``benchmarks/bench_compare.py``). The common case, every element inside the tolerance, takes
a fast path; only a chunk that fails it is re-examined element by element for NaN and infinity
rules and error statistics.

Semantics (all modes): structure, leaf kinds, dtypes and shapes must match exactly, or the
outputs disagree with that reason. Non-float leaves compare bit for bit. NaN matches NaN only
with ``equal_nan``; an infinity matches only an infinity of the same sign.

Example:
    >>> import numpy as np
    >>> from bft_ray.config import Tolerance
    >>> a = {"y": np.array([1.0, 2.0])}
    >>> compare(a, {"y": np.array([1.0, 2.0 + 1e-9])}, Tolerance(rtol=1e-6)).agree
    True
    >>> c = compare(a, {"y": np.array([1.0, 2.5])}, Tolerance(rtol=1e-6))
    >>> c.agree, c.leaf_diffs[0].mismatched
    (False, 1)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bft_ray.compare.canonical import BYTE_STRING_TAGS, Canonical, Leaf, canonicalize
from bft_ray.config import Tolerance

__all__ = ["Comparison", "LeafDiff", "compare", "leaves_agree", "tolerance_ratio"]

# Elements per chunk for the elementwise kernels. The allclose kernel sizes its chunks in bytes
# instead (CHUNK_BYTES per buffer, which measured best for float32 and float64 alike: the
# working set of inputs and buffers stays inside a typical L2 cache).
CHUNK = 1 << 16
CHUNK_BYTES = 1 << 18


@dataclasses.dataclass(frozen=True)
class LeafDiff:
    """How one leaf differs between two outputs.

    Attributes:
        path: Leaf path (``<root>`` for a bare leaf).
        reason: ``"values"`` for numeric/byte differences, otherwise a description of the
            structural mismatch (dtype, shape, kind).
        mismatched: Elements outside the tolerance (or differing bytes for exact leaves).
        total: Elements in the leaf.
        max_abs_err: Largest absolute difference among finite elements (``nan`` if none).
        max_rel_err: Largest ``|a - b| / max(|a|, |b|)`` among finite elements.
        first_index: Flat index of the first mismatching element, if any.
    """

    path: str
    reason: str
    mismatched: int = 0
    total: int = 0
    max_abs_err: float = float("nan")
    max_rel_err: float = float("nan")
    first_index: int | None = None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Result of comparing two outputs."""

    agree: bool
    reason: str = ""
    leaf_diffs: tuple[LeafDiff, ...] = ()

    def __bool__(self) -> bool:
        return self.agree


def _as_canonical(x: Any) -> Canonical:
    return x if isinstance(x, Canonical) else canonicalize(x)


def compare(a: Any, b: Any, tolerance: Tolerance, *, detail: bool = True) -> Comparison:
    """Compare two outputs (raw pytrees or :class:`Canonical` forms) under ``tolerance``.

    Args:
        a: First output.
        b: Second output.
        tolerance: Tolerance, with per-path overrides.
        detail: Collect a :class:`LeafDiff` for every differing leaf (slower on disagreement);
            with ``False`` the comparison stops at the first differing leaf.

    Returns:
        A :class:`Comparison`; truthy when the outputs agree. The relation is symmetric:
        ``compare(a, b)`` and ``compare(b, a)`` always give the same verdict.
    """
    ca, cb = _as_canonical(a), _as_canonical(b)
    if ca.structure != cb.structure:
        return Comparison(
            False,
            f"structure differs: {_clip(ca.structure)} vs {_clip(cb.structure)}",
            (LeafDiff("<root>", "structure differs"),),
        )
    if len(ca.leaves) != len(cb.leaves):
        # Cannot happen for forms parsed from wire bytes (equal structures have equal leaf
        # counts); a hand-built Canonical gets a disagreement, never an exception.
        return Comparison(
            False,
            f"leaf count differs: {len(ca.leaves)} vs {len(cb.leaves)}",
            (LeafDiff("<root>", "leaf count differs"),),
        )
    diffs: list[LeafDiff] = []
    for la, lb in zip(ca.leaves, cb.leaves):
        if la.path != lb.path:
            d: LeafDiff | None = LeafDiff(
                la.display_path, f"path differs: {la.display_path} vs {lb.display_path}"
            )
        else:
            d = _compare_leaf(la, lb, tolerance.for_path(la.path), detail)
        if d is not None:
            diffs.append(d)
            if not detail:
                break
    if not diffs:
        return Comparison(True)
    return Comparison(False, f"{len(diffs)} leaf/leaves differ", tuple(diffs))


def leaves_agree(a: np.ndarray, b: np.ndarray, tolerance: Tolerance) -> bool:
    """Whether two arrays agree under ``tolerance`` (no per-path overrides).

    Example:
        >>> import numpy as np
        >>> leaves_agree(np.zeros(3), np.full(3, 1e-9), Tolerance(atol=1e-8))
        True
    """
    la = Leaf("", a.dtype.name, a.shape, np.ascontiguousarray(a))
    lb = Leaf("", b.dtype.name, b.shape, np.ascontiguousarray(b))
    return _compare_leaf(la, lb, tolerance, detail=False) is None


_TEXT_TAGS = BYTE_STRING_TAGS


def tolerance_ratio(a: Any, b: Any, tolerance: Tolerance) -> float:
    """How far apart two *agreeing* outputs are, in units of the tolerance.

    0 means identical, 1 the edge of agreement: the largest, over float leaves, of
    ``|a - b| / (atol + rtol * max(|a|, |b|))`` (``allclose``), the ULP distance over
    ``max_ulps`` (``ulp``) or the L2 distance over its bound (``l2``). Exact leaves count 0 when
    equal. Outputs that do not agree, or non-finite values, give ``inf``. Drift detection
    (:mod:`bft_ray.trust.drift`) watches this number grow before results start to disagree.

    Example:
        >>> import numpy as np
        >>> t = Tolerance(rtol=1e-5, atol=0)
        >>> round(tolerance_ratio(np.array([1.0]), np.array([1.0 + 5e-6]), t), 3)
        0.5
        >>> tolerance_ratio(np.array([1.0]), np.array([2.0]), t)
        inf
    """
    ca, cb = _as_canonical(a), _as_canonical(b)
    if ca == cb:
        return 0.0
    if not compare(ca, cb, tolerance, detail=False).agree:
        return float("inf")
    worst = 0.0
    for la, lb in zip(ca.leaves, cb.leaves):
        tol = tolerance.for_path(la.path)
        if not la.is_float or tol.mode == "exact":
            continue
        wide = np.float64 if la.array.dtype.kind == "f" else np.complex128
        x = la.array.reshape(-1).astype(wide)
        y = lb.array.reshape(-1).astype(x.dtype)
        if x.size == 0:
            continue
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            finite = np.isfinite(x) & np.isfinite(y)
            x, y = x[finite], y[finite]
            if x.size == 0:
                continue
            if tol.mode == "allclose":
                bound = tol.atol + tol.rtol * np.maximum(np.abs(x), np.abs(y))
                d = np.abs(x - y)
                safe = np.where(bound > 0, bound, 1.0)
                r = np.where(bound > 0, d / safe, np.where(d > 0, np.inf, 0.0))
                worst = max(worst, float(r.max()))
            elif tol.mode == "ulp":
                if la.array.dtype.kind != "f":
                    continue
                xs = la.array.reshape(-1)[finite]
                ys = lb.array.reshape(-1)[finite]
                dist = float(np.abs(_ordered_ints(xs) - _ordered_ints(ys)).max())
                if tol.max_ulps:
                    worst = max(worst, dist / tol.max_ulps)
                elif dist > 0:
                    return float("inf")
            else:
                bound = tol.atol + tol.rtol * max(np.linalg.norm(x), np.linalg.norm(y))
                d = float(np.linalg.norm(x - y))
                worst = max(worst, d / bound if bound > 0 else (np.inf if d > 0 else 0.0))
    return worst


def _short(leaf: Leaf) -> str:
    raw = leaf.array.tobytes()
    if leaf.dtype == "py.int":
        # Sign byte then little-endian magnitude (the wire form); never str() a huge int.
        mag = int.from_bytes(raw[1:], "little")
        value = -mag if raw[:1] == b"\x01" else mag
        if value.bit_length() > 128:
            return f"<int of {value.bit_length()} bits, low bits {value & 0xFFFFFFFF:#x}>"
        return str(value)
    if leaf.dtype == "none":
        return "None"
    text: object = raw if leaf.dtype == "bytes" else raw.decode("utf-8", "replace")
    return _clip(repr(text), 40)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _compare_leaf(a: Leaf, b: Leaf, tol: Tolerance, detail: bool) -> LeafDiff | None:
    path = a.display_path
    if a.dtype != b.dtype:
        return LeafDiff(path, f"dtype differs: {a.dtype} vs {b.dtype}")
    if a.shape != b.shape:
        return LeafDiff(path, f"shape differs: {a.shape} vs {b.shape}")
    x, y = a.array, b.array
    if x.dtype != y.dtype and a.dtype not in _TEXT_TAGS:
        return LeafDiff(path, f"array dtype differs: {x.dtype} vs {y.dtype}")
    if a.dtype in _TEXT_TAGS:
        if x.shape == y.shape and (
            x.nbytes == 0 or memoryview(x).cast("B") == memoryview(y).cast("B")
        ):
            return None
        return LeafDiff(path, f"value differs: {_short(a)} vs {_short(b)}", 1, 1)
    if tol.mode == "overlap" and x.dtype.kind in "iu" and x.ndim >= 1:
        return _overlap(path, x, y, tol.min_overlap)
    if not a.is_float or tol.mode in ("exact", "overlap"):
        return _exact(path, x, y, a.is_float, detail)
    x, y = x.reshape(-1), y.reshape(-1)
    if x.dtype == np.float16 and tol.mode != "ulp":
        # Compute half precision in float32 (exact widening) so rtol products do not round.
        # ULP distances must stay in half-precision units, so that mode keeps float16.
        x, y = x.astype(np.float32), y.astype(np.float32)
    if tol.mode == "allclose":
        ok = _allclose_fast(x, y, tol.rtol, tol.atol, tol.equal_nan)
    elif tol.mode == "ulp":
        ok = _ulp_ok(x, y, tol.max_ulps, tol.equal_nan)
    else:
        ok = _l2_ok(x, y, tol.rtol, tol.atol, tol.equal_nan)
    if ok:
        return None
    if not detail:
        return LeafDiff(path, "values")
    return _value_stats(path, x, y, tol)


def _exact(
    path: str, x: np.ndarray, y: np.ndarray, is_float: bool, detail: bool
) -> LeafDiff | None:
    # Bitwise comparison through byte views: NaN payloads and -0.0 count, as "exact" promises.
    if x.nbytes == 0 or memoryview(x).cast("B") == memoryview(y).cast("B"):
        return None
    if not detail:
        return LeafDiff(path, "values")
    if x.ndim == 0 or x.dtype.itemsize == 0:
        return LeafDiff(path, "value differs", 1, 1)
    xb = x.reshape(-1).view(np.uint8).reshape(x.size, -1)
    yb = y.reshape(-1).view(np.uint8).reshape(y.size, -1)
    neq = np.any(xb != yb, axis=1)
    idx = np.flatnonzero(neq)
    if is_float:
        stats = _value_stats(path, x.reshape(-1), y.reshape(-1), None)
        return dataclasses.replace(stats, mismatched=int(idx.size), first_index=int(idx[0]))
    return LeafDiff(path, "values", int(idx.size), int(x.size), first_index=int(idx[0]))


def _overlap(path: str, x: np.ndarray, y: np.ndarray, min_overlap: float) -> LeafDiff | None:
    """Row-wise set overlap of two integer arrays along their last axis (``overlap`` mode).

    A row of ``k`` values agrees when the two rows share at least ``ceil(min_overlap * k)``
    distinct values (duplicates never count twice), so the relation is symmetric.
    """
    k = x.shape[-1]
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    if k == 0 or rows == 0:
        return None
    need = int(np.ceil(min_overlap * k - 1e-9))
    xr, yr = x.reshape(rows, k), y.reshape(rows, k)
    # Distinct values of each row of x that also occur in the same row of y: mark the first
    # occurrence of each value in a sorted row, then test membership row by row.
    xs = np.sort(xr, axis=1)
    first = np.ones_like(xs, dtype=np.bool_)
    first[:, 1:] = xs[:, 1:] != xs[:, :-1]
    member = (xs[:, :, None] == yr[:, None, :]).any(axis=2)
    shared = (first & member).sum(axis=1)
    bad = np.flatnonzero(shared < need)
    if bad.size == 0:
        return None
    return LeafDiff(
        path,
        f"top-k overlap {int(shared.min())}/{k} below {need}/{k} in {bad.size} of {rows} rows",
        mismatched=int(bad.size),
        total=rows,
        first_index=int(bad[0]),
    )


def _allclose_fast(x: np.ndarray, y: np.ndarray, rtol: float, atol: float, equal_nan: bool) -> bool:
    """Symmetric elementwise closeness, chunked and in place.

    The fast test per chunk is ``|x - y| < atol + rtol * |y|``. It implies the symmetric rule
    (``max(|x|, |y|) >= |y|``), needs three fewer passes than it, and honest noise passes it.
    It is strict when ``atol > 0`` so that an infinity in ``y`` (threshold ``inf``) can never
    pass as close (``inf < inf`` is false) without an extra pass looking for infinities. A chunk
    that fails the fast test is re-checked element by element with the exact symmetric rule and
    the NaN/infinity semantics, so the answer never depends on which test decided.
    """
    n = x.size
    if n == 0:
        return True
    real = x.dtype.kind == "f"
    buf_dt = x.dtype if real else np.empty(0, x.dtype).real.dtype
    chunk = max(1024, CHUNK_BYTES // x.dtype.itemsize)
    m = min(chunk, n)
    d = np.empty(m, buf_dt)
    t = np.empty(m, buf_dt)
    o = np.empty(m, np.bool_)
    strict = atol > 0
    with np.errstate(invalid="ignore", over="ignore"):
        for s in range(0, n, chunk):
            xs, ys = x[s : s + chunk], y[s : s + chunk]
            k = xs.size
            dk, tk, ok = d[:k], t[:k], o[:k]
            if real:
                np.subtract(xs, ys, out=dk)
                np.abs(dk, out=dk)
            else:
                np.abs(xs - ys, out=dk)
            np.abs(ys, out=tk)
            tk *= rtol
            tk += atol
            if strict:
                np.less(dk, tk, out=ok)
                if ok.all():
                    continue
            else:
                np.less_equal(dk, tk, out=ok)
                if ok.all() and tk.max() != np.inf:
                    continue
            if not _slow_chunk_ok(xs, ys, rtol, atol, equal_nan):
                return False
    return True


def _slow_chunk_ok(
    xs: np.ndarray, ys: np.ndarray, rtol: float, atol: float, equal_nan: bool
) -> bool:
    return bool(np.all(_close_mask(xs, ys, rtol, atol, equal_nan)))


def _nonfinite_ok(xs: np.ndarray, ys: np.ndarray, equal_nan: bool) -> np.ndarray:
    """Where at least one side is not finite: do the two sides match by the NaN/inf rules?"""
    same_inf = np.isinf(xs) & np.isinf(ys) & (xs == ys)
    if equal_nan:
        same_inf |= np.isnan(xs) & np.isnan(ys)
    return same_inf


def _close_mask(
    xs: np.ndarray, ys: np.ndarray, rtol: float, atol: float, equal_nan: bool
) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(xs) & np.isfinite(ys)
        d = np.abs(xs - ys)
        t = atol + rtol * np.maximum(np.abs(xs), np.abs(ys))
        ok = finite & (d <= t)
    return ok | (~finite & _nonfinite_ok(xs, ys, equal_nan))


def _ordered_ints(x: np.ndarray) -> np.ndarray:
    """Map floats to integers whose order and distance follow the float order (ULPs)."""
    int_t = {2: np.int16, 4: np.int32, 8: np.int64}[x.dtype.itemsize]
    i = x.view(int_t).astype(np.int64)
    bits = x.dtype.itemsize * 8
    # Negative floats are sign-magnitude: flip them so -0.0 and +0.0 are neighbours at 0.
    return np.where(i < 0, -(i & ((1 << (bits - 1)) - 1)), i)


def _ulp_mask(xs: np.ndarray, ys: np.ndarray, max_ulps: int, equal_nan: bool) -> np.ndarray:
    finite = np.isfinite(xs) & np.isfinite(ys)
    a, b = _ordered_ints(xs), _ordered_ints(ys)
    if xs.dtype == np.float64:
        # Across zero the int64 difference of two large magnitudes overflows: add magnitudes
        # as uint64 instead (at most 2**64 - 2, which fits).
        with np.errstate(over="ignore"):
            same = (a >= 0) == (b >= 0)
            across = np.abs(a).astype(np.uint64) + np.abs(b).astype(np.uint64)
            dist = np.where(same, np.abs(a - b).astype(np.uint64), across)
    else:
        dist = np.abs(a - b)
    ok = finite & (dist <= max_ulps)
    return ok | (~finite & _nonfinite_ok(xs, ys, equal_nan))


def _ulp_ok(x: np.ndarray, y: np.ndarray, max_ulps: int, equal_nan: bool) -> bool:
    if x.dtype.kind == "c":
        return _ulp_ok(x.real.copy(), y.real.copy(), max_ulps, equal_nan) and _ulp_ok(
            x.imag.copy(), y.imag.copy(), max_ulps, equal_nan
        )
    for s in range(0, x.size, CHUNK):
        if not np.all(_ulp_mask(x[s : s + CHUNK], y[s : s + CHUNK], max_ulps, equal_nan)):
            return False
    return True


def _l2_ok(x: np.ndarray, y: np.ndarray, rtol: float, atol: float, equal_nan: bool) -> bool:
    dd = xx = yy = 0.0
    for s in range(0, x.size, CHUNK):
        xs, ys = x[s : s + CHUNK], y[s : s + CHUNK]
        finite = np.isfinite(xs) & np.isfinite(ys)
        if not finite.all():
            if not np.all(_nonfinite_ok(xs[~finite], ys[~finite], equal_nan)):
                return False
            xs, ys = xs[finite], ys[finite]
        xs64 = xs.astype(np.complex128 if xs.dtype.kind == "c" else np.float64)
        ys64 = ys.astype(xs64.dtype)
        diff = np.abs(xs64 - ys64)
        dd += float(np.dot(diff, diff))
        ax, ay = np.abs(xs64), np.abs(ys64)
        xx += float(np.dot(ax, ax))
        yy += float(np.dot(ay, ay))
    return bool(np.sqrt(dd) <= atol + rtol * max(np.sqrt(xx), np.sqrt(yy)))


def _value_stats(path: str, x: np.ndarray, y: np.ndarray, tol: Tolerance | None) -> LeafDiff:
    """Full statistics for a differing float leaf (only on the slow, disagreeing path)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        finite = np.isfinite(x) & np.isfinite(y)
        d = np.abs(x.astype(np.complex128 if x.dtype.kind == "c" else np.float64) - y)
        scale = np.maximum(np.abs(x), np.abs(y)).astype(np.float64)
        rel = np.where(scale > 0, d / np.where(scale > 0, scale, 1.0), 0.0)
    if tol is None or tol.mode == "exact":
        bad = ~((x == y) | (np.isnan(x) & np.isnan(y)))
    elif tol.mode == "allclose":
        bad = ~_close_mask(x, y, tol.rtol, tol.atol, tol.equal_nan)
    elif tol.mode == "ulp":
        if x.dtype.kind == "c":
            bad = ~(
                _ulp_mask(x.real.copy(), y.real.copy(), tol.max_ulps, tol.equal_nan)
                & _ulp_mask(x.imag.copy(), y.imag.copy(), tol.max_ulps, tol.equal_nan)
            )
        else:
            bad = ~_ulp_mask(x, y, tol.max_ulps, tol.equal_nan)
    else:
        # L2 judges the leaf as a whole; report the elements that are not bit-equal.
        bad = ~((x == y) | (np.isnan(x) & np.isnan(y) & tol.equal_nan))
    idx = np.flatnonzero(bad)
    fin_d = d[finite]
    fin_r = rel[finite]
    reason = "values" if tol is None or tol.mode != "l2" else "values (relative L2 distance)"
    if tol is not None and tol.mode == "l2":
        dist = float(np.sqrt(np.sum(fin_d**2)))
        norm = float(max(np.linalg.norm(x[finite]), np.linalg.norm(y[finite])))
        reason = f"relative L2 distance {dist / norm if norm else dist:.3g}"
    return LeafDiff(
        path,
        reason,
        mismatched=int(idx.size) if idx.size else int(x.size),
        total=int(x.size),
        max_abs_err=float(fin_d.max()) if fin_d.size else float("nan"),
        max_rel_err=float(fin_r.max()) if fin_r.size else float("nan"),
        first_index=int(idx[0]) if idx.size else None,
    )
