"""A binary Merkle tree over 32-byte leaf hashes (blake3), for signing many records at once.

An executor that answers a batch of replicas signs the batch's root once instead of each
answer (an Ed25519 signature and, on every verifier, its check cost far more than the hashes),
and each answer carries its leaf's position and the sibling hashes up to the root.

Why this shape:

* Leaves and inner nodes are hashed under distinct blake3 key-derivation contexts, so an inner
  node can never be presented as a leaf (the second-preimage trick against plain Merkle trees).
* A level with an odd number of nodes is padded with 32 zero bytes, which is no leaf's hash
  (that would need a blake3 preimage of zero), so every path has the same length
  (``ceil(log2(n))``) and a position's bits say left or right at each level.

Example:
    >>> leaves = [leaf_hash(m) for m in (b"a", b"b", b"c")]
    >>> root = merkle_root(leaves)
    >>> path = merkle_path(leaves, 2)
    >>> len(path), climb(leaves[2], 2, path) == root, climb(leaves[1], 2, path) == root
    (2, True, False)
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3

__all__ = ["MAX_DEPTH", "climb", "leaf_hash", "merkle_path", "merkle_paths", "merkle_root"]

MAX_DEPTH = 24  # paths longer than this are refused: no batch is anywhere near 2**24 records
_LEAF = "bft-ray merkle leaf v1"
_NODE = "bft-ray merkle node v1"
_PAD = bytes(32)


def leaf_hash(record: bytes) -> bytes:
    """The leaf hash of one record's bytes."""
    return blake3.blake3(record, derive_key_context=_LEAF).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(left + right, derive_key_context=_NODE).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        if len(level) % 2:
            level = [*level, _PAD]
            levels[-1] = level
        levels.append([_node(level[i], level[i + 1]) for i in range(0, len(level), 2)])
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over ``leaves`` (a single leaf is its own root)."""
    return _levels(leaves)[-1][0]


def merkle_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[tuple[bytes, ...]]]:
    """The root and every leaf's sibling path, building the tree once."""
    levels = _levels(leaves)
    paths = []
    for i in range(len(leaves)):
        path, pos = [], i
        for level in levels[:-1]:
            path.append(level[pos ^ 1])
            pos >>= 1
        paths.append(tuple(path))
    return levels[-1][0], paths


def merkle_path(leaves: Sequence[bytes], index: int) -> tuple[bytes, ...]:
    """The sibling hashes from leaf ``index`` up to the root."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    return merkle_paths(leaves)[1][index]


def climb(leaf: bytes, position: int, path: Sequence[bytes]) -> bytes:
    """The root that ``leaf`` at ``position`` with sibling ``path`` hashes up to."""
    if len(path) > MAX_DEPTH or not 0 <= position < (1 << len(path)):
        raise ValueError("a Merkle position must fit its path, of at most MAX_DEPTH levels")
    node = leaf
    for sibling in path:
        node = _node(sibling, node) if position & 1 else _node(node, sibling)
        position >>= 1
    return node
