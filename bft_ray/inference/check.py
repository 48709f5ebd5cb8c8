"""Verify-by-prefill: check a generation with one batched forward pass.

:func:`check_prefill` is pure (no Ray): given the trusted model, the prompts, the claimed
:class:`~bft_ray.inference.generate.Generation` and the sampling parameters, it runs one forward
pass per group of equal-length sequences over ``prompt + generated[:-1]`` and checks, per
prompt:

1. the generation has the requested length (a truncated generation fails here);
2. every token is what the replayed sampler picks from the recomputed logits, within
   ``token_margin`` (catches another seed, a smaller model's tokens, cheap tokens after an
   honest prefix, a different prompt);
3. each claimed log-probability is within ``logprob_atol`` of the recomputed one (fp32);
4. the top-k ids overlap the recomputed ones by at least ``min_topk_overlap``;
5. the commitment matches the recomputed last hidden states
   (:func:`~bft_ray.inference.commitment.check_commitment`; catches perturbed or quantised
   weights and another prompt even when every token happens to agree).

:func:`prefill_checker` wraps it into a picklable callable ``checker(output, *args, **kwargs)
-> bool`` for an audit that runs on a different executor than the producer.

Example:
    >>> from bft_ray.inference.model import TinyConfig, build_model
    >>> from bft_ray.inference.generate import generate
    >>> m = build_model(TinyConfig(d_model=32, n_layers=1, n_heads=2, vocab=64), seed=0)
    >>> g = generate(m, [[1, 2, 3]], 8, commit_k=32)
    >>> check_prefill(m, [[1, 2, 3]], g, commit_k=32).ok
    True
    >>> check_prefill(m, [[1, 2, 4]], g, commit_k=32).ok
    False
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ConfigDict, Field

from bft_ray.config import _Model
from bft_ray.inference.commitment import CommitmentTolerance, check_commitment
from bft_ray.inference.generate import Generation
from bft_ray.inference.model import CausalLM
from bft_ray.inference.sampling import Sampling, token_margins

__all__ = [
    "PrefillChecker",
    "PrefillResult",
    "PrefillTolerance",
    "check_prefill",
    "prefill_checker",
]

logger = logging.getLogger(__name__)


class PrefillTolerance(_Model):
    """How far an honest recomputation may differ from the generator's run.

    Defaults are measured with :func:`bft_ray.inference.calibrate.calibrate` on the tiny
    models (see ``docs/inference.md``); :meth:`for_dtype` gives the bf16 ones.

    Args:
        token_margin: A claimed token passes when its replayed score is at most this far below
            the best score (logit units, divided by the temperature when sampling).
        logprob_atol: Largest ``|claimed - recomputed|`` log-probability (fp32).
        min_topk_overlap: Fraction of the top-k ids that must match per position.
        commitment: Bounds for the hidden-state commitment.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_margin: float = Field(1e-3, ge=0.0)
    logprob_atol: float = Field(1e-3, ge=0.0)
    min_topk_overlap: float = Field(0.6, ge=0.0, le=1.0)
    commitment: CommitmentTolerance = Field(default_factory=CommitmentTolerance)

    @classmethod
    def for_dtype(cls, dtype: str) -> PrefillTolerance:
        """Defaults for a model computing in ``"float32"`` or ``"bfloat16"``."""
        if dtype == "bfloat16":
            return cls(
                token_margin=0.25,
                logprob_atol=0.1,
                min_topk_overlap=0.6,
                commitment=CommitmentTolerance(max_mismatch_frac=0.15, max_mean_rel_err=0.02),
            )
        return cls()


@dataclasses.dataclass(frozen=True)
class PrefillResult:
    """Outcome of :func:`check_prefill`.

    Attributes:
        ok: Whether every prompt's generation passed every check.
        reason: The first failure, readable (empty when ok).
        stats: Worst values seen: ``min_token_margin``, ``max_logprob_err``,
            ``min_topk_overlap``, ``max_mismatch_frac``, ``max_mean_rel_err``, plus
            ``prompts``, ``tokens`` and ``failed_prompt`` (-1 when ok).
        failed: Which checks failed: ``tokens``, ``logprobs``, ``topk``, ``commitment``
            (every check runs on every prompt, so the stats show each one's margin).
    """

    ok: bool
    reason: str = ""
    stats: dict[str, float] = dataclasses.field(default_factory=dict)
    failed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


def _fail(reason: str, stats: dict[str, float]) -> PrefillResult:
    return PrefillResult(False, reason, stats, ("format",))


