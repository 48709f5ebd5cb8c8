"""Hand-computed cases for every aggregator and pre-aggregator, input types, registry, errors."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch

from bft_ray.errors import ConfigError
from bft_ray.robust import (
    ARC,
    NNM,
    Bucketing,
    Bulyan,
    CenteredClipping,
    CoordinateWiseMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    NonFiniteInputError,
    Pipeline,
    StaticClipping,
    TrimmedMean,
    available_rules,
    compose,
    make_aggregator,
)
from bft_ray.robust.aggregators import krum_scores, pairwise_sq_distances


def col(*values: float) -> np.ndarray:
    """A (n, 1) float64 matrix: one coordinate per vector keeps hand computations short."""
    return np.array(values, dtype=np.float64)[:, None]


# -- aggregators: hand-computed -------------------------------------------------------------


def test_mean() -> None:
    assert Mean(f=0)(np.array([[1.0, 2.0], [3.0, 6.0]])).tolist() == [2.0, 4.0]


def test_median_odd_and_even() -> None:
    assert CoordinateWiseMedian(f=1)(col(5, 1, 3)).tolist() == [3.0]
    # Even n: the mean of the two middle values (torch.median would give the lower one).
    assert CoordinateWiseMedian(f=1)(col(1, 2, 10, 4)).tolist() == [3.0]
    x = np.array([[1.0, 9.0], [2.0, 8.0], [300.0, -7.0]])
    assert CoordinateWiseMedian(f=1)(x).tolist() == [2.0, 8.0]


def test_trimmed_mean_per_coordinate() -> None:
    x = np.array([[1.0, 10.0], [2.0, -40.0], [3.0, 30.0], [100.0, 20.0], [-50.0, 0.0]])
    # col 0 sorted: -50 1 2 3 100 -> mean(1, 2, 3) = 2; col 1: -40 0 10 20 30 -> 10.
    assert TrimmedMean(f=1)(x).tolist() == [2.0, 10.0]
    assert TrimmedMean(f=0)(col(1, 2, 6)).tolist() == [3.0]


def test_geometric_median_cases() -> None:
    # On a line the geometric median is the median.
    gm = GeometricMedian(f=2, tol=1e-10, max_iter=1000)
    assert gm(col(0, 1, 2, 3, 100)) == pytest.approx([2.0], abs=1e-6)
    # Symmetric square: the center; an outlier pulls less than the mean would.
    square = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert GeometricMedian(f=1)(square) == pytest.approx([0.0, 0.0], abs=1e-9)
    # Three points of an equilateral triangle plus its center: the center (Fermat point).
    tri = np.array([[0.0, 1.0], [np.sqrt(3) / 2, -0.5], [-np.sqrt(3) / 2, -0.5], [0.0, 0.0]])
    assert GeometricMedian(f=1, tol=1e-12, max_iter=1000)(tri) == pytest.approx(
        [0.0, 0.0], abs=1e-6
    )
    assert gm.last_converged


def test_geometric_median_reports_non_convergence() -> None:
    gm = GeometricMedian(f=1, tol=1e-15, max_iter=2)
    gm(col(0, 1, 5, 7, 100))
    assert gm.last_iterations == 2 and not gm.last_converged


def test_krum_scores_and_choice() -> None:
    x = col(0, 1, 2, 3, 50)
    d2 = pairwise_sq_distances(torch.as_tensor(x))
    # n - f - 2 = 2 nearest others: 0 -> 1 + 4, 1 -> 1 + 1, 2 -> 1 + 1, 3 -> 1 + 4, 50 -> 47^2 + 48^2.
    assert krum_scores(d2, f=1).tolist() == [5.0, 2.0, 2.0, 5.0, 4513.0]
    assert Krum(f=1)(x).tolist() == [1.0]  # tie 1 vs 2 goes to the smaller vector
    assert Krum(f=1)(x[::-1].copy()).tolist() == [1.0]  # whatever the input order


def test_multi_krum() -> None:
    x = col(0, 1, 2, 3, 50)
    assert MultiKrum(f=1)(x).tolist() == [1.5]  # the n - f = 4 best: 1, 2, 0, 3
    assert MultiKrum(f=1, m=2)(x).tolist() == [1.5]  # 1 and 2
    assert MultiKrum(f=1, m=1)(x).tolist() == Krum(f=1)(x).tolist()
    with pytest.raises(ConfigError, match="cannot average more"):
        MultiKrum(f=1, m=9)(x)


def test_bulyan_hand_case() -> None:
    # n = 7, f = 1: theta = 5 picked by iterated Krum (2, 3, 1, 4, 0), beta = 3 closest to the
    # median 2 -> mean(1, 2, 3).
    assert Bulyan(f=1)(col(0, 1, 2, 3, 4, 5, 1000)).tolist() == [2.0]
    # f = 0: Bulyan keeps everything and averages the beta = n values -> the mean.
    assert Bulyan(f=0)(col(1, 2, 6)).tolist() == [3.0]


def test_bulyan_per_coordinate_phase() -> None:
    x = np.array(
        [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 9.0], [4.0, 0.0], [5.0, 0.0], [900.0, 900.0]]
    )
    out = Bulyan(f=1)(x)
    assert out[0] == pytest.approx(2.0)
    assert 0.0 <= out[1] <= 9.0 / 3 + 1e-12  # the 9 is at most one of the 3 averaged values


def test_centered_clipping_one_iteration_and_state() -> None:
    cc = CenteredClipping(f=1, tau=1.0, iterations=1)
    out = cc(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]))
    # (3, 4) has norm 5: clipped to (0.6, 0.8); mean of the three clipped differences.
    assert out == pytest.approx([0.2, 0.8 / 3])
    # Second call starts from the previous output.
    assert cc.state_dict()["center"].tolist() == pytest.approx([0.2, 0.8 / 3])
    out2 = cc(np.array([[0.2, 0.8 / 3]] * 3))
    assert out2 == pytest.approx([0.2, 0.8 / 3])
    cc.reset()
    assert cc.center is None


def test_centered_clipping_converges_to_mean_without_clipping() -> None:
    cc = CenteredClipping(f=1, tau=1e6, iterations=1)
    assert cc(col(1, 2, 6)).tolist() == pytest.approx([3.0])


def test_centered_clipping_rejects_changed_dimension() -> None:
    cc = CenteredClipping(f=1, tau=1.0)
    cc(np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="reset"):
        cc(np.zeros((3, 5)))


# -- pre-aggregators: hand-computed -----------------------------------------------------------


def test_nnm() -> None:
    # f = 1 -> each vector becomes the mean of its 2 nearest (itself included).
    assert NNM(f=1)(col(0, 1, 3)).tolist() == [[0.5], [0.5], [2.0]]
    # f = 0: every vector becomes the global mean.
    assert NNM(f=0)(col(0, 1, 5)).tolist() == [[2.0], [2.0], [2.0]]


def test_arc() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [30.0, 40.0]])
    # k = floor(2 * (1/3) * 2) = 1: the largest vector is clipped to the 2nd largest norm, 2.
    assert ARC(f=1)(x).round(12).tolist() == [[1.0, 0.0], [0.0, 2.0], [1.2, 1.6]]
    # f = 0 -> k = 0: unchanged.
    assert ARC(f=0)(x).tolist() == x.tolist()


def test_static_clipping() -> None:
    out = StaticClipping(c=1.0)(np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]))
    assert out.round(12).tolist() == [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]


def test_bucketing_partitions_inputs() -> None:
    x = col(1, 2, 3, 4, 5, 6, 7)
    b = Bucketing(f=0, s=2, seed=3)
    out = b(x)
    assert out.shape == (4, 1)  # ceil(7 / 2)
    # Buckets of 2, 2, 2 and 1: the weighted sum of the means is the sum of the inputs.
    weights = np.array([2, 2, 2, 1])
    assert float((weights * out[:, 0]).sum()) == pytest.approx(28.0)
    # Seeded: a fresh instance with the same seed reproduces it; the next call shuffles anew.
    assert Bucketing(f=0, s=2, seed=3)(x).tolist() == out.tolist()
    assert b.state_dict() == {"calls": 1}
    assert Bucketing(f=0, s=7)(x).tolist() == [[4.0]]  # one bucket = the mean
    assert sorted(Bucketing(f=0, s=1)(x)[:, 0].tolist()) == list(range(1, 8))


# -- pipelines and registry --------------------------------------------------------------------


def test_pipeline_composes() -> None:
    rule = Pipeline([NNM(f=1)], TrimmedMean(f=1))
    # NNM: 1, 1, 1, (100 + 2 + 1) / 3; trimmed mean drops the smallest and the largest.
    assert rule(col(0, 1, 2, 100)).tolist() == [1.0]
    assert rule.label == "nnm+trimmed_mean"
    assert compose(ARC(1), NNM(1), Krum(1)).label == "arc+nnm+krum"


def test_pipeline_rejects_mixed_f_and_wrong_order() -> None:
    with pytest.raises(ConfigError, match="same f"):
        Pipeline([NNM(f=1)], Krum(f=2))
    with pytest.raises(ConfigError, match="not a pre-aggregator"):
        Pipeline([Krum(f=1)], Krum(f=1))  # type: ignore[list-item]


def test_make_aggregator_names_aliases_and_arguments() -> None:
    assert isinstance(make_aggregator("trimmed_mean", f=3), TrimmedMean)
    assert isinstance(make_aggregator("CWTM", f=3), TrimmedMean)
    cc = make_aggregator("cc(tau=0.5, iterations=2)", f=1)
    assert isinstance(cc, CenteredClipping) and cc.tau == 0.5 and cc.iterations == 2
    rule = make_aggregator("nnm+cc", f=3, cc={"tau": 0.25})
    assert isinstance(rule, Pipeline) and rule.aggregator.tau == 0.25
    rule = make_aggregator("bucketing(s=3)+gm", f=1)
    assert rule.pre[0].s == 3 and isinstance(rule.aggregator, GeometricMedian)
    assert set(available_rules()["aggregators"]) >= {"krum", "bulyan", "median"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", "unknown rule"),
        ("krum+nnm", "must be the last stage"),
        ("nnm", "ends with the pre-aggregator"),
        ("cc(tau=)", "cannot parse"),
        ("cc(2)", "keyword arguments only"),
        ("cc(bogus=1)", "bad arguments"),
        ("nnm++krum", "empty stage"),
    ],
)
def test_make_aggregator_errors(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_aggregator(spec, f=1)


def test_make_aggregator_rejects_options_for_absent_stage() -> None:
    with pytest.raises(ConfigError, match="not in"):
        make_aggregator("krum", f=1, cc={"tau": 1.0})


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, None])
def test_f_validated_at_construction(bad: object) -> None:
    with pytest.raises(ConfigError, match="f must be"):
        Krum(bad)  # type: ignore[arg-type]


def test_breakdown_message_is_actionable() -> None:
    with pytest.raises(ConfigError) as info:
        Krum(f=2)(np.zeros((6, 3)))
    assert str(info.value) == (
        "Krum needs n > 2f + 2 (got n=6, f=2): use at most f=1 or add workers (n >= 7)"
    )
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match=r"Bulyan needs n >= 4f \+ 3 \(got n=2, f=0\): add"):
        Bulyan(f=0)(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="only 4 rows reach it from n=8 inputs"):
        make_aggregator("bucketing(s=2)+krum", f=1)(np.zeros((8, 2)))


# -- input types ---------------------------------------------------------------------------------


def test_numpy_in_numpy_out_keeps_float_dtype() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = TrimmedMean(f=1)(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (4,)
    ints = np.array([[1, 2], [3, 4], [5, 60]])
    assert CoordinateWiseMedian(f=1)(ints).tolist() == [3.0, 4.0]


def test_torch_in_torch_out_keeps_dtype_and_row_shape() -> None:
    x = torch.arange(24, dtype=torch.float64).reshape(3, 2, 4)
    out = CoordinateWiseMedian(f=1)(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert out.shape == (2, 4) and torch.equal(out, x[1])
    half = torch.ones(3, 5, dtype=torch.float16)
    assert Mean()(half).dtype == torch.float16


def test_inputs_are_not_modified() -> None:
    x = np.array([[3.0, 4.0], [0.1, 0.0], [0.0, 0.2]])
    before = x.copy()
    for rule in (StaticClipping(c=1.0), ARC(f=1), NNM(f=1)):
        rule(x)
    make_aggregator("clipping(c=1)+cc(tau=0.1)", f=1)(x)
    assert np.array_equal(x, before)


def test_list_of_vectors_and_pytrees() -> None:
    vecs = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([5.0, 100.0])]
    out = CoordinateWiseMedian(f=1)(vecs)
    assert isinstance(out, torch.Tensor) and out.tolist() == [3.0, 4.0]

    Point = namedtuple("Point", "a b")
    trees = [
        {"w": torch.full((2, 2), float(i)), "b": [np.array([i, -i], dtype=np.float64), Point(i, 2)]}
        for i in (1, 2, 9)
    ]
    # Same keys, different insertion order: flattened consistently.
    trees[1] = {"b": trees[1]["b"], "w": trees[1]["w"]}
    out = CoordinateWiseMedian(f=1)(trees)
    assert torch.equal(out["w"], torch.full((2, 2), 2.0))
    assert out["b"][0].tolist() == [2.0, -2.0] and isinstance(out["b"][0], np.ndarray)
    assert out["b"][1] == Point(2.0, 2.0)
    mixed = NNM(f=0)(trees)
    assert len(mixed) == 3 and mixed[0]["w"].shape == (2, 2)


def test_pytree_structure_mismatch_is_refused() -> None:
    trees = [{"w": torch.zeros(2)}, {"w": torch.zeros(3)}, {"w": torch.zeros(2)}]
    with pytest.raises(ConfigError, match="different structure"):
        Mean()(trees)


@pytest.mark.parametrize(
    "bad", [[], np.zeros(3), torch.zeros(0, 2), "abc", 3.0, [object()], np.array([["a"]])]
)
def test_bad_inputs_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError):
        Mean()(bad)


# -- non-finite inputs ----------------------------------------------------------------------------


def test_robust_rules_drop_up_to_f_nonfinite_rows() -> None:
    x = col(1, 2, 3, float("nan"), float("inf"))
    assert TrimmedMean(f=2)(x).tolist() == [2.0]  # rows dropped, then f - 2 = 0 trimmed
    assert Krum(f=2)(np.vstack([np.ones((5, 2)), np.full((2, 2), np.nan)])).tolist() == [1.0, 1.0]


def test_more_than_f_nonfinite_rows_raise() -> None:
    x = col(1, 2, 3, float("nan"), float("-inf"))
    with pytest.raises(NonFiniteInputError, match=r"2 of 5 .*rows \[3, 4\]") as info:
        TrimmedMean(f=1)(x)
    assert info.value.details["rows"] == [3, 4]


def test_mean_and_raise_policy_refuse_nonfinite() -> None:
    x = col(1, 2, float("nan"))
    with pytest.raises(NonFiniteInputError, match="policy 'raise'"):
        Mean(f=1)(x)
    with pytest.raises(NonFiniteInputError):
        TrimmedMean(f=1, nonfinite="raise")(x)
    assert Mean(f=1, nonfinite="drop")(x).tolist() == [1.5]
    with pytest.raises(ConfigError, match="nonfinite"):
        Mean(nonfinite="ignore")  # type: ignore[arg-type]


def test_overflowing_aggregate_is_refused() -> None:
    x = np.full((3, 2), 1e308)
    with pytest.raises(NonFiniteInputError, match="overflow"):
        Mean()(x)


@pytest.mark.parametrize("spec", ["krum", "multi_krum", "bulyan"])
def test_krum_family_is_order_free_despite_exact_score_ties(spec: str) -> None:
    # Found by the full hypothesis profile: in iterated Krum two mutual nearest neighbours tie
    # exactly once few rows remain, and an index tie-break made Bulyan depend on input order.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 1)) * rng.uniform(0.1, 10)
    perm = rng.permutation(7)
    a = make_aggregator(spec, 1)(x)
    for p in (perm, perm[::-1], np.roll(perm, 3)):
        np.testing.assert_array_equal(make_aggregator(spec, 1)(x[p]), a)
