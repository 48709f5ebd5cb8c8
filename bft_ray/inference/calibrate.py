"""Calibration: measure honest divergence, propose a tolerance, report the margin to cheats.

:func:`calibrate` is generic: it runs ``fn(input, **variant)`` for every input under every
honest variant (batch size, thread count, KV cache versus recompute, ...) and, optionally, under
substitutions (a cheaper model, ...), scores each output with ``metrics`` (a dict of statistics
where larger means more divergent) and reports per statistic the honest maximum, the proposed
threshold (``max(honest_max * safety, floor)``), the false-alarm bound the number of honest
observations supports (``3 / n``, the "rule of three" at 95 % confidence, when no honest
observation crossed the threshold), each substitution's detection rate and its margin
(smallest substitution value over the threshold).

:func:`calibrate_prefill` applies it to verified generation: the statistic set is that of
:func:`~bft_ray.inference.check.check_prefill`, and :meth:`CalibrationReport.prefill_tolerance`
turns the thresholds into a :class:`~bft_ray.inference.check.PrefillTolerance`.

Example:
    >>> import numpy as np
    >>> rep = calibrate(
    ...     lambda x, noise=0.0: x + noise,
    ...     [np.ones(3), np.zeros(3)],
    ...     variants={"a": {"noise": 1e-7}, "b": {"noise": -2e-7}},
    ...     metrics=lambda ref, out, x: {"abs_err": float(np.max(np.abs(ref - out)))},
    ...     reference={},
    ...     substitutions={"cheat": {"noise": 1e-3}},
    ... )
    >>> s = rep.stats["abs_err"]
    >>> s.honest_max < s.threshold < s.substitution_min["cheat"], s.detection["cheat"]
    (True, 1.0)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "CalibrationReport",
    "StatSummary",
    "calibrate",
    "calibrate_prefill",
    "honest_variants",
    "prefill_metrics",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StatSummary:
    """One statistic across the calibration runs (larger = more divergent).

    Attributes:
        name: Statistic name.
        honest_max: Largest value over honest runs.
        honest_p99: 99th percentile over honest runs.
        threshold: Proposed acceptance bound.
        honest_over: Honest runs above the threshold (0 unless ``floor`` forced it low).
        substitution_min: Smallest value per substitution.
        detection: Fraction of a substitution's runs above the threshold.
        margin: ``substitution_min / threshold`` (> 1: every run separated).
    """

    name: str
    honest_max: float
    honest_p99: float
    threshold: float
    honest_over: int
    substitution_min: dict[str, float]
    detection: dict[str, float]
    margin: dict[str, float]


@dataclasses.dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate` measured.

    Attributes:
        stats: Per statistic, a :class:`StatSummary`.
        honest_runs: Honest observations (inputs times variants).
        variants: Names of the honest variants.
        false_alarm_bound: Upper bound on the false-alarm rate per run the data supports.
        target_false_alarm: The rate asked for.
        detection: Per substitution, the fraction of runs caught by at least one statistic.
    """

    stats: dict[str, StatSummary]
    honest_runs: int
    variants: tuple[str, ...]
    false_alarm_bound: float
    target_false_alarm: float
    detection: dict[str, float]

    @property
    def enough_runs(self) -> bool:
        """Whether the honest runs support the target false-alarm rate."""
        return self.false_alarm_bound <= self.target_false_alarm

    def thresholds(self) -> dict[str, float]:
        return {k: s.threshold for k, s in self.stats.items()}

    def prefill_tolerance(self) -> Any:
        """The :class:`~bft_ray.inference.check.PrefillTolerance` these thresholds give."""
        from bft_ray.inference.check import PrefillTolerance
        from bft_ray.inference.commitment import CommitmentTolerance

        t = self.thresholds()
        return PrefillTolerance(
            token_margin=t.get("token_margin", 1e-3),
            logprob_atol=t.get("logprob_err", 1e-3),
            min_topk_overlap=max(0.0, 1.0 - t.get("topk_miss", 0.4)),
            commitment=CommitmentTolerance(
                max_mismatch_frac=min(1.0, t.get("mismatch_frac", 0.1)),
                max_mean_rel_err=t.get("mean_rel_err", 1e-3),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "honest_runs": self.honest_runs,
            "variants": list(self.variants),
            "false_alarm_bound": self.false_alarm_bound,
            "target_false_alarm": self.target_false_alarm,
            "detection": self.detection,
            "stats": {k: dataclasses.asdict(s) for k, s in self.stats.items()},
        }

    def table(self) -> str:
        """A plain-text table: statistic, honest max, threshold, margin per substitution."""
        subs = sorted({k for s in self.stats.values() for k in s.margin})
        head = f"{'statistic':<14}{'honest max':>12}{'threshold':>12}" + "".join(
            f"{k[:10]:>12}" for k in subs
        )
        lines = [head]
        for s in self.stats.values():
            lines.append(
                f"{s.name:<14}{s.honest_max:>12.3g}{s.threshold:>12.3g}"
                + "".join(f"{s.margin.get(k, math.nan):>11.3g}x" for k in subs)
            )
        lines.append(
            f"honest runs {self.honest_runs}, false alarms 0 observed -> rate <= "
            f"{self.false_alarm_bound:.3g} (target {self.target_false_alarm:g}); detection: "
            + ", ".join(f"{k} {v:.0%}" for k, v in sorted(self.detection.items()))
        )
        return "\n".join(lines)


def calibrate(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    variants: Mapping[str, Mapping[str, Any]],
    metrics: Callable[[Any, Any, Any], Mapping[str, float]],
    reference: Mapping[str, Any] | None = None,
    substitutions: Mapping[str, Mapping[str, Any]] | None = None,
    runs: int | None = None,
    target_false_alarm: float = 0.01,
    safety: float = 2.0,
    floor: Mapping[str, float] | None = None,
) -> CalibrationReport:
    """Run honest variants and substitutions; propose thresholds (see the module docstring).

    Args:
        fn: ``fn(input, **kwargs) -> output``.
        inputs: Inputs to run (each under every variant).
        variants: Honest variants, name -> keyword arguments of ``fn``.
        metrics: ``metrics(reference_output, output, input) -> {statistic: value}``.
        reference: Keyword arguments of a reference run whose output ``metrics`` gets as
            ``reference_output`` (default: no reference run; ``None`` is passed).
        substitutions: Dishonest variants, name -> keyword arguments of ``fn``.
        runs: Use only the first ``runs`` inputs.
        target_false_alarm: False-alarm rate per run the thresholds should meet.
        safety: Factor over the honest maximum.
        floor: Smallest threshold per statistic (for statistics honest runs leave at 0).
    """
    ins = list(inputs)[: runs if runs is not None else None]
    honest: dict[str, list[float]] = {}
    subs: dict[str, dict[str, list[float]]] = {}
    for x in ins:
        ref = fn(x, **dict(reference)) if reference is not None else None
        for _name, kw in variants.items():
            for k, v in metrics(ref, fn(x, **dict(kw)), x).items():
                honest.setdefault(k, []).append(float(v))
        for name, kw in (substitutions or {}).items():
            for k, v in metrics(ref, fn(x, **dict(kw)), x).items():
                subs.setdefault(name, {}).setdefault(k, []).append(float(v))
    n = len(next(iter(honest.values()), []))
    stats: dict[str, StatSummary] = {}
    caught: dict[str, np.ndarray] = {}
    for k, vals in honest.items():
        arr = np.asarray(vals)
        hmax = float(arr.max()) if arr.size else 0.0
        thr = max(hmax * safety, float((floor or {}).get(k, 0.0)))
        sub_min, det, mar = {}, {}, {}
        for name, d in subs.items():
            sv = np.asarray(d.get(k, []))
            if not sv.size:
                continue
            over = sv > thr
            caught[name] = over if name not in caught else (caught[name] | over)
            sub_min[name] = float(sv.min())
            det[name] = float(over.mean())
            mar[name] = float(sv.min() / thr) if thr > 0 else math.inf
        stats[k] = StatSummary(
            k,
            hmax,
            float(np.quantile(arr, 0.99)) if arr.size else 0.0,
            thr,
            int((arr > thr).sum()),
            sub_min,
            det,
            mar,
        )
    bound = 3.0 / n if n else 1.0
    report = CalibrationReport(
        stats,
        n,
        tuple(variants),
        bound,
        target_false_alarm,
        {k: float(v.mean()) for k, v in caught.items()},
    )
    if not report.enough_runs:
        logger.info(
            "%d honest runs bound the false-alarm rate by %.3g only; target %.3g needs %d runs",
            n,
            bound,
            target_false_alarm,
            math.ceil(3 / target_false_alarm),
        )
    return report


def honest_variants(dtype_variant: bool = False) -> dict[str, dict[str, Any]]:
    """The fleet variations a generation must tolerate: batch size, threads, KV cache.

    ``dtype_variant`` adds a bf16 generator for an fp32 model ("where the workload allows it":
    only when the caller accepts a bf16 provider).
    """
    v: dict[str, dict[str, Any]] = {
        "batch1": {"batch_size": 1},
        "batch8": {"batch_size": 8},
        "batch16": {"batch_size": 16},
        "threads1": {"threads": 1},
        "threads2": {"threads": 2},
        "recompute": {"use_cache": False},
    }
    if dtype_variant:
        v["bf16"] = {"dtype": "bfloat16"}
    return v


def prefill_metrics(
    model_factory: Callable[[], Any], *, commit_k: int = 128, chunk: int = 32
) -> Callable[[Any, Any, Any], dict[str, float]]:
    """Statistics of :func:`check_prefill` for an output, oriented larger = more divergent.

    ``token_margin`` (how far below the best replayed score a token was), ``logprob_err``,
    ``topk_miss`` (1 - worst top-k overlap), ``mismatch_frac`` and ``mean_rel_err`` (commitment).
    """
    from bft_ray.inference.check import PrefillTolerance, check_prefill
    from bft_ray.inference.commitment import CommitmentTolerance

    loose = PrefillTolerance(
        token_margin=math.inf,
        logprob_atol=math.inf,
        min_topk_overlap=0.0,
        commitment=CommitmentTolerance(max_mismatch_frac=1.0, max_mean_rel_err=math.inf),
    )

    def metrics(_ref: Any, out: Any, x: Any) -> dict[str, float]:
        prompts, max_new, sampling = x
        r = check_prefill(
            model_factory(),
            prompts,
            out,
            sampling=sampling,
            max_new_tokens=max_new,
            tolerance=loose,
            commit_k=commit_k,
            chunk=chunk,
        )
        s = r.stats
        if "format" in r.failed:  # a malformed or truncated answer is maximally divergent
            return dict.fromkeys(
                ("token_margin", "logprob_err", "topk_miss", "mismatch_frac", "mean_rel_err"),
                math.inf,
            )
        return {
            "token_margin": -s["min_token_margin"],
            "logprob_err": s["max_logprob_err"],
            "topk_miss": 1.0 - s["min_topk_overlap"],
            "mismatch_frac": s["max_mismatch_frac"],
            "mean_rel_err": s["max_mean_rel_err"],
        }

    return metrics


def calibrate_prefill(
    model_factory: Callable[[], Any],
    inputs: Sequence[tuple[list[list[int]], int, Any]],
    *,
    substitutions: Mapping[str, Callable[[Any], Any]] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    commit_k: int = 128,
    chunk: int = 32,
    **kwargs: Any,
) -> CalibrationReport:
    """Calibrate verify-by-prefill for ``model_factory``'s model.

    Args:
        model_factory: Zero-argument callable returning the trusted model.
        inputs: ``(prompts, max_new_tokens, Sampling)`` triples.
        substitutions: Name -> ``model -> cheaper model`` (for example
            :data:`bft_ray.inference.substitutions.SUBSTITUTIONS`).
        variants: Honest variants (default :func:`honest_variants`); keys ``batch_size``,
            ``threads``, ``use_cache``, ``dtype``.
        commit_k: Values committed per chunk.
        chunk: Tokens per chunk.
        **kwargs: Passed to :func:`calibrate` (``runs``, ``target_false_alarm``, ``safety``,
            ``floor``).
    """
    from bft_ray.inference.generate import generate
    from bft_ray.inference.model import TinyLM, build_model

    subs = dict(substitutions or {})
    cheap: dict[str, Any] = {}

    def fn(
        x: Any,
        batch_size: int = 16,
        threads: int | None = None,
        use_cache: bool = True,
        dtype: str | None = None,
        substitute: str | None = None,
    ) -> Any:
        prompts, max_new, sampling = x
        model = model_factory()
        if dtype is not None and isinstance(model, TinyLM):
            key = ("dtype", dtype)
            if key not in cheap:
                cheap[key] = build_model(model.cfg.model_copy(update={"dtype": dtype}), model.seed)
            model = cheap[key]
        if substitute is not None:
            if substitute not in cheap:
                cheap[substitute] = subs[substitute](model)
            model = cheap[substitute]
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            return generate(
                model,
                prompts,
                max_new,
                sampling,
                batch_size=batch_size,
                use_cache=use_cache,
                commit_k=commit_k,
                chunk=chunk,
            )
        finally:
            torch.set_num_threads(before)

    kwargs.setdefault(
        "floor",
        {
            "token_margin": 1e-3,
            "logprob_err": 1e-4,
            "topk_miss": 0.2,
            "mismatch_frac": 0.05,
            "mean_rel_err": 1e-4,
        },
    )
    return calibrate(
        fn,
        inputs,
        variants=variants if variants is not None else honest_variants(),
        metrics=prefill_metrics(model_factory, commit_k=commit_k, chunk=chunk),
        reference=None,
        substitutions={name: {"substitute": name} for name in subs},
        **kwargs,
    )