@torch.no_grad()
def check_prefill(
    model: CausalLM,
    prompt_ids: Sequence[Sequence[int]],
    generation: Generation | Any,
    commitment: Sequence[bytes] | None = None,
    sampling: Sampling | None = None,
    *,
    max_new_tokens: int | None = None,
    tolerance: PrefillTolerance | None = None,
    commit_k: int = 128,
    chunk: int = 32,
    batch_size: int = 16,
    require_commitment: bool = True,
) -> PrefillResult:
    """Check a claimed generation by recomputing it in one forward pass. Never raises on bad input.

    Args:
        model: The trusted model (the one the generator claims to have run).
        prompt_ids: The prompts the caller asked for.
        generation: The claimed :class:`Generation` or its wire form (untrusted).
        commitment: The commitments (default: the generation's own).
        sampling: Sampling the caller asked for (default greedy).
        max_new_tokens: Length the caller asked for; ``None`` accepts the claimed length.
        tolerance: :class:`PrefillTolerance` (default fp32 bounds).
        commit_k: Values per chunk the commitment must hold.
        chunk: Tokens per commitment chunk.
        batch_size: Sequences per forward pass.
        require_commitment: Fail when no commitment is given.

    Returns:
        A :class:`PrefillResult`.
    """
    tol = tolerance or PrefillTolerance()
    sampling = sampling or Sampling()
    stats: dict[str, float] = {
        "prompts": float(len(prompt_ids)),
        "tokens": 0.0,
        "min_token_margin": 0.0,
        "max_logprob_err": 0.0,
        "min_topk_overlap": 1.0,
        "max_mismatch_frac": 0.0,
        "max_mean_rel_err": 0.0,
        "failed_prompt": -1.0,
    }
    try:
        gen = Generation.from_wire(generation)
    except ValueError as exc:
        return _fail(f"malformed generation: {exc}", stats)
    commitments = list(commitment) if commitment is not None else gen.commitments
    n, new = gen.tokens.shape
    stats["tokens"] = float(n * new)
    if n != len(prompt_ids):
        return _fail(f"{n} generations for {len(prompt_ids)} prompts", stats)
    if max_new_tokens is not None and new != max_new_tokens:
        return _fail(f"generation has {new} tokens per prompt, {max_new_tokens} were asked", stats)
    if new == 0:
        return _fail("empty generation", stats)
    if commitments is None:
        if require_commitment:
            return _fail("no commitment to check", stats)
    elif len(commitments) != n or not all(isinstance(c, bytes) for c in commitments):
        return _fail("commitments must be bytes, one per prompt", stats)
    vocab = int(model.vocab_size)
    if gen.tokens.min() < 0 or gen.tokens.max() >= vocab:
        return _fail(f"token ids outside 0..{vocab - 1}", stats)
    k_top = gen.topk_ids.shape[2]
    if k_top > vocab:
        return _fail(f"top-{k_top} ids for a vocabulary of {vocab}", stats)

    failed: dict[str, str] = {}  # check -> first failure, in the order checks failed
    seqs = [list(map(int, p)) + gen.tokens[i, :-1].tolist() for i, p in enumerate(prompt_ids)]
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for length in sorted(by_len):
        group = by_len[length]
        for s in range(0, len(group), batch_size):
            rows = group[s : s + batch_size]
            out = model.forward(torch.tensor([seqs[i] for i in rows], dtype=torch.int64))
            for j, i in enumerate(rows):
                p = len(prompt_ids[i])
                logits = out.logits[j, p - 1 : p - 1 + new].float()
                fails = _check_row(
                    i, logits, out.hidden[j, p - 1 : p - 1 + new], gen, commitments, sampling,
                    tol, commit_k, chunk, stats,
                )  # fmt: skip
                for check, reason in fails:
                    failed.setdefault(check, reason)
                    if stats["failed_prompt"] < 0:
                        stats["failed_prompt"] = float(i)
    if failed:
        return PrefillResult(False, next(iter(failed.values())), stats, tuple(failed))
    return PrefillResult(True, "", stats)


