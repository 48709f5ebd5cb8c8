"""Output comparison: wire format, canonical form, digests, tolerance rules, clustering, diffs."""

from bft_ray.compare.canonical import Canonical, Leaf, canonicalize, tree_map
from bft_ray.compare.cluster import Cluster, cluster_outputs
from bft_ray.compare.diff import render_comparison, render_disagreement
from bft_ray.compare.digest import digest, digest_canonical, digest_wire
from bft_ray.compare.tolerance import Comparison, LeafDiff, compare, leaves_agree
from bft_ray.compare.wire import (
    UnsupportedTypeError,
    WireFormatError,
    WireValue,
    decode,
    decode_canonical,
    encode,
)

__all__ = [
    "Canonical",
    "Cluster",
    "Comparison",
    "Leaf",
    "LeafDiff",
    "UnsupportedTypeError",
    "WireFormatError",
    "WireValue",
    "canonicalize",
    "cluster_outputs",
    "compare",
    "decode",
    "decode_canonical",
    "digest",
    "digest_canonical",
    "digest_wire",
    "encode",
    "leaves_agree",
    "render_comparison",
    "render_disagreement",
    "tree_map",
]
