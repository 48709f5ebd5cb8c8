"""Compact commitments to the last hidden states of a generation (in the spirit of TOPLOC).

For every chunk of ``chunk`` (default 32) generated tokens the generator takes the ``k``
(default 128) entries of largest magnitude among the chunk's last hidden states (flattened,
``chunk * d_model`` values), and commits to the map ``index -> bf16 bits of the value`` as the
unique polynomial of degree ``< k`` over the prime field ``GF(65497)`` through the points
``(index mod p, bits)``. Only the ``k`` coefficients are sent (2 bytes each): the indices are
*not*, because the checker recomputes the hidden states, finds its own top-k indices and
evaluates the polynomial there. Where its indices are the generator's, the polynomial returns
the generator's values; elsewhere it returns noise, which shows as a sign/exponent mismatch.

Wire format (little-endian)::

    b"TL" | version u8 (=1) | chunk u8 | n_chunks u16 |
    n_chunks x ( count u16 | count x coefficient u16 )

With ``k = 128`` that is 258 bytes per 32 tokens plus a 6-byte header per generation.

The check (:func:`check_commitment`) computes, per chunk, the fraction of the checker's top-k
positions whose decoded sign and exponent differ from its own bf16 value, and the mean relative
error of the values that do match. Both must stay within :class:`CommitmentTolerance`.

Example:
    >>> import torch
    >>> h = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    >>> blob = commit(h, k=32)
    >>> len(blob)
    138
    >>> check_commitment(h + 1e-7, blob, k=32).ok
    True
    >>> check_commitment(h * 1.01, blob, k=32).ok
    False
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np
import torch
from pydantic import ConfigDict, Field

from bft_ray.config import _Model

__all__ = [
    "PRIME",
    "CommitmentCheck",
    "CommitmentTolerance",
    "check_commitment",
    "commit",
    "decode_commitment",
]

PRIME = 65497  # largest prime below 2**16; every finite bf16 bit pattern (< 0xFF80) is below it
_MAGIC = b"TL"
_VERSION = 1
_INV: np.ndarray | None = None


def _inverses() -> np.ndarray:
    """Table of multiplicative inverses mod PRIME (index 0 unused)."""
    global _INV
    if _INV is None:
        a = np.arange(PRIME, dtype=np.int64)
        r = np.ones(PRIME, dtype=np.int64)
        e = PRIME - 2
        base = a.copy()
        while e:
            if e & 1:
                r = r * base % PRIME
            base = base * base % PRIME
            e >>= 1
        r[0] = 0
        _INV = r
    return _INV


def _interpolate(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Monomial coefficients (low to high) of the polynomial through ``(x_i, y_i)`` mod PRIME."""
    inv = _inverses()
    n = x.size
    c = y.astype(np.int64) % PRIME
    for j in range(1, n):  # Newton divided differences, one column at a time
        c[j:] = (c[j:] - c[j - 1 : n - 1]) % PRIME * inv[(x[j:] - x[: n - j]) % PRIME] % PRIME
    poly = np.array([c[n - 1]], dtype=np.int64)
    for i in range(n - 2, -1, -1):  # Newton form -> monomial form
        nxt = np.zeros(poly.size + 1, dtype=np.int64)
        nxt[1:] = poly
        nxt[:-1] = (nxt[:-1] - x[i] * poly) % PRIME
        nxt[0] = (nxt[0] + c[i]) % PRIME
        poly = nxt
    return poly