def _check_row(
    i: int,
    logits: torch.Tensor,
    hidden: torch.Tensor,
    gen: Generation,
    commitments: list[bytes] | None,
    sampling: Sampling,
    tol: PrefillTolerance,
    commit_k: int,
    chunk: int,
    stats: dict[str, float],
) -> list[tuple[str, str]]:
    """Every check on one prompt; returns ``(check, reason)`` for each that failed."""
    fails: list[tuple[str, str]] = []
    ln = logits.numpy()
    toks = gen.tokens[i]
    margins = token_margins(ln, toks, sampling, stream=i)
    stats["min_token_margin"] = min(stats["min_token_margin"], float(margins.min()))
    if margins.min() < -tol.token_margin:
        t = int(np.argmax(margins < -tol.token_margin))
        fails.append((
            "tokens",
            f"prompt {i}, token {t}: {int(toks[t])} is not what the replayed sampler picks "
            f"(score {margins[t]:.4g} below the best, tolerance {tol.token_margin:g})",
        ))  # fmt: skip
    lsm = torch.log_softmax(logits, dim=-1)
    lp = (
        lsm.gather(1, torch.from_numpy(np.array(toks, dtype=np.int64))[:, None])
        .squeeze(1)
        .numpy()
        .astype(np.float64)
    )
    claimed = gen.logprobs[i].astype(np.float64)
    diff = np.abs(claimed - lp)
    err = float(np.max(diff)) if np.all(np.isfinite(claimed)) else math.inf
    stats["max_logprob_err"] = max(stats["max_logprob_err"], err)
    if err > tol.logprob_atol:
        t = int(np.argmax(np.where(np.isfinite(diff), diff, np.inf)))
        fails.append((
            "logprobs",
            f"prompt {i}, token {t}: log-probability {claimed[t]:.6g} vs recomputed "
            f"{lp[t]:.6g} (|diff| {diff[t]:.3g} > {tol.logprob_atol:g})",
        ))  # fmt: skip
    k_top = gen.topk_ids.shape[2]
    own = torch.topk(logits, k_top, dim=-1).indices.numpy()
    claimed_top = gen.topk_ids[i]
    # |own ∩ claimed| per position: own's ids are distinct (top-k), so counting the own ids
    # found among the claimed ones is the set intersection even if a liar repeats ids.
    shared = (own[:, :, None] == claimed_top[:, None, :]).any(axis=2).sum(axis=1)
    ov = float(shared.min()) / k_top
    stats["min_topk_overlap"] = min(stats["min_topk_overlap"], ov)
    if ov < tol.min_topk_overlap - 1e-9:
        t = int(np.argmin(shared))
        fails.append(
            ("topk", f"prompt {i}, token {t}: top-{k_top} overlap {int(shared[t])}/{k_top} too low")
        )
    if commitments is not None:
        c = check_commitment(hidden, commitments[i], k=commit_k, chunk=chunk,
                             tolerance=tol.commitment)  # fmt: skip
        stats["max_mismatch_frac"] = max(stats["max_mismatch_frac"], c.mismatch_frac)
        stats["max_mean_rel_err"] = max(stats["max_mean_rel_err"], c.mean_rel_err)
        if not c.ok:
            fails.append(("commitment", f"prompt {i}: commitment: {c.reason}"))
    return fails


@dataclasses.dataclass
class PrefillChecker:
    """Picklable audit callable: ``checker(output, *args, **kwargs) -> bool``.

    ``output`` is what the generating function returned (a :meth:`Generation.to_wire` dict);
    ``args``/``kwargs`` are the call's arguments, bound to ``signature`` (by default
    :func:`bft_ray.inference.lm.run_generation`'s) to find the prompts, the requested length
    and the sampling parameters. The model comes from the checker's own ``model_factory``,
    never from the call. :meth:`check` returns the full :class:`PrefillResult`.
    """

    model_factory: Callable[[], CausalLM]
    tolerance: PrefillTolerance | None = None
    commit_k: int = 128
    chunk: int = 32
    batch_size: int = 16
    signature_of: Callable[..., Any] | None = None

    def _bind(self, args: tuple, kwargs: dict) -> tuple[Any, int, Sampling]:
        if self.signature_of is None:
            from bft_ray.inference.lm import run_generation

            fn: Callable[..., Any] = run_generation
        else:
            fn = self.signature_of
        b = inspect.signature(fn).bind(*args, **kwargs)
        b.apply_defaults()
        a = b.arguments
        s = a.get("sampling")
        sampling = s if isinstance(s, Sampling) else Sampling(**(s or {}))
        return a["prompts"], int(a["max_new_tokens"]), sampling

    def check(self, output: Any, *args: Any, **kwargs: Any) -> PrefillResult:
        """Run :func:`check_prefill` for one call; failures to bind are a failed check."""
        try:
            prompts, max_new, sampling = self._bind(args, kwargs)
        except Exception as exc:  # a call we cannot interpret is not verified
            return PrefillResult(False, f"cannot read the call's arguments: {exc}")
        return check_prefill(
            self.model_factory(),
            prompts,
            output,
            sampling=sampling,
            max_new_tokens=max_new,
            tolerance=self.tolerance,
            commit_k=self.commit_k,
            chunk=self.chunk,
            batch_size=self.batch_size,
        )

    def __call__(self, output: Any, *args: Any, **kwargs: Any) -> bool:
        res = self.check(output, *args, **kwargs)
        if not res.ok:
            logger.info("prefill check failed: %s", res.reason)
        return res.ok


def prefill_checker(
    model_factory: Callable[[], CausalLM],
    *,
    tolerance: PrefillTolerance | None = None,
    commit_k: int = 128,
    chunk: int = 32,
    batch_size: int = 16,
    signature_of: Callable[..., Any] | None = None,
) -> PrefillChecker:
    """A picklable ``checker(output, *args, **kwargs) -> bool`` for spot-check audits.

    Example:
        >>> from bft_ray.inference.model import TinyConfig
        >>> from bft_ray.inference.lm import TinyLMFactory, run_generation
        >>> f = TinyLMFactory(TinyConfig(d_model=32, n_layers=1, n_heads=2, vocab=64))
        >>> out = run_generation([[1, 2]], 4, model_factory=f, commit_k=32)
        >>> prefill_checker(f, commit_k=32)(out, [[1, 2]], 4, model_factory=f, commit_k=32)
        True
    """
    if not math.isfinite(commit_k) or commit_k < 1:
        from bft_ray.errors import ConfigError

        raise ConfigError(f"commit_k={commit_k}; use a positive number of committed values.")
    return PrefillChecker(model_factory, tolerance, commit_k, chunk, batch_size, signature_of)
