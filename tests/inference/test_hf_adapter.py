"""The Hugging Face adapter on a tiny random Llama (built locally, nothing downloaded)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from inference_helpers import prompts

from bft_ray.inference import Sampling, check_prefill, generate
from bft_ray.inference.hf import TinyLlamaFactory


def test_tiny_llama_generation_verifies_by_prefill():
    m = TinyLlamaFactory(hidden_size=32, layers=1, heads=2, vocab=128)()
    ps = prompts(0, n=3, length=5)
    s = Sampling(temperature=1.0, seed=5)
    g = generate(m, ps, 12, s, commit_k=64)
    res = check_prefill(m, ps, g, sampling=s, max_new_tokens=12, commit_k=64)
    assert res.ok, res.reason
    other = [list(p) for p in ps]
    other[1][0] = (other[1][0] + 1) % 128
    assert not check_prefill(m, other, g, sampling=s, commit_k=64).ok