def _evaluate(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Evaluate polynomials mod PRIME: ``coeffs`` is ``(k,)`` or ``(rows, k)``, ``x`` matches.

    Row ``r`` of a 2-D call evaluates polynomial ``coeffs[r]`` (low to high) at every point of
    ``x[r]``. The powers ``x**0 .. x**(k-1)`` are built by doubling (``log2 k`` array steps
    instead of Horner's ``k``), then summed against the coefficients: each product is below
    ``PRIME**2 < 2**32``, so a sum of up to ``2**31`` of them stays inside int64.
    """
    co = np.asarray(coeffs, dtype=np.int64)
    if co.ndim == 1:
        return _evaluate(co[None], np.asarray(x)[None])[0]
    xm = (np.asarray(x, dtype=np.int64) % PRIME)[..., None]  # (rows, points, 1)
    k = co.shape[-1]
    powers = np.ones((*xm.shape[:-1], 1), dtype=np.int64)
    step = xm  # x ** len(powers)
    while powers.shape[-1] < k:
        powers = np.concatenate([powers, powers * step % PRIME], axis=-1)
        step = step * step % PRIME
    return (powers[..., :k] * co[:, None, :]).sum(axis=-1) % PRIME


def _bf16_bits(values: torch.Tensor) -> np.ndarray:
    return values.to(torch.bfloat16).view(torch.int16).numpy().astype(np.int64) & 0xFFFF


def _bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _topk_indices(flat: torch.Tensor, k: int) -> np.ndarray:
    return torch.topk(flat.float().abs(), k, sorted=True).indices.numpy().astype(np.int64)


def _chunk_k(rows: int, d: int, k: int) -> int:
    return min(k, rows * d)


def _chunk_topk(hidden: torch.Tensor, k: int, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per chunk: the top-k indices (by magnitude, flattened) and their values' bf16 bits.

    The generator and the checker both call this, so they pick indices the same way. Full
    chunks go through one batched top-k; a last partial chunk through its own.
    """
    t, d = hidden.shape
    full = t // chunk
    out: list[tuple[np.ndarray, np.ndarray]] = []
    if full:
        blocks = hidden[: full * chunk].reshape(full, chunk * d)
        idx = torch.topk(blocks.float().abs(), _chunk_k(chunk, d, k), dim=1, sorted=True).indices
        bits = _bf16_bits(torch.gather(blocks, 1, idx))
        out += list(zip(idx.numpy().astype(np.int64), bits))
    if full * chunk < t:
        block = hidden[full * chunk :].reshape(-1)
        idx1 = _topk_indices(block, _chunk_k(t - full * chunk, d, k))
        out.append((idx1, _bf16_bits(block[idx1])))
    return out


def commit(hidden: torch.Tensor, k: int = 128, chunk: int = 32) -> bytes:
    """Commit to ``hidden`` (``(tokens, d_model)``, the last hidden states of one generation).

    Args:
        hidden: One row per generated token.
        k: Values committed per chunk (at most ``chunk * d_model``).
        chunk: Tokens per chunk (1..255).

    Returns:
        The commitment bytes (format in the module docstring).
    """
    if not 1 <= chunk <= 255 or not 1 <= k <= 65535:
        raise ValueError(f"chunk={chunk} must be in 1..255 and k={k} in 1..65535")
    t = hidden.shape[0]
    n_chunks = math.ceil(t / chunk)
    parts = [_MAGIC, struct.pack("<BBH", _VERSION, chunk, n_chunks)]
    for idx, bits in _chunk_topk(hidden, k, chunk):
        kc = idx.size
        xs = idx % PRIME
        _, first = np.unique(xs, return_index=True)  # drop indices that collide mod p
        keep = np.sort(first)
        xs, ys = xs[keep], bits[keep]
        coeffs = _interpolate(xs, ys)
        coeffs = np.concatenate([coeffs, np.zeros(kc - coeffs.size, dtype=np.int64)])
        parts.append(struct.pack("<H", kc))
        parts.append(coeffs.astype("<u2").tobytes())
    return b"".join(parts)


def decode_commitment(blob: bytes) -> tuple[int, list[np.ndarray]]:
    """Parse a commitment strictly: ``(chunk, [coefficients per chunk])``.

    Raises:
        ValueError: When the bytes are not a well-formed commitment.
    """
    if not isinstance(blob, bytes | bytearray) or len(blob) < 6 or blob[:2] != _MAGIC:
        raise ValueError("not a commitment (bad magic or too short)")
    version, chunk, n_chunks = struct.unpack_from("<BBH", blob, 2)
    if version != _VERSION or chunk == 0:
        raise ValueError(f"unsupported commitment version {version} or chunk {chunk}")
    off, out = 6, []
    for _ in range(n_chunks):
        if off + 2 > len(blob):
            raise ValueError("commitment truncated")
        (kc,) = struct.unpack_from("<H", blob, off)
        off += 2
        end = off + 2 * kc
        if end > len(blob):
            raise ValueError("commitment truncated")
        co = np.frombuffer(blob[off:end], dtype="<u2").astype(np.int64)
        if np.any(co >= PRIME):
            raise ValueError("commitment coefficient out of field")
        out.append(co)
        off = end
    if off != len(blob):
        raise ValueError(f"{len(blob) - off} trailing bytes after the commitment")
    return chunk, out


class CommitmentTolerance(_Model):
    """Bounds on how far a recomputation may differ from a commitment, per chunk.

    Args:
        max_mismatch_frac: Largest fraction of the checker's top-k positions whose decoded sign
            or exponent differs from its own value (index-set churn near the k-th value and
            values straddling a power of two cause a few honest ones).
        max_mean_rel_err: Largest mean relative error of the values that match.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_mismatch_frac: float = Field(0.1, ge=0.0, le=1.0)
    max_mean_rel_err: float = Field(1e-3, ge=0.0)


@dataclasses.dataclass(frozen=True)
class CommitmentCheck:
    """Outcome of :func:`check_commitment`.

    Attributes:
        ok: Whether every chunk is within the tolerance.
        reason: Why not (empty when ok).
        mismatch_frac: Worst chunk's sign/exponent mismatch fraction.
        mean_rel_err: Worst chunk's mean relative error over matching values.
    """

    ok: bool
    reason: str = ""
    mismatch_frac: float = 0.0
    mean_rel_err: float = 0.0


def check_commitment(
    hidden: torch.Tensor,
    blob: bytes,
    k: int = 128,
    chunk: int = 32,
    tolerance: CommitmentTolerance | None = None,
) -> CommitmentCheck:
    """Check a commitment against recomputed hidden states (``(tokens, d_model)``). Never raises."""
    tol = tolerance or CommitmentTolerance()
    try:
        got_chunk, coeffs = decode_commitment(blob)
    except ValueError as exc:
        return CommitmentCheck(False, f"malformed commitment: {exc}", 1.0, math.inf)
    t, d = hidden.shape
    n_chunks = math.ceil(t / chunk)
    if got_chunk != chunk or len(coeffs) != n_chunks:
        return CommitmentCheck(
            False,
            f"commitment has {len(coeffs)} chunks of {got_chunk} tokens, expected {n_chunks} of "
            f"{chunk} for {t} tokens",
            1.0,
            math.inf,
        )
    sizes = [_chunk_k(min(chunk, t - c * chunk), d, k) for c in range(n_chunks)]
    for c, (co, kc) in enumerate(zip(coeffs, sizes)):
        if co.size != kc:
            return CommitmentCheck(
                False, f"chunk {c} commits {co.size} values, expected {kc}", 1.0, math.inf
            )
    # All chunks' top-k at once and one Horner pass over the full chunks: the per-chunk loop
    # this replaces was most of the check's cost on small models.
    picked = _chunk_topk(hidden, k, chunk)
    full = t // chunk
    rows: list[tuple[np.ndarray, np.ndarray]] = []  # (claimed bits, own bits) per chunk
    if full:
        idx = np.stack([i for i, _ in picked[:full]])
        claimed = _evaluate(np.stack(coeffs[:full]), idx)
        rows += [(claimed[c], picked[c][1]) for c in range(full)]
    if full < n_chunks:
        idx1, own1 = picked[-1]
        rows.append((_evaluate(coeffs[-1], idx1), own1))
    worst_mis, worst_err = 0.0, 0.0
    for c, (claimed, own) in enumerate(rows):
        kc = sizes[c]
        # Sign and exponent are the top 9 bits of a bf16 pattern; a decoded value at an index
        # the generator did not commit is uniform noise and almost never matches them.
        match = (claimed >> 7) == (own >> 7)
        mis = 1.0 - float(match.mean())
        if match.any():
            a = _bits_to_float(claimed[match]).astype(np.float64)
            b = _bits_to_float(own[match]).astype(np.float64)
            err = float(np.mean(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))
        else:
            err = math.inf
        worst_mis, worst_err = max(worst_mis, mis), max(worst_err, err)
        if mis > tol.max_mismatch_frac or err > tol.max_mean_rel_err:
            return CommitmentCheck(
                False,
                f"chunk {c}: {mis:.1%} of top-{kc} values mismatch in sign/exponent "
                f"(max {tol.max_mismatch_frac:.1%}), mean relative error {err:.3g} "
                f"(max {tol.max_mean_rel_err:.3g})",
                worst_mis,
                worst_err,
            )
    return CommitmentCheck(True, "", worst_mis, worst_err)
