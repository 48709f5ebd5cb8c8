"""The deserialisation guard: nothing an executor produces is ever unpickled on the trusted side.

Ray deserialises an object according to metadata that the *producing* process writes. An
executor runs arbitrary user code (and, in the threat model, arbitrary attacker code), so it can
return an object tagged ``PYTHON`` whose pickle runs code when loaded, or an "error" object whose
``RayTaskError`` payload is itself a pickle. Returning ``bytes`` from an honest executor is not
enough on its own: the trusted side must check what it reads *before* anything is unpickled.

This module does that check at the last point before Ray would unpickle: it wraps
``Worker.deserialize_objects`` of the current process (every read path goes through it: a
blocking ``ray.get``, ``await ref`` and ``ref.future()`` in async actors, task arguments).
Objects produced by a task of a *guarded actor* (the executors; an object's id embeds the id of
the task that created it, which embeds the actor id) are handled strictly:

* metadata ``RAW`` with no nested refs: the bytes are returned as ``bytes``, unparsed; the
  caller decodes them with the strict wire decoder (:mod:`bft_ray.compare.wire`);
* anything else is never deserialised. A Ray system error code (actor or worker died, object
  lost, ...) becomes :class:`ExecutorCrashedError`; anything else, including an exception
  object the executor wrote itself (``TASK_EXECUTION_EXCEPTION``, a pickle), becomes
  :class:`UntrustedPayloadError`.
  Either way the replica produced no answer; whether Ray or the executor wrote that metadata
  does not matter, since an executor can always crash instead.

The guard is installed in every trusted process that reads executor objects: the verifier
actor and the driver (``bft_ray.init``). It is a no-op for every other object, so user code
and Ray itself are unaffected.

Example:
    >>> install()
    >>> is_installed()
    True
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from bft_ray.errors import BftRayError

__all__ = [
    "READY",
    "ExecutorCrashedError",
    "UntrustedPayloadError",
    "guard_actor",
    "install",
    "is_guarded",
    "is_installed",
    "no_answer",
    "probe_begin",
    "probe_end",
    "unguard_actor",
]

logger = logging.getLogger(__name__)

_RAW = b"RAW"
_lock = threading.Lock()
_guarded: set[bytes] = set()  # binary actor ids whose objects are read strictly
_probes: dict[bytes, int] = {}  # object ids read for readiness only (see probe())
_installed = False


class _Ready:
    """What a probed object reads as: it exists and is not an error (its value is not read)."""

    def __repr__(self) -> str:
        return "READY"


READY = _Ready()


class UntrustedPayloadError(BftRayError):
    """An executor returned something other than raw bytes; it was refused unread."""


class ExecutorCrashedError(BftRayError):
    """An executor's object is a Ray error (actor died, object lost, ...): no answer."""


def no_answer(exc: BaseException) -> Any:
    """What admission should see for an exception raised while reading an executor's object."""
    from bft_ray.verifier.admission import NoAnswer, Status

    if isinstance(exc, UntrustedPayloadError):
        return NoAnswer(Status.INVALID, str(exc))
    if isinstance(exc, ExecutorCrashedError):
        return NoAnswer(Status.CRASHED, str(exc))
    # Actor died, object lost, worker crashed, ...: raised by Ray itself in this process.
    return NoAnswer(Status.CRASHED, type(exc).__name__)


def _error_name(code: bytes) -> str | None:
    try:
        value = int(code)
    except ValueError:
        return None
    try:
        from ray.core.generated.common_pb2 import ErrorType

        return ErrorType.Name(value)
    except Exception:
        return f"error {value}"


def _strict(data: Any, metadata: Any) -> Any:
    """The value to hand back for an executor's object, decided from metadata alone."""
    meta = bytes(metadata) if metadata else b""
    kind = meta.split(b",", 1)[0]
    if kind == _RAW:
        return b"" if data is None else data.to_pybytes()
    name = _error_name(kind) if kind else None
    if name == "TASK_EXECUTION_EXCEPTION":
        # An exception object written by the executor process itself (its payload is a
        # pickle): the actor is alive and answered with something other than bytes.
        return UntrustedPayloadError(
            "executor returned an exception object instead of raw bytes; refused without "
            "deserialising it",
            metadata=name,
        )
    if name is not None:
        return ExecutorCrashedError(f"executor object is a Ray error ({name})", error=name)
    shown = kind[:32].decode("ascii", "replace") or "<none>"
    return UntrustedPayloadError(
        f"executor returned a {shown!r} object instead of raw bytes; refused without "
        "deserialising it",
        metadata=shown,
    )


