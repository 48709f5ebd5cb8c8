"""Byzantine attacks on gradient aggregation, computed as the literature defines them.

Two kinds:

* **vector attacks** (``kind == "vector"``) replace what the ``f`` Byzantine workers send.
  They are *omniscient*: they see the honest vectors of the current step (the standard threat
  model of ALIE, IPM and the robust-aggregation literature). Call
  ``attack(honest, n_byzantine)`` to get the ``(n_byzantine, d)`` Byzantine rows.
* **data attacks** (``kind == "data"``) make the Byzantine workers follow the protocol on
  poisoned data; :meth:`DataAttack.transform_labels` rewrites their labels.

=============  =======================================  ====================================
name           Byzantine vector / behaviour             reference
=============  =======================================  ====================================
none           behave honestly                          (baseline)
sign_flip      ``-mean(honest)``                        Allen-Zhu et al., ICLR 2021
ipm            ``-epsilon * mean(honest)``              Xie, Koyejo & Gupta, UAI 2019
alie           ``mean(honest) - z * std(honest)``       Baruch, Baruch & Goldberg, NeurIPS 2019
minmax         ``mean + gamma * p``, largest gamma      Shejwalkar & Houmansadr, NDSS 2021
               keeping max distance to honest <= max
               honest pairwise distance
minsum         ``mean + gamma * p``, largest gamma      Shejwalkar & Houmansadr, NDSS 2021
               keeping sum of squared distances <=
               the largest honest one
gaussian       i.i.d. ``N(mu, sigma^2)`` coordinates    (common baseline)
mimic          copy of honest vector ``target``         Karimireddy, He & Jaggi, ICLR 2022
nonfinite      all-NaN (or +-inf) vectors               (robustness to garbage)
label_flip     train on labels ``y -> C - 1 - y``       (data poisoning baseline)
=============  =======================================  ====================================

"Fall of empires" (Xie, Koyejo & Gupta, UAI 2019) is the paper that introduced IPM: the name
``foe`` is an alias of ``ipm`` (``make_attack("foe(epsilon=0.1)")``).

Example:
    >>> import numpy as np
    >>> honest = np.array([[1.0, 2.0], [3.0, 6.0]])
    >>> SignFlip()(honest, n_byzantine=1).tolist()
    [[-2.0, -4.0]]
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bft_ray.errors import ConfigError
from bft_ray.robust._spec import parse_spec
from bft_ray.robust._tensors import to_matrix
from bft_ray.robust.aggregators import pairwise_sq_distances

__all__ = [
    "ALIE",
    "ATTACKS",
    "IPM",
    "Attack",
    "DataAttack",
    "GaussianNoise",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "NoAttack",
    "NonFinite",
    "SignFlip",
    "VectorAttack",
    "alie_z",
    "make_attack",
]


def alie_z(n: int, f: int) -> float:
    """The ``z`` of "A little is enough" (Baruch et al. 2019) for ``n`` workers, ``f`` Byzantine.

    ``s = floor(n/2 + 1) - f`` honest workers must be won over for a majority;
    ``z = Phi^-1((n - s) / n)`` is the largest shift (in standard deviations) that still leaves
    the Byzantine value closer to the mean than ``s`` honest values are, in expectation.

    Raises:
        ConfigError: When ``(n - s) / n`` is not in ``(0, 1)`` (e.g. a Byzantine majority).

    Example:
        >>> round(alie_z(15, 3), 4)  # s = 5, Phi^-1(10/15)
        0.4307
        >>> round(alie_z(50, 12), 4)  # s = 14, Phi^-1(36/50)
        0.5828
    """
    if n < 1 or f < 0:
        raise ConfigError(f"alie_z needs n >= 1 and f >= 0 (got n={n}, f={f})")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ConfigError(
            f"ALIE's z is undefined for n={n}, f={f} (s={s}, (n-s)/n={p:.3g}); it needs "
            "0 < floor(n/2 + 1) - f < n, i.e. a Byzantine minority"
        )
    return NormalDist().inv_cdf(p)


class Attack:
    """Base class of attacks; see :class:`VectorAttack` and :class:`DataAttack`."""

    name: ClassVar[str] = "attack"
    kind: ClassVar[Literal["vector", "data"]] = "vector"

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class VectorAttack(Attack):
    """An attack that chooses the Byzantine vectors from the honest ones."""

    kind = "vector"

    def __call__(
        self, honest: Any, n_byzantine: int = 1, *, generator: torch.Generator | None = None
    ) -> Any:
        """Byzantine vectors for one step.

        Args:
            honest: The honest vectors (same input types as the aggregators accept).
            n_byzantine: How many Byzantine vectors to produce.
            generator: Source of randomness for randomised attacks (seeded runs).

        Returns:
            ``n_byzantine`` vectors, in the type of ``honest`` (an ``(n_byzantine, d)`` array or
            tensor, or a list of pytrees).
        """
        x, layout = to_matrix(honest)
        return layout.matrix(self.byzantine_matrix(x, n_byzantine, generator=generator))

    def byzantine_matrix(
        self, honest: Tensor, n_byzantine: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Matrix form of :meth:`__call__`: ``(h, d)`` honest rows -> ``(n_byzantine, d)``."""
        if honest.ndim != 2 or honest.shape[0] < 1:
            raise ConfigError(f"{type(self).__name__} needs at least one honest vector")
        if n_byzantine < 0:
            raise ConfigError(f"n_byzantine must be >= 0, got {n_byzantine}")
        if n_byzantine == 0:
            return honest.new_zeros((0, honest.shape[1]))
        return self._vectors(honest, n_byzantine, generator)

    def _vectors(self, honest: Tensor, n_byz: int, generator: torch.Generator | None) -> Tensor:
        # Most attacks send one vector from every Byzantine worker (colluding).
        return self._vector(honest, n_byz)[None, :].expand(n_byz, -1).clone()

    def _vector(self, honest: Tensor, n_byz: int) -> Tensor:
        raise NotImplementedError


