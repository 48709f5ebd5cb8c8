"""Base classes shared by every robust rule: ``(n, f)`` validation, non-finite inputs, state.

A *rule* is a small callable built with the number ``f`` of Byzantine inputs it must tolerate.
Aggregators map ``n`` vectors to one; pre-aggregators map ``n`` vectors to ``m`` vectors and
compose with any aggregator through :class:`Pipeline`.

Every rule checks at call time that ``n`` is above its breakdown point and raises
:class:`~bft_ray.errors.ConfigError` naming the condition and the fix, e.g.
``Krum needs n > 2f + 2 (got n=6, f=2): use at most f=1 or add workers (n >= 7)``.

Non-finite inputs (NaN / inf) are handled once, in the base class, the same way for every rule:
a row with a non-finite coordinate can only come from a faulty worker, so with policy ``"drop"``
(the default) up to ``f`` such rows are removed and the rule runs on the remaining ``n - k``
rows with ``f - k`` (the dropped rows were among the ``f`` faulty ones, so at most ``f - k`` bad
rows remain; every breakdown condition ``n > a*f + b`` with ``a >= 1`` still holds). More than
``f`` non-finite rows, or policy ``"raise"``, raise :class:`NonFiniteInputError`. A rule whose
output is non-finite anyway (finite inputs so large that sums overflow) also raises it, so a
NaN never reaches the model silently.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bft_ray.errors import BftRayError, ConfigError
from bft_ray.robust._tensors import to_matrix

__all__ = [
    "Aggregator",
    "NonFiniteInputError",
    "NonFinitePolicy",
    "Pipeline",
    "PreAggregator",
    "RobustRule",
    "drop_nonfinite",
]

NonFinitePolicy = Literal["drop", "raise"]


class NonFiniteInputError(BftRayError, ValueError):
    """Too many input vectors contain NaN/inf (or the aggregate overflowed).

    Carries ``rows`` (indices of the offending rows), ``n`` and ``f`` in ``details``.
    """


def _check_f(f: Any, owner: str) -> int:
    if isinstance(f, bool):
        raise ConfigError(f"{owner}: f must be a non-negative integer, got {f!r}")
    try:
        value = operator.index(f)
    except TypeError:
        raise ConfigError(f"{owner}: f must be a non-negative integer, got {f!r}") from None
    if value < 0:
        raise ConfigError(f"{owner}: f must be >= 0 (number of Byzantine inputs), got {value}")
    return value


def drop_nonfinite(
    x: Tensor, f: int, *, policy: NonFinitePolicy = "drop", owner: str = "aggregator"
) -> tuple[Tensor, int]:
    """Remove rows with NaN/inf coordinates when at most ``f`` rows are affected.

    Args:
        x: ``(n, d)`` matrix.
        f: Number of Byzantine rows the caller tolerates.
        policy: ``"drop"`` removes up to ``f`` bad rows; ``"raise"`` refuses any.
        owner: Rule name used in the error message.

    Returns:
        ``(rows, f_left)``: the finite rows and ``f`` minus the number of rows removed.

    Raises:
        NonFiniteInputError: More than ``f`` rows are non-finite, or policy is ``"raise"``.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [3.0, 4.0]])
        >>> rows, f_left = drop_nonfinite(x, 1)
        >>> rows.tolist(), f_left
        ([[1.0, 2.0], [3.0, 4.0]], 0)
    """
    # Fast path: a row sum is finite only if every entry is (the exact check below is 5x
    # slower and only needed when something is wrong, or when finite entries overflow a sum).
    if bool(torch.isfinite(x.sum(dim=1)).all()):
        return x, f
    finite = torch.isfinite(x).all(dim=1)
    if bool(finite.all()):
        return x, f
    bad = (~finite).nonzero().flatten().tolist()
    n = x.shape[0]
    if policy == "raise" or len(bad) > f:
        why = (
            "policy 'raise' refuses them"
            if policy == "raise"
            else f"more than f={f} workers are faulty, so the honest majority is not guaranteed"
        )
        raise NonFiniteInputError(
            f"{owner}: {len(bad)} of {n} input vectors contain NaN or inf (rows {bad}); {why}. "
            "Find the workers sending non-finite values, or raise f if more may fail.",
            rows=bad,
            n=n,
            f=f,
        )
    return x[finite], f - len(bad)


class RobustRule:
    """Common base of aggregators and pre-aggregators.

    Subclasses set ``name`` (registry name) and ``breakdown`` (the condition as text) and
    override :meth:`min_n`.

    Args:
        f: Number of Byzantine inputs to tolerate (``>= 0``), checked at construction.
        nonfinite: ``"drop"`` (default) removes up to ``f`` rows holding NaN/inf; ``"raise"``
            refuses any such row.
    """

    name: ClassVar[str] = "rule"
    breakdown: ClassVar[str] = "n > 2f"

    def __init__(self, f: int, *, nonfinite: NonFinitePolicy = "drop") -> None:
        self.f = _check_f(f, type(self).__name__)
        if nonfinite not in ("drop", "raise"):
            raise ConfigError(f"nonfinite must be 'drop' or 'raise', got {nonfinite!r}")
        self.nonfinite: NonFinitePolicy = nonfinite

    # -- (n, f) preconditions ------------------------------------------------------------------

    def min_n(self, f: int) -> int:
        """Smallest number of inputs this rule accepts with ``f`` Byzantine ones."""
        return 2 * f + 1

    def satisfied(self, n: int, f: int | None = None) -> bool:
        """Whether ``n`` inputs with ``f`` (default: ``self.f``) Byzantine ones are allowed."""
        return n >= self.min_n(self.f if f is None else f)

    def check(self, n: int, f: int | None = None) -> None:
        """Raise :class:`ConfigError` naming the breakdown point when ``(n, f)`` is not allowed.

        Example:
            >>> from bft_ray.robust import Krum
            >>> Krum(f=2).check(6)
            Traceback (most recent call last):
            ...
            bft_ray.errors.ConfigError: Krum needs n > 2f + 2 (got n=6, f=2): use at most f=1 or add workers (n >= 7)
        """
        f = self.f if f is None else f
        if not self.satisfied(n, f):
            raise ConfigError(self.breakdown_message(n, f), n=n, f=f, rule=self.label)

    def breakdown_message(self, n: int, f: int) -> str:
        """The error text for an ``(n, f)`` beyond this rule's breakdown point."""
        max_f = next((g for g in range(f, -1, -1) if self.satisfied(n, g)), None)
        need = self.min_n(f)
        if max_f is None:
            fix = f"add workers (n >= {need})"
        else:
            fix = f"use at most f={max_f} or add workers (n >= {need})"
        return f"{self.label} needs {self.breakdown} (got n={n}, f={f}): {fix}"

    @property
    def label(self) -> str:
        """Human-readable name used in messages."""
        return type(self).__name__

    # -- state (for stateful rules such as centered clipping and bucketing) ---------------------

    def state_dict(self) -> dict[str, Any]:
        """State carried from one call to the next (empty for stateless rules).

        A server that runs the aggregation as a replicated deterministic task passes this state
        in and out explicitly, so every replica computes the same result.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state saved by :meth:`state_dict`."""

    def reset(self) -> None:
        """Forget any state (start a new training run)."""
        self.load_state_dict({})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f})"


