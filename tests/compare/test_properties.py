"""Property tests (hypothesis): symmetry, determinism, permutation invariance, noise tolerance."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bft_ray.compare import cluster_outputs, compare, digest
from bft_ray.config import Tolerance

floats = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(max_dims=2, max_side=6),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
)
tolerances = st.builds(
    Tolerance,
    mode=st.sampled_from(["exact", "allclose", "ulp", "l2"]),
    rtol=st.floats(0, 1e-2),
    atol=st.floats(0, 1e-2),
    max_ulps=st.integers(0, 16),
    equal_nan=st.booleans(),
)


@given(floats, floats, tolerances)
def test_comparison_is_symmetric(a, b, tol):
    assert compare(a, b, tol).agree == compare(b, a, tol).agree


@given(floats, tolerances)
def test_an_output_agrees_with_itself_unless_it_holds_nan(a, tol):
    result = compare(a, a.copy(), tol).agree
    if tol.mode == "exact" or tol.equal_nan or not np.isnan(a).any():
        assert result


@given(floats)
def test_digest_is_deterministic_and_sensitive(a):
    assert digest(a) == digest(a.copy())
    if a.size:
        b = a.copy()
        b.reshape(-1).view(np.uint8)[0] ^= 1
        assert digest(a) != digest(b)


def _outputs(
    base: np.ndarray, noise: list[np.ndarray], wrong: list[np.ndarray]
) -> dict[str, np.ndarray]:
    outs = {f"h{i}": base + n for i, n in enumerate(noise)}
    outs.update({f"w{i}": w for i, w in enumerate(wrong)})
    return outs


@st.composite
def replica_sets(draw):
    n = draw(st.integers(1, 8))
    base = draw(hnp.arrays(np.float64, n, elements=st.floats(-1e3, 1e3)))
    honest = draw(st.integers(1, 5))
    atol = 1e-6
    # Every honest output is within atol/2 of the truth, so honest outputs agree pairwise. The
    # 1% margin absorbs the rounding of base + noise (at base = 1.0, +-5e-7 rounds to a pair
    # 1.0000000000287557e-06 apart, just over atol; hypothesis found that case).
    half = 0.99 * atol / 2
    noise = [
        draw(hnp.arrays(np.float64, n, elements=st.floats(-half, half))) for _ in range(honest)
    ]
    wrong = [
        base + draw(hnp.arrays(np.float64, n, elements=st.floats(1.0, 100.0)))
        for _ in range(draw(st.integers(0, 3)))
    ]
    return _outputs(base, noise, wrong), Tolerance(rtol=0.0, atol=atol)


@given(replica_sets(), st.randoms(use_true_random=False))
def test_clustering_is_independent_of_arrival_order(case, rnd):
    outs, tol = case
    keys = list(outs)
    rnd.shuffle(keys)
    shuffled = {k: outs[k] for k in keys}
    assert cluster_outputs(outs, tol) == cluster_outputs(shuffled, tol)


@given(replica_sets())
def test_noise_inside_the_tolerance_never_splits_honest_replicas(case):
    outs, tol = case
    clusters = cluster_outputs(outs, tol)
    honest = {k for k in outs if k.startswith("h")}
    holding = [c for c in clusters if honest & set(c.members)]
    assert len(holding) == 1 and honest <= set(holding[0].members)
    # Wrong outputs (off by >= 1.0) never join the honest cluster.
    assert not any(k.startswith("w") for k in holding[0].members)


@given(replica_sets())
def test_every_member_agrees_with_its_representative_and_ids_partition(case):
    outs, tol = case
    clusters = cluster_outputs(outs, tol)
    seen = [m for c in clusters for m in c.members]
    assert sorted(seen) == sorted(outs)
    for c in clusters:
        for m in c.members:
            assert compare(outs[c.representative], outs[m], tol).agree


def test_non_transitive_tolerance_uses_the_best_connected_representative():
    # a ~ b ~ c but not a ~ c: b is the centre and takes both, whatever order they arrive in.
    tol = Tolerance(rtol=0.0, atol=1.0)
    outs = {"a": np.array([0.0]), "b": np.array([0.9]), "c": np.array([1.8])}
    clusters = cluster_outputs(outs, tol)
    assert clusters[0].representative == "b" and clusters[0].members == ("a", "b", "c")


def test_edge_outlier_cannot_split_a_tight_honest_group():
    # Three tight honest outputs and one at the edge of the tolerance of one of them: the
    # honest centre (degree 3 or 4) is chosen, never the outlier.
    tol = Tolerance(rtol=0.0, atol=1.0)
    outs = {
        "h0": np.array([0.0]),
        "h1": np.array([0.1]),
        "h2": np.array([0.2]),
        "x": np.array([1.15]),
    }
    clusters = cluster_outputs(outs, tol)
    assert {"h0", "h1", "h2"} <= set(clusters[0].members)