class DataAttack(Attack):
    """An attack on the Byzantine workers' data; they otherwise follow the protocol."""

    kind = "data"

    def transform_labels(self, y: Any) -> Any:
        """The labels the Byzantine workers train on."""
        return y


class NoAttack(DataAttack):
    """Byzantine workers behave honestly (the "no attack" column of a benchmark)."""

    name = "none"


class LabelFlip(DataAttack):
    """Label flipping: Byzantine workers train on ``y -> num_classes - 1 - y``.

    Example:
        >>> import numpy as np
        >>> LabelFlip(num_classes=10).transform_labels(np.array([0, 3, 9])).tolist()
        [9, 6, 0]
    """

    name = "label_flip"

    def __init__(self, num_classes: int = 10) -> None:
        if int(num_classes) < 2:
            raise ConfigError(f"LabelFlip needs num_classes >= 2 (got {num_classes})")
        self.num_classes = int(num_classes)

    def transform_labels(self, y: Any) -> Any:
        return (self.num_classes - 1) - y


class SignFlip(VectorAttack):
    """Sign flipping: every Byzantine worker sends ``-mean(honest)``.

    This is the omniscient form used by ByzFL and Allen-Zhu et al.; the per-worker variant
    (each Byzantine worker negates its own gradient) has the same expectation.
    """

    name = "sign_flip"

    def _vector(self, honest: Tensor, n_byz: int) -> Tensor:
        return -honest.mean(dim=0)


class IPM(VectorAttack):
    """Inner-product manipulation (Xie et al. 2019): ``-epsilon * mean(honest)``.

    Small ``epsilon`` (0.1) stays close to the honest vectors and fools distance-based rules
    (Krum); large ``epsilon`` flips the mean outright when ``f * epsilon > n - f``.

    Example:
        >>> import numpy as np
        >>> IPM(epsilon=0.5)(np.array([[2.0], [4.0]]), n_byzantine=2).tolist()
        [[-1.5], [-1.5]]
    """

    name = "ipm"

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = float(epsilon)

    def _vector(self, honest: Tensor, n_byz: int) -> Tensor:
        return -self.epsilon * honest.mean(dim=0)