class Aggregator(RobustRule):
    """Maps ``n`` vectors to one; subclasses implement :meth:`_aggregate`."""

    def __call__(self, vectors: Any) -> Any:
        """Aggregate ``vectors`` (see :func:`bft_ray.robust._tensors.to_matrix` for types).

        Returns:
            One vector of the caller's type: ``(d,)`` numpy/torch (or the row shape), or a pytree.
        """
        x, layout = to_matrix(vectors)
        return layout.vector(self.aggregate_matrix(x))

    def aggregate_matrix(self, x: Tensor, f: int | None = None) -> Tensor:
        """Aggregate an ``(n, d)`` floating torch matrix into a ``(d,)`` vector.

        This is the entry point for code that already holds a matrix (the training loop).
        """
        f = self.f if f is None else f
        self.check(x.shape[0], f)
        x, f = drop_nonfinite(x, f, policy=self.nonfinite, owner=self.label)
        return self._checked(self._aggregate(x, f), f)

    def _checked(self, out: Tensor, f: int) -> Tensor:
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteInputError(
                f"{self.label} produced a non-finite aggregate from finite inputs: some vectors "
                "are so large that sums overflow; clip them first (e.g. 'clipping+...')",
                f=f,
            )
        return out

    def _aggregate(self, x: Tensor, f: int) -> Tensor:
        raise NotImplementedError


class PreAggregator(RobustRule):
    """Maps ``n`` vectors to ``m`` vectors; composes with aggregators via :class:`Pipeline`."""

    def output_rows(self, n: int) -> int:
        """Number of rows produced from ``n`` inputs."""
        return n

    def __call__(self, vectors: Any) -> Any:
        """Transform ``vectors``; returns ``m`` vectors of the caller's type.

        Rows holding NaN/inf are dropped first (see :func:`drop_nonfinite`), so ``m`` may be
        smaller than usual.
        """
        x, layout = to_matrix(vectors)
        out, _ = self.transform_matrix(x)
        return layout.matrix(out)

    def transform_matrix(self, x: Tensor, f: int | None = None) -> tuple[Tensor, int]:
        """Transform an ``(n, d)`` matrix; returns the new rows and the ``f`` they may contain."""
        f = self.f if f is None else f
        self.check(x.shape[0], f)
        x, f = drop_nonfinite(x, f, policy=self.nonfinite, owner=self.label)
        return self._transform(x, f), f

    def _transform(self, x: Tensor, f: int) -> Tensor:
        raise NotImplementedError


