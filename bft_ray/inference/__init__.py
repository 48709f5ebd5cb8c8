"""Verified generation for language models.

Pure cores (no Ray calls): :mod:`~bft_ray.inference.model` (a seeded tiny transformer and the
:class:`CausalLM` protocol), :mod:`~bft_ray.inference.sampling` (replayable Gumbel-max),
:mod:`~bft_ray.inference.generate`, :mod:`~bft_ray.inference.commitment` (TOPLOC-style
hidden-state commitments), :mod:`~bft_ray.inference.check` (verify-by-prefill),
:mod:`~bft_ray.inference.tolerance` (the generation tolerance),
:mod:`~bft_ray.inference.substitutions` (cheaper models, for tests and benchmarks) and
:mod:`~bft_ray.inference.calibrate`. Ray wiring: :mod:`~bft_ray.inference.lm`
(:class:`VerifiedLM`) and :mod:`~bft_ray.inference.faults` (an executor serving a substitute).
:mod:`~bft_ray.inference.hf` adapts Hugging Face causal LMs (``pip install bft-ray[inference]``).

See ``docs/inference.md`` for the protocol, the commitment format and measured numbers.
"""

from bft_ray.inference.calibrate import CalibrationReport, calibrate
from bft_ray.inference.check import (
    PrefillChecker,
    PrefillResult,
    PrefillTolerance,
    check_prefill,
    prefill_checker,
)
from bft_ray.inference.commitment import CommitmentTolerance, check_commitment, commit
from bft_ray.inference.generate import Generation, generate
from bft_ray.inference.lm import TinyLMFactory, VerifiedLM, run_generation
from bft_ray.inference.model import CausalLM, LMOutput, TinyConfig, TinyLM, build_model
from bft_ray.inference.sampling import Sampling
from bft_ray.inference.tolerance import generation_tolerance

__all__ = [
    "CalibrationReport",
    "CausalLM",
    "CommitmentTolerance",
    "Generation",
    "LMOutput",
    "PrefillChecker",
    "PrefillResult",
    "PrefillTolerance",
    "Sampling",
    "TinyConfig",
    "TinyLM",
    "TinyLMFactory",
    "VerifiedLM",
    "build_model",
    "calibrate",
    "check_commitment",
    "check_prefill",
    "commit",
    "generate",
    "generation_tolerance",
    "prefill_checker",
    "run_generation",
]