class ALIE(VectorAttack):
    """ "A little is enough" (Baruch et al. 2019): ``mean - z * std`` per coordinate.

    ``std`` is the sample standard deviation of the honest vectors (``ddof=1``; 0 for a single
    honest vector). ``z`` defaults to :func:`alie_z` of ``n = h + n_byzantine`` and
    ``f = n_byzantine``. The sign follows the paper's ``mu - z sigma``; some libraries use
    ``+``, which is the same attack mirrored.

    Example:
        >>> import numpy as np
        >>> honest = np.array([[0.0], [2.0]])
        >>> ALIE(z=1.0)(honest, n_byzantine=1).round(4).tolist()  # 1 - sqrt(2)
        [[-0.4142]]
    """

    name = "alie"

    def __init__(self, z: float | None = None) -> None:
        self.z = None if z is None else float(z)

    def _vector(self, honest: Tensor, n_byz: int) -> Tensor:
        h = honest.shape[0]
        z = alie_z(h + n_byz, n_byz) if self.z is None else self.z
        mean = honest.mean(dim=0)
        # Written out: torch.std along dim 0 is several times slower for short columns.
        if h > 1:
            std = ((honest - mean).pow(2).sum(dim=0) / (h - 1)).sqrt()
        else:
            std = torch.zeros_like(mean)
        return mean - z * std


_DIRECTIONS = ("std", "unit_vec", "sign")


class _ScaledPerturbation(VectorAttack):
    """Shared part of Min-Max and Min-Sum (Shejwalkar & Houmansadr, NDSS 2021).

    Every Byzantine worker sends ``m = mu + gamma * p``: ``mu`` is the mean of the honest
    vectors, ``p`` a perturbation direction, and ``gamma`` the largest scale for which
    :meth:`_feasible` holds, found by binary search. ``gamma`` of the last call is
    :attr:`last_gamma`.
    """

    def __init__(self, direction: str = "std", gamma_init: float = 10.0, tau: float = 1e-5) -> None:
        key = str(direction).lower().replace("-", "_")
        key = {"inverse_std": "std", "unit": "unit_vec", "inverse_unit_vector": "unit_vec"}.get(
            key, key
        )
        if key not in _DIRECTIONS:
            raise ConfigError(
                f"{type(self).__name__} direction must be one of {', '.join(_DIRECTIONS)} "
                f"(got {direction!r})"
            )
        if not gamma_init > 0 or not tau > 0:
            raise ConfigError(
                f"{type(self).__name__} needs gamma_init > 0 and tau > 0 (got {gamma_init}, {tau})"
            )
        self.direction = key
        self.gamma_init = float(gamma_init)
        self.tau = float(tau)
        self._last_gamma = 0.0

    @property
    def last_gamma(self) -> float:
        """The scale ``gamma`` chosen by the last call."""
        return self._last_gamma

    @staticmethod
    def perturbation(honest: Tensor, direction: str = "std") -> Tensor:
        """The direction ``p`` (float64): ``-std`` (sample std, ddof 1), ``-mu / ||mu||`` or
        ``-sign(mu)``; zero where it is undefined (one honest vector, ``mu = 0``)."""
        x = honest.to(torch.float64)
        mu = x.mean(dim=0)
        if direction == "std":
            h = x.shape[0]
            if h < 2:
                return torch.zeros_like(mu)
            return -((x - mu).pow(2).sum(dim=0) / (h - 1)).sqrt()
        if direction == "unit_vec":
            norm = mu.norm()
            return -mu / norm if float(norm) > 0 else torch.zeros_like(mu)
        return -torch.sign(mu)

    def _feasible(self, sq_dist_to_honest: Tensor, pairwise: Tensor) -> bool:
        raise NotImplementedError

    def _vector(self, honest: Tensor, n_byz: int) -> Tensor:
        x = honest.to(torch.float64)
        mu = x.mean(dim=0)
        p = self.perturbation(x, self.direction)
        self._last_gamma = 0.0
        if not float(p.norm()) > 0:  # no direction to move in (e.g. identical honest vectors)
            return mu.to(honest.dtype)
        pairwise = pairwise_sq_distances(x)

        def feasible(gamma: float) -> bool:
            diff = x - (mu + gamma * p)
            return self._feasible((diff * diff).sum(dim=1), pairwise)

        # The constraint holds at gamma = 0 and its left side is convex in gamma, so the feasible
        # gammas are an interval [0, gamma*]: bracket gamma* by doubling from gamma_init (the
        # paper's search cannot go past 1.5 * gamma_init), then halve the step down to tau.
        lo, hi = 0.0, self.gamma_init
        while feasible(hi):
            lo, hi = hi, 2.0 * hi
            if not math.isfinite(hi):
                hi = lo
                break
        while hi - lo > self.tau:
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):  # float resolution reached
                break
            if feasible(mid):
                lo = mid
            else:
                hi = mid
        self._last_gamma = lo
        return (mu + lo * p).to(honest.dtype)


