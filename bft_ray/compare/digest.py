"""Exact digests of canonical outputs with blake3.

The digest covers the structure string and, for every leaf, a length-prefixed header (path,
dtype tag, shape, byte length) followed by the leaf's bytes. Leaf bytes are fed to blake3 as a
``memoryview`` of the contiguous array, so hashing never copies the data: on large outputs the
digest runs at raw blake3 speed (see ``benchmarks/bench_compare.py``).

Example:
    >>> import numpy as np
    >>> d1 = digest({"x": np.ones(4, dtype=np.float32)})
    >>> d2 = digest({"x": np.ones(4, dtype=np.float32)})
    >>> d1 == d2, len(d1)
    (True, 32)
    >>> digest({"x": np.ones(4, dtype=np.float64)}) == d1   # dtype is part of the answer
    False
"""

from __future__ import annotations

import struct
from typing import Any

import blake3

from bft_ray.compare.canonical import Canonical, canonicalize

__all__ = ["DIGEST_DOMAIN", "digest", "digest_canonical", "hex_digest"]

DIGEST_DOMAIN = b"bft-ray/output-digest/v1"

# Leaves above this size are hashed with blake3's multithreaded mode: on a GPU host the CPU is
# otherwise idle while the verifier waits for the digest.
_PARALLEL_BYTES = 1 << 22


def _bytes_field(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def digest_canonical(canonical: Canonical) -> bytes:
    """The 32-byte blake3 digest of a canonical form."""
    big = canonical.nbytes >= _PARALLEL_BYTES
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if big else 1)
    hasher.update(DIGEST_DOMAIN)
    hasher.update(_bytes_field(canonical.structure.encode()))
    hasher.update(struct.pack("<Q", len(canonical.leaves)))
    for leaf in canonical.leaves:
        header = (
            _bytes_field(leaf.path.encode())
            + _bytes_field(leaf.dtype.encode())
            + struct.pack(f"<Q{len(leaf.shape)}Q", len(leaf.shape), *leaf.shape)
            + struct.pack("<Q", leaf.array.nbytes)
        )
        hasher.update(header)
        if leaf.array.nbytes:
            # Zero-copy: blake3 reads the array's buffer directly.
            hasher.update(memoryview(leaf.array).cast("B"))
    return hasher.digest()


def digest(output: Any) -> bytes:
    """Canonicalise ``output`` and return its 32-byte digest."""
    return digest_canonical(canonicalize(output))


def hex_digest(value: bytes) -> str:
    """Short hex form of a digest for logs and tables."""
    return value.hex()[:16]
