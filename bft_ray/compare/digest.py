"""Exact digests of task outputs: blake3 over the canonical wire bytes.

The digest of an output is ``blake3`` in key-derivation mode over its canonical encoding
(:mod:`bft_ray.compare.wire`), with context string :data:`DIGEST_DOMAIN`. Because the
encoding is injective (one encoding per value, and the decoder accepts nothing else), two
outputs have the same digest only if they are the same value in type, structure, dtype,
shape and bits, or blake3 has a collision.

Why this shape:

* Domain separation comes from ``derive_key_context``, not from a prefix fed into the hasher:
  the derived key costs one tiny hash up front, and the wire bytes themselves still start
  blake3 from a fresh state, so its multithreaded path splits them freely (a prefix measured
  about 25% slower on multi-MiB inputs). ``benchmarks/bench_compare.py`` measures this digest
  against raw blake3 on the same bytes.
* Inputs of at least :data:`PARALLEL_BYTES` are hashed with blake3's multithreaded mode: on a
  GPU host the CPU is otherwise idle while the verifier waits for the digest.
* The digest covers exactly the bytes the executor signed and the verifier parsed
  (:func:`digest_wire`), so no re-encoding happens on the trusted side.

Example:
    >>> import numpy as np
    >>> d1 = digest({"x": np.ones(4, dtype=np.float32)})
    >>> d1 == digest({"x": np.ones(4, dtype=np.float32)}), len(d1)
    (True, 32)
    >>> digest({"x": np.ones(4, dtype=np.float64)}) == d1   # dtype is part of the answer
    False
    >>> from bft_ray.compare.wire import encode
    >>> digest_wire(encode([1, "a"])) == digest([1, "a"])
    True
"""

from __future__ import annotations

from typing import Any

import blake3

from bft_ray.compare.canonical import Canonical

__all__ = [
    "DIGEST_DOMAIN",
    "PARALLEL_BYTES",
    "digest",
    "digest_canonical",
    "digest_wire",
    "hex_digest",
]

DIGEST_DOMAIN = "bft-ray output digest v3"

# Inputs at least this large are hashed with blake3's multithreaded mode.
PARALLEL_BYTES = 1 << 20
_PARALLEL_BYTES = PARALLEL_BYTES  # old name
_COALESCE = 1 << 16  # parts smaller than this are joined before hashing (fewer update calls)


def digest_wire(data: bytes | memoryview) -> bytes:
    """The 32-byte digest of canonical wire bytes (hashed as given, zero-copy)."""
    n = data.nbytes if isinstance(data, memoryview) else len(data)
    threads = blake3.blake3.AUTO if n >= PARALLEL_BYTES else 1
    return blake3.blake3(data, derive_key_context=DIGEST_DOMAIN, max_threads=threads).digest()


def digest_canonical(canonical: Canonical) -> bytes:
    """The 32-byte digest of a canonical form: ``digest_wire(canonical.wire)``."""
    return digest_wire(canonical.wire)


def digest(output: Any) -> bytes:
    """The 32-byte digest of ``output``: equal to ``digest_wire(encode(output))``.

    The encoding is hashed part by part, so large leaves are never copied.

    A :class:`~bft_ray.compare.canonical.Canonical` is not re-encoded: its digest is
    :func:`digest_canonical`.

    Raises:
        UnsupportedTypeError: For a value with no canonical form.
    """
    if isinstance(output, Canonical):
        return digest_canonical(output)
    from bft_ray.compare.wire import encode_parts

    # Hash the encoding's parts as they are (array data as zero-copy views) instead of joining
    # them first: the same bytes, so the same digest, without copying the leaves.
    parts, total = encode_parts(output)
    threads = blake3.blake3.AUTO if total >= PARALLEL_BYTES else 1
    hasher = blake3.blake3(derive_key_context=DIGEST_DOMAIN, max_threads=threads)
    small: list = []
    for part in parts:
        if len(part) < _COALESCE:
            small.append(part)
            continue
        if small:
            hasher.update(b"".join(small))
            small.clear()
        hasher.update(part)
    if small:
        hasher.update(b"".join(small))
    return hasher.digest()


def hex_digest(value: bytes) -> str:
    """Short hex form of a digest for logs and tables."""
    return value.hex()[:16]
