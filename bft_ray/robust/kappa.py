"""Empirical (f, kappa)-robustness of aggregation rules (Allouah et al., AISTATS 2023).

A rule ``F`` is *(f, kappa)-robust* when, for every input ``x_1..x_n`` and every set ``S`` of
``n - f`` of them,

    ``||F(x) - mean_S||^2 <= kappa * (1/|S|) sum_{i in S} ||x_i - mean_S||^2``.

This module measures, for a rule, the largest ratio ``||F(x) - mean_S||^2 / var_S`` it can
find with ``S`` the honest vectors and the other ``f`` vectors chosen adversarially: first by
every attack of :mod:`bft_ray.robust.attacks`, then by a simple optimiser (a (1+1) evolution
strategy with step-size adaptation) started from the best attack. Any ratio found is a
**lower bound** on the rule's true ``kappa``; the theoretical values of the paper (Table 1)
are upper bounds, so a correct implementation must show ``empirical <= theory``.

Example:
    >>> r = empirical_kappa("trimmed_mean", n=11, f=2, trials=1, iterations=20, seed=0)
    >>> 0.0 < r.kappa <= theoretical_kappa("trimmed_mean", 11, 2)
    True
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from bft_ray.robust.attacks import make_attack
from bft_ray.robust.base import NonFiniteInputError
from bft_ray.robust.registry import make_aggregator

__all__ = [
    "DEFAULT_ATTACKS",
    "KappaResult",
    "empirical_kappa",
    "kappa_ratio",
    "lower_bound_kappa",
    "theoretical_kappa",
]

logger = logging.getLogger(__name__)

DEFAULT_ATTACKS = (
    "sign_flip",
    "ipm(epsilon=0.1)",
    "ipm(epsilon=10)",
    "alie",
    "minmax",
    "minsum",
    "minmax(direction='unit_vec')",
    "mimic",
    "gaussian(sigma=3)",
)


def lower_bound_kappa(n: int, f: int) -> float:
    """No rule is (f, kappa)-robust with ``kappa < f / (n - 2f)`` (Allouah et al. 2023).

    Example:
        >>> lower_bound_kappa(15, 3)
        0.3333333333333333
    """
    return f / (n - 2 * f)


def theoretical_kappa(rule: str, n: int, f: int) -> float | None:
    """Upper bound on ``kappa`` from Allouah et al. 2023 (Table 1), or ``None`` if not given.

    ``krum``: ``6 (1 + f/(n-2f))``; ``median`` and ``geometric_median``:
    ``4 (1 + f/(n-2f))^2``; ``trimmed_mean``: ``(6f/(n-2f)) (1 + f/(n-2f))``; ``mean``:
    unbounded (``inf``) for ``f >= 1``; ``nnm+F``: ``(8f/(n-f)) (kappa_F + 1)``.

    Example:
        >>> round(theoretical_kappa("trimmed_mean", 15, 3), 3), theoretical_kappa("cc", 15, 3)
        (2.667, None)
    """
    if f == 0:
        return 0.0
    r = f / (n - 2 * f)
    stages = [s.split("(")[0].strip() for s in rule.split("+")]
    aliases = {
        "cwmed": "median",
        "cwtm": "trimmed_mean",
        "gm": "geometric_median",
        "rfa": "geometric_median",
    }
    stages = [aliases.get(s, s) for s in stages]
    base = {
        "mean": math.inf,
        "krum": 6 * (1 + r),
        "median": 4 * (1 + r) ** 2,
        "geometric_median": 4 * (1 + r) ** 2,
        "trimmed_mean": 6 * r * (1 + r),
    }
    if len(stages) == 1:
        return base.get(stages[0])
    if len(stages) == 2 and stages[0] == "nnm" and stages[1] in base:
        return 8 * f / (n - f) * (base[stages[1]] + 1)
    return None


def _subsets(n: int, f: int, limit: int = 5000) -> Tensor | None:
    """Index sets of size ``n - f`` (all of them, if there are at most ``limit``)."""
    if math.comb(n, f) > limit:
        return None
    return torch.tensor(list(itertools.combinations(range(n), n - f)), dtype=torch.long)


def kappa_ratio(
    rule: Any, honest: Tensor, byzantine: Tensor, subsets: Tensor | None = None
) -> float:
    """``max_S ||F(x) - mean_S||^2 / var_S`` over sets ``S`` of ``n - f`` inputs.

    ``x`` is the honest ``(h, d)`` rows followed by the Byzantine ``(f, d)`` rows. With
    ``subsets`` (index rows of size ``h``) the maximum runs over those sets, as the
    definition asks; without, ``S`` is the honest set. ``rule`` is an aggregator; its state
    is reset first (centered clipping starts from zero). A refusal counts as ``inf``.

    Example:
        >>> from bft_ray.robust import Mean
        >>> h = torch.tensor([[0.0], [2.0]]); b = torch.tensor([[4.0]])
        >>> kappa_ratio(Mean(1), h, b)          # mean 2 vs honest mean 1, honest variance 1
        1.0
    """
    rule.reset()
    x = torch.cat([honest, byzantine.to(honest.dtype)])
    try:
        out = rule.aggregate_matrix(x).to(x.dtype)
    except NonFiniteInputError:
        return math.inf
    groups = x[subsets] if subsets is not None else honest.unsqueeze(0)  # (m, h, d)
    mu = groups.mean(1)
    var = ((groups - mu[:, None]) ** 2).sum(2).mean(1)
    ratios = ((out - mu) ** 2).sum(1) / var.clamp_min(1e-300)
    return float(ratios.max())


@dataclass
class KappaResult:
    """The largest ratio found for one rule, and what found it."""

    rule: str
    n: int
    f: int
    kappa: float
    found_by: str
    per_attack: dict[str, float] = field(default_factory=dict)
    theory: float | None = None
    lower_bound: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _search(
    rule: Any,
    honest: Tensor,
    start: Tensor,
    iterations: int,
    gen: torch.Generator,
    subsets: Tensor | None,
) -> float:
    """(1+1)-ES on the Byzantine rows, maximising the ratio; returns the best ratio."""
    best = start.clone()
    best_ratio = kappa_ratio(rule, honest, best, subsets)
    scale = float(honest.std(0).mean()) or 1.0
    sigma = 0.5 * scale
    mu = honest.mean(0)
    for k in range(iterations):
        if k % 3 == 2:
            # Stretch or shrink the attack around the honest mean (finds the largest scale
            # that still slips through); otherwise a Gaussian step on every Byzantine row.
            factor = float(torch.exp(0.3 * torch.randn((), generator=gen)))
            cand = mu + factor * (best - mu)
        else:
            cand = best + sigma * torch.randn(best.shape, generator=gen, dtype=best.dtype)
        ratio = kappa_ratio(rule, honest, cand, subsets)
        if ratio > best_ratio and math.isfinite(ratio):
            best, best_ratio = cand, ratio
            sigma *= 1.5
        else:
            sigma *= 0.9
        sigma = max(sigma, 1e-3 * scale)
    return best_ratio


def empirical_kappa(
    rule: str,
    n: int,
    f: int,
    *,
    d: int = 10,
    trials: int = 3,
    iterations: int = 300,
    attacks: tuple[str, ...] = DEFAULT_ATTACKS,
    seed: int = 0,
) -> KappaResult:
    """The largest ``kappa`` ratio found for ``rule`` with ``n`` inputs, ``f`` Byzantine.

    Honest vectors are ``N(m, I)`` in ``d`` dimensions with ``m ~ N(0, I/4)`` (one draw per
    trial), the Byzantine ones come after them; the ratio is the maximum over every set of
    ``n - f`` inputs (the definition), or over the honest set alone when there are more than
    5000 such sets. Each attack is evaluated, then the search starts from the best attack
    of the trial. For the mean the ratio is unbounded: the search reports how far it got.

    Args:
        rule: Rule specification (``"krum"``, ``"nnm+trimmed_mean"``, ...).
        n, f: Inputs and Byzantine inputs.
        d: Dimension.
        trials: Independent honest draws.
        iterations: Optimiser steps per trial.
        attacks: Starting points (attack specifications).
        seed: Seed of the draws and the search.
    """
    aggregator = make_aggregator(rule, f)
    aggregator.check(n)
    gen = torch.Generator().manual_seed(seed)
    best, found_by = 0.0, ""
    per_attack: dict[str, float] = {}
    h = n - f
    subsets = _subsets(n, f)
    for trial in range(trials):
        offset = torch.randn(d, generator=gen, dtype=torch.float64) * 0.5
        honest = offset + torch.randn(h, d, generator=gen, dtype=torch.float64)
        start, start_ratio, start_name = None, -1.0, ""
        for spec in attacks:
            byz = make_attack(spec).byzantine_matrix(honest, f, generator=gen).to(torch.float64)
            ratio = kappa_ratio(aggregator, honest, byz, subsets)
            per_attack[spec] = max(per_attack.get(spec, 0.0), ratio)
            if ratio > best:
                best, found_by = ratio, spec
            if math.isfinite(ratio) and ratio > start_ratio:
                start, start_ratio, start_name = byz, ratio, spec
        if start is not None and iterations:
            ratio = _search(aggregator, honest, start, iterations, gen, subsets)
            per_attack["search"] = max(per_attack.get("search", 0.0), ratio)
            if ratio > best:
                best, found_by = ratio, f"search from {start_name}"
        logger.debug("%s trial %d: best %.4g (%s)", rule, trial, best, found_by)
    return KappaResult(
        rule,
        n,
        f,
        best,
        found_by,
        per_attack,
        theoretical_kappa(rule, n, f),
        lower_bound_kappa(n, f),
    )
