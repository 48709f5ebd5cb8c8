"""Pre-aggregators: transform the ``n`` input vectors before any aggregator sees them.

They compose with every aggregator (``Pipeline([NNM(f)], Krum(f))`` or
``make_aggregator("nnm+krum", f)``) and reduce the effect of heterogeneous honest data
(NNM, bucketing) or of large Byzantine vectors (ARC, static clipping).

=================  =======================  ==================================================
rule               condition                reference
=================  =======================  ==================================================
NNM                n > 2f                   Allouah et al., AISTATS 2023 ("Fixing by mixing")
Bucketing          n >= 1 (+ downstream)    Karimireddy, He & Jaggi, ICLR 2022
ARC                n > 2f                   Allouah et al., NeurIPS 2024 (adaptive clipping)
StaticClipping     n >= 1                   norm clipping at a fixed threshold ``c``
=================  =======================  ==================================================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bft_ray.errors import ConfigError
from bft_ray.robust.aggregators import pairwise_sq_distances
from bft_ray.robust.base import NonFinitePolicy, PreAggregator

__all__ = ["ARC", "NNM", "Bucketing", "StaticClipping"]


def _clip_rows(x: Tensor, threshold: Tensor | float) -> Tensor:
    """Scale every row whose norm exceeds ``threshold`` down to norm ``threshold``."""
    norms = x.norm(dim=1)
    threshold = torch.as_tensor(threshold, dtype=x.dtype, device=x.device)
    # where() instead of min(1, c / norm): a zero row with a zero threshold would give 0/0.
    scale = torch.where(norms > threshold, threshold / norms, torch.ones_like(norms))
    return x * scale[:, None]


class NNM(PreAggregator):
    """Nearest-neighbour mixing: replace each vector by the mean of its ``n - f`` nearest
    neighbours (itself included). Needs ``n > 2f``. Ties go to the lower index.

    Example:
        >>> import numpy as np
        >>> NNM(f=1)(np.array([[0.0], [1.0], [3.0]])).tolist()
        [[0.5], [0.5], [2.0]]
    """

    name = "nnm"
    breakdown = "n > 2f"

    def _transform(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        k = n - f
        if k == n:
            return x.mean(dim=0, keepdim=True).expand(n, -1).clone()
        nearest = torch.argsort(pairwise_sq_distances(x), dim=1, stable=True)[:, :k]
        weights = torch.zeros((n, n), dtype=x.dtype, device=x.device)
        weights.scatter_(1, nearest, 1.0 / k)
        return weights @ x


class Bucketing(PreAggregator):
    """Bucketing: shuffle the inputs, then average consecutive buckets of ``s`` vectors.

    ``n`` inputs become ``ceil(n / s)`` bucket means (the last bucket may be smaller). At most
    ``f`` buckets contain a Byzantine input, so the next stage still runs with ``f`` and must
    satisfy its own condition on ``ceil(n / s)`` rows. The shuffle is drawn from
    ``(seed, call number)``, so replicas that start from the same state agree; the call
    counter is the rule's state (:meth:`state_dict`).

    Args:
        f: Byzantine inputs (passed on to the aggregator; bucketing itself accepts any ``n``).
        s: Bucket size, ``>= 1``.
        seed: Seed of the shuffles.

    Example:
        >>> import numpy as np
        >>> Bucketing(f=0, s=4)(np.array([[1.0], [2.0], [3.0], [6.0]])).tolist()
        [[3.0]]
    """

    name = "bucketing"
    breakdown = "n >= 1"

    def __init__(
        self, f: int = 0, *, s: int = 2, seed: int = 0, nonfinite: NonFinitePolicy = "drop"
    ) -> None:
        super().__init__(f, nonfinite=nonfinite)
        if int(s) < 1:
            raise ConfigError(f"Bucketing needs a bucket size s >= 1 (got s={s})")
        self.s = int(s)
        self.seed = int(seed)
        self.calls = 0

    def min_n(self, f: int) -> int:
        return 1

    def output_rows(self, n: int) -> int:
        return math.ceil(n / self.s)

    def _transform(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        perm = np.random.default_rng([self.seed, self.calls]).permutation(n)
        self.calls += 1
        shuffled = x[torch.as_tensor(perm, device=x.device)]
        return torch.stack([chunk.mean(dim=0) for chunk in shuffled.split(self.s)])

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))

    def __repr__(self) -> str:
        return f"Bucketing(f={self.f}, s={self.s}, seed={self.seed})"


class ARC(PreAggregator):
    """Adaptive robust clipping: clip the ``k = floor(2 (f/n) (n - f))`` largest vectors to the
    norm of the ``(k+1)``-th largest. Needs ``n > 2f``. No threshold to tune.

    Example:
        >>> import numpy as np
        >>> out = ARC(f=1)(np.array([[1.0, 0.0], [0.0, 2.0], [30.0, 40.0]]))
        >>> out.tolist()  # k = floor(2 * 1/3 * 2) = 1: the largest is clipped to norm 2
        [[1.0, 0.0], [0.0, 2.0], [1.2, 1.6]]
    """

    name = "arc"
    breakdown = "n > 2f"

    def _transform(self, x: Tensor, f: int) -> Tensor:
        n = x.shape[0]
        k = (2 * f * (n - f)) // n
        if k == 0:
            return x.clone()
        threshold = x.norm(dim=1).sort(descending=True).values[k]
        return _clip_rows(x, threshold)


class StaticClipping(PreAggregator):
    """Clip every vector to norm at most ``c``. Accepts any ``n >= 1``.

    Args:
        f: Byzantine inputs (unused by clipping itself; passed on in pipelines).
        c: Clipping threshold, ``> 0``.

    Example:
        >>> import numpy as np
        >>> StaticClipping(c=1.0)(np.array([[3.0, 4.0], [0.3, 0.4]])).round(6).tolist()
        [[0.6, 0.8], [0.3, 0.4]]
    """

    name = "clipping"
    breakdown = "n >= 1"

    def __init__(self, f: int = 0, *, c: float = 2.0, nonfinite: NonFinitePolicy = "drop"):
        super().__init__(f, nonfinite=nonfinite)
        if not c > 0:
            raise ConfigError(f"StaticClipping needs a threshold c > 0 (got c={c})")
        self.c = float(c)

    def min_n(self, f: int) -> int:
        return 1

    def _transform(self, x: Tensor, f: int) -> Tensor:
        return _clip_rows(x, self.c)

    def __repr__(self) -> str:
        return f"StaticClipping(f={self.f}, c={self.c})"
