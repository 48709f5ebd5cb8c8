"""Honest variation that must be accepted: batch sizes 1/8/16, 1 vs 2 threads, KV cache vs full
recompute, in fp32 and in bf16; zero false alarms (a seeded sample here, >= 200 in ``slow``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_helpers import COMMIT_K, prompts

from bft_ray.compare import compare
from bft_ray.inference import PrefillTolerance, Sampling, check_prefill, generate
from bft_ray.inference import generation_tolerance as gen_tol

NEW = 32
VARIANTS = [
    {"batch_size": 1},
    {"batch_size": 8},
    {"batch_size": 16},
    {"threads": 1},
    {"use_cache": False},
]


def run(model, ps, sampling, batch_size=16, threads=None, use_cache=True, new=NEW):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return generate(model, ps, new, sampling, batch_size=batch_size, use_cache=use_cache,
                        commit_k=COMMIT_K)  # fmt: skip
    finally:
        torch.set_num_threads(before)


def honest_sweep(model, tol, seeds, n_prompts=16, new=NEW):
    alarms, runs, worst = [], 0, {}
    for seed in seeds:
        ps = prompts(seed, n=n_prompts)
        sampling = Sampling(temperature=1.0 if seed % 2 else 0.0, seed=seed)
        ref = run(model, ps, sampling, new=new).to_wire()
        for v in VARIANTS:
            g = run(model, ps, sampling, new=new, **v)
            res = check_prefill(model, ps, g, sampling=sampling, max_new_tokens=new,
                                tolerance=tol, commit_k=COMMIT_K)  # fmt: skip
            runs += n_prompts
            for k, x in res.stats.items():
                worst[k] = max(worst.get(k, -np.inf), abs(x))
            if not res.ok:
                alarms.append((seed, v, res.reason))
            if model.dtype == torch.float32:
                c = compare(ref, g.to_wire(), gen_tol())
                if not c.agree:
                    alarms.append((seed, v, "replicated: " + c.reason))
    return alarms, runs, worst


def test_fp32_honest_variants_accepted(model):
    alarms, runs, _ = honest_sweep(model, PrefillTolerance(), seeds=[0, 1], n_prompts=8)
    assert not alarms, alarms
    assert runs == 2 * len(VARIANTS) * 8


def test_bf16_honest_variants_accepted(bf16_model):
    alarms, _, worst = honest_sweep(
        bf16_model, PrefillTolerance.for_dtype("bfloat16"), seeds=[2, 3], n_prompts=4, new=12
    )
    assert not alarms, alarms
    # bf16 recomputation is not bit-exact: the check really exercises its tolerance.
    assert worst["max_logprob_err"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_zero_false_alarms_over_200_generations(model, bf16_model, dtype):
    m = model if dtype == "float32" else bf16_model
    alarms, runs, _ = honest_sweep(m, PrefillTolerance.for_dtype(dtype), seeds=range(4))
    assert runs >= 200
    assert not alarms, alarms