class MinMax(_ScaledPerturbation):
    """Min-Max (Shejwalkar & Houmansadr 2021): ``mu + gamma * p`` with the largest ``gamma``
    such that ``max_i ||m - x_i|| <= max_{i,j} ||x_i - x_j||`` over the honest vectors.

    The Byzantine vector is no farther from any honest vector than the two most distant honest
    vectors are from each other, so distance-based rules cannot tell it apart. ``gamma`` is
    found by binary search to within ``tau`` (bracketed by doubling from ``gamma_init``); the
    direction ``p`` is ``"std"`` (``-std``, the default), ``"unit_vec"`` (``-mu / ||mu||``) or
    ``"sign"`` (``-sign(mu)``). The constraints are evaluated in float64.

    Example:
        >>> import numpy as np
        >>> honest = np.array([[0.0, 0.0], [2.0, 0.0]])  # mu (1, 0), std (sqrt 2, 0)
        >>> attack = MinMax(direction="unit_vec")  # p = (-1, 0): 1 + gamma <= 2
        >>> attack(honest, n_byzantine=1).round(4).tolist(), round(attack.last_gamma, 4)
        ([[0.0, 0.0]], 1.0)
    """

    name = "minmax"

    def _feasible(self, sq_dist_to_honest: Tensor, pairwise: Tensor) -> bool:
        return bool(sq_dist_to_honest.max() <= pairwise.max())


class MinSum(_ScaledPerturbation):
    """Min-Sum (Shejwalkar & Houmansadr 2021): ``mu + gamma * p`` with the largest ``gamma``
    such that ``sum_i ||m - x_i||^2 <= max_i sum_j ||x_i - x_j||^2`` over the honest vectors.

    The Byzantine vector's sum of squared distances to the honest vectors is no larger than that
    of the most outlying honest vector. Search and directions as in :class:`MinMax`.

    Example:
        >>> import numpy as np
        >>> honest = np.array([[0.0, 0.0], [2.0, 0.0]])  # (1 - gamma)^2 + (1 + gamma)^2 <= 4
        >>> attack = MinSum(direction="unit_vec")
        >>> attack(honest, n_byzantine=1).round(4).tolist(), round(attack.last_gamma, 4)
        ([[0.0, 0.0]], 1.0)
    """

    name = "minsum"

    def _feasible(self, sq_dist_to_honest: Tensor, pairwise: Tensor) -> bool:
        return bool(sq_dist_to_honest.sum() <= pairwise.sum(dim=1).max())


