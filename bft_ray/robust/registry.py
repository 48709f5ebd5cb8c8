"""Build robust rules by name: ``make_aggregator("nnm+trimmed_mean", f=3)``.

A specification is one aggregator name, optionally preceded by pre-aggregators joined with
``+``; each stage may carry keyword arguments: ``"bucketing(s=3)+cc(tau=0.5)"``. Keyword
arguments can also be given per stage name: ``make_aggregator("nnm+cc", f=3, cc={"tau": 0.5})``.

Example:
    >>> rule = make_aggregator("nnm+cc(tau=0.5)", f=1)
    >>> rule.label, rule.aggregator.tau
    ('nnm+centered_clipping', 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bft_ray.errors import ConfigError
from bft_ray.robust._spec import parse_spec
from bft_ray.robust.aggregators import (
    Bulyan,
    CenteredClipping,
    CoordinateWiseMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    TrimmedMean,
)
from bft_ray.robust.base import Aggregator, NonFinitePolicy, Pipeline, PreAggregator
from bft_ray.robust.preaggregators import ARC, NNM, Bucketing, StaticClipping

__all__ = [
    "AGGREGATORS",
    "ALIASES",
    "PRE_AGGREGATORS",
    "available_rules",
    "canonical_name",
    "compose",
    "make_aggregator",
]

AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls
    for cls in (
        Mean,
        CoordinateWiseMedian,
        TrimmedMean,
        GeometricMedian,
        Krum,
        MultiKrum,
        Bulyan,
        CenteredClipping,
    )
}
PRE_AGGREGATORS: dict[str, type[PreAggregator]] = {
    cls.name: cls for cls in (NNM, Bucketing, ARC, StaticClipping)
}
ALIASES: dict[str, str] = {
    "average": "mean",
    "avg": "mean",
    "cwmed": "median",
    "coordinate_median": "median",
    "cwtm": "trimmed_mean",
    "trmean": "trimmed_mean",
    "gm": "geometric_median",
    "geomed": "geometric_median",
    "rfa": "geometric_median",
    "multikrum": "multi_krum",
    "mkrum": "multi_krum",
    "cc": "centered_clipping",
    "static_clipping": "clipping",
    "clip": "clipping",
}


def canonical_name(name: str) -> str:
    """Resolve aliases (``"cc"`` -> ``"centered_clipping"``); unknown names pass through."""
    key = name.strip().lower().replace("-", "_")
    return ALIASES.get(key, key)


def available_rules() -> dict[str, list[str]]:
    """Registered names: ``{"aggregators": [...], "pre_aggregators": [...]}``."""
    return {"aggregators": sorted(AGGREGATORS), "pre_aggregators": sorted(PRE_AGGREGATORS)}


def _build(cls: type, f: int, kwargs: dict[str, Any], spec: str) -> Any:
    try:
        return cls(f, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for {cls.__name__} in {spec!r}: {exc}") from None


def make_aggregator(
    spec: str, f: int, *, nonfinite: NonFinitePolicy | None = None, **options: Mapping[str, Any]
) -> Aggregator:
    """Build an aggregator (possibly a :class:`Pipeline`) from a specification string.

    Args:
        spec: ``"[pre+...+]aggregator"``, stages optionally with ``(key=value, ...)``.
        f: Number of Byzantine inputs every stage must tolerate.
        nonfinite: Policy for NaN/inf rows, ``"drop"`` or ``"raise"``; default: each rule's own
            (``"drop"``, except ``"raise"`` for the reference :class:`Mean`).
        **options: Extra keyword arguments per stage, keyed by the stage's name or alias.

    Returns:
        The aggregator; a :class:`Pipeline` when pre-aggregators are present.

    Raises:
        ConfigError: Unknown names, a pre-aggregator in last position, bad arguments or ``f``.

    Example:
        >>> make_aggregator("trimmed_mean", f=3)
        TrimmedMean(f=3)
        >>> make_aggregator("bucketing(s=2)+krum", f=1).label
        'bucketing+krum'
    """
    stages = parse_spec(spec)
    opts = {canonical_name(k): dict(v) for k, v in options.items()}
    built: list[Any] = []
    for position, (raw, kwargs) in enumerate(stages):
        name = canonical_name(raw)
        kwargs = {**opts.pop(name, {}), **kwargs}
        if nonfinite is not None:
            kwargs["nonfinite"] = nonfinite
        last = position == len(stages) - 1
        if name in AGGREGATORS:
            if not last:
                raise ConfigError(
                    f"{spec!r}: the aggregator {name!r} must be the last stage; only "
                    f"pre-aggregators ({', '.join(sorted(PRE_AGGREGATORS))}) may precede it"
                )
            built.append(_build(AGGREGATORS[name], f, kwargs, spec))
        elif name in PRE_AGGREGATORS:
            if last:
                raise ConfigError(
                    f"{spec!r} ends with the pre-aggregator {name!r}: add an aggregator, "
                    f"e.g. '{spec}+trimmed_mean'"
                )
            built.append(_build(PRE_AGGREGATORS[name], f, kwargs, spec))
        else:
            known = sorted(AGGREGATORS) + sorted(PRE_AGGREGATORS)
            raise ConfigError(f"unknown rule {raw!r} in {spec!r}; known: {', '.join(known)}")
    if opts:
        raise ConfigError(f"options given for stages not in {spec!r}: {sorted(opts)}")
    if len(built) == 1:
        return built[0]
    return Pipeline(built[:-1], built[-1], nonfinite=nonfinite)  # type: ignore[arg-type]


def compose(*stages: Aggregator | PreAggregator) -> Aggregator:
    """Chain pre-aggregators and a final aggregator: ``compose(NNM(3), Krum(3))``.

    Example:
        >>> compose(NNM(1), Krum(1)).label
        'nnm+krum'
    """
    if not stages:
        raise ConfigError("compose() needs at least an aggregator")
    *pre, last = stages
    if not pre:
        if not isinstance(last, Aggregator):
            raise ConfigError(f"{type(last).__name__} is not an aggregator")
        return last
    return Pipeline(pre, last)  # type: ignore[arg-type]
