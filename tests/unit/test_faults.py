"""Fault behaviours on their own: each matches its definition (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bft_ray import faults
from bft_ray.compare import compare
from bft_ray.config import Tolerance
from bft_ray.faults import FaultContext


def ctx(task="t1", index=0, attempt=0):
    return FaultContext(index, task, attempt, seed=0)


def out():
    return {
        "y": np.linspace(-1, 1, 16, dtype=np.float32),
        "k": np.arange(4),
        "t": torch.ones(3, dtype=torch.bfloat16),
    }


def test_bitflip_changes_exactly_one_bit_of_one_element():
    o = out()
    flipped = faults.bitflip().corrupt(o, ctx())
    diffs = 0
    for key in ("y", "k"):
        a = o[key].view(np.uint8)
        b = np.asarray(flipped[key]).view(np.uint8)
        diffs += int(np.unpackbits(a ^ b).sum())
    diffs += int(
        np.unpackbits(
            (o["t"].view(torch.int16).numpy() ^ flipped["t"].view(torch.int16).numpy()).view(
                np.uint8
            )
        ).sum()
    )
    assert diffs == 1
    assert not compare(o, flipped, Tolerance(rtol=1e-3)).agree  # top exponent bit: a big change


def test_bitflip_of_a_zero_is_detected():
    z = np.zeros(8, np.float32)
    assert not compare(z, faults.bitflip().corrupt(z, ctx()), Tolerance(atol=1e-3)).agree


def test_gaussian_noise_scale_and_types_preserved():
    o = out()
    noisy = faults.gaussian_noise(0.5).corrupt(o, ctx())
    assert noisy["y"].dtype == np.float32 and noisy["t"].dtype == torch.bfloat16
    np.testing.assert_array_equal(noisy["k"], o["k"])  # integer leaves untouched
    assert 0.2 < float(np.std(noisy["y"] - o["y"])) < 1.0


def test_zeros_and_random():
    o = out()
    z = faults.zeros().corrupt(o, ctx())
    assert not z["y"].any() and not z["k"].any()
    r1, r2 = faults.random().corrupt(o, ctx()), faults.random().corrupt(o, ctx())
    np.testing.assert_array_equal(r1["y"], r2["y"])  # deterministic per call
    assert not np.array_equal(r1["y"], faults.random().corrupt(o, ctx("t2"))["y"])


def test_stale_replays_its_previous_output():
    b = faults.stale()
    first, second = {"v": np.ones(2)}, {"v": np.full(2, 2.0)}
    assert b.corrupt(first, ctx("t1")) is first
    assert b.corrupt(second, ctx("t2")) is first


def test_colluders_tell_the_same_lie_and_it_is_wrong():
    o = out()
    a = faults.collude("g").corrupt(o, ctx(index=1))
    b = faults.collude("g").corrupt(o, ctx(index=2))
    c = faults.collude("other").corrupt(o, ctx(index=3))
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not compare(o, a, Tolerance(rtol=1e-3)).agree
    assert not np.array_equal(a["y"], c["y"])


def test_intermittent_probability_is_respected_and_deterministic():
    b = faults.intermittent(0.3, "zeros")
    hits = [not np.any(b.corrupt(np.ones(2), ctx(f"t{i}"))) for i in range(400)]
    again = [not np.any(b.corrupt(np.ones(2), ctx(f"t{i}"))) for i in range(400)]
    assert hits == again and 0.22 < sum(hits) / 400 < 0.38
    assert not any(
        not np.any(faults.intermittent(0.0, "zeros").corrupt(np.ones(2), ctx(f"t{i}")))
        for i in range(50)
    )


def test_slow_sleeps_before_running(monkeypatch):
    slept = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    faults.slow(2.5).before(ctx())
    assert slept == [2.5]


def test_crash_exits_the_process_after_n_tasks(monkeypatch):
    exits = []
    monkeypatch.setattr(faults.os, "_exit", exits.append)
    b = faults.crash(after=2)
    for i in range(3):
        b.corrupt(1, ctx(f"t{i}"))
    assert exits == [1]


def test_resolve_names_objects_and_callables():
    assert isinstance(faults.resolve(None), faults.Honest)
    assert isinstance(faults.resolve("gaussian_noise"), faults.GaussianNoise)
    assert faults.resolve(lambda o: o + 1).corrupt(1, ctx()) == 2
    with pytest.raises(Exception, match="unknown fault 'nope'"):
        faults.resolve("nope")
    with pytest.raises(Exception, match="neither a name"):
        faults.resolve(42)
    with pytest.raises(Exception, match="must be in"):
        faults.intermittent(1.5)