class GaussianNoise(VectorAttack):
    """Byzantine vectors with i.i.d. ``N(mu, sigma^2)`` coordinates, one draw per worker.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> GaussianNoise(sigma=0.0, mu=3.0)(torch.zeros(2, 2), 1, generator=g).tolist()
        [[3.0, 3.0]]
    """

    name = "gaussian"

    def __init__(self, sigma: float = 1.0, mu: float = 0.0) -> None:
        if not sigma >= 0:
            raise ConfigError(f"GaussianNoise needs sigma >= 0 (got {sigma})")
        self.sigma = float(sigma)
        self.mu = float(mu)

    def _vectors(self, honest: Tensor, n_byz: int, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(
            (n_byz, honest.shape[1]), generator=generator, dtype=honest.dtype, device="cpu"
        ).to(honest.device)
        return self.mu + self.sigma * noise


class Mimic(VectorAttack):
    """Mimic (Karimireddy et al. 2022): every Byzantine worker copies honest vector ``target``.

    Harmless under IID data; under heterogeneous data it over-weights one worker's distribution.

    Example:
        >>> import numpy as np
        >>> Mimic(target=1)(np.array([[1.0], [7.0]]), n_byzantine=2).tolist()
        [[7.0], [7.0]]
    """

    name = "mimic"

    def __init__(self, target: int = 0) -> None:
        if int(target) < 0:
            raise ConfigError(f"Mimic needs a target index >= 0 (got {target})")
        self.target = int(target)

    def _vector(self, honest: Tensor, n_byz: int) -> Tensor:
        if self.target >= honest.shape[0]:
            raise ConfigError(
                f"Mimic(target={self.target}) but only {honest.shape[0]} honest vectors"
            )
        return honest[self.target]


class NonFinite(VectorAttack):
    """Vectors full of NaN (default), ``+inf`` or ``-inf``; aggregators must survive or refuse.

    Example:
        >>> import numpy as np
        >>> NonFinite("inf")(np.zeros((2, 2)), 1).tolist()
        [[inf, inf]]
    """

    name = "nonfinite"

    def __init__(self, value: str | float = "nan") -> None:
        fill = float(value)
        if math.isfinite(fill):
            raise ConfigError(f"NonFinite needs nan, inf or -inf (got {value!r})")
        self.value = str(value)
        self._fill = fill

    def _vector(self, honest: Tensor, n_byz: int) -> Tensor:
        return torch.full_like(honest[0], self._fill)


ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        NoAttack,
        SignFlip,
        IPM,
        ALIE,
        MinMax,
        MinSum,
        GaussianNoise,
        Mimic,
        NonFinite,
        LabelFlip,
    )
}
_ATTACK_ALIASES = {
    "no_attack": "none",
    "signflip": "sign_flip",
    "sf": "sign_flip",
    "inner_product_manipulation": "ipm",
    "foe": "ipm",
    "a_little_is_enough": "alie",
    "min_max": "minmax",
    "min_sum": "minsum",
    "gaussian_noise": "gaussian",
    "noise": "gaussian",
    "nan": "nonfinite",
    "inf": "nonfinite",
    "labelflip": "label_flip",
    "lf": "label_flip",
}


def make_attack(spec: str, **kwargs: Any) -> Attack:
    """Build an attack from its name, optionally with arguments: ``"ipm(epsilon=0.5)"``.

    Example:
        >>> make_attack("ipm(epsilon=0.5)")
        IPM(epsilon=0.5)
        >>> make_attack("inf")
        NonFinite(value='inf')
    """
    stages = parse_spec(spec)
    if len(stages) != 1:
        raise ConfigError(f"an attack is a single name, got {spec!r}")
    raw, parsed = stages[0]
    key = raw.replace("-", "_")
    name = _ATTACK_ALIASES.get(key, key)
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {raw!r}; known: {', '.join(sorted(ATTACKS))}")
    if key in ("nan", "inf") and "value" not in parsed and "value" not in kwargs:
        parsed["value"] = key
    try:
        return ATTACKS[name](**{**parsed, **kwargs})
    except TypeError as exc:
        raise ConfigError(f"bad arguments for attack {name!r}: {exc}") from None
