"""Verdicts: from replica outputs to an accepted cluster, an escalation, or a failure.

Pure functions, no Ray: the verifier actor feeds them what arrived and acts on the answer.

Rules (see docs/architecture.md):

* Accept the largest agreement cluster once it reaches ``quorum_for(total)``, where ``total``
  counts outputs received plus replicas still running. That quorum is a strict majority of
  everything that can still arrive, so no later output can produce a different accepted answer,
  and the verdict need not wait for stragglers.
* When all replicas are in and no cluster reaches the quorum, escalate: add the fewest replicas
  that could let the largest cluster reach the (grown) quorum, as long as the total stays within
  ``max_replicas``. If no such number exists, fail with :class:`NoQuorumError`.

Example:
    >>> from bft_ray.config import Policy
    >>> escalation_size(best=1, compared=3, policy=Policy(replicas=3, max_replicas=5))
    2
    >>> escalation_size(best=1, compared=3, policy=Policy(replicas=3, max_replicas=4)) is None
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from bft_ray.compare.canonical import Canonical
from bft_ray.compare.cluster import Cluster, cluster_outputs
from bft_ray.config import Policy

__all__ = ["Evaluation", "escalation_size", "evaluate"]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The state of a verdict after the outputs seen so far."""

    clusters: tuple[Cluster, ...]
    needed: int
    accepted: Cluster | None

    @property
    def best_size(self) -> int:
        return self.clusters[0].size if self.clusters else 0


def evaluate(
    outputs: Mapping[str, Canonical],
    digests: Mapping[str, bytes],
    pending: int,
    policy: Policy,
) -> Evaluation:
    """Cluster what arrived and decide whether a cluster is accepted already."""
    clusters = tuple(cluster_outputs(outputs, policy.tolerance, digests)) if outputs else ()
    needed = policy.quorum_for(len(outputs) + pending)
    accepted = clusters[0] if clusters and clusters[0].size >= needed else None
    return Evaluation(clusters, needed, accepted)


def escalation_size(best: int, compared: int, policy: Policy) -> int | None:
    """Fewest extra replicas that could still produce a quorum, or ``None`` if none can."""
    limit = int(policy.max_replicas or policy.replicas) - compared
    for k in range(1, limit + 1):
        if best + k >= policy.quorum_for(compared + k):
            return k
    return None
