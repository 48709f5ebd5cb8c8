"""Cheaper models a dishonest provider might serve instead of the one asked for.

Each function returns a new model (the original is untouched) that still implements
:class:`~bft_ray.inference.model.CausalLM`:

* :func:`perturb_weights`: every weight multiplied by ``1 + rel * N(0, 1)``;
* :func:`quantize_int8`: symmetric per-output-channel int8 weights (dequantised for compute);
* :func:`quantize_4bit`: symmetric 4-bit weights in groups of 32 along the input dimension;
* :func:`smaller_model`: a seeded TinyLM with the same vocabulary and fewer layers / width.

Example:
    >>> from bft_ray.inference.model import TinyConfig, build_model
    >>> m = build_model(TinyConfig(d_model=32, n_layers=1, n_heads=2, vocab=64))
    >>> q = quantize_int8(m)
    >>> bool((q.head.weight != m.head.weight).any()), float((q.head.weight - m.head.weight).abs().max()) < 0.1
    (True, True)
"""

from __future__ import annotations

import copy

import torch

from bft_ray.errors import ConfigError
from bft_ray.inference.model import CausalLM, TinyConfig, TinyLM, build_model

__all__ = [
    "SUBSTITUTIONS",
    "perturb_weights",
    "quantize_4bit",
    "quantize_int8",
    "smaller_model",
    "substitute",
]


def _matrices(model: torch.nn.Module):
    for name, p in model.named_parameters():
        if p.ndim == 2:
            yield name, p


@torch.no_grad()
def perturb_weights(model: CausalLM, rel: float = 1e-3, seed: int = 1) -> CausalLM:
    """Copy of ``model`` with every weight scaled by ``1 + rel * N(0, 1)`` (seeded)."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for _, p in m.named_parameters():  # type: ignore[attr-defined]
        noise = torch.randn(p.shape, generator=g)
        p.copy_((p.float() * (1 + rel * noise)).to(p.dtype))
    return m


@torch.no_grad()
def quantize_int8(model: CausalLM) -> CausalLM:
    """Copy with symmetric per-output-row int8 weight matrices (fake-quantised)."""
    m = copy.deepcopy(model)
    for _, p in _matrices(m):  # type: ignore[arg-type]
        w = p.float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        p.copy_((torch.round(w / scale).clamp(-127, 127) * scale).to(p.dtype))
    return m


@torch.no_grad()
def quantize_4bit(model: CausalLM, group: int = 32) -> CausalLM:
    """Copy with symmetric 4-bit weight matrices, one scale per ``group`` inputs."""
    m = copy.deepcopy(model)
    for _, p in _matrices(m):  # type: ignore[arg-type]
        w = p.float()
        rows, cols = w.shape
        pad = (-cols) % group
        wp = torch.nn.functional.pad(w, (0, pad)).view(rows, -1, group)
        scale = wp.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / 7.0
        q = torch.round(wp / scale).clamp(-7, 7) * scale
        p.copy_(q.view(rows, -1)[:, :cols].to(p.dtype))
    return m


def smaller_model(model: CausalLM, seed: int = 12345) -> CausalLM:
    """A seeded TinyLM with the same vocabulary, half the width and one layer."""
    if not isinstance(model, TinyLM):
        raise ConfigError("smaller_model builds a TinyLM; pass a TinyLM to substitute.")
    cfg = model.cfg
    small = TinyConfig(
        vocab=cfg.vocab,
        d_model=max(cfg.d_model // 2, cfg.n_heads),
        n_layers=1,
        n_heads=cfg.n_heads,
        max_seq=cfg.max_seq,
        dtype=cfg.dtype,
    )
    return build_model(small, seed)


SUBSTITUTIONS = {
    "perturb": perturb_weights,
    "int8": quantize_int8,
    "int4": quantize_4bit,
    "smaller": smaller_model,
}


def substitute(model: CausalLM, kind: str) -> CausalLM:
    """Apply the substitution named ``kind`` (a key of :data:`SUBSTITUTIONS`)."""
    try:
        fn = SUBSTITUTIONS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown substitution {kind!r}; use one of {', '.join(sorted(SUBSTITUTIONS))}."
        ) from None
    return fn(model)
