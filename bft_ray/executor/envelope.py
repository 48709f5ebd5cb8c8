"""Answer envelopes: the only bytes an executor hands back for a replica.

An executor encodes its answer inside its own process: the output (or the record of the
exception user code raised) in the canonical wire format (:mod:`bft_ray.compare.wire`), plus
the fields of its signed attestation. The actor method returns these bytes, which Ray stores as
a ``RAW`` object; the trusted side reads them through the deserialisation guard
(:mod:`bft_ray.executor.guard`) and parses them with :func:`parse`, a strict parser for bytes an
attacker chose. Nothing here unpickles.

Layout (all integers little-endian)::

    b"BFTE" | u8 version | u8 kind (0 value, 1 error)
    | u32 len + task_id | i64 attempt | u32 len + executor_id | u32 len + slot
    | 32 bytes public key | 64 bytes signature
    | (version 2 only) u8 depth + u32 position + 16 bytes salt + depth x 32 bytes Merkle path
    | u32 len + note (UTF-8) | payload (canonical wire bytes) to the end

Version 1 carries a single attestation; version 2 one of a batch signed once
(:meth:`Attestation.create_batch`), built by :func:`build_batch`.

The attestation's digest is not carried: the trusted side recomputes it from the payload it
actually received and checks the signature against that, so a digest that does not match the
bytes is simply a bad signature. ``note`` is display text (an error's traceback), not part of
the digest: honest replicas' tracebacks may differ in ways that must not split a verdict.

Example:
    >>> from bft_ray.crypto import SigningKey
    >>> key = SigningKey.generate()
    >>> raw = build(key, VALUE, "t1", 0, "ex0", "slot0", payload=b"\\x00" * 8)
    >>> env = parse(raw)
    >>> env.kind, env.task_id, env.slot, bytes(env.payload)
    ('value', 't1', 'slot0', b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00')
    >>> raws = build_batch(key, [(VALUE, "t2", 0, "ex0", "slot0", b"\\x01", ""),
    ...                          (ERROR, "t3", 0, "ex0", "slot0", b"\\x02", "boom")])
    >>> [parse(r).attestation().verify() for r in raws], parse(raws[1]).note
    ([True, True], 'boom')
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

import bft_ray.merkle as merkle
from bft_ray.compare.digest import digest_wire
from bft_ray.crypto import SigningKey
from bft_ray.executor.attestation import SALT_BYTES, Attestation

__all__ = ["ERROR", "VALUE", "Envelope", "EnvelopeError", "build", "build_batch", "parse"]

VALUE = "value"
ERROR = "error"
_KINDS = (VALUE, ERROR)
_MAGIC = b"BFTE"
_VERSION = 1  # a single attestation
_BATCH_VERSION = 2  # one attestation of a batch: its Merkle position and path follow the signature
_MAX_TEXT = 1 << 20  # ids and notes: bounded, so a lie cannot make the parser allocate much
_NOTE_LIMIT = 64 * 1024


class EnvelopeError(ValueError):
    """The bytes are not a well-formed answer envelope."""


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A parsed answer envelope (nothing in it is trusted until admission checks it)."""

    kind: str
    task_id: str
    attempt: int
    executor_id: str
    slot: str
    public_key: bytes
    signature: bytes
    note: str
    payload: memoryview
    position: int = 0
    salt: bytes = b""
    path: tuple[bytes, ...] = ()

    def attestation(self) -> Attestation:
        """The attestation these fields claim, with the digest of the payload received."""
        return Attestation(
            task_id=self.task_id,
            attempt=self.attempt,
            executor_id=self.executor_id,
            slot=self.slot,
            kind=self.kind,
            digest=digest_wire(self.payload),
            public_key=self.public_key,
            signature=self.signature,
            position=self.position,
            salt=self.salt,
            path=self.path,
        )


def _text(value: str) -> bytes:
    b = value.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def build(
    key: SigningKey,
    kind: str,
    task_id: str,
    attempt: int,
    executor_id: str,
    slot: str,
    payload: bytes,
    note: str = "",
) -> bytes:
    """Sign ``payload`` and wrap it in an envelope (runs inside the executor)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, not {kind!r}")
    att = Attestation.create(key, task_id, attempt, executor_id, slot, kind, digest_wire(payload))
    return _wrap(att, payload, note)


def build_batch(
    key: SigningKey, answers: Sequence[tuple[str, str, int, str, str, bytes, str]]
) -> list[bytes]:
    """Envelopes for several answers under one signature (runs inside the executor).

    ``answers`` are ``(kind, task_id, attempt, executor_id, slot, payload, note)``; a batch of
    one is a plain :func:`build`.
    """
    for a in answers:
        if a[0] not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, not {a[0]!r}")
    atts = Attestation.create_batch(
        key, [(t, at, e, s, k, digest_wire(p)) for k, t, at, e, s, p, _ in answers]
    )
    return [_wrap(att, a[5], a[6]) for att, a in zip(atts, answers)]


def _wrap(att: Attestation, payload: bytes, note: str) -> bytes:
    parts = [
        _MAGIC,
        struct.pack("<BB", _BATCH_VERSION if att.path else _VERSION, _KINDS.index(att.kind)),
        _text(att.task_id),
        struct.pack("<q", att.attempt),
        _text(att.executor_id),
        _text(att.slot),
        att.public_key,
        att.signature,
    ]
    if att.path:
        parts += [struct.pack("<BI", len(att.path), att.position), att.salt, *att.path]
    parts.append(_text(note[:_NOTE_LIMIT]))
    return b"".join([*parts, payload])


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise EnvelopeError("envelope truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def text(self) -> str:
        (n,) = struct.unpack("<I", self.take(4))
        if n > _MAX_TEXT:
            raise EnvelopeError("envelope text field too long")
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeError("envelope text field is not UTF-8") from None


def parse(data: bytes | memoryview) -> Envelope:
    """Parse untrusted envelope bytes strictly.

    Raises:
        EnvelopeError: For anything malformed (never another exception type).
    """
    if not isinstance(data, bytes | memoryview):
        raise EnvelopeError(f"envelope must be bytes, not {type(data).__name__}")
    r = _Reader(memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data))
    if bytes(r.take(4)) != _MAGIC:
        raise EnvelopeError("not an answer envelope (bad magic)")
    version, kind = struct.unpack("<BB", r.take(2))
    if version not in (_VERSION, _BATCH_VERSION):
        raise EnvelopeError(f"unsupported envelope version {version}")
    if kind >= len(_KINDS):
        raise EnvelopeError(f"unknown answer kind {kind}")
    task_id = r.text()
    (attempt,) = struct.unpack("<q", r.take(8))
    executor_id = r.text()
    slot = r.text()
    public_key = bytes(r.take(32))
    signature = bytes(r.take(64))
    position, salt, path = 0, b"", ()
    if version == _BATCH_VERSION:
        depth, position = struct.unpack("<BI", r.take(5))
        if not 0 < depth <= merkle.MAX_DEPTH or position >= 1 << depth:
            raise EnvelopeError("envelope Merkle path out of range")
        salt = bytes(r.take(SALT_BYTES))
        path = tuple(bytes(r.take(32)) for _ in range(depth))
    note = r.text()
    payload = r.data[r.pos :]
    return Envelope(
        _KINDS[kind],
        task_id,
        attempt,
        executor_id,
        slot,
        public_key,
        signature,
        note,
        payload,
        position,
        salt,
        path,
    )
