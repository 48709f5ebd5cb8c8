"""The generation tolerance: tokens exact, log-probabilities within a bound, top-k overlap.

A generation (:meth:`bft_ray.inference.generate.Generation.to_wire`) is a dict with ``tokens``
(int64), ``logprobs`` (float32) and ``topk_ids`` (int32, ``(..., k)``). The tolerance is an
ordinary :class:`~bft_ray.config.Tolerance` (so replicas, clusters and certificates treat it
like any other): ``exact`` by default, so tokens and anything else must match bit for bit, with
per-path overrides for ``logprobs`` (``allclose`` with ``rtol=0`` and ``atol=logprob_atol``, in
fp32) and ``topk_ids`` (the ``overlap`` mode: each position's top-k sets must share
``min_topk_overlap * k`` ids). The patterns also match these keys one level down
(``"*/logprobs"``), so a list or dict of generations compares the same way.

Example:
    >>> import numpy as np
    >>> from bft_ray.compare import compare
    >>> tol = generation_tolerance(logprob_atol=1e-3, min_topk_overlap=0.6)
    >>> a = {"tokens": np.array([[1, 2]]), "logprobs": np.array([[-1.0, -2.0]], np.float32),
    ...      "topk_ids": np.array([[[1, 3, 4], [2, 5, 6]]], np.int32)}
    >>> b = dict(a, logprobs=a["logprobs"] + np.float32(1e-4),
    ...          topk_ids=np.array([[[1, 4, 3], [2, 6, 7]]], np.int32))
    >>> compare(a, b, tol).agree
    True
    >>> compare(a, dict(b, tokens=np.array([[1, 3]])), tol).agree
    False
    >>> tol.describe()
    'exact overrides{"logprobs": allclose(rtol=0.0, atol=0.001), "*/logprobs": allclose(rtol=0.0, atol=0.001), "topk_ids": overlap(min_overlap=0.6), "*/topk_ids": overlap(min_overlap=0.6)}'
"""

from __future__ import annotations

from bft_ray.config import Tolerance

__all__ = ["generation_tolerance"]


def generation_tolerance(logprob_atol: float = 1e-3, min_topk_overlap: float = 0.6) -> Tolerance:
    """The :class:`~bft_ray.config.Tolerance` for generations (see the module docstring).

    Args:
        logprob_atol: Largest absolute difference of a chosen token's fp32 log-probability.
        min_topk_overlap: Fraction of the top-k ids per position both outputs must share.
    """
    lp = Tolerance(mode="allclose", rtol=0.0, atol=logprob_atol)
    ov = Tolerance(mode="overlap", min_overlap=min_topk_overlap)
    return Tolerance(
        mode="exact",
        overrides={"logprobs": lp, "*/logprobs": lp, "topk_ids": ov, "*/topk_ids": ov},
    )
