"""Output comparison: canonical form, digests, tolerance rules, clustering and diffs."""

from bft_ray.compare.canonical import Canonical, Leaf, canonicalize, tree_map
from bft_ray.compare.cluster import Cluster, cluster_outputs
from bft_ray.compare.diff import render_comparison, render_disagreement
from bft_ray.compare.digest import digest, digest_canonical
from bft_ray.compare.tolerance import Comparison, LeafDiff, compare, leaves_agree

__all__ = [
    "Canonical",
    "Cluster",
    "Comparison",
    "Leaf",
    "LeafDiff",
    "canonicalize",
    "cluster_outputs",
    "compare",
    "digest",
    "digest_canonical",
    "leaves_agree",
    "render_comparison",
    "render_disagreement",
    "tree_map",
]
