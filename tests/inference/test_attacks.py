"""Substitutions a dishonest provider might make, each caught by verify-by-prefill and by the
replicated comparison under the generation tolerance (seeded; asserted with a margin).

Fast suite: two seeds per substitution. ``slow``: the >= 50-seed sweeps (the benchmark reports
the rates).
"""

from __future__ import annotations

import numpy as np
import pytest
from inference_helpers import COMMIT_K, prompts

from bft_ray.compare import compare
from bft_ray.inference import (
    Generation,
    PrefillTolerance,
    Sampling,
    check_prefill,
    generate,
    generation_tolerance,
)
from bft_ray.inference.substitutions import substitute

NEW = 32
TOL = PrefillTolerance()
GEN_TOL = generation_tolerance()
SAMPLINGS = [Sampling(), Sampling(temperature=1.0, seed=11)]


def _gen(model, ps, sampling, **kw):
    return generate(model, ps, NEW, sampling, commit_k=COMMIT_K, **kw)


def cheat(kind: str, model, ps, sampling) -> Generation:
    """What a provider returns for ``kind`` (every commitment computed by the cheater itself)."""
    if kind in ("perturb", "int8", "int4", "smaller"):
        return _gen(substitute(model, kind), ps, sampling)
    if kind == "prompt":  # another prompt (one token changed), honestly generated
        other = [list(p) for p in ps]
        other[0][-1] = (other[0][-1] + 1) % model.vocab_size
        return _gen(model, other, sampling)
    if kind == "seed":
        return _gen(model, ps, Sampling(temperature=1.0, seed=sampling.seed + 1))
    if kind == "truncate":
        g = _gen(model, ps, sampling)
        half = NEW // 2
        return Generation(
            g.tokens[:, :half], g.logprobs[:, :half], g.topk_ids[:, :half], g.commitments
        )
    if kind == "cheap_suffix":
        # Honest prefix, then a smaller model's tokens; the cheater then runs one prefill of the
        # real model over its tokens so commitments and log-probabilities are consistent.
        honest = _gen(model, ps, sampling)
        half = NEW // 2
        small = substitute(model, "smaller")
        ext = [list(p) + honest.tokens[i, :half].tolist() for i, p in enumerate(ps)]
        tail = generate(small, ext, NEW - half, sampling)
        toks = np.concatenate([honest.tokens[:, :half], tail.tokens], axis=1)
        return _honest_view(model, ps, toks)
    raise AssertionError(kind)


def _honest_view(model, ps, toks) -> Generation:
    """The real model's logprobs, top-k and commitment for arbitrary tokens (one prefill)."""
    import torch

    from bft_ray.inference.commitment import commit

    n, new = toks.shape
    lps = np.zeros((n, new), np.float32)
    tops = np.zeros((n, new, 5), np.int32)
    coms = []
    for i, p in enumerate(ps):
        out = model.forward(torch.tensor([list(p) + toks[i, :-1].tolist()]))
        lg = out.logits[0, len(p) - 1 :].float()
        lsm = torch.log_softmax(lg, -1)
        lps[i] = lsm.gather(1, torch.from_numpy(toks[i])[:, None]).squeeze(1).numpy()
        tops[i] = torch.topk(lg, 5, -1).indices.numpy()
        coms.append(commit(out.hidden[0, len(p) - 1 :], k=COMMIT_K))
    return Generation(toks.astype(np.int64), lps, tops, coms)


KINDS = ["perturb", "int8", "int4", "smaller", "prompt", "seed", "truncate", "cheap_suffix"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_substitution_caught_by_prefill(model, kind, seed):
    sampling = Sampling(temperature=1.0, seed=seed) if kind == "seed" else SAMPLINGS[seed % 2]
    ps = prompts(100 + seed)
    res = check_prefill(
        model, ps, cheat(kind, model, ps, sampling), sampling=sampling,
        max_new_tokens=NEW, tolerance=TOL, commit_k=COMMIT_K,
    )  # fmt: skip
    assert not res.ok, f"{kind} passed the prefill check: {res.stats}"
    s = res.stats
    if kind in ("truncate",):
        assert res.failed == ("format",)
        return
    # Margin: the statistic that caught it is well past its bound, not at the edge.
    margins = {
        "tokens": -s["min_token_margin"] / TOL.token_margin,
        "logprobs": s["max_logprob_err"] / TOL.logprob_atol,
        "commitment": max(
            s["max_mean_rel_err"] / TOL.commitment.max_mean_rel_err,
            s["max_mismatch_frac"] / TOL.commitment.max_mismatch_frac,
        ),
    }
    assert max(margins.values()) >= 3.0, (kind, margins)


def test_commitment_alone_catches_a_model_change_with_identical_tokens(model):
    """Perturbed weights, tokens forced equal to the honest ones: only hidden states differ."""
    ps = prompts(7)
    honest = _gen(model, ps, Sampling())
    fake = _honest_view(substitute(model, "int8"), ps, honest.tokens)
    fake = Generation(honest.tokens, honest.logprobs, honest.topk_ids, fake.commitments)
    res = check_prefill(model, ps, fake, tolerance=TOL, commit_k=COMMIT_K)
    assert res.failed == ("commitment",), res
    assert res.stats["max_mean_rel_err"] > 3 * TOL.commitment.max_mean_rel_err


@pytest.mark.parametrize(
    "kind", ["perturb", "int8", "int4", "smaller", "prompt", "seed", "truncate"]
)
def test_substitution_caught_by_replicated_comparison(model, kind):
    sampling = Sampling(temperature=1.0, seed=3)
    ps = prompts(200)
    honest = generate(model, ps, NEW, sampling).to_wire()
    bad = cheat(kind, model, ps, sampling)
    bad = Generation(bad.tokens, bad.logprobs, bad.topk_ids).to_wire()
    c = compare(honest, bad, GEN_TOL)
    assert not c.agree, kind


def test_cheap_suffix_caught_by_replicated_comparison(model):
    sampling = Sampling(temperature=1.0, seed=3)
    ps = prompts(201)
    honest = generate(model, ps, NEW, sampling).to_wire()
    bad = cheat("cheap_suffix", model, ps, sampling)
    c = compare(honest, Generation(bad.tokens, bad.logprobs, bad.topk_ids).to_wire(), GEN_TOL)
    assert not c.agree
    assert any(d.path == "tokens" for d in c.leaf_diffs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_substitution_detection_rate_50_seeds(model, kind):
    caught = 0
    for seed in range(50):
        sampling = Sampling(temperature=1.0, seed=seed)
        ps = prompts(1000 + seed, n=2)
        res = check_prefill(
            model, ps, cheat(kind, model, ps, sampling), sampling=sampling,
            max_new_tokens=NEW, tolerance=TOL, commit_k=COMMIT_K,
        )  # fmt: skip
        caught += not res.ok
    assert caught == 50, f"{kind}: caught {caught}/50"


def test_repeating_one_true_top_id_does_not_fake_the_top_k_overlap(model):
    """Top-k overlap is a set intersection: five copies of the best id overlap once, not five."""
    ps = prompts(8)
    honest = _gen(model, ps, Sampling())
    top = honest.topk_ids.copy()
    top[:, :, :] = honest.topk_ids[:, :, :1]  # the true best id, repeated k times
    fake = Generation(honest.tokens, honest.logprobs, top, honest.commitments)
    res = check_prefill(model, ps, fake, tolerance=TOL, commit_k=COMMIT_K)
    assert res.failed == ("topk",), res
    assert res.stats["min_topk_overlap"] == 1 / top.shape[2]
