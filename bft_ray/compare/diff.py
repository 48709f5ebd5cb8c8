"""Readable diffs for disagreeing outputs.

Example:
    >>> import numpy as np
    >>> from bft_ray.config import Tolerance
    >>> from bft_ray.compare.tolerance import compare
    >>> c = compare({"w": np.zeros(4)}, {"w": np.array([0, 0, 0.5, 0])}, Tolerance())
    >>> print(render_comparison(c, "e0", "e1"))
    e0 vs e1: 1 leaf/leaves differ
      w: 1/4 elements outside tolerance, max abs err 0.5, max rel err 1, first at [2]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bft_ray.compare.cluster import Cluster
from bft_ray.compare.tolerance import Comparison, LeafDiff, compare
from bft_ray.config import Tolerance

__all__ = ["render_comparison", "render_disagreement", "render_leaf_diff"]

_MAX_LEAVES = 8


def render_leaf_diff(d: LeafDiff) -> str:
    """One line describing how a leaf differs."""
    if not d.reason.startswith(("values", "relative L2")):
        return f"{d.path}: {d.reason}"
    parts = [f"{d.path}: {d.mismatched}/{d.total} elements outside tolerance"]
    if d.reason.startswith("relative L2"):
        parts[0] = f"{d.path}: {d.reason}, {d.mismatched}/{d.total} elements differ"
    if d.max_abs_err == d.max_abs_err:  # not NaN
        parts.append(f"max abs err {d.max_abs_err:.3g}")
        parts.append(f"max rel err {d.max_rel_err:.3g}")
    if d.first_index is not None:
        parts.append(f"first at [{d.first_index}]")
    return ", ".join(parts)


def render_comparison(c: Comparison, a_name: str, b_name: str) -> str:
    """Several lines describing a :class:`Comparison` between two named outputs."""
    if c.agree:
        return f"{a_name} vs {b_name}: agree"
    lines = [f"{a_name} vs {b_name}: {c.reason}"]
    for d in c.leaf_diffs[:_MAX_LEAVES]:
        lines.append("  " + render_leaf_diff(d))
    if len(c.leaf_diffs) > _MAX_LEAVES:
        lines.append(f"  ... and {len(c.leaf_diffs) - _MAX_LEAVES} more leaves")
    return "\n".join(lines)


def render_disagreement(
    clusters: Sequence[Cluster],
    outputs: Mapping[str, Any],
    tolerance: Tolerance,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Describe every cluster and how each differs from the largest one."""
    labels = labels or {}

    def name(k: str) -> str:
        return labels.get(k, k)

    lines = [f"tolerance: {tolerance.describe()}"]
    for i, c in enumerate(clusters):
        members = ", ".join(name(m) for m in c.members)
        lines.append(f"cluster {i}: {c.size} output(s) [{members}] digest {c.digest.hex()[:16]}")
    if len(clusters) > 1:
        ref = clusters[0]
        for c in clusters[1:]:
            comp = compare(outputs[ref.representative], outputs[c.representative], tolerance)
            lines.append(render_comparison(comp, name(ref.representative), name(c.representative)))
    return "\n".join(lines)