def _producer_actor(ref: Any) -> bytes | None:
    try:
        return ref.task_id().actor_id().binary()
    except Exception:
        return None


def _mark(ref: Any, serialized: Any) -> str:
    if _producer_actor(ref) in _guarded:
        return "strict"
    if _probes and ref is not None and ref.binary() in _probes:
        metadata = serialized[1]
        kind = (bytes(metadata) if metadata else b"").split(b",", 1)[0]
        # An error object of a trusted producer is deserialised as usual: it is the upstream
        # failure the caller must see. Anything else is only reported ready, never read.
        return "" if _error_name(kind) is not None else "probe"
    return ""


def probe_begin(ref: Any) -> None:
    """Make reads of ``ref`` in this process return :data:`READY` instead of its value.

    For a verifier that must know an argument is ready (or failed) before it dispatches, but
    has no use for its value: the object is never deserialised here, only its metadata is
    looked at, and an upstream error is raised as usual. Pair with :func:`probe_end`.
    """
    install()
    key = ref.binary()
    with _lock:
        _probes[key] = _probes.get(key, 0) + 1


def probe_end(ref: Any) -> None:
    key = ref.binary()
    with _lock:
        left = _probes.get(key, 0) - 1
        if left > 0:
            _probes[key] = left
        else:
            _probes.pop(key, None)


def _wrap(original: Any) -> Any:
    def deserialize_objects(serialized_objects: Any, object_refs: Any, *args: Any, **kw: Any):
        if (not _guarded and not _probes) or object_refs is None:
            return original(serialized_objects, object_refs, *args, **kw)
        marks = [_mark(r, serialized_objects[i]) for i, r in enumerate(object_refs)]
        if not any(marks):
            return original(serialized_objects, object_refs, *args, **kw)
        out: list[Any] = [None] * len(marks)
        rest = [i for i, m in enumerate(marks) if not m]
        for i, m in enumerate(marks):
            if m == "probe":
                out[i] = READY
            elif m:
                # (data, metadata, transport): the transport field names an out-of-band tensor
                # channel; it is ignored, so nothing is fetched through it either.
                data, metadata = serialized_objects[i][0], serialized_objects[i][1]
                out[i] = _strict(data, metadata)
        if rest:
            values = original(
                [serialized_objects[i] for i in rest], [object_refs[i] for i in rest], *args, **kw
            )
            for i, v in zip(rest, values):
                out[i] = v
        return out

    deserialize_objects.__bft_ray_guard__ = True  # type: ignore[attr-defined]
    return deserialize_objects


def install() -> None:
    """Install the guard in this process (idempotent; survives ``ray.shutdown``/``ray.init``)."""
    global _installed
    with _lock:
        worker = ray._private.worker.global_worker
        current = getattr(worker, "deserialize_objects", None)
        if getattr(current, "__bft_ray_guard__", False):
            _installed = True
            return
        worker.deserialize_objects = _wrap(current)
        _installed = True


def is_installed() -> bool:
    worker = ray._private.worker.global_worker
    return _installed and getattr(worker.deserialize_objects, "__bft_ray_guard__", False)


def guard_actor(handle_or_id: Any) -> None:
    """Read every object produced by this actor strictly (raw bytes or nothing)."""
    install()
    with _lock:
        _guarded.add(_actor_binary(handle_or_id))


def unguard_actor(handle_or_id: Any) -> None:
    with _lock:
        _guarded.discard(_actor_binary(handle_or_id))


def is_guarded(handle_or_id: Any) -> bool:
    return _actor_binary(handle_or_id) in _guarded


def _actor_binary(handle_or_id: Any) -> bytes:
    actor_id = getattr(handle_or_id, "_actor_id", handle_or_id)
    if isinstance(actor_id, bytes):
        return actor_id
    return actor_id.binary()
