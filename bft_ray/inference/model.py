"""A small decoder-only transformer with seeded weights, and the model protocol bft-ray verifies.

The protocol (:class:`CausalLM`) is all the verification needs from a model: token ids in,
fp32 logits and the last hidden states out, with an optional KV cache for incremental decoding.
:class:`TinyLM` implements it directly; :class:`bft_ray.inference.hf.HFCausalLM` adapts any
Hugging Face ``transformers`` causal LM to it.

Weights come from a fixed seed (no downloads), so every executor that builds
``TinyLM(TinyConfig(...), seed=s)`` holds bit-identical weights.

Example:
    >>> import torch
    >>> m = build_model(TinyConfig(d_model=32, n_layers=1, n_heads=2, vocab=64), seed=0)
    >>> out = m.forward(torch.tensor([[1, 2, 3]]))
    >>> tuple(out.logits.shape), tuple(out.hidden.shape), out.logits.dtype
    ((1, 3, 64), (1, 3, 32), torch.float32)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator
from torch import nn

from bft_ray.config import _Model

__all__ = ["CausalLM", "LMOutput", "TinyConfig", "TinyLM", "build_model", "torch_dtype"]

logger = logging.getLogger(__name__)

DType = Literal["float32", "bfloat16"]


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` -> the torch dtype."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


@dataclasses.dataclass
class LMOutput:
    """What one forward pass returns.

    Attributes:
        logits: ``(batch, seq, vocab)`` float32 logits (cast to fp32 whatever the model dtype).
        hidden: ``(batch, seq, d_model)`` last hidden states (after the final norm, before the
            output projection), in the model's dtype.
        cache: Opaque KV cache to pass to the next call, or ``None``.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    cache: Any = None


@runtime_checkable
class CausalLM(Protocol):
    """The small model protocol bft-ray verifies.

    ``forward(input_ids, cache=None)`` takes ``(batch, seq)`` int64 token ids (all rows the
    same length; the positions continue after the tokens already in ``cache``) and returns an
    :class:`LMOutput`. ``vocab_size`` is the number of logits per position. Nothing else is
    needed: generation, commitments and checks are built on this one call.
    """

    vocab_size: int

    def forward(self, input_ids: torch.Tensor, cache: Any = None) -> LMOutput: ...


class TinyConfig(_Model):
    """Size of a :class:`TinyLM`.

    Args:
        vocab: Vocabulary size.
        d_model: Width of the residual stream.
        n_layers: Transformer blocks.
        n_heads: Attention heads (must divide ``d_model``).
        d_ff: MLP width (default ``4 * d_model``).
        max_seq: Longest sequence (prompt plus generation) the positional table covers.
        dtype: ``float32`` or ``bfloat16`` weights and activations.

    Example:
        >>> TinyConfig(d_model=48, n_heads=4).d_ff
        192
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab: int = Field(256, ge=2)
    d_model: int = Field(64, ge=4)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    d_ff: int | None = Field(None, ge=1)
    max_seq: int = Field(512, ge=2)
    dtype: DType = "float32"

    @model_validator(mode="after")
    def _check(self) -> TinyConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}. Pick "
                "n_heads dividing d_model (for example n_heads=4 with d_model=64)."
            )
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        return self


class _RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (y * self.weight.float()).to(x.dtype)


class _Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln1 = _RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = _RMSNorm(d)
        self.up = nn.Linear(d, int(cfg.d_ff or 4 * d), bias=False)
        self.down = nn.Linear(int(cfg.d_ff or 4 * d), d, bias=False)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        s = k.shape[2]
        if t == 1:
            a = F.scaled_dot_product_attention(q, k, v)
        elif s == t:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # several new tokens after a cache: causal mask offset by the cached length
            mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        x = x + self.down(F.gelu(self.up(self.ln2(x))))
        return x, (k, v)


class TinyLM(nn.Module):
    """Decoder-only transformer (pre-norm, RMSNorm, GELU MLP, learned positions) with seeded weights.

    Args:
        cfg: Its size.
        seed: Weight seed; the same ``(cfg, seed)`` gives bit-identical weights everywhere.
    """

    def __init__(self, cfg: TinyConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.vocab_size = cfg.vocab
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab, d)
        self.pos = nn.Embedding(cfg.max_seq, d)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = _RMSNorm(d)
        self.head = nn.Linear(d, cfg.vocab, bias=False)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for name, p in sorted(self.named_parameters()):
                if name.endswith("ln1.weight") or name.endswith("ln2.weight") or "ln_f" in name:
                    continue
                fan_in = p.shape[-1] if p.ndim > 1 and "embed" not in name else 1
                std = 1.0 / math.sqrt(fan_in) if "embed" not in name else 1.0
                if name.startswith("pos"):
                    std = 0.5
                if name.startswith("head"):
                    std = 3.0 / math.sqrt(fan_in)  # spread logits so greedy picks are not ties
                p.copy_(torch.randn(p.shape, generator=g) * std)
        self.to(torch_dtype(cfg.dtype))
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def forward(self, input_ids: torch.Tensor, cache: Any = None) -> LMOutput:  # type: ignore[override]
        """Run ``input_ids`` (``(batch, seq)``) after the tokens already in ``cache``."""
        past_len = 0 if cache is None else int(cache[0][0].shape[2])
        t = input_ids.shape[1]
        if past_len + t > self.cfg.max_seq:
            from bft_ray.errors import ConfigError

            raise ConfigError(
                f"sequence of {past_len + t} tokens exceeds max_seq={self.cfg.max_seq}; build "
                "the model with a larger TinyConfig(max_seq=...) or generate fewer tokens."
            )
        pos = torch.arange(past_len, past_len + t)
        x = self.embed(input_ids) + self.pos(pos)[None]
        new_cache = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, None if cache is None else cache[i])
            new_cache.append(kv)
        hidden = self.ln_f(x)
        logits = self.head(hidden).float()
        return LMOutput(logits, hidden, new_cache)


def build_model(cfg: TinyConfig, seed: int = 0) -> TinyLM:
    """Build a :class:`TinyLM` with weights from ``seed`` (no gradients, eval mode)."""
    with torch.no_grad():
        m = TinyLM(cfg, seed)
    for p in m.parameters():
        p.requires_grad_(False)
    return m
