"""Tiny seeded models and prompts shared by the inference suites."""

from __future__ import annotations

import numpy as np

from bft_ray.inference import TinyConfig

CFG = TinyConfig(vocab=128, d_model=32, n_layers=2, n_heads=2, max_seq=160)
BF16 = CFG.model_copy(update={"dtype": "bfloat16"})
COMMIT_K = 64


def prompts(seed: int, n: int = 4, length: int = 6, vocab: int = 128) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, length).tolist() for _ in range(n)]
