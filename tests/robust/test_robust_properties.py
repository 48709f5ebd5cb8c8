"""Property tests: permutation invariance, bounded influence, breakdown points, non-finite inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bft_ray.errors import ConfigError
from bft_ray.robust import NonFiniteInputError, make_aggregator

# Every aggregator, and each pre-aggregator composed with one. Bucketing is left out of the
# permutation property on purpose: its random shuffle is seeded by call, not by content.
ORDER_FREE = [
    "mean",
    "median",
    "trimmed_mean",
    "geometric_median",
    "krum",
    "multi_krum",
    "bulyan",
    "centered_clipping",
    "nnm+trimmed_mean",
    "nnm+krum",
    "arc+median",
    "clipping(c=1.0)+geometric_median",
]
ALL_RULES = [*ORDER_FREE, "bucketing(s=2)+median", "bucketing(s=3)+krum", "nnm+bulyan"]

# Condition, as the smallest n, for each base rule; the test below checks min_n() against it.
EXPECTED_MIN_N = {
    "mean": lambda f: f + 1,
    "median": lambda f: 2 * f + 1,
    "trimmed_mean": lambda f: 2 * f + 1,
    "geometric_median": lambda f: 2 * f + 1,
    "centered_clipping": lambda f: 2 * f + 1,
    "krum": lambda f: 2 * f + 3,
    "multi_krum": lambda f: 2 * f + 3,
    "bulyan": lambda f: 4 * f + 3,
    "nnm+mean": lambda f: 2 * f + 1,
    "arc+mean": lambda f: 2 * f + 1,
    "bucketing(s=2)+median": lambda f: 4 * f + 1,  # ceil(n / 2) > 2f
    "clipping+krum": lambda f: 2 * f + 3,
}

# Example counts come from the project's hypothesis profile (tests/conftest.py: "ci" for
# `make test`, "full" for `make test-full`); only the deadline is relaxed here (Weiszfeld).
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(
    spec=st.sampled_from(ORDER_FREE),
    f=st.integers(0, 3),
    extra=st.integers(0, 4),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_permutation_invariance(spec: str, f: int, extra: int, d: int, seed: int) -> None:
    n = make_aggregator(spec, f).min_n(f) + extra
    rng = np.random.default_rng(seed)
    # Continuous random vectors: no exact ties, which would make index tie-breaks visible.
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10)
    perm = rng.permutation(n)
    a = make_aggregator(spec, f)(x)
    b = make_aggregator(spec, f)(x[perm])
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * (1 + np.abs(x).max()))


honest_values = arrays(
    np.float64,
    st.tuples(st.integers(1, 8), st.integers(1, 4)),
    elements=st.floats(-1e6, 1e6, allow_nan=False),
)
any_values = st.floats(allow_nan=True, allow_infinity=True)


@RELAXED
@given(data=st.data(), spec=st.sampled_from(["median", "trimmed_mean"]))
def test_median_and_trimmed_mean_stay_in_honest_range(data: st.DataObject, spec: str) -> None:
    honest = data.draw(honest_values)
    h, d = honest.shape
    f = data.draw(st.integers(0, h - 1))  # n = h + f > 2f  <=>  h > f
    byz = data.draw(arrays(np.float64, (f, d), elements=any_values))
    x = np.vstack([honest, byz])
    order = data.draw(st.permutations(range(h + f)))
    out = make_aggregator(spec, f)(x[list(order)])
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    slack = 1e-9 * (1 + np.abs(honest).max())
    assert np.all(out >= lo - slack) and np.all(out <= hi + slack)


@pytest.mark.parametrize("spec", sorted(EXPECTED_MIN_N))
@pytest.mark.parametrize("f", [0, 1, 2, 3, 5])
def test_every_rule_refuses_n_beyond_breakdown(spec: str, f: int) -> None:
    rule = make_aggregator(spec, f)
    need = EXPECTED_MIN_N[spec](f)
    assert rule.min_n(f) == need
    x = np.random.default_rng(f).normal(size=(need, 3))
    rule(x)  # at the breakdown point: accepted
    if need - 1 >= 1:
        with pytest.raises(ConfigError, match=r"needs n .*\(got n=|rows reach it") as info:
            make_aggregator(spec, f)(x[: need - 1])
        assert f"add workers (n >= {need})" in str(info.value)


@pytest.mark.parametrize("spec", ALL_RULES)
def test_breakdown_checked_for_every_rule(spec: str) -> None:
    f = 2
    rule = make_aggregator(spec, f)
    need = rule.min_n(f)
    with pytest.raises(ConfigError):
        rule(np.ones((need - 1, 2)))
    assert np.all(np.isfinite(make_aggregator(spec, f)(np.ones((need, 2)))))


@pytest.mark.parametrize("spec", ALL_RULES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_rule_survives_up_to_f_nonfinite_rows(spec: str, value: float) -> None:
    f = 2
    rng = np.random.default_rng(7)
    n = make_aggregator(spec, f).min_n(f) + 1
    x = rng.normal(size=(n, 4))
    bad = x.copy()
    bad[[1, n - 1], 2] = value  # one poisoned coordinate is enough to drop a row
    rule = make_aggregator(spec, f, nonfinite="drop")
    out = rule(bad)
    assert np.all(np.isfinite(out))
    # Dropping is the same as aggregating the clean rows with f - 2 (for deterministic rules).
    if not spec.startswith("bucketing"):
        clean = np.delete(x, [1, n - 1], axis=0)
        expected = make_aggregator(spec, f).aggregate_matrix(torch.as_tensor(clean), f - 2)
        np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)
    # One more bad row than f: a clear error.
    bad[0, 0] = value
    with pytest.raises(NonFiniteInputError, match="more than f=2"):
        make_aggregator(spec, f, nonfinite="drop")(bad)
