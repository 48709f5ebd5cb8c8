"""Model, sampler, commitment format, generation tolerance (the new ``overlap`` mode),
prefill checker plumbing and calibration."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from inference_helpers import CFG, COMMIT_K, prompts

from bft_ray.compare import compare
from bft_ray.config import Tolerance
from bft_ray.errors import ConfigError
from bft_ray.inference import (
    Generation,
    Sampling,
    TinyConfig,
    TinyLMFactory,
    build_model,
    check_commitment,
    check_prefill,
    commit,
    generate,
    generation_tolerance,
    prefill_checker,
    run_generation,
)
from bft_ray.inference.calibrate import calibrate_prefill
from bft_ray.inference.commitment import PRIME, _evaluate, _interpolate, decode_commitment
from bft_ray.inference.sampling import gumbel_noise
from bft_ray.inference.substitutions import SUBSTITUTIONS


def test_weights_come_from_the_seed():
    a, b = build_model(CFG, 3), build_model(CFG, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    c = build_model(CFG, 4)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_config_errors_say_how_to_fix():
    with pytest.raises(ConfigError, match="divisible by n_heads"):
        TinyConfig(d_model=30, n_heads=4)
    m = build_model(CFG)
    with pytest.raises(ConfigError, match=r"outside 0\.\.127"):
        generate(m, [[1, 500]], 2)
    with pytest.raises(ConfigError, match="max_seq"):
        generate(m, [[1]], CFG.max_seq + 1)


def test_kv_cache_equals_full_recompute(model):
    ps = prompts(5, n=3)
    a = generate(model, ps, 12, use_cache=True)
    b = generate(model, ps, 12, use_cache=False)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_mixed_prompt_lengths_keep_request_order(model):
    ps = [[1, 2, 3], [4], [5, 6, 7], [8, 9]]
    together = generate(model, ps, 6, Sampling(temperature=1.0, seed=2))
    for i, p in enumerate(ps):
        alone = generate(model, [p], 6, Sampling(temperature=1.0, seed=2))
        # The stream key is the prompt's index in the request, not its micro-batch row.
        if i == 0:
            np.testing.assert_array_equal(alone.tokens[0], together.tokens[0])
    assert together.tokens.shape == (4, 6)


def test_gumbel_sampling_is_replayable_and_matches_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    s = Sampling(temperature=1.0, seed=9)
    from bft_ray.inference.sampling import sample_token

    draws = np.array([sample_token(logits, s, stream=0, position=t) for t in range(3000)])
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)
    assert np.array_equal(gumbel_noise(1, 2, 3, 8), gumbel_noise(1, 2, 3, 8))
    assert not np.array_equal(gumbel_noise(1, 2, 3, 8), gumbel_noise(1, 2, 4, 8))


def test_polynomial_commitment_roundtrip():
    rng = np.random.default_rng(0)
    x = rng.choice(PRIME, 100, replace=False)
    y = rng.integers(0, PRIME, 100)
    co = _interpolate(x, y)
    assert co.size == 100
    np.testing.assert_array_equal(_evaluate(co, x), y)


def test_commitment_size_is_258_bytes_per_32_tokens():
    h = torch.randn(128, 64)
    blob = commit(h, k=128)
    assert len(blob) == 6 + 4 * 258
    chunk, co = decode_commitment(blob)
    assert chunk == 32 and len(co) == 4 and all(c.size == 128 for c in co)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b"XX" + b[2:],
        lambda b: b[:6],
        lambda b: b[:8] + b"\xff\xff" + b[10:],
        lambda b: b"",
    ],
)
def test_malformed_commitments_fail_without_raising(mutate):
    h = torch.randn(40, 16)
    blob = commit(h, k=32)
    res = check_commitment(h, mutate(blob), k=32)
    assert not res.ok


def test_commitment_with_fewer_values_is_refused():
    h = torch.randn(32, 16)
    res = check_commitment(h, commit(h, k=8), k=32)
    assert not res.ok and "expected 32" in res.reason


def test_overlap_mode_and_injective_describe():
    a = np.array([[1, 2, 3, 4, 5]], np.int32)
    b = np.array([[5, 4, 3, 9, 8]], np.int32)
    assert compare(a, b, Tolerance(mode="overlap", min_overlap=0.6)).agree
    assert not compare(a, b, Tolerance(mode="overlap", min_overlap=0.8)).agree
    # Symmetric, and duplicates never count twice.
    assert compare(b, a, Tolerance(mode="overlap", min_overlap=0.6)).agree
    dup = np.array([[1, 1, 1, 1, 1]], np.int32)
    assert not compare(dup, a, Tolerance(mode="overlap", min_overlap=0.4)).agree
    assert not compare(a, dup, Tolerance(mode="overlap", min_overlap=0.4)).agree
    # Floats under overlap compare exactly.
    assert not compare(np.ones(3), np.ones(3) + 1e-12, Tolerance(mode="overlap")).agree
    descs = {
        t.describe()
        for t in [
            Tolerance(mode="overlap", min_overlap=0.6),
            Tolerance(mode="overlap", min_overlap=0.8),
            Tolerance(mode="exact"),
            generation_tolerance(1e-3, 0.6),
            generation_tolerance(1e-3, 0.8),
            generation_tolerance(2e-3, 0.6),
        ]
    }
    assert len(descs) == 6


def test_generation_tolerance_on_nested_generations(model):
    ps = prompts(1, n=2)
    g = generate(model, ps, 8).to_wire()
    h = dict(g, logprobs=g["logprobs"] + np.float32(5e-4))
    tol = generation_tolerance(1e-3)
    assert compare([g, g], [g, h], tol).agree
    assert not compare([g], [dict(g, logprobs=g["logprobs"] + np.float32(5e-3))], tol).agree


def test_generation_from_wire_is_strict(model):
    g = generate(model, prompts(2, n=2), 4).to_wire()
    for bad in [
        dict(g, extra=1),
        dict(g, tokens=g["tokens"].astype(np.int32)),
        dict(g, logprobs=g["logprobs"][:, :2]),
        dict(g, commitment=[b"x"]),
        [1, 2],
    ]:
        with pytest.raises(ValueError):
            Generation.from_wire(bad)
        assert not check_prefill(model, prompts(2, n=2), bad, require_commitment=False).ok


def test_prefill_checker_binds_the_call_and_pickles(factory):
    ps = prompts(3, n=3)
    samp = {"temperature": 0.7, "seed": 4}
    out = run_generation(ps, 16, samp, model_factory=factory, commit_k=COMMIT_K)
    checker = pickle.loads(pickle.dumps(prefill_checker(factory, commit_k=COMMIT_K)))
    assert checker(out, ps, 16, samp, model_factory=factory, commit_k=COMMIT_K)
    assert not checker(out, ps, 17, samp, model_factory=factory)  # length asked differs
    assert not checker(out, ps, 16, {"temperature": 0.7, "seed": 5}, model_factory=factory)
    assert not checker(out, "nonsense")  # arguments it cannot read: not verified
    # The checker uses its own model, not the one the call names.
    other = TinyLMFactory(CFG, seed=1)
    assert not prefill_checker(other, commit_k=COMMIT_K)(out, ps, 16, samp, model_factory=factory)


def test_calibration_separates_honest_from_substitutions(factory):
    inputs = [(prompts(s, n=2), 16, Sampling(temperature=1.0, seed=s)) for s in range(2)]
    rep = calibrate_prefill(
        factory,
        inputs,
        substitutions={k: SUBSTITUTIONS[k] for k in ("int8", "smaller")},
        variants={"batch1": {"batch_size": 1}, "recompute": {"use_cache": False}},
        commit_k=COMMIT_K,
    )
    assert rep.honest_runs == 4
    assert all(s.honest_over == 0 for s in rep.stats.values())
    assert rep.detection == {"int8": 1.0, "smaller": 1.0}
    assert rep.stats["mean_rel_err"].margin["int8"] > 1.0
    tol = rep.prefill_tolerance()
    assert tol.commitment.max_mean_rel_err == rep.stats["mean_rel_err"].threshold
    assert "honest runs 4" in rep.table()


def test_token_margins_are_the_same_in_slices_and_position_by_position(monkeypatch):
    """The prefill check's batched replay equals the generator's one-position-at-a-time draws,
    also when a large vocabulary makes it work in slices of positions."""
    from bft_ray.inference import sampling as S

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((40, 300)).astype(np.float32)
    tokens = rng.integers(-2, 302, 40)  # some outside the vocabulary
    s = Sampling(temperature=0.7, seed=3)
    whole = S.token_margins(logits, tokens, s, stream=2, start=5)
    monkeypatch.setattr(S, "_MARGIN_VALUES", 600)  # two positions per slice
    sliced = S.token_margins(logits, tokens, s, stream=2, start=5)
    one = np.array([S.token_margin(logits[t], int(tokens[t]), s, 2, 5 + t) for t in range(40)])
    assert np.array_equal(whole, sliced)
    assert np.array_equal(np.isinf(whole), (tokens < 0) | (tokens >= 300))
    finite = np.isfinite(whole)
    np.testing.assert_allclose(whole[finite], one[finite], rtol=0, atol=1e-12)
    picks = [S.sample_token(logits[t], s, 2, 5 + t) for t in range(40)]
    assert all(S.token_margins(logits, picks, s, stream=2, start=5) == 0.0)
