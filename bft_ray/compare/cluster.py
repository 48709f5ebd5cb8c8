"""Deterministic agreement clustering of replica outputs.

Given the outputs of ``r`` replicas, :func:`cluster_outputs` groups them into clusters of
outputs that agree within the tolerance. The verdict accepts the largest cluster when it reaches
the quorum.

Algorithm (maximum-degree representatives):

1. Sort outputs by ``(digest, output id)``; outputs with equal digests are bit-identical and
   compared once. Every other pair is compared under the tolerance (``r`` is small; a pair is
   never compared twice).
2. The *degree* of an output is how many of the not-yet-clustered outputs (itself included)
   agree with it. The output with the highest degree, ties broken by the smallest
   ``(digest, id)``, becomes a representative; its cluster is every unclustered output that
   agrees with it. Repeat on the rest.

Why this shape:

* The result depends only on the set of ``(id, output)`` pairs, never on the order in which
  outputs arrived, because every choice is made on sorted keys and the comparison is symmetric.
* Tolerance is not transitive: ``a ~ b`` and ``b ~ c`` do not imply ``a ~ c``. Every member of a
  cluster agrees with its representative, not necessarily with each other, and the accepted
  value is the representative's output. Outputs that all agree pairwise always land in one
  cluster (whichever of them is picked, it agrees with all the others), so honest numeric noise
  inside the tolerance never splits honest replicas.
* Choosing the best-connected output as representative (rather than the first one seen) means
  an outlier that sits at the edge of the tolerance cannot become the centre and pull honest
  replicas apart.
* With fewer than ``q`` colluders, any cluster of size ``q`` contains an honest member, so the
  accepted value is within the tolerance of an honest output.

Example:
    >>> import numpy as np
    >>> from bft_ray.config import Tolerance
    >>> outs = {"e0": np.ones(3), "e1": np.ones(3) + 1e-9, "e2": np.zeros(3)}
    >>> [c.members for c in cluster_outputs(outs, Tolerance(rtol=1e-6))]
    [('e0', 'e1'), ('e2',)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bft_ray.compare.canonical import Canonical, canonicalize
from bft_ray.compare.digest import digest_canonical
from bft_ray.compare.tolerance import compare
from bft_ray.config import Tolerance

__all__ = ["Cluster", "cluster_outputs"]


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Outputs that agree with a common representative.

    Attributes:
        representative: Id of the output whose value the cluster stands for.
        members: Ids of all outputs in the cluster (sorted), the representative included.
        digest: Digest of the representative's output.
    """

    representative: str
    members: tuple[str, ...]
    digest: bytes

    @property
    def size(self) -> int:
        return len(self.members)


def cluster_outputs(
    outputs: Mapping[str, Any],
    tolerance: Tolerance,
    digests: Mapping[str, bytes] | None = None,
) -> list[Cluster]:
    """Cluster outputs by agreement under ``tolerance``.

    Args:
        outputs: Output id (for example an executor id) -> output pytree or
            :class:`Canonical` form.
        tolerance: The task's tolerance.
        digests: Precomputed digests per id (they are recomputed when missing).

    Returns:
        Clusters, largest first (ties: smallest representative key). Every id appears in
        exactly one cluster.
    """
    canon: dict[str, Canonical] = {
        k: v if isinstance(v, Canonical) else canonicalize(v) for k, v in outputs.items()
    }
    dig: dict[str, bytes] = {
        k: (digests[k] if digests and k in digests else digest_canonical(c))
        for k, c in canon.items()
    }
    keys = sorted(canon, key=lambda k: (dig[k], k))
    by_digest: dict[bytes, Canonical] = {}
    for k in keys:
        by_digest.setdefault(dig[k], canon[k])

    cache: dict[tuple[bytes, bytes], bool] = {}

    def agree(i: str, j: str) -> bool:
        di, dj = dig[i], dig[j]
        if di == dj:
            return True
        pair = (di, dj) if di < dj else (dj, di)
        if pair not in cache:
            cache[pair] = compare(
                by_digest[pair[0]], by_digest[pair[1]], tolerance, detail=False
            ).agree
        return cache[pair]

    remaining = list(keys)
    clusters: list[Cluster] = []
    while remaining:
        degree = {k: sum(agree(k, j) for j in remaining) for k in remaining}
        # max degree; among equals the first in (digest, id) order, as `remaining` is sorted.
        rep = max(remaining, key=lambda k: degree[k])
        members = tuple(sorted(j for j in remaining if agree(rep, j)))
        clusters.append(Cluster(rep, members, dig[rep]))
        remaining = [j for j in remaining if j not in members]
    clusters.sort(key=lambda c: (-c.size, c.digest, c.representative))
    return clusters
