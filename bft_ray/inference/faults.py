"""Fault injection for inference: an executor that serves a cheaper model.

:class:`ServeSubstitute` is an executor :class:`~bft_ray.faults.Behaviour`: before each call it
tells :func:`bft_ray.inference.lm.run_generation` (in the same executor process) to serve a
substitute (``"int8"``, ``"int4"``, ``"perturb"`` or ``"smaller"``, see
:mod:`bft_ray.inference.substitutions`) instead of the model the call names, and clears the
setting afterwards. The answer is then signed as usual: a cheater that computed everything
itself, only with a cheaper model.

Example:
    >>> from bft_ray.faults import FaultContext
    >>> from bft_ray.inference import lm
    >>> b = ServeSubstitute("int8")
    >>> b.before(FaultContext(0, "t", 0)); lm.serving_override()
    'int8'
    >>> b.corrupt({"x": 1}, FaultContext(0, "t", 0)); lm.serving_override() is None
    {'x': 1}
    True
"""

from __future__ import annotations

from typing import Any

from bft_ray.errors import ConfigError
from bft_ray.faults import Behaviour, FaultContext
from bft_ray.inference import lm
from bft_ray.inference.substitutions import SUBSTITUTIONS

__all__ = ["ServeSubstitute"]


class ServeSubstitute(Behaviour):
    """Serve ``kind`` (a key of :data:`~bft_ray.inference.substitutions.SUBSTITUTIONS`)."""

    name = "serve_substitute"

    def __init__(self, kind: str = "int8") -> None:
        if kind not in SUBSTITUTIONS:
            raise ConfigError(
                f"unknown substitution {kind!r}; use one of {', '.join(sorted(SUBSTITUTIONS))}."
            )
        self.kind = kind

    def before(self, ctx: FaultContext) -> None:
        lm._OVERRIDE["kind"] = self.kind

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        lm._OVERRIDE["kind"] = None
        return output
