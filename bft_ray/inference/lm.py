"""Model factories, the generating function executors run, and :class:`VerifiedLM`.

:func:`run_generation` is the function a verified call runs on an executor: it builds (once per
process) the model from a picklable factory and returns :meth:`Generation.to_wire`.
:class:`VerifiedLM` wraps it with ``bft_ray.verified_remote``: either full replication under
:func:`~bft_ray.inference.tolerance.generation_tolerance` (``policy="replicate"``), or
``policy="prefill"``: ``verified_remote(policy=spot_check(1.0, checker=prefill_checker(...)))``,
one generator whose every result is checked by one prefill pass on another executor, once the
generator has earned trust by agreeing under replication.

Example:
    >>> f = TinyLMFactory(TinyConfig(d_model=32, n_layers=1, n_heads=2, vocab=64))
    >>> out = run_generation([[1, 2, 3]], 4, model_factory=f)
    >>> sorted(out), out["tokens"].shape
    (['logprobs', 'tokens', 'topk_ids'], (1, 4))
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from bft_ray.errors import ConfigError
from bft_ray.inference.check import PrefillTolerance, prefill_checker
from bft_ray.inference.generate import Generation, generate
from bft_ray.inference.model import CausalLM, TinyConfig, build_model
from bft_ray.inference.sampling import Sampling
from bft_ray.inference.tolerance import generation_tolerance

__all__ = ["TinyLMFactory", "VerifiedLM", "run_generation", "serving_override"]

logger = logging.getLogger(__name__)

_MODELS: dict[Any, CausalLM] = {}
_MODELS_LOCK = threading.Lock()
# Fault injection (bft_ray.inference.faults): a process-wide substitution an injected cheater
# applies to whatever model it is asked to serve. None on honest executors.
_OVERRIDE: dict[str, Any] = {"kind": None}


def serving_override() -> str | None:
    """The substitution an injected fault set on this process (``None`` when honest)."""
    return _OVERRIDE["kind"]


@dataclasses.dataclass(frozen=True)
class TinyLMFactory:
    """Picklable factory of a seeded :class:`~bft_ray.inference.model.TinyLM`, cached per process.

    Args:
        config: Model size and dtype.
        seed: Weight seed.
    """

    config: TinyConfig = dataclasses.field(default_factory=TinyConfig)
    seed: int = 0

    def key(self) -> tuple[str, int]:
        return (self.config.model_dump_json(), self.seed)

    def __call__(self) -> CausalLM:
        k = self.key()
        with _MODELS_LOCK:
            if k not in _MODELS:
                _MODELS[k] = build_model(self.config, self.seed)
            return _MODELS[k]


def _model_for(factory: Callable[[], CausalLM]) -> CausalLM:
    model = factory()
    kind = serving_override()
    if kind is None:
        return model
    from bft_ray.inference.substitutions import substitute

    k = ("substitute", kind, id(model))
    with _MODELS_LOCK:
        if k not in _MODELS:
            _MODELS[k] = substitute(model, kind)
        return _MODELS[k]


def run_generation(
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: dict[str, Any] | None = None,
    *,
    model_factory: Callable[[], CausalLM],
    batch_size: int = 16,
    use_cache: bool = True,
    topk: int = 5,
    commit_k: int | None = None,
    chunk: int = 32,
    threads: int | None = None,
) -> dict[str, Any]:
    """Generate on this process (an executor) and return the wire form of the generation."""
    if threads is not None:
        torch.set_num_threads(threads)
    gen = generate(
        _model_for(model_factory),
        [list(map(int, p)) for p in prompts],
        max_new_tokens,
        Sampling(**(sampling or {})),
        batch_size=batch_size,
        use_cache=use_cache,
        topk=topk,
        commit_k=commit_k,
        chunk=chunk,
    )
    return gen.to_wire()


Policy = Literal["replicate", "prefill"]


class VerifiedLM:
    """Verified generation for a batch of prompts on untrusted executors.

    Args:
        model_factory: Picklable zero-argument callable returning a
            :class:`~bft_ray.inference.model.CausalLM` (for example :class:`TinyLMFactory`).
        policy: ``"replicate"``: every call runs on ``replicas`` executors and the outputs
            are compared under :func:`generation_tolerance`. ``"prefill"``: one executor
            generates with a commitment, another checks it with one forward pass (a spot
            check at rate 1 with the prefill checker; replicated while trust is earned).
        replicas: Executors per call (replicate policy).
        quorum: Agreeing outputs needed (default a strict majority).
        logprob_atol: Log-probability bound of the generation tolerance.
        min_topk_overlap: Top-k overlap bound of the generation tolerance.
        prefill_tolerance: Bounds of the prefill check (prefill policy).
        commit_k: Committed values per 32 tokens (prefill policy).
        batch_size: Micro-batch size on the executors.
        **remote_options: Passed to ``bft_ray.verified_remote`` (``num_gpus``, ``timeout_s``).

    Example:
        .. code-block:: python

            lm = VerifiedLM(TinyLMFactory(TinyConfig()), replicas=3)
            gen = lm.generate([[1, 2, 3]], max_new_tokens=32, sampling={"temperature": 0.8, "seed": 1})
            gen.tokens, lm.certificate()
    """

    def __init__(
        self,
        model_factory: Callable[[], CausalLM],
        *,
        policy: Policy = "replicate",
        replicas: int = 3,
        quorum: int | None = None,
        logprob_atol: float = 1e-3,
        min_topk_overlap: float = 0.6,
        prefill_tolerance: PrefillTolerance | None = None,
        commit_k: int = 128,
        batch_size: int = 16,
        **remote_options: Any,
    ) -> None:
        if policy not in ("replicate", "prefill"):
            raise ConfigError(f"policy={policy!r}; use 'replicate' or 'prefill'.")
        self.model_factory = model_factory
        self.policy = policy
        self.replicas = replicas
        self.quorum = quorum
        self.tolerance = generation_tolerance(logprob_atol, min_topk_overlap)
        self.prefill_tolerance = prefill_tolerance
        self.commit_k = commit_k
        self.batch_size = batch_size
        self._remote_options = remote_options
        self._last_ref: Any = None
        import bft_ray

        self._fn = bft_ray.verified_remote(**self._remote_options_for_policy())(run_generation)

    def _remote_options_for_policy(self) -> dict[str, Any]:
        opts = dict(self._remote_options)
        if self.policy == "replicate":
            opts.update(replicas=self.replicas, quorum=self.quorum, tolerance=self.tolerance)
            return opts
        # policy="prefill": one generator, audited on another executor by the prefill checker.
        checker = prefill_checker(
            self.model_factory, tolerance=self.prefill_tolerance, commit_k=self.commit_k
        )
        from bft_ray.trust.plans import spot_check

        # Replicated (with the generation tolerance) until an executor has earned trust for
        # the function; then one executor generates and every result is checked by one
        # prefill pass on another executor. A refused check escalates to replication.
        opts.update(
            replicas=self.replicas,
            quorum=self.quorum,
            tolerance=self.tolerance,
            policy=spot_check(1.0, warmup=1, cooldown=5, checker=checker, checker_cost=0.3),
        )
        return opts

    def _commit_k(self) -> int | None:
        return self.commit_k if self.policy == "prefill" else None

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling | dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Generation:
        """Verified generation; returns the accepted :class:`Generation`.

        Raises:
            bft_ray.errors.VerificationError: When no quorum of executors agreed.
        """
        import bft_ray

        ref = self.generate_async(prompts, max_new_tokens, sampling)
        return Generation.from_wire(bft_ray.get(ref, timeout=timeout))

    def generate_async(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling | dict[str, Any] | None = None,
    ) -> Any:
        """Submit a verified generation; returns its ref (``bft_ray.get`` / ``certificate``)."""
        s = sampling if isinstance(sampling, Sampling) else Sampling(**(sampling or {}))
        ref = self._fn.remote(
            [list(map(int, p)) for p in prompts],
            int(max_new_tokens),
            s.model_dump(),
            model_factory=self.model_factory,
            batch_size=self.batch_size,
            commit_k=self._commit_k(),
        )
        self._last_ref = ref
        return ref

    def certificate(self, ref: Any = None) -> Any:
        """Certificate of ``ref`` (default: the last generation)."""
        import bft_ray

        return bft_ray.certificate(ref if ref is not None else self._last_ref)
