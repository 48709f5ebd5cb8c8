"""Replication plans: how many executors run a call, and how often a lone result is audited.

Three plans, chosen per function with ``verified_remote(policy=...)``:

* :class:`Replicate` (``policy="replicate"``, the default): every call runs on ``replicas``
  executors and a strict-majority quorum decides.
* :class:`SpotCheck` (``policy=bft_ray.spot_check(p)``): a call goes to one executor that has
  earned trust for this function; after it has committed to its output (signed digest) a draw
  the executor cannot predict audits it with probability ``p`` by a second, independent
  executor. A disagreement escalates to full replication, which decides who was wrong.
* :class:`Adaptive` (``policy=bft_ray.adaptive(epsilon=0.1, confidence=0.99, within=1000)``):
  a spot check whose rate is derived from a *target*: catch an executor that returns wrong
  results at rate ``epsilon`` with probability at least ``confidence`` within ``within`` of its
  tasks. Optionally also an *economic* target: with reward ``R`` per task, stake ``S`` lost for a
  proven wrong result and saving ``C`` from cheating, auditing at ``p`` makes cheating a losing
  bet when ``p * (R + S) > C``. The plan uses the larger of the two rates.

The rate math (uniform, independent audits):

    A task is caught when it is wrong (probability ``epsilon``) and audited (``p``), so
    ``P(caught within N) = 1 - (1 - p * epsilon) ** N``. The smallest ``p`` meeting a target
    ``P`` is ``p* = (1 - (1 - P) ** (1 / N)) / epsilon``.

    A cheater saves ``C`` on each wrong answer; with probability ``p`` the answer is audited
    and it loses the reward ``R`` and its stake ``S``. Its expected gain from one cheat is
    ``C - p * (R + S)``, so cheating pays only while ``C > p * (R + S)``: the deterrence rate
    is ``C / (R + S)``.

An audit re-executes the call once (or runs the function's cheaper checker), so the expected
executions per task of a trusted executor are ``1 + p`` (``1 + p * c`` for a checker costing
``c`` executions). New executors, and executors recently flagged, are replicated in full until
they earn trust again (:mod:`bft_ray.trust.standing`).

Example:
    >>> plan = Adaptive(epsilon=0.1, confidence=0.99, within=1000)
    >>> round(plan.audit_rate, 4)
    0.0459
    >>> round(detection_probability(plan.audit_rate, 0.1, 1000), 4)
    0.99
    >>> Adaptive(epsilon=0.1, confidence=0.99, within=1000, reward=1, stake=9, saving=1).audit_rate
    0.1
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from bft_ray.config import _Model

__all__ = [
    "Adaptive",
    "CheckerCall",
    "Plan",
    "Replicate",
    "SpotCheck",
    "adaptive",
    "audit_rate_for",
    "deterrence_rate",
    "detection_probability",
    "plan_from",
    "spot_check",
]


def audit_rate_for(epsilon: float, confidence: float, within: int) -> float:
    """Smallest uniform audit rate that catches an ``epsilon``-cheater with ``confidence``
    within ``within`` of its tasks: ``(1 - (1 - P) ** (1 / N)) / epsilon``, capped at 1.

    Example:
        >>> round(audit_rate_for(0.01, 0.99, 1000), 3)
        0.459
    """
    if not 0 < epsilon <= 1 or not 0 < confidence < 1 or within < 1:
        raise ValueError("need 0 < epsilon <= 1, 0 < confidence < 1 and within >= 1")
    # -expm1(log1p(-P) / N) is 1 - (1 - P) ** (1 / N) without cancellation for large N.
    return min(1.0, -math.expm1(math.log1p(-confidence) / within) / epsilon)


def detection_probability(p: float, epsilon: float, tasks: int) -> float:
    """Probability that at least one of ``tasks`` tasks is wrong and audited.

    Example:
        >>> detection_probability(1.0, 0.5, 2)
        0.75
    """
    if p * epsilon >= 1:
        return 1.0
    return -math.expm1(tasks * math.log1p(-p * epsilon))


def deterrence_rate(reward: float, stake: float, saving: float) -> float:
    """Audit rate above which cheating does not pay: ``saving / (reward + stake)`` (capped at 1).

    Example:
        >>> deterrence_rate(reward=1.0, stake=19.0, saving=0.5)
        0.025
    """
    if reward < 0 or stake < 0 or saving < 0 or reward + stake <= 0:
        raise ValueError("need reward, stake, saving >= 0 and reward + stake > 0")
    return min(1.0, saving / (reward + stake))


class Replicate(_Model):
    """Always run ``replicas`` executors (the call's ``Policy``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["replicate"] = "replicate"

    def describe(self) -> str:
        return "replicate"


class SpotCheck(_Model):
    """One trusted executor per call, audited with probability ``rate`` after it commits.

    Args:
        rate: Audit probability of a trusted executor's lone result, in ``(0, 1]``.
        warmup: Consecutive agreed, fully replicated results an executor needs for this
            function before it may run it alone (BOINC's adaptive replication does the same).
        cooldown: After a flag, the executor is replicated in full until it has ``cooldown``
            more consecutive agreed results (and ``warmup`` at least).
        checker: Optional cheaper audit: ``checker(value, *args, **kwargs)`` returns True when
            ``value`` is a correct result of the call. It runs on a different executor than
            the one that produced ``value``; an audit that fails escalates to replication.
        checker_cost: Declared price of one checker run, in executions of the function. The
            verifier's cost book (``trust_report()["cost"]``) counts checker runs at this
            price only until it has timed both the checker and the function, then at the
            measured price (:mod:`bft_ray.trust.cost`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    kind: Literal["spot_check"] = "spot_check"
    rate: float = Field(..., gt=0.0, le=1.0)
    warmup: int = Field(10, ge=1)
    cooldown: int = Field(50, ge=0)
    checker: Callable[..., Any] | None = None
    checker_cost: float = Field(1.0, gt=0.0)

    @property
    def audit_rate(self) -> float:
        return self.rate

    def describe(self) -> str:
        extra = (
            f", checker={getattr(self.checker, '__qualname__', 'checker')}" if self.checker else ""
        )
        return f"spot_check(rate={self.rate!r}, warmup={self.warmup}{extra})"


class Adaptive(SpotCheck):
    """A spot check whose rate follows from a detection target (and optionally an economic one).

    Args:
        epsilon: Rate of wrong results of the cheater to catch, in ``(0, 1]``.
        confidence: Probability ``P`` of catching it ...
        within: ... within this many of its tasks (``N``).
        reward: Payment per accepted result (``R``), for the economic rate.
        stake: Penalty for a proven wrong result (``S``).
        saving: What a cheater saves per wrong result (``C``); the economic rate is used when
            all three are given.
    """

    kind: Literal["adaptive"] = "adaptive"  # type: ignore[assignment]
    rate: float = Field(0.0, ge=0.0, le=1.0)  # derived; passing it is an error
    epsilon: float = Field(..., gt=0.0, le=1.0)
    confidence: float = Field(0.99, gt=0.0, lt=1.0)
    within: int = Field(1000, ge=1)
    reward: float | None = Field(None, ge=0.0)
    stake: float | None = Field(None, ge=0.0)
    saving: float | None = Field(None, ge=0.0)

    @model_validator(mode="after")
    def _derive(self) -> Adaptive:
        if self.rate:
            raise ValueError(
                "adaptive derives its audit rate from epsilon/confidence/within; use "
                "spot_check(rate) to set a rate directly"
            )
        economic = (self.reward, self.stake, self.saving)
        if any(v is not None for v in economic) and any(v is None for v in economic):
            raise ValueError("the economic target needs all of reward, stake and saving")
        object.__setattr__(self, "rate", max(self.detection_rate, self.economic_rate or 0.0))
        return self

    @property
    def detection_rate(self) -> float:
        """The rate the detection target needs (``p*`` of the module docstring)."""
        return audit_rate_for(self.epsilon, self.confidence, self.within)

    @property
    def economic_rate(self) -> float | None:
        """The deterrence rate ``C / (R + S)``, when the economic target is given."""
        if self.reward is None or self.stake is None or self.saving is None:
            return None
        return deterrence_rate(self.reward, self.stake, self.saving)

    def describe(self) -> str:
        return (
            f"adaptive(epsilon={self.epsilon!r}, confidence={self.confidence!r}, "
            f"within={self.within}, rate={self.rate:.6g})"
        )


Plan = Replicate | SpotCheck | Adaptive


class CheckerCall:
    """What an auditing executor runs for a plan's checker: decode the value, then check it.

    The value travels as the wire bytes the producing executor signed, so the checker sees
    exactly the committed answer, decoded by the safe decoder (never unpickled).
    """

    def __init__(self, checker: Callable[..., Any]) -> None:
        self.checker = checker
        self.__qualname__ = f"checker({getattr(checker, '__qualname__', 'checker')})"
        self.__module__ = getattr(checker, "__module__", __name__)

    def __call__(self, wire: bytes, *args: Any, **kwargs: Any) -> bool:
        from bft_ray.compare.wire import decode

        return bool(self.checker(decode(wire), *args, **kwargs))


def spot_check(rate: float, **options: Any) -> SpotCheck:
    """A :class:`SpotCheck` plan (see its arguments).

    Example:
        >>> spot_check(0.05).rate
        0.05
    """
    return SpotCheck(rate=rate, **options)


def adaptive(
    epsilon: float = 0.1, confidence: float = 0.99, within: int = 1000, **options: Any
) -> Adaptive:
    """An :class:`Adaptive` plan (see its arguments).

    Example:
        >>> round(adaptive(epsilon=0.1).rate, 4)
        0.0459
    """
    return Adaptive(epsilon=epsilon, confidence=confidence, within=within, **options)


def plan_from(value: Any) -> Plan:
    """The plan for a ``policy=`` option: a plan object or ``"replicate"``/``"adaptive"``.

    Example:
        >>> plan_from("replicate").kind
        'replicate'
    """
    if value is None or value == "replicate":
        return Replicate()
    if value == "adaptive":
        return adaptive()
    if isinstance(value, (Replicate, SpotCheck)):
        return value
    from bft_ray.errors import ConfigError

    raise ConfigError(
        f"policy={value!r} is not a replication plan. Use 'replicate', 'adaptive', "
        "bft_ray.adaptive(epsilon=..., confidence=..., within=...) or bft_ray.spot_check(rate)."
    )