class Pipeline(Aggregator):
    """Pre-aggregators applied in order, then an aggregator: ``NNM -> ... -> CenteredClipping``.

    Non-finite rows are removed once, before the first stage. Each stage's own ``(n, f)``
    condition is checked with the number of rows that reaches it (bucketing shrinks ``n``), so a
    pipeline that cannot work fails before computing anything.

    Args:
        pre: Pre-aggregators, applied left to right.
        aggregator: The final aggregator. All stages must share the same ``f``.
        nonfinite: Policy for NaN/inf rows (see :class:`RobustRule`); default: the
            aggregator's.

    Example:
        >>> import numpy as np
        >>> from bft_ray.robust import NNM, TrimmedMean
        >>> rule = Pipeline([NNM(f=1)], TrimmedMean(f=1))
        >>> rule.label
        'nnm+trimmed_mean'
        >>> rule(np.array([[0.0], [1.0], [2.0], [100.0]])).tolist()  # NNM rows: 1, 1, 1, 34.3
        [1.0]
    """

    def __init__(
        self,
        pre: Sequence[PreAggregator],
        aggregator: Aggregator,
        *,
        nonfinite: NonFinitePolicy | None = None,
    ) -> None:
        if not isinstance(aggregator, Aggregator):
            raise ConfigError(f"{type(aggregator).__name__} is not an aggregator")
        super().__init__(aggregator.f, nonfinite=nonfinite or aggregator.nonfinite)
        pre = list(pre)
        for stage in pre:
            if not isinstance(stage, PreAggregator):
                raise ConfigError(
                    f"{type(stage).__name__} is not a pre-aggregator: only NNM, Bucketing, "
                    "ARC and StaticClipping may come before the aggregator"
                )
        fs = {stage.f for stage in pre} | {aggregator.f}
        if len(fs) != 1:
            raise ConfigError(f"all stages of a pipeline must share the same f, got {sorted(fs)}")
        self.pre = pre
        self.aggregator = aggregator

    @property
    def stages(self) -> list[RobustRule]:
        """All stages, pre-aggregators first."""
        return [*self.pre, self.aggregator]

    @property
    def label(self) -> str:
        return "+".join(stage.name for stage in self.stages)

    @property
    def breakdown(self) -> str:  # type: ignore[override]
        return " and ".join(f"{s.label}: {s.breakdown}" for s in self.stages)

    def _walk(self, n: int, f: int) -> tuple[RobustRule, int] | None:
        """The first stage whose condition fails for ``n`` inputs, with the rows it receives."""
        for stage in self.stages:
            if not stage.satisfied(n, f):
                return stage, n
            if isinstance(stage, PreAggregator):
                n = stage.output_rows(n)
        return None

    def satisfied(self, n: int, f: int | None = None) -> bool:
        return self._walk(n, self.f if f is None else f) is None

    def min_n(self, f: int) -> int:
        # Every stage's condition is monotone in n (and bucketing's ceil(n / s) is too), so
        # search by doubling, then bisect.
        hi = 1
        while self._walk(hi, f) is not None:
            hi *= 2
        lo = hi // 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._walk(mid, f) is None:
                hi = mid
            else:
                lo = mid
        return hi

    def breakdown_message(self, n: int, f: int) -> str:
        failing = self._walk(n, f)
        assert failing is not None
        stage, rows = failing
        if rows == n:
            return f"{self.label}: {stage.breakdown_message(rows, f)}"
        # A shrinking stage (bucketing) sits in front: state the condition at the failing stage
        # but the fix in terms of the pipeline's own inputs.
        max_f = next((g for g in range(f, -1, -1) if self.satisfied(n, g)), None)
        need = self.min_n(f)
        fix = (
            f"add workers (n >= {need})"
            if max_f is None
            else f"use at most f={max_f} or add workers (n >= {need})"
        )
        return (
            f"{self.label}: {stage.label} needs {stage.breakdown} but only {rows} rows reach it "
            f"from n={n} inputs (f={f}): {fix}"
        )

    def aggregate_matrix(self, x: Tensor, f: int | None = None) -> Tensor:
        f = self.f if f is None else f
        self.check(x.shape[0], f)
        x, f = drop_nonfinite(x, f, policy=self.nonfinite, owner=self.label)
        # Non-finite rows are already gone: call the stages' cores directly.
        for stage in self.pre:
            stage.check(x.shape[0], f)
            x = stage._transform(x, f)
        self.aggregator.check(x.shape[0], f)
        return self._checked(self.aggregator._aggregate(x, f), f)

    def state_dict(self) -> dict[str, Any]:
        return {"stages": [stage.state_dict() for stage in self.stages]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stages = state.get("stages") or [{} for _ in self.stages]
        for stage, sub in zip(self.stages, stages, strict=True):
            stage.load_state_dict(sub)

    def __repr__(self) -> str:
        return f"Pipeline({self.pre!r}, {self.aggregator!r})"
