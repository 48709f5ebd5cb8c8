"""The executor actor: an untrusted worker pinned to one GPU.

Each executor is a long-lived Ray actor with its own Ed25519 identity. It runs user functions and
hosts replicas of user class instances; for every call it returns one object, the pair of the output and
a signed :class:`~bft_ray.executor.attestation.Attestation` of the output's digest. Fault injection wraps the honest computation here, because this is where a real
faulty or malicious machine would lie.

The actor is created with retries off (``max_restarts=0``, ``max_task_retries=0``): Ray must not
silently re-run a call on another process and hide a fault; bft-ray decides re-execution.

Code running inside an executor can call :func:`bft_ray.device` to get the torch device to use
(``cuda`` when a GPU is present, otherwise ``cpu``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import ray

from bft_ray import faults as fault_lib
from bft_ray.compare.digest import digest
from bft_ray.crypto import SigningKey
from bft_ray.executor.attestation import Attestation

__all__ = ["ExecutorActor", "ExecutorInfo", "TaskSpec"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What an executor needs to know about one replica of a call."""

    task_id: str
    attempt: int
    name: str


@dataclasses.dataclass(frozen=True)
class ExecutorInfo:
    """Public facts about an executor, collected when it starts."""

    index: int
    executor_id: str
    public_key: bytes
    node_id: str
    gpu_ids: tuple[str, ...]
    pid: int
    fault: str


class ExecutorActor:
    """Runs user code, applies its injected behaviour, signs what it returns.

    Args:
        index: Slot in the pool (faults are configured per slot).
        executor_id: Unique id of this incarnation (a respawned slot gets a new id and key).
        fault: Fault spec, see :mod:`bft_ray.faults`.
        seed: Seed for deterministic fault behaviour.
    """

    def __init__(self, index: int, executor_id: str, fault: Any = None, seed: int = 0) -> None:
        self.index = index
        self.executor_id = executor_id
        self.behaviour = fault_lib.resolve(fault)
        self.seed = seed
        self._key = SigningKey.generate()
        self._instances: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}

    def info(self) -> ExecutorInfo:
        ctx = ray.get_runtime_context()
        return ExecutorInfo(
            index=self.index,
            executor_id=self.executor_id,
            public_key=self._key.public_bytes,
            node_id=ctx.get_node_id(),
            gpu_ids=tuple(str(g) for g in ctx.get_accelerator_ids().get("GPU", [])),
            pid=os.getpid(),
            fault=repr(self.behaviour),
        )

    def _answer(self, spec: TaskSpec, compute: Any) -> tuple[Any, Attestation]:
        ctx = fault_lib.FaultContext(self.index, spec.task_id, spec.attempt, self.seed)
        self.behaviour.before(ctx)
        start = time.perf_counter()
        output = compute()
        output = self.behaviour.corrupt(output, ctx)
        att = Attestation.create(
            self._key, spec.task_id, spec.attempt, self.executor_id, digest(output)
        )
        logger.debug(
            "%s answered %s in %.3fs", self.executor_id, spec.task_id, time.perf_counter() - start
        )
        return output, att

    def run(
        self, spec: TaskSpec, fn_key: str, fn: Any, /, *args: Any, **kwargs: Any
    ) -> tuple[Any, Attestation]:
        """Run the function ``fn_key`` on ``(*args, **kwargs)``; returns ``(output, attestation)``.


        The function object travels once per executor: the verifier passes it (``fn``) on the
        first call and ``None`` afterwards, and the executor keeps it under ``fn_key``. That
        saves fetching and unpickling it on every call.
        """
        if fn is not None:
            self._functions[fn_key] = fn
        try:
            func = self._functions[fn_key]
        except KeyError:
            raise KeyError(
                f"executor {self.executor_id} has no function {fn_key!r} (never sent)"
            ) from None
        return self._answer(spec, lambda: func(*args, **kwargs))

    def create_instance(self, instance_id: str, cls: Any, /, *args: Any, **kwargs: Any) -> str:
        """Construct a replica of a user class instance and keep it under ``instance_id``."""
        self._instances[instance_id] = cls(*args, **kwargs)
        return self.executor_id

    def call(
        self, spec: TaskSpec, instance_id: str, method: str, /, *args: Any, **kwargs: Any
    ) -> tuple[Any, Attestation]:
        """Call ``method`` on a hosted instance; returns ``(output, attestation)``."""
        try:
            obj = self._instances[instance_id]
        except KeyError:
            raise KeyError(
                f"executor {self.executor_id} hosts no instance {instance_id!r} (was it dropped?)"
            ) from None
        return self._answer(spec, lambda: getattr(obj, method)(*args, **kwargs))

    def drop_instance(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)

    def set_fault(self, fault: Any) -> str:
        """Swap the injected behaviour at run time (chaos testing); returns its description."""
        self.behaviour = fault_lib.resolve(fault)
        return repr(self.behaviour)

    def ping(self) -> str:
        return self.executor_id
