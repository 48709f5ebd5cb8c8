"""Replayable sampling: Gumbel-max with noise keyed by (task seed, stream, position).

A sampled token is ``argmax(logits / temperature + g)`` where ``g`` is standard Gumbel noise
drawn from a generator keyed by ``blake3("bft-ray/gumbel", seed, stream, position)``. This is an
exact sample from ``softmax(logits / temperature)``, and anyone who knows the seed can replay it:
a verifier recomputes the logits and checks that the claimed token is the argmax of the
perturbed scores (within a small margin for honest numeric noise). ``temperature == 0`` is
greedy decoding (no noise).

The stream is the prompt's index in the request, never its row in an executor's micro-batch, so
how an executor batches its work does not change what it must sample.

Example:
    >>> import numpy as np
    >>> s = Sampling(temperature=1.0, seed=7)
    >>> logits = np.zeros(8, dtype=np.float32)
    >>> sample_token(logits, s, stream=0, position=3) == sample_token(logits, s, 0, 3)
    True
    >>> Sampling().greedy
    True
"""

from __future__ import annotations

import blake3
import numpy as np
from pydantic import ConfigDict, Field

from bft_ray.config import _Model

__all__ = ["Sampling", "gumbel_noise", "sample_token", "token_margin"]


class Sampling(_Model):
    """How tokens are chosen.

    Args:
        temperature: ``0`` for greedy decoding; otherwise the softmax temperature.
        seed: Task seed of the replayable noise stream (part of the verified call).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.0, ge=0.0, le=100.0)
    seed: int = Field(0, ge=0, lt=2**63)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def gumbel_noise(seed: int, stream: int, position: int, vocab: int) -> np.ndarray:
    """Standard Gumbel noise (float64, ``vocab`` values) for one sampling position."""
    key = blake3.blake3(f"bft-ray/gumbel/{seed}/{stream}/{position}".encode()).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(key[:16], "little")))
    u = rng.random(vocab)
    u = np.clip(u, 1e-300, 1.0 - 1e-16)
    return -np.log(-np.log(u))


def _scores(logits: np.ndarray, sampling: Sampling, stream: int, position: int) -> np.ndarray:
    lg = np.asarray(logits, dtype=np.float64)
    if sampling.greedy:
        return lg
    return lg / sampling.temperature + gumbel_noise(sampling.seed, stream, position, lg.shape[-1])


def sample_token(logits: np.ndarray, sampling: Sampling, stream: int, position: int) -> int:
    """The token chosen at ``position`` of ``stream`` from fp32 ``logits`` (shape ``(vocab,)``)."""
    return int(np.argmax(_scores(logits, sampling, stream, position)))


def token_margin(
    logits: np.ndarray, token: int, sampling: Sampling, stream: int, position: int
) -> float:
    """``score[token] - max(score)``: 0 when ``token`` is what the sampler picks, < 0 otherwise.

    A verifier accepts a claimed token when the margin is above ``-eps``: honest recomputation
    differs by numeric noise, so a near-tie may legitimately flip.
    """
    s = _scores(logits, sampling, stream, position)
    if not 0 <= token < s.shape[-1]:
        return -np.inf
    return float(s[token] - s.max())
