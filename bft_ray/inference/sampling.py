"""Replayable sampling: Gumbel-max with noise keyed by (task seed, stream, position).

A sampled token is ``argmax(logits / temperature + g)`` where ``g`` is standard Gumbel noise
read from a blake3 extendable output keyed by ``(seed, stream)`` at the offset of ``position``.
This is an exact sample from ``softmax(logits / temperature)``, and anyone who knows the seed can
replay it: a verifier recomputes the logits and checks that the claimed token is the argmax of the
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

from collections.abc import Sequence

import blake3
import numpy as np
from pydantic import ConfigDict, Field

from bft_ray.config import _Model

__all__ = [
    "Sampling",
    "gumbel_block",
    "gumbel_noise",
    "sample_token",
    "token_margin",
    "token_margins",
]


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


def gumbel_block(seed: int, stream: int, start: int, count: int, vocab: int) -> np.ndarray:
    """Standard Gumbel noise (float64, shape ``(count, vocab)``) for positions ``start..``.

    Row ``r`` is the noise of position ``start + r``. The noise of a whole stream is one
    blake3 extendable output keyed by ``(seed, stream)``, read at the position's offset, so a
    verifier replays every position of a prompt with a single call (the generator reads one
    position at a time and gets the same numbers).
    """
    if count < 0 or start < 0:
        raise ValueError(f"start={start}, count={count}: both must be >= 0")
    width = vocab * 8
    h = blake3.blake3(f"bft-ray/gumbel/v2/{seed}/{stream}".encode())
    raw = h.digest(length=count * width, seek=start * width)
    # 52 random bits per value: (bits + 0.5) / 2**52 is exact in float64 and strictly inside
    # (0, 1), so neither log below sees 0 or 1.
    bits = np.frombuffer(raw, dtype="<u8").reshape(count, vocab) >> np.uint64(12)
    u = (bits.astype(np.float64) + 0.5) * 2.0**-52
    return -np.log(-np.log(u))


def gumbel_noise(seed: int, stream: int, position: int, vocab: int) -> np.ndarray:
    """Standard Gumbel noise (float64, ``vocab`` values) for one sampling position."""
    return gumbel_block(seed, stream, position, 1, vocab)[0]


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
    return float(token_margins(np.asarray(logits)[None], [token], sampling, stream, position)[0])


def token_margins(
    logits: np.ndarray,
    tokens: Sequence[int] | np.ndarray,
    sampling: Sampling,
    stream: int,
    start: int = 0,
) -> np.ndarray:
    """:func:`token_margin` of consecutive positions at once (the prefill check's hot loop).

    Args:
        logits: fp32 logits, shape ``(n, vocab)``; row ``r`` is position ``start + r``.
        tokens: The ``n`` claimed tokens.
        sampling: The sampling the caller asked for.
        stream: The prompt's index in the request.
        start: Position of the first row.

    Returns:
        ``n`` margins (float64); ``-inf`` for a token outside the vocabulary.
    """
    raw = np.asarray(logits)
    n, vocab = raw.shape
    toks = np.asarray(tokens, dtype=np.int64).reshape(n)
    valid = (toks >= 0) & (toks < vocab)
    out = np.empty(n, dtype=np.float64)
    # Positions in slices of at most _MARGIN_VALUES scores, so a large vocabulary (an LLM's
    # 128k) never needs the whole generation's noise in memory at once.
    step = max(1, _MARGIN_VALUES // max(vocab, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        lg = raw[lo:hi].astype(np.float64)
        if not sampling.greedy:
            noise = gumbel_block(sampling.seed, stream, start + lo, hi - lo, vocab)
            lg = lg / sampling.temperature + noise
        picked = lg[np.arange(hi - lo), np.where(valid[lo:hi], toks[lo:hi], 0)]
        out[lo:hi] = picked - lg.max(axis=1)
    return np.where(valid, out, -np.inf)


_MARGIN_VALUES = 1 << 22  # scores per slice in token_margins (32 MiB of float64)
