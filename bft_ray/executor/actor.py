"""The executor actor: an untrusted worker pinned to one GPU.

Each executor is a long-lived Ray actor with its own Ed25519 identity, living in one *slot* (a
bundle of the pool's placement group: a GPU of a node). It runs user functions and hosts
replicas of user class instances. For every call it returns **bytes only**: an answer envelope
(:mod:`bft_ray.executor.envelope`) holding the output, or the record of the exception user code
raised, in the canonical wire format, signed with its key. The trusted side reads those bytes
through the deserialisation guard and never unpickles anything an executor produced. Fault
injection wraps the honest computation here, because this is where a real faulty or malicious
machine would lie.

Every method that changes the executor's behaviour or state (running or caching functions,
hosting instances, swapping its fault) requires the slot's *capability*, a token only the
verifier holds (derived from the driver's secret); the executor keeps only its hash. So an
executor that obtains another's handle cannot make an honest executor Byzantine.

The actor is created with retries off (``max_restarts=0``, ``max_task_retries=0``): Ray must not
silently re-run a call on another process and hide a fault; bft-ray decides re-execution.

Code running inside an executor can call :func:`bft_ray.device` to get the torch device to use
(``cuda`` when a GPU is present, otherwise ``cpu``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import inspect
import logging
import os
import time
import traceback
from typing import Any

import blake3
import ray

from bft_ray import faults as fault_lib
from bft_ray.compare.wire import UnsupportedTypeError, encode
from bft_ray.crypto import SigningKey
from bft_ray.errors import CapabilityError
from bft_ray.executor import envelope

__all__ = [
    "ExecutorActor",
    "ExecutorInfo",
    "TaskSpec",
    "capability_commitment",
    "error_payload",
    "slot_capability",
]

logger = logging.getLogger(__name__)

# Set while an executor runs user code, so a verified call made from inside one is refused.
_INSIDE_EXECUTOR = False


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What an executor needs to know about one replica of a call."""

    task_id: str
    attempt: int
    name: str


@dataclasses.dataclass(frozen=True)
class ExecutorInfo:
    """Facts about an executor, collected when it starts.

    ``public_key``, ``gpu_ids``, ``pid`` and ``fault`` are what the executor says about itself;
    ``node_id`` comes from Ray's placement group table (the control plane), never from the
    executor.
    """

    index: int
    executor_id: str
    slot: str
    public_key: bytes
    node_id: str
    gpu_ids: tuple[str, ...]
    pid: int
    fault: str


def slot_capability(master: bytes, slot: str) -> bytes:
    """The capability of one slot, derived from the driver's secret."""
    return blake3.blake3(f"bft-ray capability\x00{slot}".encode(), key=master).digest()


def capability_commitment(capability: bytes) -> bytes:
    """What an executor keeps of its capability: a hash, useless to steal."""
    return blake3.blake3(capability, derive_key_context="bft-ray capability commitment").digest()


def error_payload(exc: BaseException) -> bytes:
    """The canonical record of an exception: what replicas compare when user code raised.

    Never raises: an exception whose ``str()`` raises, or whose text is no valid UTF-8 (a lone
    surrogate from an input string), still gets a record, the same on every honest replica.
    Before, the record itself raised, Ray stored that exception, and every honest replica of
    the call read as an invalid answer.
    """
    cls = type(exc)
    try:
        message = str(exc)
    except Exception:
        message = f"<str() of {cls.__qualname__} failed>"
    return encode(
        {"type": _text(f"{cls.__module__}.{cls.__qualname__}"), "message": _text(message)}
    )


