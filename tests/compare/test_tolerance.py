"""Tolerance rules, NaN/infinity semantics, mismatch reasons and diffs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bft_ray.compare import compare, render_comparison
from bft_ray.compare import tolerance as tol_mod
from bft_ray.config import Tolerance

ALLCLOSE = Tolerance(rtol=1e-5, atol=1e-8)


def agree(a, b, tol=ALLCLOSE):
    return compare(a, b, tol).agree


def test_exact_mode_is_bitwise():
    x = np.array([1.0, 2.0])
    assert agree(x, x.copy(), Tolerance.exact())
    assert not agree(x, np.nextafter(x, 3), Tolerance.exact())
    assert not agree(np.array([0.0]), np.array([-0.0]), Tolerance.exact())


def test_allclose_is_symmetric_unlike_numpy():
    # numpy.isclose scales rtol by |b| only, so it is not symmetric; ours uses max(|a|, |b|).
    a, b = np.array([1.0]), np.array([1.0 + 1.5e-5])
    tol = Tolerance(rtol=1e-5, atol=0.0)
    assert agree(a, b, tol) == agree(b, a, tol)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64])
def test_allclose_boundaries(dtype):
    tol = Tolerance(rtol=1e-2, atol=1e-3)
    base = np.linspace(-5, 5, 1001).astype(dtype)
    inside = base + (0.009 * np.abs(base)).astype(dtype)
    outside = base.copy()
    outside[500] += dtype(0.5)
    assert agree(base, inside, tol)
    c = compare(base, outside, tol)
    assert not c.agree and c.leaf_diffs[0].mismatched == 1 and c.leaf_diffs[0].first_index == 500


def test_nan_handling_is_explicit():
    a = np.array([1.0, np.nan])
    assert not agree(a, a.copy(), Tolerance())
    assert agree(a, a.copy(), Tolerance(equal_nan=True))
    assert not agree(a, np.array([1.0, 2.0]), Tolerance(equal_nan=True))


def test_infinities_must_match_in_sign_and_never_pass_as_close():
    a = np.array([np.inf, 1.0])
    assert agree(a, a.copy())
    assert not agree(a, np.array([-np.inf, 1.0]))
    # A naive |a-b| <= atol + rtol*max(|a|,|b|) accepts 1e300 vs inf (inf <= inf).
    assert not agree(np.array([1e300]), np.array([np.inf]))
    assert not agree(np.array([np.inf]), np.array([1.0]), Tolerance(rtol=1.0, atol=1.0))


def test_infinity_inside_a_large_chunked_array():
    a = np.zeros(tol_mod.CHUNK * 3 + 5)
    b = a.copy()
    b[tol_mod.CHUNK * 2 + 7] = np.inf
    assert not agree(a, b)
    a[tol_mod.CHUNK * 2 + 7] = np.inf
    assert agree(a, b)


def test_ulp_mode():
    x = np.array([1.0, -1.0, 0.0], np.float32)
    two_ulps = np.nextafter(np.nextafter(x, np.float32(np.inf)), np.float32(np.inf))
    assert agree(x, two_ulps, Tolerance.ulp(2))
    assert not agree(x, two_ulps, Tolerance.ulp(1))
    # +0.0 and -0.0 are 0 ULPs apart, and the smallest subnormals around zero are neighbours.
    assert agree(np.array([0.0]), np.array([-0.0]), Tolerance.ulp(0))
    tiny = np.array([5e-324])
    assert agree(tiny, -tiny, Tolerance.ulp(2)) and not agree(tiny, -tiny, Tolerance.ulp(1))
    # Large opposite-sign float64 values do not overflow into "close".
    assert not agree(np.array([1e308]), np.array([-1e308]), Tolerance.ulp(10))
    # The largest finite float is not "one ULP" from infinity.
    big = np.array([np.finfo(np.float32).max], np.float32)
    assert not agree(big, np.array([np.inf], np.float32), Tolerance.ulp(4))


def test_float16_ulps_are_counted_in_half_precision():
    x = np.array([1.0], np.float16)
    one_ulp = np.nextafter(x, np.float16(2))
    assert agree(x, one_ulp, Tolerance.ulp(1))
    assert not agree(x, np.nextafter(one_ulp, np.float16(2)), Tolerance.ulp(1))


def test_l2_mode_judges_the_leaf_as_a_whole():
    x = np.ones(100)
    spike = x.copy()
    spike[0] = 1.5  # one large error: relative L2 = 0.5 / 10 = 0.05
    assert agree(x, spike, Tolerance.l2(rtol=0.06))
    assert not agree(x, spike, Tolerance.l2(rtol=0.04))
    assert not agree(x, spike, Tolerance(rtol=0.06))  # elementwise rules reject it


def test_non_float_leaves_are_always_exact():
    loose = Tolerance(rtol=1.0, atol=10.0)
    assert not agree(np.array([1, 2]), np.array([1, 3]), loose)
    assert not agree("cat", "cot", loose)
    assert agree({"ids": np.arange(5), "f": 1.0}, {"ids": np.arange(5), "f": 1.5}, loose)


def test_structure_dtype_shape_mismatch_is_a_reason_not_an_exception():
    c = compare({"a": np.ones(2)}, {"a": np.ones(2, np.float32)}, ALLCLOSE)
    assert not c.agree and "dtype differs: float64 vs float32" in c.leaf_diffs[0].reason
    c = compare(np.ones(2), np.ones(3), ALLCLOSE)
    assert "shape differs" in c.leaf_diffs[0].reason
    c = compare({"a": 1}, [1], ALLCLOSE)
    assert "structure differs" in c.reason
    c = compare("abc", "abd", ALLCLOSE)
    assert "value differs: 'abc' vs 'abd'" in c.leaf_diffs[0].reason


def test_per_path_overrides():
    tol = Tolerance(
        rtol=1e-6, overrides={"loss": Tolerance(mode="exact"), "*/bias": Tolerance(atol=0.1)}
    )
    a = {"loss": np.float64(1.0), "layer": {"bias": np.zeros(3), "w": np.ones(3)}}
    b = {"loss": np.float64(1.0), "layer": {"bias": np.full(3, 0.05), "w": np.ones(3)}}
    assert agree(a, b, tol)
    b["loss"] = np.float64(np.nextafter(1.0, 2))
    c = compare(a, b, tol)
    assert not c.agree and c.leaf_diffs[0].path == "loss"


def test_torch_tensors_compare_like_arrays():
    t = torch.linspace(0, 1, 50)
    assert agree(t, t + 1e-9)
    assert not agree(t, t + 1e-2)


def test_readable_diff_names_leaves_and_errors():
    a = {"w": np.zeros((4, 4)), "b": np.ones(4)}
    b = {"w": np.zeros((4, 4)), "b": np.array([1.0, 1.0, 3.0, 1.0])}
    text = render_comparison(compare(a, b, ALLCLOSE), "ex0", "ex3")
    assert text.splitlines()[0] == "ex0 vs ex3: 1 leaf/leaves differ"
    assert (
        "b: 1/4 elements outside tolerance, max abs err 2, max rel err 0.667, first at [2]" in text
    )


def test_chunked_kernel_matches_reference_semantics_on_random_data():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(1, 3 * tol_mod.CHUNK))
        a = rng.standard_normal(n)
        b = a + rng.standard_normal(n) * 10 ** rng.uniform(-9, -3)
        for special in (np.nan, np.inf, -np.inf):
            if rng.random() < 0.3:
                idx = rng.integers(n)
                a[idx] = special
                b[idx] = special if rng.random() < 0.5 else 0.0
        tol = Tolerance(rtol=1e-6, atol=1e-8, equal_nan=bool(rng.random() < 0.5))
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(a) & np.isfinite(b)
            close = np.abs(a - b) <= tol.atol + tol.rtol * np.maximum(np.abs(a), np.abs(b))
        same_inf = np.isinf(a) & np.isinf(b) & (a == b)
        both_nan = np.isnan(a) & np.isnan(b) & tol.equal_nan
        reference = bool(np.all((finite & close) | same_inf | both_nan))
        assert agree(a, b, tol) == reference
