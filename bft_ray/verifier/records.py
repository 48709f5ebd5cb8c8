"""From a verdict record to what the caller sees: the certificate body, the value, the error.

Pure code, no Ray, shared by every verifier backend: what a certificate binds and how an
agreed exception is re-raised must not depend on which verifier decided.
"""

from __future__ import annotations

import builtins
import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from bft_ray.compare.wire import WireValue
from bft_ray.errors import BftRayError, UserCodeError
from bft_ray.verifier.admission import Status, error_record
from bft_ray.verifier.certificate import Dissent, FunctionId
from bft_ray.verifier.decision import VerdictRecord

__all__ = [
    "CallMeta",
    "accepted_result",
    "certificate_fields",
    "reported_traceback",
    "user_exception",
]


@dataclasses.dataclass(frozen=True)
class CallMeta:
    """What the caller declared about a call, bound into its certificate.

    Attributes:
        task_id: The call.
        name: Function or method name, for messages.
        function: Module, qualified name and code digest of the function (or class).
        args_digest: Digest of the call's arguments (computed by the driver).
    """

    task_id: str
    name: str
    function: FunctionId
    args_digest: bytes


def certificate_fields(
    record: VerdictRecord, meta: CallMeta, tolerance: str, keys: Mapping[str, bytes]
) -> dict[str, Any]:
    """The certificate body of an accepted record (everything but the signatures)."""
    rep = record.accepted
    if rep is None or rep.attestation is None:
        raise ValueError("only accepted records have certificates")
    agreeing = tuple(j.attestation for j in record.agreeing if j.attestation is not None)
    dissenting = tuple(
        Dissent(j.executor_id, j.label.value, j.reason, j.attestation) for j in record.dissenting
    )
    named = sorted({a.executor_id for a in agreeing} | {d.executor_id for d in dissenting})
    return dict(
        task_id=meta.task_id,
        function=meta.function,
        args_digest=meta.args_digest,
        kind=rep.attestation.kind,
        digest=rep.digest,
        tolerance=tolerance,
        quorum=record.needed,
        compared=record.compared,
        representative=rep.executor_id,
        tiebreak=record.tiebreak,
        agreeing=agreeing,
        dissenting=dissenting,
        executor_keys=tuple((eid, keys[eid]) for eid in named if eid in keys),
    )


def accepted_result(record: VerdictRecord) -> Any:
    """What an accepted record means for the caller: the value, or the raised exception.

    Returns:
        A :class:`~bft_ray.compare.wire.WireValue` of the certified bytes: whoever unpickles it
        (the caller, a downstream task) gets the value decoded from exactly those bytes.

    Raises:
        The exception the replicas agree user code raised.
    """
    rep = record.accepted
    assert rep is not None and rep.canonical is not None
    if rep.status is Status.ERROR:
        raise user_exception(rep.canonical, rep.executor_id, rep.note)
    return WireValue(rep.canonical.wire)


def _resolve(type_name: str) -> type | None:
    module, _, qual = type_name.rpartition(".")
    obj: Any = builtins if module == "builtins" else sys.modules.get(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, BftRayError):
        return obj
    return None


def user_exception(canonical: Any, executor_id: str, note: str = "") -> BaseException:
    """Rebuild an agreed exception record as an exception to raise.

    The type is looked up among modules already imported here (never imported on the say-so
    of an executor); a type that cannot be found or built from its message becomes a
    :class:`~bft_ray.errors.UserCodeError`. The representative's traceback is attached as a
    note, marked as reported by that executor (tracebacks are not compared).
    """
    parsed = error_record(canonical)
    type_name, message = parsed if parsed else ("Exception", "<malformed error record>")
    exc: BaseException | None = None
    cls = _resolve(type_name)
    if cls is not None:
        try:
            exc = cls(message)
        except Exception:
            exc = None
    if exc is None:
        exc = UserCodeError(f"{type_name}: {message}", type=type_name)
    if note:
        exc.add_note(reported_traceback(note, executor_id))
    return exc


_MAX_TRACEBACK = 8_000


def reported_traceback(note: str, executor_id: str) -> str:
    """An executor's traceback text made safe to print, and labelled as unverified.

    The text comes from an untrusted executor: control characters (terminal escapes) are
    replaced and the length is bounded, so it cannot rewrite the caller's terminal or flood it.
    """
    clean = "".join(c if c in "\n\t" or (c.isprintable()) else "?" for c in note[:_MAX_TRACEBACK])
    if len(note) > _MAX_TRACEBACK:
        clean += "\n... (truncated)"
    return (
        f"{clean.rstrip()}\n(traceback reported by executor {executor_id}: the replicas agree on "
        "the exception's type and message; the traceback itself is not verified)"
    )
