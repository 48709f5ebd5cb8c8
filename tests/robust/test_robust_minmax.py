"""Min-Max / Min-Sum (Shejwalkar & Houmansadr, NDSS 2021) and the geometric median's accuracy.

Min-Max and Min-Sum are checked against their defining constraints, against a closed form for
the largest feasible ``gamma`` (the constraints are quadratic in ``gamma``), and against ALIE on
the mean. The geometric median is checked against a long float64 Weiszfeld run whose optimality
is verified separately, and on cases whose median is known by symmetry.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bft_ray.errors import ConfigError
from bft_ray.robust.aggregators import GeometricMedian, Mean
from bft_ray.robust.attacks import ALIE, ATTACKS, IPM, MinMax, MinSum, make_attack

DIRECTIONS = ["std", "unit_vec", "sign"]


def _honest(seed: int, h: int = 8, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(loc=1.0, scale=0.5, size=(h, d))


def _sq_dist(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((x - m) ** 2).sum(axis=1)


def _pairwise(x: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)


def _minmax_ok(m: np.ndarray, x: np.ndarray) -> bool:
    return bool(_sq_dist(m, x).max() <= _pairwise(x).max())


def _minsum_ok(m: np.ndarray, x: np.ndarray) -> bool:
    return bool(_sq_dist(m, x).sum() <= _pairwise(x).sum(axis=1).max())


def _direction(x: np.ndarray, direction: str) -> np.ndarray:
    mu = x.mean(axis=0)
    if direction == "std":
        return -x.std(axis=0, ddof=1)
    if direction == "unit_vec":
        return -mu / np.linalg.norm(mu)
    return -np.sign(mu)


def _closed_form_gamma(x: np.ndarray, p: np.ndarray, kind: str) -> float:
    """Largest gamma with the constraint, from ||x_i - mu - g p||^2 = a_i - 2 g b_i + g^2 c."""
    mu = x.mean(axis=0)
    a = _sq_dist(mu, x)
    b = (x - mu) @ p
    c = float(p @ p)
    if kind == "minmax":
        bound = _pairwise(x).max()
        return float(np.min((b + np.sqrt(b * b - c * (a - bound))) / c))
    # sum_i b_i = 0, so the sum of the quadratics is sum(a) + h g^2 c.
    bound = _pairwise(x).sum(axis=1).max()
    return math.sqrt((bound - a.sum()) / (len(x) * c))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize(("cls", "ok"), [(MinMax, _minmax_ok), (MinSum, _minsum_ok)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constraint_holds_and_gamma_is_maximal(cls, ok, direction: str, seed: int) -> None:
    x = _honest(seed)
    attack = cls(direction=direction)
    out = attack(x, n_byzantine=3)
    assert out.shape == (3, x.shape[1]) and (out == out[0]).all()  # colluding: one vector
    gamma, tau = attack.last_gamma, attack.tau
    mu, p = x.mean(axis=0), _direction(x, direction)
    np.testing.assert_allclose(out[0], mu + gamma * p, rtol=1e-12, atol=1e-12)
    assert gamma > 0
    assert ok(out[0], x)  # the vector sent satisfies the constraint...
    assert not ok(mu + (gamma + 2 * tau) * p, x)  # ...and gamma is maximal up to tau
    assert gamma == pytest.approx(_closed_form_gamma(x, p, cls.name), abs=tau)


@pytest.mark.parametrize("cls", [MinMax, MinSum])
def test_search_goes_past_gamma_init_and_below_it(cls) -> None:
    # unit_vec direction: gamma is in the units of the vectors, here about 100 and 1e-3.
    for spread in (100.0, 1e-3):
        x = _honest(3) * spread
        p = _direction(x, "unit_vec")
        attack = cls(direction="unit_vec", gamma_init=10.0, tau=1e-9 * spread)
        attack(x, 1)
        assert attack.last_gamma == pytest.approx(
            _closed_form_gamma(x, p, cls.name), abs=2e-9 * spread
        )


def test_hand_checked_two_points() -> None:
    # mu = (1, 0); unit_vec p = (-1, 0). Min-Max: 1 + gamma <= 2. Min-Sum: 2 + 2 gamma^2 <= 4.
    x = np.array([[0.0, 0.0], [2.0, 0.0]])
    for cls in (MinMax, MinSum):
        attack = cls(direction="unit_vec")
        out = attack(x, 1)
        assert attack.last_gamma == pytest.approx(1.0, abs=attack.tau)
        assert out[0] == pytest.approx([0.0, 0.0], abs=attack.tau)
    # std direction: p = (-sqrt 2, 0), so gamma = 1 / sqrt 2.
    attack = MinMax()
    attack(x, 1)
    assert attack.last_gamma == pytest.approx(1 / math.sqrt(2), abs=attack.tau)


def test_no_direction_sends_the_mean() -> None:
    same = np.ones((4, 3))
    for cls in (MinMax, MinSum):
        assert cls()(same, 2).tolist() == [[1.0] * 3] * 2
        assert cls()(np.array([[1.0, -2.0]]), 1).tolist() == [[1.0, -2.0]]
        attack = cls(direction="unit_vec")
        assert attack(np.zeros((3, 2)), 1).tolist() == [[0.0, 0.0]]
        assert attack.last_gamma == 0.0


def test_registered_like_the_other_attacks() -> None:
    assert ATTACKS["minmax"] is MinMax and ATTACKS["minsum"] is MinSum
    assert isinstance(make_attack("min_max"), MinMax) and isinstance(make_attack("min-sum"), MinSum)
    attack = make_attack("minmax(direction='sign', gamma_init=5.0, tau=1e-6)")
    assert (attack.direction, attack.gamma_init, attack.tau) == ("sign", 5.0, 1e-6)
    assert attack.kind == "vector"
    # "Fall of empires" (Xie et al. 2019) is IPM.
    foe = make_attack("foe(epsilon=0.1)")
    assert isinstance(foe, IPM) and foe.epsilon == 0.1
    with pytest.raises(ConfigError, match="direction"):
        MinMax(direction="random")
    with pytest.raises(ConfigError, match="gamma_init"):
        MinSum(tau=0.0)
    # Types follow the input, as for every attack.
    t = MinSum()(torch.tensor(_honest(0), dtype=torch.float32), 2)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (2, 6)
    assert MinMax()(_honest(0), 0).shape == (0, 6)


def test_minmax_and_minsum_move_the_mean_more_than_alie() -> None:
    # n = 15, f = 3, the benchmark's setting; ALIE with the paper's z (0.43).
    rng = np.random.default_rng(7)
    honest = rng.normal(loc=0.5, scale=1.0, size=(12, 50))
    mu = honest.mean(axis=0)

    def shift(attack) -> float:
        rows = np.vstack([honest, attack(honest, n_byzantine=3)])
        return float(np.linalg.norm(Mean(f=3)(rows) - mu))

    alie, minmax, minsum = shift(ALIE()), shift(MinMax()), shift(MinSum())
    assert minmax > 2 * alie and minsum > 2 * alie, (alie, minmax, minsum)


# ---------------------------------------------------------------------------- geometric median


def _reference_geometric_median(x: np.ndarray) -> np.ndarray:
    """Plain float64 Weiszfeld run until the step is 1e-15 of the spread."""
    z = x.mean(axis=0)
    spread = np.linalg.norm(x - z, axis=1).mean()
    for _ in range(200_000):
        d = np.linalg.norm(x - z, axis=1)
        assert d.min() > 0  # the random cases below never have the median on an input
        w = 1.0 / d
        z_next = (w[:, None] * x).sum(axis=0) / w.sum()
        if np.linalg.norm(z_next - z) <= 1e-15 * spread:
            return z_next
        z = z_next
    raise AssertionError("reference Weiszfeld did not converge")


def _optimality_residual(x: np.ndarray, z: np.ndarray) -> float:
    """||gradient|| of sum_i ||z - x_i||, relative to n: 0 at the geometric median."""
    diff = z - x
    return float(np.linalg.norm((diff / np.linalg.norm(diff, axis=1)[:, None]).sum(axis=0)))


CASES = [(15, 10, 0), (15, 100, 1), (11, 2, 2), (7, 3, 3), (9, 2, 9), (15, 50, 5), (5, 2, 6)]


@pytest.mark.parametrize(("n", "d", "seed"), CASES)
def test_geometric_median_within_1e_6_of_reference(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.choice([1e-3, 1.0, 1e3])
    x[: n // 3] += 5 * x.std()  # a group of outliers pulls the mean away from the median
    ref = _reference_geometric_median(x)
    assert _optimality_residual(x, ref) < 1e-9  # the reference is the median
    spread = np.linalg.norm(x - ref, axis=1).mean()
    gm = GeometricMedian(f=(n - 1) // 2)
    out = gm(x)
    assert gm.last_converged
    # Relative to the spread of the data (the old objective-based rule: up to 1e-3 here).
    assert np.linalg.norm(out - ref) <= 1e-6 * spread
    assert np.linalg.norm(out - ref) <= 1e-6 * max(spread, np.linalg.norm(ref))


def test_geometric_median_float32_and_torch() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(13, 40))
    x[:4] += 3.0
    ref = _reference_geometric_median(x)
    spread = np.linalg.norm(x - ref, axis=1).mean()
    out = GeometricMedian(f=6)(torch.tensor(x, dtype=torch.float32))
    assert out.dtype == torch.float32
    # Computed in float64: the only error left is float32 rounding of inputs and output.
    assert np.linalg.norm(out.numpy().astype(np.float64) - ref) <= 1e-6 * spread


def test_geometric_median_hand_checked_cases() -> None:
    # Symmetric about (3, -2): the centre.
    cross = np.array([[4.0, -2.0], [2.0, -2.0], [3.0, 0.0], [3.0, -4.0], [3.5, -1.5], [2.5, -2.5]])
    assert GeometricMedian(f=2)(cross) == pytest.approx([3.0, -2.0], abs=1e-9)
    # Isosceles triangle (0, 0), (2, 0), (1, 3), all angles < 120 degrees: the Fermat point,
    # where each side subtends 120 degrees, i.e. (1, tan(30 deg)) = (1, 1/sqrt 3).
    tri = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])
    gm = GeometricMedian(f=1)
    assert gm(tri) == pytest.approx([1.0, 1 / math.sqrt(3)], abs=1e-6 * 1.5)
    assert gm.last_converged
    # Regular pentagon of radius 2 around (1, 1): the centre, at any rotation.
    angles = 2 * np.pi * np.arange(5) / 5 + 0.3
    pent = np.c_[1 + 2 * np.cos(angles), 1 + 2 * np.sin(angles)]
    assert GeometricMedian(f=2)(pent) == pytest.approx([1.0, 1.0], abs=2e-6)
    # All inputs equal: that vector, with no iteration.
    gm = GeometricMedian(f=1)
    assert gm(np.full((3, 4), 2.5)).tolist() == [2.5] * 4 and gm.last_iterations == 0
