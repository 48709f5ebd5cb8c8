"""Validated configuration: tolerances, verification policies and cluster specs.

Everything a user passes to ``@verified_remote`` or ``bft_ray.init`` goes through these pydantic
models, so bad input fails at once, before any work is submitted, with a message that says how to
fix it. Errors are re-raised as :class:`bft_ray.errors.ConfigError` (a ``RayError`` and a
``ValueError``) carrying pydantic's explanation.

Example:
    >>> from bft_ray.config import Policy, Tolerance
    >>> Policy(replicas=3, quorum=2, tolerance=Tolerance(rtol=1e-5, atol=1e-6)).quorum
    2
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bft_ray.errors import ConfigError

__all__ = ["ClusterSpec", "Policy", "Tolerance", "validated"]

M = TypeVar("M", bound=BaseModel)

ToleranceMode = Literal["exact", "allclose", "ulp", "l2", "overlap"]


def _config_error(model: str, exc: ValidationError) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or model
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg} (got {err.get('input')!r})")
    return ConfigError(
        f"Invalid {model}:\n" + "\n".join(lines),
        errors=[{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()],
    )


class _Model(BaseModel):
    """Base of our config models: validation errors surface as :class:`ConfigError`.

    ``ConfigError`` is both a ``ray.exceptions.RayError`` (like every bft-ray error) and a
    ``ValueError`` (like pydantic's own error), and its message lists each bad field with the
    value that was given.
    """

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(type(self).__name__, exc) from None


class Tolerance(_Model):
    """How close two numeric outputs must be to count as the same answer.

    Non-float leaves (integers, booleans, strings, bytes, None) are always compared exactly; the
    tolerance applies to floating-point (and complex) leaves. Structure, dtype and shape must
    always match.

    Modes:
        * ``exact``: bit-for-bit equal.
        * ``allclose`` (default): elementwise ``|a - b| <= atol + rtol * max(|a|, |b|)``. Unlike
          ``numpy.allclose`` this is symmetric in ``a`` and ``b``, so agreement never depends on
          which replica answered first.
        * ``ulp``: at most ``max_ulps`` representable floats apart, elementwise.
        * ``l2``: ``||a - b||_2 <= atol + rtol * max(||a||_2, ||b||_2)`` over each leaf.
        * ``overlap``: for integer arrays of rank >= 1 (for example the top-k token ids of a
          generation, shape ``(..., k)``), each row along the last axis is read as a set and
          the two rows must share at least ``min_overlap * k`` distinct values. Other leaves
          under this mode compare exactly. Meant for per-path overrides (see
          :func:`bft_ray.inference.generation_tolerance`).

    NaN equals NaN only when ``equal_nan`` is set; infinities must match in sign.

    Args:
        mode: One of ``exact``, ``allclose``, ``ulp``, ``l2``.
        rtol: Relative tolerance (``allclose`` and ``l2``).
        atol: Absolute tolerance (``allclose`` and ``l2``).
        max_ulps: Maximum distance in units in the last place (``ulp``).
        min_overlap: Fraction of each row two integer rows must share (``overlap``).
        equal_nan: Whether NaN in both outputs at the same place counts as agreement.
        overrides: Per-leaf tolerances keyed by path pattern (``fnmatch`` glob over paths such
            as ``"logits"``, ``"layers/0/weight"`` or ``"*/bias"``). The first matching
            pattern, in insertion order, wins.

    Example:
        >>> t = Tolerance(rtol=1e-5, atol=1e-6, overrides={"loss": Tolerance(mode="exact")})
        >>> t.for_path("loss").mode
        'exact'
        >>> Tolerance.exact().mode
        'exact'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ToleranceMode = "allclose"
    rtol: float = Field(1e-5, ge=0.0, description="relative tolerance, >= 0")
    atol: float = Field(1e-8, ge=0.0, description="absolute tolerance, >= 0")
    max_ulps: int = Field(4, ge=0, description="max units in the last place, >= 0")
    min_overlap: float = Field(
        1.0, ge=0.0, le=1.0, description="fraction of each row shared (overlap), 0..1"
    )
    equal_nan: bool = False
    overrides: dict[str, Tolerance] = Field(default_factory=dict)

    @classmethod
    def exact(cls) -> Tolerance:
        """Bit-for-bit equality."""
        return cls(mode="exact")

    @classmethod
    def ulp(cls, max_ulps: int = 4, equal_nan: bool = False) -> Tolerance:
        """At most ``max_ulps`` representable floats apart."""
        return cls(mode="ulp", max_ulps=max_ulps, equal_nan=equal_nan)

    @classmethod
    def l2(cls, rtol: float = 1e-5, atol: float = 0.0) -> Tolerance:
        """Relative L2-norm distance per leaf."""
        return cls(mode="l2", rtol=rtol, atol=atol)

    def for_path(self, path: str) -> Tolerance:
        """Return the tolerance that applies to the leaf at ``path``."""
        for pattern, tol in self.overrides.items():
            if fnmatch.fnmatchcase(path, pattern):
                return tol.for_path(path)
        return self

    def describe(self) -> str:
        """A short human-readable form, used in diffs and certificates.

        Injective (certificates bind it): floats are written exactly (``repr``) and override
        patterns as JSON strings, so two different tolerances never read the same.

        Example:
            >>> Tolerance(rtol=1e-5, atol=1e-6, overrides={"loss": Tolerance(mode="exact")}).describe()
            'allclose(rtol=1e-05, atol=1e-06) overrides{"loss": exact}'
        """
        base = {
            "exact": "exact",
            "allclose": f"allclose(rtol={self.rtol!r}, atol={self.atol!r})",
            "ulp": f"ulp(max_ulps={self.max_ulps})",
            "l2": f"l2(rtol={self.rtol!r}, atol={self.atol!r})",
            "overlap": f"overlap(min_overlap={self.min_overlap!r})",
        }[self.mode]
        if self.equal_nan:
            base += "+equal_nan"
        if self.overrides:
            base += (
                " overrides{"
                + ", ".join(f"{json.dumps(k)}: {v.describe()}" for k, v in self.overrides.items())
                + "}"
            )
        return base


class Policy(_Model):
    """How one verified task is replicated and judged.

    Args:
        replicas: Executors that run each call at first (``r``).
        quorum: Agreeing outputs needed to accept (``q``); must be a strict majority of
            ``replicas`` so two different answers can never both be accepted. Defaults to
            ``replicas // 2 + 1``.
        tolerance: Numeric tolerance for comparing outputs.
        max_replicas: Upper bound on executions when replicas disagree and bft-ray escalates by
            adding replicas. Defaults to ``replicas + 2``.
        timeout_s: Seconds one replica may take before it counts as stalled and is replaced.

    Example:
        >>> Policy(replicas=3).quorum
        2
        >>> Policy(replicas=5, quorum=4).max_replicas
        7
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: int = Field(3, ge=1, description="replicas per call, >= 1")
    quorum: int | None = Field(None, ge=1)
    tolerance: Tolerance = Field(default_factory=Tolerance)
    max_replicas: int | None = Field(None, ge=1)
    timeout_s: float = Field(300.0, gt=0.0)

    @model_validator(mode="after")
    def _check_quorum(self) -> Policy:
        r = self.replicas
        q = self.quorum if self.quorum is not None else r // 2 + 1
        if q * 2 <= r:
            raise ValueError(
                f"quorum={q} is not a strict majority of replicas={r}: two different answers "
                f"could both be accepted. Use quorum >= {r // 2 + 1} or fewer replicas."
            )
        if q > r:
            raise ValueError(
                f"quorum={q} exceeds replicas={r}: it could never be reached. "
                f"Use quorum <= {r} or replicas >= {q}."
            )
        m = self.max_replicas if self.max_replicas is not None else r + 2
        if m < r:
            raise ValueError(
                f"max_replicas={m} is below replicas={r}. Use max_replicas >= {r} (or leave it "
                "unset for replicas + 2)."
            )
        object.__setattr__(self, "quorum", q)
        object.__setattr__(self, "max_replicas", m)
        return self

    def quorum_for(self, outputs: int) -> int:
        """Agreeing outputs needed when ``outputs`` valid outputs were compared.

        Escalation adds replicas; the quorum grows with them so it stays a strict majority of
        what was compared (two disjoint clusters can never both reach it).
        """
        return max(int(self.quorum or 1), outputs // 2 + 1)


class ClusterSpec(_Model):
    """What ``bft_ray.init`` sets up.

    Args:
        executors: Number of untrusted executor actors.
        verifiers: ``1`` for the trusted-verifier mode (one verifier decides); ``n >= 4`` for a
            BFT verifier group tolerating ``f = (n - 1) // 3`` Byzantine verifiers.
        gpus_per_executor: GPUs each executor actor holds (may be fractional, or 0 for CPU-only).
        cpus_per_executor: CPUs each executor actor reserves.
        faults: Fault injection, executor index -> behaviour name, spec or object.
        address: Ray address to join; ``None`` starts a local Ray (or joins ``RAY_ADDRESS``).
        executor_options: Extra Ray actor options for executors (``runtime_env``, ...).
        quarantine_below: Trust score under which a flagged executor stops receiving work
            (``0`` disables quarantine).
        quarantine_min_tasks: Outcomes an executor must have before it can be quarantined.
        verifier_faults: BFT mode: verifier index -> Byzantine behaviour name
            (:data:`bft_ray.faults.VERIFIER_FAULTS`).
        ledger_dir: BFT mode: directory of the verifiers' keys and SQLite ledgers (default: a
            new temporary directory).
        executor_groups: Owner group per executor index (anti-collusion placement).
        trust_path: File of the persisted trust state (``None``: in memory).
        prices: Credit prices (``reward``, ``stake``, ``crash_penalty``).
        readmit_after: Correct canaries that re-admit a quarantined executor.
        canary_rate: Fraction of calls followed by a known-answer canary.
        canary_interval_s: Seconds between canary rounds for quarantined executors.
        release: BFT mode: when a verified call's value is returned. ``"certified"`` (default):
            once ``2f + 1`` verifiers signed its certificate after committing it.
            ``"verdict"``: as soon as the dispatcher's own verdict is decided (the trusted
            mode's latency); the group commits it meanwhile and ``bft_ray.certificate(ref)``
            waits for the certificate.
        certify_timeout_s: BFT mode: how long a verdict may wait for ``2f + 1`` verifiers'
            certificate before the call (or, with ``release="verdict"``, its certificate)
            fails with :class:`~bft_ray.errors.VerificationError`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    executors: int = Field(4, ge=1)
    verifiers: int = Field(1, ge=1)
    gpus_per_executor: float = Field(1.0, ge=0.0)
    cpus_per_executor: float = Field(1.0, ge=0.0)
    faults: dict[int, Any] = Field(default_factory=dict)
    address: str | None = None
    executor_options: dict[str, Any] = Field(default_factory=dict)
    quarantine_below: float = Field(0.3, ge=0.0, le=1.0)
    quarantine_min_tasks: int = Field(4, ge=1)
    verifier_faults: dict[int, str] = Field(default_factory=dict)
    ledger_dir: str | None = None
    executor_groups: dict[int, str] = Field(default_factory=dict)
    trust_path: str | None = None
    prices: dict[str, float] = Field(default_factory=dict)
    readmit_after: int = Field(5, ge=1)
    canary_rate: float = Field(0.0, ge=0.0, le=1.0)
    canary_interval_s: float = Field(2.0, gt=0.0)
    release: Literal["certified", "verdict"] = "certified"
    certify_timeout_s: float = Field(120.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        if self.verifiers != 1 and self.verifiers < 4:
            raise ValueError(
                f"verifiers={self.verifiers}: a BFT group needs n = 3f + 1 >= 4 verifiers "
                "to tolerate f >= 1 Byzantine ones. Use verifiers=1 (trusted mode) or >= 4."
            )
        bad_v = [i for i in self.verifier_faults if not 0 <= i < self.verifiers]
        if bad_v:
            raise ValueError(
                f"verifier_faults name verifier indices {bad_v} but verifiers are "
                f"0..{self.verifiers - 1}. Use indices inside that range."
            )
        if self.verifier_faults and self.verifiers == 1:
            raise ValueError(
                "verifier_faults need a BFT group (verifiers >= 4); the trusted verifier of "
                "verifiers=1 is trusted by definition."
            )
        if self.release == "verdict" and self.verifiers == 1:
            raise ValueError(
                'release="verdict" is for a BFT group (verifiers >= 4): the trusted verifier of '
                "verifiers=1 already returns each value at its verdict, with its certificate. "
                'Leave release="certified" or use verifiers >= 4.'
            )
        if self.verifiers > 1 and self.trust_path is not None:
            raise ValueError(
                "trust_path is for the trusted mode (verifiers=1). In BFT mode the trust state "
                "is derived from the verifiers' committed ledgers and survives restarts with "
                "them: keep ledger_dir instead."
            )
        if self.verifiers > 1 and self.canary_rate > 0:
            raise ValueError(
                "canary_rate runs in the trusted mode (verifiers=1) only: a canary's verdict "
                "would be the dispatcher's alone, never rechecked and committed by the group, "
                "so it cannot change the committed standing. Use canary_rate=0 with verifiers>1."
            )
        bad_g = [i for i in self.executor_groups if not 0 <= i < self.executors]
        if bad_g:
            raise ValueError(
                f"executor_groups name executor indices {bad_g} but executors are "
                f"0..{self.executors - 1}. Use indices inside that range."
            )
        unknown = set(self.prices) - {"reward", "stake", "crash_penalty"}
        if unknown:
            raise ValueError(
                f"prices has unknown keys {sorted(unknown)}; use reward, stake and crash_penalty."
            )
        if any(v < 0 for v in self.prices.values()):
            raise ValueError("prices must be >= 0")
        bad = [i for i in self.faults if not 0 <= i < self.executors]
        if bad:
            raise ValueError(
                f"faults name executor indices {bad} but executors are 0..{self.executors - 1}. "
                "Use indices inside that range or add executors."
            )
        return self


def validated(model: type[M], **kwargs: Any) -> M:
    """Build ``model`` from ``kwargs``; invalid input raises :class:`ConfigError`.

    Example:
        >>> try:
        ...     validated(Policy, replicas=0)
        ... except ConfigError as e:
        ...     print(e)
        Invalid Policy:
          replicas: Input should be greater than or equal to 1 (got 0)
    """
    try:
        return model(**kwargs)
    except ValidationError as exc:  # models not derived from _Model
        raise _config_error(model.__name__, exc) from None
