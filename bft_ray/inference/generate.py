"""Greedy and replayable sampled generation for any :class:`~bft_ray.inference.model.CausalLM`.

:func:`generate` returns a :class:`Generation`: per prompt the generated token ids, the fp32
log-probability of each under the model, the top-k token ids per position and, optionally, a
commitment to the last hidden states (:mod:`bft_ray.inference.commitment`). Its
:meth:`Generation.to_wire` form (a dict of numpy arrays and bytes) is what a verified call
returns and what replicas compare under :func:`bft_ray.inference.generation_tolerance`.

Prompts are grouped by length and each group is run in micro-batches of ``batch_size``; no
padding is needed, and the stream key of the replayable sampler is the prompt's index in the
request, so batching does not change what is sampled.

Example:
    >>> from bft_ray.inference.model import TinyConfig, build_model
    >>> m = build_model(TinyConfig(d_model=32, n_layers=1, n_heads=2, vocab=64), seed=0)
    >>> g = generate(m, [[1, 2, 3], [4, 5]], max_new_tokens=4)
    >>> g.tokens.shape, g.logprobs.dtype
    ((2, 4), dtype('float32'))
    >>> bool((generate(m, [[1, 2, 3]], 4, use_cache=False).tokens == g.tokens[:1]).all())
    True
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bft_ray.errors import ConfigError
from bft_ray.inference.commitment import commit
from bft_ray.inference.model import CausalLM
from bft_ray.inference.sampling import Sampling, sample_token

__all__ = ["Generation", "generate", "group_by_length"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Generation:
    """Generated tokens for a batch of prompts (all rows ``max_new_tokens`` long).

    Attributes:
        tokens: ``(batch, new)`` int64 token ids.
        logprobs: ``(batch, new)`` float32 log-probability of each chosen token (untempered
            fp32 ``log_softmax`` of the logits).
        topk_ids: ``(batch, new, k)`` int32 ids of the ``k`` largest logits per position.
        commitments: One commitment per prompt, or ``None`` when not requested.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    topk_ids: np.ndarray
    commitments: list[bytes] | None = None

    def to_wire(self) -> dict[str, Any]:
        """Plain, wire-encodable form (what a verified generating function returns)."""
        out: dict[str, Any] = {
            "tokens": self.tokens,
            "logprobs": self.logprobs,
            "topk_ids": self.topk_ids,
        }
        if self.commitments is not None:
            out["commitment"] = list(self.commitments)
        return out

    @classmethod
    def from_wire(cls, value: Any) -> Generation:
        """Strictly rebuild from :meth:`to_wire` output (a decoded, untrusted value).

        Raises:
            ValueError: When keys, dtypes or shapes do not fit a generation.
        """
        if isinstance(value, Generation):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"a generation is a dict, got {type(value).__name__}")
        extra = set(value) - {"tokens", "logprobs", "topk_ids", "commitment"}
        if extra:
            raise ValueError(f"unexpected keys {sorted(map(str, extra))}")
        tok, lp, top = (value.get(k) for k in ("tokens", "logprobs", "topk_ids"))
        if not all(isinstance(a, np.ndarray) for a in (tok, lp, top)):
            raise ValueError("tokens, logprobs and topk_ids must be numpy arrays")
        if tok.dtype != np.int64 or lp.dtype != np.float32 or top.dtype != np.int32:
            raise ValueError(f"dtypes {tok.dtype}, {lp.dtype}, {top.dtype} are not int64/f32/i32")
        if tok.ndim != 2 or lp.shape != tok.shape or top.ndim != 3 or top.shape[:2] != tok.shape:
            raise ValueError(f"shapes {tok.shape}, {lp.shape}, {top.shape} do not fit")
        com = value.get("commitment")
        if com is not None and (
            not isinstance(com, list)
            or len(com) != tok.shape[0]
            or not all(isinstance(c, bytes) for c in com)
        ):
            raise ValueError("commitment must be a list of bytes, one per prompt")
        return cls(tok, lp, top, com)

    def commitment_bytes(self) -> int:
        """Total commitment size in bytes (0 without commitments)."""
        return sum(len(c) for c in self.commitments or [])


def group_by_length(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``prompts`` grouped by length, in micro-batches of at most ``batch_size``."""
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    out = []
    for n in sorted(by_len):
        idx = by_len[n]
        out.extend(idx[s : s + batch_size] for s in range(0, len(idx), batch_size))
    return out


def _check_prompts(model: CausalLM, prompts: Sequence[Sequence[int]]) -> None:
    if not prompts:
        raise ConfigError("no prompts: pass a list of token-id lists, for example [[1, 2, 3]].")
    v = int(model.vocab_size)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty; every prompt needs at least one token id.")
        if any(not 0 <= int(t) < v for t in p):
            raise ConfigError(f"prompt {i} has token ids outside 0..{v - 1} (the vocabulary).")


@torch.no_grad()
def generate(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling | None = None,
    *,
    batch_size: int = 16,
    use_cache: bool = True,
    topk: int = 5,
    commit_k: int | None = None,
    chunk: int = 32,
) -> Generation:
    """Generate ``max_new_tokens`` tokens for every prompt.

    Args:
        model: A :class:`~bft_ray.inference.model.CausalLM`.
        prompts: Token-id lists.
        max_new_tokens: Tokens generated per prompt (no early stop).
        sampling: Greedy by default; see :class:`~bft_ray.inference.sampling.Sampling`.
        batch_size: Prompts of equal length run together, this many at a time.
        use_cache: Incremental decoding with a KV cache; ``False`` recomputes the whole
            sequence for every token (slow, for calibration and tests).
        topk: Top-k ids recorded per position.
        commit_k: When set, also return a commitment of ``commit_k`` values per ``chunk``
            tokens of the last hidden states.
        chunk: Tokens per commitment chunk.
    """
    sampling = sampling or Sampling()
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens}; generate at least one token.")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}; use a positive batch size.")
    _check_prompts(model, prompts)
    n = len(prompts)
    tokens = np.zeros((n, max_new_tokens), np.int64)
    logprobs = np.zeros((n, max_new_tokens), np.float32)
    top = np.zeros((n, max_new_tokens, topk), np.int32)
    hiddens: dict[int, list[torch.Tensor]] = {i: [] for i in range(n)}
    for rows in group_by_length(prompts, batch_size):
        ids = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.int64)
        cache = None
        inp = ids
        for t in range(max_new_tokens):
            if use_cache:
                out = model.forward(inp, cache)
                cache = out.cache
            else:
                out = model.forward(torch.cat([ids, torch.from_numpy(tokens[rows, :t])], 1))
            logits = out.logits[:, -1].float()
            lsm = torch.log_softmax(logits, dim=-1)
            top[rows, t] = torch.topk(logits, topk, dim=-1).indices.numpy().astype(np.int32)
            ln = logits.numpy()
            for j, i in enumerate(rows):
                tok = sample_token(ln[j], sampling, stream=i, position=t)
                tokens[i, t] = tok
                logprobs[i, t] = float(lsm[j, tok])
                if commit_k:
                    hiddens[i].append(out.hidden[j, -1])
            inp = torch.from_numpy(tokens[rows, t : t + 1].copy())
    commitments = None
    if commit_k:
        commitments = [commit(torch.stack(hiddens[i]), k=commit_k, chunk=chunk) for i in range(n)]
    return Generation(tokens, logprobs, top, commitments)
