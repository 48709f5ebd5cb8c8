"""Adapter: a Hugging Face ``transformers`` causal LM as a :class:`~bft_ray.inference.model.CausalLM`.

Needs ``pip install 'bft-ray[inference]'``. The adapter calls the model with
``output_hidden_states=True`` and ``use_cache=True``, returns the fp32 logits, the last entry of
``hidden_states`` (the final-norm output that feeds the LM head) and the model's cache object.

Example:
    .. code-block:: python

        from transformers import LlamaConfig, LlamaForCausalLM
        model = HFCausalLM(LlamaForCausalLM(LlamaConfig(hidden_size=64, ...)).eval())
        gen = bft_ray.inference.generate(model, [[1, 2, 3]], max_new_tokens=16)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from bft_ray.errors import ConfigError
from bft_ray.inference.model import LMOutput

__all__ = ["HFCausalLM", "TinyLlamaFactory"]

logger = logging.getLogger(__name__)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "the Hugging Face adapter needs transformers: pip install 'bft-ray[inference]'"
        ) from None
    return transformers


class HFCausalLM:
    """Wrap a ``transformers`` ``*ForCausalLM`` model (in eval mode) as a ``CausalLM``."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.vocab_size = int(model.config.vocab_size)
        import inspect

        # transformers 5.x renamed ``past_key_values`` to ``cache``; accept both generations.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, cache: Any = None) -> LMOutput:
        out = self.model(
            input_ids=input_ids,
            use_cache=True,
            output_hidden_states=True,
            **{self._cache_kw: cache},
        )
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return LMOutput(out.logits.float(), out.hidden_states[-1], new_cache)


@dataclasses.dataclass(frozen=True)
class TinyLlamaFactory:
    """Picklable factory of a small random ``LlamaForCausalLM`` (seeded; nothing downloaded).

    Args:
        hidden_size: Model width.
        layers: Decoder layers.
        heads: Attention heads.
        vocab: Vocabulary size.
        seed: Weight seed.
        dtype: ``float32`` or ``bfloat16``.
    """

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    vocab: int = 256
    seed: int = 0
    dtype: str = "float32"

    def __call__(self) -> HFCausalLM:
        key = ("hf-llama", dataclasses.astuple(self))
        from bft_ray.inference.lm import _MODELS, _MODELS_LOCK

        with _MODELS_LOCK:
            if key not in _MODELS:
                tf = _transformers()
                cfg = tf.LlamaConfig(
                    vocab_size=self.vocab,
                    hidden_size=self.hidden_size,
                    intermediate_size=4 * self.hidden_size,
                    num_hidden_layers=self.layers,
                    num_attention_heads=self.heads,
                    num_key_value_heads=self.heads,
                    max_position_embeddings=512,
                )
                torch.manual_seed(self.seed)
                m = tf.LlamaForCausalLM(cfg).to(getattr(torch, self.dtype))
                _MODELS[key] = HFCausalLM(m)
            return _MODELS[key]
