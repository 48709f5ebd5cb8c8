"""Signed attestations: an executor's claim "for task T, attempt A, from slot S, my answer has digest D".

The attestation is what makes a penalty evidence-backed: an executor that returned a wrong
output signed its digest, so anyone holding the certificate can check who said what. Every
field is covered by the signature, the public key included, under the domain tag
``bft-ray/attestation/v2``:

``task_id``, ``attempt``, ``executor_id``, ``slot``, ``kind``, ``digest``, ``public_key``.

An executor answering a batch of replicas in one Ray call signs once for the batch
(:meth:`Attestation.create_batch`): those same signed bytes are the leaves of a Merkle tree
(:mod:`bft_ray.merkle`), the executor signs the root under ``bft-ray/attestation-batch/v1``, and
each attestation carries its leaf's ``position``, a random ``salt`` and its sibling ``path``; the
leaf binds the position and salt with the record, so a batch that repeats a record still has one
valid position per leaf, and a path's sibling hashes reveal nothing about the batch's other
answers (without their salts, a guessed output cannot be checked against them). Checking one climbs the
path (a few blake3 hashes) and checks the root's signature, which is cached per
``(key, root, signature)``: the batch's other attestations then cost no signature check.

Checking never raises: :meth:`Attestation.verify` answers ``False`` for a forged, re-labelled
or malformed attestation (wrong types, wrong lengths, an unknown kind).

Example:
    >>> from bft_ray.crypto import SigningKey
    >>> key = SigningKey.generate()
    >>> att = Attestation.create(key, "task-1", 0, "ex0", "slot0", "value", b"\\x00" * 32)
    >>> att.verify(), att.verify(expected_key=SigningKey.generate().public_bytes)
    (True, False)
    >>> import dataclasses
    >>> dataclasses.replace(att, executor_id="ex1").verify()   # every field is signed
    False
    >>> Attestation.from_dict(att.to_dict()) == att
    True
    >>> batch = Attestation.create_batch(key, [("t2", 0, "ex0", "slot0", "value", b"\x01" * 32),
    ...                                        ("t3", 0, "ex0", "slot0", "error", b"\x02" * 32)])
    >>> [a.verify() for a in batch], batch[0].signature == batch[1].signature
    ([True, True], True)
    >>> dataclasses.replace(batch[1], task_id="t2").verify()   # each leaf is bound to the root
    False
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Sequence
from typing import Any

import bft_ray.merkle as merkle
from bft_ray.crypto import SigningKey, encode_fields, verify_signature

__all__ = ["KINDS", "Attestation"]

_DOMAIN = b"bft-ray/attestation/v2"
_BATCH_DOMAIN = b"bft-ray/attestation-batch/v1"  # what a batch's signature covers: key and root
_PROOF_DOMAIN = b"bft-ray/attestation-proof/v1"  # a batched attestation's record, for digests
_LEAF_DOMAIN = b"bft-ray/attestation-leaf/v1"  # a batched record's leaf: position, salt, record
_BATCH_FIELDS = ("position", "salt", "path")  # in to_dict only for a batched attestation
SALT_BYTES = 16
KINDS = ("value", "error")
_TEXT = ("task_id", "executor_id", "slot", "kind")
_BYTES = {"digest": 32, "public_key": 32, "signature": 64}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


@dataclasses.dataclass(frozen=True)
class Attestation:
    """An executor's signed claim about its answer.

    Construct one with :meth:`create` (which signs); the constructor itself accepts anything, so
    that a received, possibly malformed attestation can be represented and then rejected by
    :meth:`verify`.

    Attributes:
        task_id: Task the answer is for.
        attempt: Dispatch attempt (replicas added by escalation use higher attempts).
        executor_id: Executor incarnation that produced it.
        slot: The executor's slot (a GPU of a node); a respawn keeps it.
        kind: ``"value"`` (the digest is of a returned value) or ``"error"`` (of the record of
            an exception user code raised).
        digest: blake3 digest of the canonical answer bytes (32 bytes).
        public_key: Executor's Ed25519 public key (raw 32 bytes).
        signature: Ed25519 signature (64 bytes) over every field above, or, for a batched
            attestation, over the key and the Merkle root of the batch's records.
        position: A batched attestation's leaf index in its batch (0 otherwise).
        salt: A batched attestation's random 16 bytes, hashed into its leaf (empty otherwise).
        path: A batched attestation's sibling hashes, leaf to root (empty otherwise).
    """

    task_id: str
    attempt: int
    executor_id: str
    slot: str
    kind: str
    digest: bytes
    public_key: bytes
    signature: bytes
    position: int = 0
    salt: bytes = b""
    path: tuple[bytes, ...] = ()

    def message(self) -> bytes:
        """The attested record (domain-separated, length-prefixed fields).

        A single attestation's signature covers these bytes; a batched one's covers the root
        of the tree whose leaf they are.
        """
        return _message(
            self.task_id,
            self.attempt,
            self.executor_id,
            self.slot,
            self.kind,
            self.digest,
            self.public_key,
        )

    @classmethod
    def create(
        cls,
        key: SigningKey,
        task_id: str,
        attempt: int,
        executor_id: str,
        slot: str,
        kind: str,
        digest: bytes,
    ) -> Attestation:
        """Sign a claim with ``key`` (runs inside the executor).

        Raises:
            ValueError: For fields that could never verify (an unknown kind, a digest that is
                not 32 bytes, non-text ids, an attempt outside 64-bit range).
        """
        fields = cls._checked(key, (task_id, attempt, executor_id, slot, kind, digest))
        return cls(*fields, key.sign(_message(*fields)))

    @classmethod
    def create_batch(
        cls, key: SigningKey, records: Sequence[tuple[str, int, str, str, str, bytes]]
    ) -> list[Attestation]:
        """Sign several claims with one signature (runs inside the executor).

        ``records`` are ``(task_id, attempt, executor_id, slot, kind, digest)``. A batch of one
        is signed as a single attestation; an empty one gives an empty list.

        Raises:
            ValueError: As :meth:`create`, for any record.
        """
        if len(records) <= 1:
            return [cls.create(key, *r) for r in records]
        atts = [cls._checked(key, r) for r in records]
        salts = [os.urandom(SALT_BYTES) for _ in atts]
        root, paths = merkle.merkle_paths(
            [_leaf(i, salt, _message(*f)) for i, (f, salt) in enumerate(zip(atts, salts))]
        )
        signature = key.sign(_root_message(key.public_bytes, root))
        return [
            cls(*f, signature, i, salt, p) for i, (f, salt, p) in enumerate(zip(atts, salts, paths))
        ]

    @classmethod
    def _checked(cls, key: SigningKey, record: tuple) -> tuple:
        """``record`` and the key's public bytes as an attestation's signed fields, checked."""
        task_id, attempt, executor_id, slot, kind, digest = record
        digest = bytes(digest) if isinstance(digest, (bytearray, memoryview)) else digest
        fields = (task_id, attempt, executor_id, slot, kind, digest, key.public_bytes)
        if not cls(*fields, bytes(64)).well_formed():
            raise ValueError(
                "an attestation needs text task_id/executor_id/slot, an integer attempt, "
                f"kind in {KINDS} and a 32-byte digest"
            )
        return fields

    @property
    def batched(self) -> bool:
        """Whether the signature covers a batch's root (the attestation carries a path)."""
        return bool(self.path)

    def signed_record(self) -> bytes:
        """What identifies this attestation in a digest over it, with :attr:`signature`.

        A single attestation's record is :meth:`message`; a batched one's adds its position,
        salt and path under its own domain tag, so the two kinds never read alike.
        """
        if not self.path:
            return self.message()
        return encode_fields(
            _PROOF_DOMAIN, self.message(), self.position, self.salt, b"".join(self.path)
        )

    def well_formed(self) -> bool:
        """Whether every field has its exact type and size, and the kind is known (never raises)."""
        try:
            return (
                type(self) is Attestation
                and all(type(getattr(self, f)) is str for f in _TEXT)
                and type(self.attempt) is int
                and _INT64[0] <= self.attempt <= _INT64[1]
                and self.kind in KINDS
                and all(
                    type(getattr(self, f)) is bytes and len(getattr(self, f)) == n
                    for f, n in _BYTES.items()
                )
                and type(self.position) is int
                and type(self.path) is tuple
                and len(self.path) <= merkle.MAX_DEPTH
                and all(type(h) is bytes and len(h) == 32 for h in self.path)
                and 0 <= self.position < (1 << len(self.path))
                and type(self.salt) is bytes
                and len(self.salt) == (SALT_BYTES if self.path else 0)
            )
        except Exception:
            return False

    def verify(self, expected_key: bytes | None = None) -> bool:
        """Check the signature (and that it was made by ``expected_key`` when given).

        Never raises: a malformed attestation is simply not valid.
        """
        try:
            if not self.well_formed():
                return False
            if expected_key is not None and (
                not isinstance(expected_key, (bytes, bytearray, memoryview))
                or bytes(expected_key) != self.public_key
            ):
                return False
            if not self.path:
                return verify_signature(self.public_key, self.message(), self.signature)
            leaf = _leaf(self.position, self.salt, self.message())
            root = merkle.climb(leaf, self.position, self.path)
            return _root_signed(self.public_key, root, self.signature)
        except Exception:
            return False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (bytes as lowercase hex)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _BATCH_FIELDS:
                continue
            v = getattr(self, f.name)
            out[f.name] = v.hex() if isinstance(v, bytes) else v
        if self.path:
            out["position"] = self.position
            out["salt"] = self.salt.hex()
            out["path"] = [h.hex() for h in self.path]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Attestation:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            ValueError: For missing, extra or mistyped fields, hex that is not lowercase and
                even-length, wrong lengths or an unknown kind.
        """
        names = [f.name for f in dataclasses.fields(cls) if f.name not in _BATCH_FIELDS]
        batched = type(data) is dict and set(data) == {*names, *_BATCH_FIELDS}
        if type(data) is not dict or (set(data) != set(names) and not batched):
            raise ValueError(
                f"an attestation needs exactly the fields {names} (and {list(_BATCH_FIELDS)} "
                "for a batched one)"
            )
        kw: dict[str, Any] = {}
        if batched:
            pos, salt, path = data["position"], data["salt"], data["path"]
            if type(pos) is not int or type(path) is not list or not path:
                raise ValueError("a batched attestation needs an integer position, a list path")
            if len(path) > merkle.MAX_DEPTH:  # before decoding it: a lie can be long
                raise ValueError(f"an attestation path has at most {merkle.MAX_DEPTH} entries")
            if not all(type(h) is str and _HEX.fullmatch(h) for h in [salt, *path]):
                raise ValueError("attestation salt and path entries must be lowercase hex text")
            kw["position"], kw["salt"] = pos, bytes.fromhex(salt)
            kw["path"] = tuple(bytes.fromhex(h) for h in path)
        for name in names:
            v = data[name]
            if name in _BYTES:
                if type(v) is not str or not _HEX.fullmatch(v):
                    raise ValueError(f"attestation field {name} must be lowercase hex text")
                kw[name] = bytes.fromhex(v)
            elif name == "attempt":
                if type(v) is not int:
                    raise ValueError("attestation field attempt must be an integer")
                kw[name] = v
            else:
                if type(v) is not str:
                    raise ValueError(f"attestation field {name} must be text")
                kw[name] = v
        att = cls(**kw)
        if not att.well_formed():
            raise ValueError(
                f"attestation fields out of range (kind in {KINDS}, sizes {_BYTES}, 64-bit "
                f"attempt, a path of at most {merkle.MAX_DEPTH} 32-byte hashes and a position "
                "within it)"
            )
        return att


def _leaf(position: int, salt: bytes, message: bytes) -> bytes:
    return merkle.leaf_hash(encode_fields(_LEAF_DOMAIN, position, salt, message))


def _root_message(public_key: bytes, root: bytes) -> bytes:
    return encode_fields(_BATCH_DOMAIN, public_key, root)


@functools.lru_cache(maxsize=1024)
def _root_signed(public_key: bytes, root: bytes, signature: bytes) -> bool:
    # A pure function of its arguments, so caching it is sound: the batch's first attestation
    # pays the signature check, its siblings (and a recheck of any of them) hit the cache.
    return verify_signature(public_key, _root_message(public_key, root), signature)


def _message(
    task_id: str,
    attempt: int,
    executor_id: str,
    slot: str,
    kind: str,
    digest: bytes,
    public_key: bytes,
) -> bytes:
    return encode_fields(_DOMAIN, task_id, attempt, executor_id, slot, kind, digest, public_key)