def _text(text: str) -> str:
    """``text`` as valid UTF-8 text: lone surrogates become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ExecutorActor:
    """Runs user code, applies its injected behaviour, signs what it returns.

    Args:
        index: Slot index in the pool (faults are configured per slot).
        executor_id: Unique id of this incarnation (a respawned slot gets a new id and key).
        slot: The slot's name; a respawn keeps it.
        commitment: Hash of the slot's capability (see :func:`capability_commitment`).
        fault: Fault spec, see :mod:`bft_ray.faults`.
        seed: Seed for deterministic fault behaviour.
    """

    def __init__(
        self,
        index: int,
        executor_id: str,
        slot: str,
        commitment: bytes,
        fault: Any = None,
        seed: int = 0,
    ) -> None:
        self.index = index
        self.executor_id = executor_id
        self.slot = slot
        self._commitment = commitment
        self.behaviour = fault_lib.resolve(fault)
        self.seed = seed
        self._key = SigningKey.generate()
        self._instances: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        # One event loop for the executor's life: coroutines of async user code run on it, so
        # loop-bound state (locks, clients) made by one call of an instance works in the next.
        self._loop: asyncio.AbstractEventLoop | None = None

    def _settle(self, result: Any) -> Any:
        """Run a coroutine returned by async user code to completion; other values pass."""
        if not inspect.iscoroutine(result):
            return result
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(result)

    def _authorise(self, capability: Any) -> None:
        if not isinstance(capability, bytes) or not hmac.compare_digest(
            capability_commitment(capability), self._commitment
        ):
            raise CapabilityError(
                f"executor {self.executor_id}: caller lacks this slot's capability; only the "
                "bft-ray verifier may steer executors"
            )

    def info(self) -> bytes:
        """What the executor says about itself, as canonical wire bytes (no pickle)."""
        ctx = ray.get_runtime_context()
        answer = {
            "executor_id": self.executor_id,
            "slot": self.slot,
            "public_key": self._key.public_bytes,
            "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
            "pid": os.getpid(),
            "fault": repr(self.behaviour),
        }
        return encode(answer)

    def _outcome(self, spec: TaskSpec, compute: Any) -> tuple[str, bytes, str, Any]:
        """Run ``compute`` for ``spec``: ``(kind, payload, note, fault context)``, unsigned."""
        global _INSIDE_EXECUTOR
        ctx = fault_lib.FaultContext(self.index, spec.task_id, spec.attempt, self.seed)
        start = time.perf_counter()
        kind, note = envelope.VALUE, ""
        _INSIDE_EXECUTOR = True
        try:
            self.behaviour.before(ctx)
            output = self.behaviour.corrupt(self._settle(compute()), ctx)
            payload = encode(output)
        except UnsupportedTypeError as exc:
            kind, note = envelope.ERROR, str(exc)
            payload = error_payload(exc)
        except Exception as exc:
            # User code raised: the record is compared like a value, so one executor inventing
            # an exception is outvoted like any wrong output.
            kind, note = envelope.ERROR, user_traceback(exc)
            payload = error_payload(exc)
        finally:
            _INSIDE_EXECUTOR = False
        logger.debug(
            "%s answered %s in %.3fs", self.executor_id, spec.task_id, time.perf_counter() - start
        )
        return kind, payload, note, ctx

    def _answer(self, spec: TaskSpec, compute: Any) -> Any:
        kind, payload, note, ctx = self._outcome(spec, compute)
        raw = envelope.build(
            self._key, kind, spec.task_id, spec.attempt, self.executor_id, self.slot, payload, note
        )
        return self.behaviour.on_wire(raw, ctx)

    def run(
        self,
        capability: bytes,
        spec: TaskSpec,
        fn_key: str,
        fn: Any,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Run the function ``fn_key`` on ``(*args, **kwargs)``; returns the answer envelope.

        The function object travels until the executor has confirmed it (an answer to a call
        that carried it): the verifier passes it (``fn``) and ``None`` afterwards, and the
        executor keeps it under ``fn_key``.
        """
        self._authorise(capability)
        if fn is not None:
            self._functions[fn_key] = fn
        func = self._functions.get(fn_key)
        if func is None:
            func = self._missing(fn_key)
        return self._answer(spec, lambda: func(*args, **kwargs))

    def run_batch(self, capability: bytes, items: list, /) -> list:
        """Run several function replicas, in order; returns one answer envelope per item.

        Called with ``num_returns=len(items)``, so each envelope is its own object (read as raw
        bytes like any answer). Items are ``(spec, fn_key, args, kwargs)`` for functions this
        executor already holds; one item's exception never touches the others'. The envelopes
        share one batch signature (:func:`bft_ray.executor.envelope.build_batch`).
        """
        self._authorise(capability)
        outcomes = []
        for spec, fn_key, args, kwargs in items:
            func = self._functions.get(fn_key)
            if func is None:
                func = self._missing(fn_key)
            outcomes.append(
                (spec, self._outcome(spec, lambda f=func, a=args, k=kwargs: f(*a, **k)))
            )
        # One signature for the whole batch (a Merkle root; each envelope carries its path):
        # a signature here and its check on every verifier cost more than a trivial replica.
        raws = envelope.build_batch(
            self._key,
            [
                (kind, spec.task_id, spec.attempt, self.executor_id, self.slot, payload, note)
                for spec, (kind, payload, note, _ctx) in outcomes
            ],
        )
        return [self.behaviour.on_wire(raw, ctx) for raw, (_spec, (*_, ctx)) in zip(raws, outcomes)]

    def _missing(self, fn_key: str) -> Any:
        def func(*_a: Any, **_k: Any) -> Any:
            raise LookupError(f"executor {self.executor_id} was never sent function {fn_key}")

        return func

    def create_instance(
        self,
        capability: bytes,
        spec: TaskSpec,
        instance_id: str,
        cls: Any,
        /,
        *args: Any,
        **kw: Any,
    ) -> Any:
        """Construct a replica of a user class instance; answers ``None`` (or the error)."""
        self._authorise(capability)

        def build() -> None:
            self._instances[instance_id] = cls(*args, **kw)

        return self._answer(spec, build)

    def call(
        self,
        capability: bytes,
        spec: TaskSpec,
        instance_id: str,
        method: str,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Call ``method`` on a hosted instance; returns the answer envelope."""
        self._authorise(capability)

        def invoke() -> Any:
            try:
                obj = self._instances[instance_id]
            except KeyError:
                raise LookupError(
                    f"executor {self.executor_id} hosts no instance {instance_id!r}"
                ) from None
            return getattr(obj, method)(*args, **kwargs)

        return self._answer(spec, invoke)

    def drop_instance(self, capability: bytes, instance_id: str) -> None:
        self._authorise(capability)
        self._instances.pop(instance_id, None)

    def set_fault(self, capability: bytes, fault: Any) -> bytes:
        """Swap the injected behaviour at run time (chaos testing); returns its description."""
        self._authorise(capability)
        self.behaviour = fault_lib.resolve(fault)
        return encode(repr(self.behaviour))

    def ping(self) -> bytes:
        return encode(self.executor_id)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_traceback(exc: BaseException, limit: int = 30) -> str:
    """The traceback of an exception user code raised, without bft-ray's own frames.

    What a Ray user expects to see: their file, function and line, then the exception.
    """
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(f.filename).startswith(_PACKAGE_DIR + os.sep)
    ][-limit:]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return _text("".join(lines))


def inside_executor() -> bool:
    """Whether this code runs inside an executor's user function."""
    return _INSIDE_EXECUTOR
