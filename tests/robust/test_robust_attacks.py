"""Each attack matches its definition on a small example."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from bft_ray.errors import ConfigError
from bft_ray.robust import (
    ALIE,
    ATTACKS,
    IPM,
    GaussianNoise,
    LabelFlip,
    Mimic,
    NoAttack,
    NonFinite,
    SignFlip,
    alie_z,
    make_attack,
)

HONEST = np.array([[1.0, -2.0, 0.0], [3.0, 2.0, 0.0], [5.0, 6.0, 0.0]])  # mean (3, 2, 0)


def test_sign_flip_is_minus_the_honest_mean() -> None:
    out = SignFlip()(HONEST, n_byzantine=2)
    assert out.tolist() == [[-3.0, -2.0, -0.0]] * 2


@pytest.mark.parametrize("eps", [0.1, 1.0, 10.0])
def test_ipm_is_minus_epsilon_times_the_mean(eps: float) -> None:
    out = IPM(epsilon=eps)(HONEST, n_byzantine=3)
    assert out == pytest.approx(np.tile([-3.0 * eps, -2.0 * eps, 0.0], (3, 1)))


def test_alie_z_follows_baruch_et_al() -> None:
    # s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n).
    for n, f in [(15, 3), (50, 12), (20, 4), (10, 4), (7, 1)]:
        s = math.floor(n / 2 + 1) - f
        assert alie_z(n, f) == pytest.approx(NormalDist().inv_cdf((n - s) / n))
    assert alie_z(15, 3) == pytest.approx(0.430727, abs=1e-6)  # s = 5, Phi^-1(2/3)
    with pytest.raises(ConfigError, match="Byzantine minority"):
        alie_z(10, 7)


def test_alie_is_mean_minus_z_sample_std() -> None:
    # mean (3, 2, 0); sample std (ddof=1): (2, 4, 0).
    out = ALIE(z=1.5)(HONEST, n_byzantine=2)
    assert out == pytest.approx(np.tile([3.0 - 3.0, 2.0 - 6.0, 0.0], (2, 1)))
    # Default z: derived from n = 3 honest + 3 Byzantine and f = 3.
    z = alie_z(6, 3)
    assert ALIE()(HONEST, n_byzantine=3)[0] == pytest.approx([3 - 2 * z, 2 - 4 * z, 0.0])
    # One honest vector: no spread, so the attack sends it back.
    assert ALIE(z=2.0)(HONEST[:1], 1).tolist() == [[1.0, -2.0, 0.0]]


def test_gaussian_noise_is_seeded_and_has_the_right_moments() -> None:
    honest = torch.zeros(4, 20_000)
    a = GaussianNoise(sigma=2.0, mu=1.0)(honest, 2, generator=torch.Generator().manual_seed(1))
    b = GaussianNoise(sigma=2.0, mu=1.0)(honest, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (2, 20_000)
    assert not torch.equal(a[0], a[1])  # one draw per Byzantine worker
    assert float(a.mean()) == pytest.approx(1.0, abs=0.05)
    assert float(a.std()) == pytest.approx(2.0, abs=0.05)


def test_mimic_copies_one_honest_vector() -> None:
    assert Mimic(target=2)(HONEST, 2).tolist() == [HONEST[2].tolist()] * 2
    with pytest.raises(ConfigError, match="only 3 honest"):
        Mimic(target=3)(HONEST, 1)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nonfinite_fills_every_coordinate(value: str) -> None:
    out = NonFinite(value)(HONEST, 2)
    expected = float(value)
    assert out.shape == (2, 3)
    if math.isnan(expected):
        assert np.isnan(out).all()
    else:
        assert (out == expected).all()
    with pytest.raises(ConfigError):
        NonFinite(1.0)


def test_label_flip_maps_y_to_9_minus_y() -> None:
    y = torch.arange(10)
    assert LabelFlip(10).transform_labels(y).tolist() == list(range(9, -1, -1))
    assert LabelFlip(10).kind == "data"
    assert NoAttack().transform_labels(y) is y


def test_attack_output_follows_input_type() -> None:
    vecs = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    out = SignFlip()(vecs, 2)
    assert isinstance(out, list) and len(out) == 2 and out[0].tolist() == [-2.0, -3.0]
    t = SignFlip()(torch.tensor(HONEST, dtype=torch.float32), 1)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert SignFlip()(HONEST, 0).shape == (0, 3)


def test_make_attack_names_and_arguments() -> None:
    assert set(ATTACKS) == {
        "none",
        "sign_flip",
        "ipm",
        "alie",
        "gaussian",
        "mimic",
        "nonfinite",
        "label_flip",
        "minmax",
        "minsum",
    }
    assert make_attack("ipm(epsilon=0.5)").epsilon == 0.5
    assert make_attack("IPM", epsilon=2).epsilon == 2.0
    assert make_attack("alie").z is None and make_attack("alie(z=1)").z == 1.0
    assert make_attack("gaussian_noise(sigma=3)").sigma == 3.0
    assert make_attack("inf").value == "inf" and make_attack("nan").value == "nan"
    assert isinstance(make_attack("label_flip"), LabelFlip)
    with pytest.raises(ConfigError, match="unknown attack"):
        make_attack("meteor")
    with pytest.raises(ConfigError, match="bad arguments"):
        make_attack("ipm(eps=1)")
    with pytest.raises(ConfigError, match="single name"):
        make_attack("ipm+alie")
