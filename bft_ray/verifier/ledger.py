"""The durable SQLite ledger of one BFT verifier: consensus state and hash-chained verdicts.

One file per verifier. It does two jobs:

* **Consensus persistence** (the ``Ready`` contract of :class:`~bft_ray.consensus.node.Node`,
  like :class:`~bft_ray.consensus.storage.MemoryStore` but durable): :meth:`Ledger.persist`
  writes the safety data, the new blocks and the highest QC / TC in one transaction that is on
  disk (``PRAGMA synchronous=FULL``) before it returns, so the messages of the same ``Ready``
  are only sent once what they commit this verifier to survives a crash. Every persisted
  safety state is also appended to ``safety_history``. :meth:`Ledger.recovery` rebuilds a
  :class:`~bft_ray.consensus.storage.RecoveryState` from the file.
* **The verdict log**: :meth:`Ledger.append` stores each committed block, in commit order,
  with its commit proof and the verdict rows the application derived from it, in one atomic
  transaction. Rows are hash-chained and each row hash is signed by the verifier's key, so
  :func:`bft_ray.verifier.audit.audit` can check a copy of the file offline.

Tables (all bytes are stored as BLOBs)::

    meta(key, value)            format, index, validators (JSON hex list), f, chain_id (hex),
                                commit_rule, owner_key (hex): checked on every reopen
    safety(id = 0, data)        latest SafetyData.encode()
    safety_history(seq, data)   every persisted SafetyData, in order
    pending(id, round, block)   stored, not yet committed blocks (Ready.blocks)
    certs(kind, round, cert)    highest QC ('qc') and TC ('tc')
    blocks(height, id, round, block, head_id, proof, verdicts_digest, prev_hash, row_hash,
           signature)           committed blocks, heights 1, 2, ... in commit order
    verdicts(height, entry, task_id, outcome, digest, judgements, row_hash)

Hashes (blake3 over :func:`~bft_ray.crypto.encode_fields`, each under its own domain tag):

* ``verdict row hash = H(height, entry, task_id, outcome, digest, judgements JSON)``;
* ``verdicts_digest = H(verdict row hashes in entry order)``;
* ``row_hash = H(prev_hash, height, block bytes, head_id, proof bytes, verdicts_digest)``,
  where ``prev_hash`` of height 1 is :func:`root_hash` of the meta data;
* ``signature = Sign(owner key, (validators.domain, index, row_hash))``.

Example:
    >>> import tempfile, pathlib
    >>> from bft_ray.consensus.crypto import ValidatorSet
    >>> from bft_ray.consensus.types import genesis_block
    >>> key = SigningKey.generate()
    >>> vs = ValidatorSet((key.public_bytes, b"k1" * 16, b"k2" * 16, b"k3" * 16))
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "verifier-0.sqlite"
    >>> ledger = Ledger(path, index=0, validators=vs, signing_key=key)
    >>> ledger.committed_height, ledger.last_committed_id == genesis_block().id
    (0, True)
    >>> ledger.recovery().safety.last_voted_round
    0
    >>> ledger.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from bft_ray.consensus.blocktree import CommittedBlock, verify_commit_proof
from bft_ray.consensus.config import CommitRule
from bft_ray.consensus.crypto import ValidatorSet
from bft_ray.consensus.encoding import Reader, blob, u32
from bft_ray.consensus.errors import DecodeError
from bft_ray.consensus.safety import SafetyData, decode_safety_data
from bft_ray.consensus.storage import RecoveryState
from bft_ray.consensus.types import (
    Block,
    QuorumCert,
    TimeoutCert,
    decode_block,
    decode_qc,
    decode_tc,
    genesis_block,
)
from bft_ray.crypto import SigningKey, encode_fields
from bft_ray.errors import BftRayError
from bft_ray.executor.attestation import Attestation
from bft_ray.verifier.claims import ClaimError, SignedClaim, decode_entry, decode_payload

if TYPE_CHECKING:
    from bft_ray.consensus.node import Ready

__all__ = [
    "FORMAT",
    "OUTCOMES",
    "Ledger",
    "LedgerError",
    "LedgerMeta",
    "VerdictRow",
    "check_verdict_row",
    "decode_proof",
    "encode_proof",
    "judgements_json",
    "ledger_path",
    "root_hash",
    "row_hash",
    "row_signing_bytes",
    "verdict_row_hash",
    "verdicts_digest",
]

logger = logging.getLogger(__name__)

#: Ledger file format written and read by this code.
FORMAT = "bft-ray-ledger/1"
#: The outcomes a verdict row may record.
OUTCOMES = ("accepted", "failed")

_APPLICATION_ID = 0x62667472  # "bftr": marks the SQLite file as a bft-ray ledger
_ROOT_DOMAIN = b"bft-ray/ledger/root/v1"
_ROW_DOMAIN = b"bft-ray/ledger/row/v1"
_SIG_DOMAIN = b"bft-ray/ledger/row-signature/v1"
_VERDICT_DOMAIN = b"bft-ray/ledger/verdict/v1"
_VERDICTS_DOMAIN = b"bft-ray/ledger/verdicts/v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS safety (id INTEGER PRIMARY KEY CHECK (id = 0), data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS safety_history (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    id BLOB PRIMARY KEY, round INTEGER NOT NULL, block BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS certs (
    kind TEXT PRIMARY KEY CHECK (kind IN ('qc', 'tc')), round INTEGER NOT NULL,
    cert BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, round INTEGER NOT NULL,
    block BLOB NOT NULL, head_id BLOB NOT NULL, proof BLOB NOT NULL,
    verdicts_digest BLOB NOT NULL, prev_hash BLOB NOT NULL, row_hash BLOB NOT NULL,
    signature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    height INTEGER NOT NULL, entry INTEGER NOT NULL, task_id TEXT NOT NULL,
    outcome TEXT NOT NULL, digest BLOB NOT NULL, judgements TEXT NOT NULL,
    row_hash BLOB NOT NULL, PRIMARY KEY (height, entry));
CREATE INDEX IF NOT EXISTS verdicts_by_task ON verdicts (task_id, height, entry);
"""


class LedgerError(BftRayError):
    """A ledger file cannot be opened or written as asked (wrong owner, corrupt, misuse)."""


Judgement = tuple[str, str, str, "dict[str, Any] | None"]


@dataclasses.dataclass(frozen=True)
class VerdictRow:
    """One task's verdict, as derived from one entry of a committed block.

    Attributes:
        task_id: The call.
        entry: Index of the task's claim among ``decode_payload(block.payload)``.
        outcome: ``"accepted"`` or ``"failed"``.
        digest: The accepted answer's digest (32 bytes), or ``b""`` for ``failed``.
        judgements: ``(executor_id, label, reason, Attestation.to_dict() or None)`` per replica.
    """

    task_id: str
    entry: int
    outcome: str
    digest: bytes
    judgements: tuple[tuple[str, str, str, dict | None], ...] = ()


@dataclasses.dataclass(frozen=True)
class LedgerMeta:
    """The identity of a ledger file: whose it is and which replica group it belongs to.

    Attributes:
        format: File format (:data:`FORMAT`).
        index: The owning verifier's replica index.
        validator_keys: The replica set's public keys.
        f: Byzantine faults tolerated.
        chain_id: The replica group's chain id.
        commit_rule: The commit rule the group runs.
        owner_key: The owning verifier's public key (``validator_keys[index]``).
    """

    format: str
    index: int
    validator_keys: tuple[bytes, ...]
    f: int
    chain_id: bytes
    commit_rule: CommitRule
    owner_key: bytes

    def to_rows(self) -> dict[str, str]:
        """The ``meta`` table's rows."""
        return {
            "format": self.format,
            "index": str(self.index),
            "validators": json.dumps([k.hex() for k in self.validator_keys]),
            "f": str(self.f),
            "chain_id": self.chain_id.hex(),
            "commit_rule": self.commit_rule.value,
            "owner_key": self.owner_key.hex(),
        }

    @classmethod
    def from_rows(cls, rows: dict[str, str]) -> LedgerMeta:
        """Strictly parse the ``meta`` table.

        Raises:
            ValueError: If a key is missing or extra, or a value is malformed.
        """
        want = {"format", "index", "validators", "f", "chain_id", "commit_rule", "owner_key"}
        if set(rows) != want:
            missing, extra = sorted(want - set(rows)), sorted(set(rows) - want)
            raise ValueError(f"meta keys: missing {missing}, unexpected {extra}")
        keys = json.loads(rows["validators"])
        if type(keys) is not list or not all(type(k) is str for k in keys):
            raise ValueError("meta validators: expected a JSON list of hex keys")
        index, f = rows["index"], rows["f"]
        if not (index.isdigit() and f.isdigit()):
            raise ValueError("meta index and f must be non-negative integers")
        return cls(
            format=rows["format"],
            index=int(index),
            validator_keys=tuple(bytes.fromhex(k) for k in keys),
            f=int(f),
            chain_id=bytes.fromhex(rows["chain_id"]),
            commit_rule=CommitRule(rows["commit_rule"]),
            owner_key=bytes.fromhex(rows["owner_key"]),
        )

    @classmethod
    def of(
        cls, index: int, validators: ValidatorSet, owner_key: bytes, commit_rule: CommitRule
    ) -> LedgerMeta:
        """The meta data of verifier ``index`` of ``validators``."""
        return cls(
            FORMAT,
            index,
            tuple(bytes(k) for k in validators.public_keys),
            validators.f,
            validators.chain_id,
            CommitRule(commit_rule),
            bytes(owner_key),
        )

    def validators(self) -> ValidatorSet:
        """The replica set this meta data names."""
        return ValidatorSet(self.validator_keys, f=self.f, chain_id=self.chain_id)

    def describe(self) -> str:
        """One line for error messages."""
        keys = ", ".join(k.hex()[:12] + "…" for k in self.validator_keys)
        return (
            f"verifier {self.index} of chain {self.chain_id!r} (f={self.f}, "
            f"{self.commit_rule.value}, validator keys [{keys}], owner key "
            f"{self.owner_key.hex()[:12]}…)"
        )


# -- the hash chain and its encodings (shared with the auditor) ----------------------------


def _h(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def root_hash(meta: LedgerMeta) -> bytes:
    """``prev_hash`` of height 1: binds the whole chain to the ledger's meta data."""
    return _h(
        encode_fields(
            _ROOT_DOMAIN,
            meta.format,
            meta.index,
            meta.f,
            meta.chain_id,
            meta.commit_rule.value,
            meta.owner_key,
            len(meta.validator_keys),
            *meta.validator_keys,
        )
    )


def encode_proof(proof: Sequence[QuorumCert]) -> bytes:
    """Canonical bytes of a commit proof: a count, then each QC's encoding length-prefixed."""
    return u32(len(proof)) + b"".join(blob(qc.encode()) for qc in proof)


def decode_proof(data: bytes) -> tuple[QuorumCert, ...]:
    """Inverse of :func:`encode_proof`.

    Raises:
        DecodeError: If ``data`` is not a canonical proof encoding.
    """
    r = Reader(data)
    k = r.count(4)
    out = tuple(decode_qc(r.blob()) for _ in range(k))
    r.finish()
    return out


def judgements_json(judgements: Sequence[Sequence[Any]]) -> str:
    """Canonical JSON text of a verdict row's judgements (sorted keys, no spaces, ASCII)."""
    return json.dumps(
        [list(j) for j in judgements],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )


def verdict_row_hash(
    height: int, entry: int, task_id: str, outcome: str, digest: bytes, judgements: str
) -> bytes:
    """Hash of one stored verdict row (``judgements`` is its canonical JSON text)."""
    return _h(encode_fields(_VERDICT_DOMAIN, height, entry, task_id, outcome, digest, judgements))


def verdicts_digest(row_hashes: Sequence[bytes]) -> bytes:
    """Digest of a block's verdict rows (their hashes in entry order)."""
    return _h(encode_fields(_VERDICTS_DOMAIN, len(row_hashes), *row_hashes))


def row_hash(
    prev_hash: bytes,
    height: int,
    block_bytes: bytes,
    head_id: bytes,
    proof_bytes: bytes,
    verdicts: bytes,
) -> bytes:
    """Hash of one committed-block row, chained to the previous row's hash."""
    return _h(
        encode_fields(_ROW_DOMAIN, prev_hash, height, block_bytes, head_id, proof_bytes, verdicts)
    )


def row_signing_bytes(domain: bytes, index: int, row: bytes) -> bytes:
    """What the ledger owner signs for a row (``domain`` is ``ValidatorSet.domain``)."""
    return encode_fields(_SIG_DOMAIN, domain, index, row)


def check_verdict_row(row: VerdictRow, entries: Sequence[bytes], *, signatures: bool = True) -> str:
    """Why ``row`` is not a valid verdict for its entry of a block, or ``""`` if it is.

    Args:
        row: The verdict row.
        entries: ``decode_payload(block.payload)`` of its block.
        signatures: Also verify the attestations' signatures.
    """
    if type(row.task_id) is not str or type(row.entry) is not int:
        return "task_id must be text and entry an integer"
    if not 0 <= row.entry < len(entries):
        return f"entry {row.entry} is outside the block's {len(entries)} payload entries"
    try:
        sc = decode_entry(entries[row.entry])
    except ClaimError as e:
        return f"payload entry {row.entry} is not a signed claim: {e}"
    if not isinstance(sc, SignedClaim):
        return f"payload entry {row.entry} is an operator record, not a signed claim"
    if sc.task_id != row.task_id:
        return f"payload entry {row.entry} is a claim for task {sc.task_id!r}, not {row.task_id!r}"
    if row.outcome not in OUTCOMES:
        return f"outcome {row.outcome!r} is not one of {OUTCOMES}"
    if type(row.digest) is not bytes:
        return "digest must be bytes"
    if row.outcome == "accepted" and len(row.digest) != 32:
        return "an accepted verdict needs a 32-byte digest"
    if row.outcome == "failed" and row.digest:
        return "a failed verdict has no digest"
    for k, j in enumerate(row.judgements):
        if (
            not isinstance(j, (tuple, list))
            or len(j) != 4
            or not all(type(x) is str for x in j[:3])
            or not (j[3] is None or type(j[3]) is dict)
        ):
            return f"judgement {k} is not (executor_id, label, reason, attestation dict or None)"
        if j[3] is None:
            continue
        try:
            att = Attestation.from_dict(j[3])
        except ValueError as e:
            return f"judgement {k} ({j[0]}): malformed attestation: {e}"
        if att.task_id != row.task_id:
            return f"judgement {k} ({j[0]}): attestation is for task {att.task_id!r}"
        if signatures and not att.verify():
            return f"judgement {k} ({j[0]}): attestation signature does not verify"
    # The row must say what the committed claim says: a ledger's owner could otherwise record
    # a failed call as accepted, with a digest of its choice, or an honest executor as flagged.
    want = row_of_claim(row.entry, sc)
    if row.outcome != want.outcome:
        return f"outcome {row.outcome!r} is not the committed claim's ({want.outcome!r})"
    if row.digest != want.digest:
        return "digest is not the committed claim's"
    try:
        same = judgements_json(row.judgements) == judgements_json(want.judgements)
    except (TypeError, ValueError):
        same = False
    if not same:
        return "judgements are not the committed claim's"
    return ""


def row_of_claim(entry: int, sc: SignedClaim) -> VerdictRow:
    """The verdict row a verifier records for the signed claim at ``entry`` of a block."""
    claim = sc.claim
    return VerdictRow(
        task_id=claim.task_id,
        entry=entry,
        outcome="accepted" if claim.step == "accept" else "failed",
        digest=claim.digest,
        judgements=tuple(
            (
                j.executor_id,
                j.label,
                j.reason,
                None if j.attestation is None else j.attestation.to_dict(),
            )
            for j in claim.judgements
        ),
    )


def ledger_path(directory: str | Path, index: int) -> Path:
    """Conventional file of verifier ``index`` in ``directory`` (``verifier-<index>.sqlite``)."""
    return Path(directory) / f"verifier-{index}.sqlite"


# -- the ledger ----------------------------------------------------------------------------


class Ledger:
    """The SQLite ledger of one BFT verifier (see the module docstring).

    Args:
        path: The ledger file; created if missing, otherwise reopened.
        index: This verifier's replica index.
        validators: The replica set.
        signing_key: This verifier's key; its public key must be
            ``validators.public_keys[index]``.
        commit_rule: The commit rule the group runs.

    Raises:
        LedgerError: If the file belongs to another verifier, replica group, commit rule or
            format, or is not a ledger, or the key is not this verifier's.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        index: int,
        validators: ValidatorSet,
        signing_key: SigningKey,
        commit_rule: CommitRule = CommitRule.TWO_CHAIN,
        check_signatures: bool = True,
    ) -> None:
        self.path = Path(path)
        # The verifier group rechecks every attestation before voting; it passes False to
        # skip verifying them a second time on append (the audit always verifies them).
        self.check_signatures = check_signatures
        self._batch_depth = 0
        if not 0 <= index < validators.n:
            raise LedgerError(f"index {index} is not a replica of a set of {validators.n}")
        if signing_key.public_bytes != bytes(validators.public_keys[index]):
            raise LedgerError(
                f"the signing key ({signing_key.public_bytes.hex()[:12]}…) is not verifier "
                f"{index}'s key in the validator set "
                f"({bytes(validators.public_keys[index]).hex()[:12]}…): pass this verifier's "
                "consensus key"
            )
        self.index = index
        self.validators = validators
        self.commit_rule = CommitRule(commit_rule)
        self._key = signing_key
        self._domain = validators.domain
        self.meta = LedgerMeta.of(index, validators, signing_key.public_bytes, commit_rule)
        self._root = root_hash(self.meta)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._open()
        except sqlite3.DatabaseError as e:
            self._abandon()
            raise LedgerError(f"{self.path} is not a usable ledger file: {e}") from e
        except LedgerError:
            self._abandon()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _abandon(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> None:
        c = self._conn
        assert c is not None
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables and "meta" not in tables:
                raise LedgerError(
                    f"{self.path} is an SQLite database but not a bft-ray ledger (no meta "
                    "table): pass the path of a ledger file, or a new path"
                )
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            rows = dict(c.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                c.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", self.meta.to_rows().items()
                )
                c.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                logger.info("created ledger %s for %s", self.path, self.meta.describe())
            else:
                self._check_meta(rows)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        last = c.execute(
            "SELECT height, id, round, row_hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        if last is None:
            self._height, self._last_id, self._last_round = 0, genesis_block().id, 0
            self._last_hash = self._root
        else:
            self._height, self._last_id, self._last_round, self._last_hash = (
                int(last[0]),
                bytes(last[1]),
                int(last[2]),
                bytes(last[3]),
            )
        row = c.execute("SELECT data FROM safety WHERE id = 0").fetchone()
        self._safety = self._decode_safety(row[0]) if row is not None else SafetyData()
        logger.debug("opened ledger %s at height %d", self.path, self._height)

    def _check_meta(self, rows: dict[str, str]) -> None:
        try:
            got = LedgerMeta.from_rows(rows)
        except (ValueError, TypeError) as e:
            raise LedgerError(f"{self.path}: malformed ledger meta data: {e}") from e
        if got.format != FORMAT:
            raise LedgerError(
                f"{self.path} has ledger format {got.format!r}; this code reads {FORMAT!r}"
            )
        if got != self.meta:
            diff = [
                f.name
                for f in dataclasses.fields(LedgerMeta)
                if getattr(got, f.name) != getattr(self.meta, f.name)
            ]
            raise LedgerError(
                f"{self.path} belongs to {got.describe()}, but this process is "
                f"{self.meta.describe()} (differs in: {', '.join(diff)}): open this verifier's "
                "own ledger, or move the file away to start a new one"
            )

    def _decode_safety(self, data: bytes) -> SafetyData:
        try:
            return decode_safety_data(bytes(data))
        except DecodeError as e:
            raise LedgerError(f"{self.path}: corrupt safety data: {e}") from e

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"ledger {self.path} is closed")
        return self._conn

    def _tx(self) -> Any:
        if self._batch_depth:
            return contextlib.nullcontext(self._c())  # inside batch(): one commit at its end
        return _Transaction(self._c())

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One durable transaction for several ``persist``/``append`` calls.

        The drain loop wraps a whole ``Ready`` (persist and the commits it applies) in one
        batch: one disk sync instead of several, and still durable before any message of it is
        sent (the caller sends after the batch). On an exception nothing of the batch is
        written, and this ledger object must be reopened (its cached position may be ahead).
        """
        with self._lock:
            if self._batch_depth:
                self._batch_depth += 1
                try:
                    yield
                finally:
                    self._batch_depth -= 1
                return
            with _Transaction(self._c()):
                self._batch_depth = 1
                try:
                    yield
                finally:
                    self._batch_depth = 0

    # -- the Ready contract ----------------------------------------------------------------

    def persist(self, ready: Ready) -> None:
        """Durably record ``ready.safety_state``, ``ready.blocks`` and ``ready.certificates``.

        Everything is committed to disk before this returns; only then may the caller send
        ``ready.messages``.

        Raises:
            LedgerError: If the new safety data is behind the stored one (a replica that did
                not recover from this ledger would sign twice in a round).
        """
        safety = ready.safety_state
        if safety is None and not ready.blocks and not ready.certificates:
            return
        with self._lock, self._tx() as c:
            if safety is not None:
                if not safety.dominates(self._safety):
                    raise LedgerError(
                        f"{self.path}: refusing to persist safety data {safety} behind the "
                        f"stored {self._safety}: rebuild the node from ledger.recovery()"
                    )
                enc = safety.encode()
                c.execute("INSERT OR REPLACE INTO safety (id, data) VALUES (0, ?)", (enc,))
                c.execute("INSERT INTO safety_history (data) VALUES (?)", (enc,))
            if ready.blocks:
                c.executemany(
                    "INSERT OR IGNORE INTO pending (id, round, block) VALUES (?, ?, ?)",
                    [(b.id, b.round, b.encode()) for b in ready.blocks],
                )
            for cert in ready.certificates:
                if isinstance(cert, QuorumCert):
                    kind, rnd = "qc", cert.data.round
                else:
                    kind, rnd = "tc", cert.round
                c.execute(
                    "INSERT INTO certs (kind, round, cert) VALUES (?, ?, ?) "
                    "ON CONFLICT (kind) DO UPDATE SET round = excluded.round, cert = excluded.cert "
                    "WHERE excluded.round > certs.round",
                    (kind, rnd, cert.encode()),
                )
        if safety is not None:
            self._safety = safety

    def append(self, committed: CommittedBlock, verdicts: Sequence[VerdictRow]) -> None:
        """Append one committed block (in commit order) and its verdict rows, atomically.

        A block already in the ledger is a no-op (a restarted node re-emits its last commits).
        Stored uncommitted blocks of rounds below the block's are dropped.

        Raises:
            LedgerError: If the block does not extend the last committed block, its commit
                proof does not name its head, or a verdict row does not match its entry.
        """
        block = committed.block
        bid = block.id
        with self._lock:
            c = self._c()
            if c.execute("SELECT 1 FROM blocks WHERE id = ?", (bid,)).fetchone() is not None:
                logger.debug("ledger %s: block %s already appended", self.path, bid.hex()[:12])
                return
            if block.parent_id != self._last_id:
                raise LedgerError(
                    f"{self.path}: committed block {bid.hex()[:12]} (round {block.round}) does "
                    f"not extend the last committed block {self._last_id.hex()[:12]} (height "
                    f"{self._height}): append committed blocks in commit order"
                )
            if block.round <= self._last_round:
                raise LedgerError(
                    f"{self.path}: committed block round {block.round} is not above the last "
                    f"committed round {self._last_round}"
                )
            self._check_proof(committed)
            try:
                entries = decode_payload(block.payload)
            except ClaimError as e:
                if verdicts:
                    raise LedgerError(
                        f"{self.path}: block {bid.hex()[:12]} has verdict rows but its payload "
                        f"is not a list of claims: {e}"
                    ) from e
                entries = []
            rows = sorted(verdicts, key=lambda v: v.entry)
            seen: set[int] = set()
            height = self._height + 1
            stored = []
            for v in rows:
                why = check_verdict_row(v, entries, signatures=self.check_signatures)
                if why:
                    raise LedgerError(f"{self.path}: verdict row for {v.task_id!r}: {why}")
                if v.entry in seen:
                    raise LedgerError(f"{self.path}: two verdict rows for entry {v.entry}")
                seen.add(v.entry)
                js = judgements_json(v.judgements)
                h = verdict_row_hash(height, v.entry, v.task_id, v.outcome, v.digest, js)
                stored.append((height, v.entry, v.task_id, v.outcome, v.digest, js, h))
            vd = verdicts_digest([s[-1] for s in stored])
            block_bytes = block.encode()
            proof_bytes = encode_proof(committed.commit_proof)
            rh = row_hash(self._last_hash, height, block_bytes, committed.head_id, proof_bytes, vd)
            sig = self._key.sign(row_signing_bytes(self._domain, self.index, rh))
            with self._tx() as tx:
                tx.execute(
                    "INSERT INTO blocks (height, id, round, block, head_id, proof, "
                    "verdicts_digest, prev_hash, row_hash, signature) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        height,
                        bid,
                        block.round,
                        block_bytes,
                        committed.head_id,
                        proof_bytes,
                        vd,
                        self._last_hash,
                        rh,
                        sig,
                    ),
                )
                tx.executemany(
                    "INSERT INTO verdicts (height, entry, task_id, outcome, digest, "
                    "judgements, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    stored,
                )
                tx.execute("DELETE FROM pending WHERE round < ?", (block.round,))
            self._height, self._last_id, self._last_round, self._last_hash = (
                height,
                bid,
                block.round,
                rh,
            )
            logger.debug(
                "ledger %s: height %d block %s round %d, %d verdicts",
                self.path,
                height,
                bid.hex()[:12],
                block.round,
                len(stored),
            )

    def _check_proof(self, committed: CommittedBlock) -> None:
        proof = committed.commit_proof
        block = committed.block
        if not proof:
            raise LedgerError(f"{self.path}: committed block without a commit proof")
        head_round = proof[0].data.parent_round
        ok = verify_commit_proof(committed.head_id, head_round, tuple(proof), self.commit_rule)
        if (
            not ok
            or head_round < block.round
            or (committed.head_id == block.id and head_round != block.round)
        ):
            raise LedgerError(
                f"{self.path}: the commit proof of block {block.id.hex()[:12]} does not commit "
                f"its head {committed.head_id.hex()[:12]} under the {self.commit_rule.value} rule"
            )

    def recovery(self) -> RecoveryState:
        """What a restarted verifier passes to ``Node(..., recovery=...)``.

        Raises:
            LedgerError: If stored consensus state does not decode.
        """
        with self._lock:
            c = self._c()
            try:
                blocks: dict[bytes, Block] = {}
                if self._height:
                    (data,) = c.execute(
                        "SELECT block FROM blocks WHERE height = ?", (self._height,)
                    ).fetchone()
                    last = decode_block(bytes(data))
                    blocks[last.id] = last
                for (data,) in c.execute(
                    "SELECT block FROM pending WHERE round >= ? ORDER BY round", (self._last_round,)
                ):
                    b = decode_block(bytes(data))
                    blocks.setdefault(b.id, b)
                certs: list[QuorumCert | TimeoutCert] = []
                for kind, data in c.execute("SELECT kind, cert FROM certs ORDER BY kind"):
                    certs.append(decode_qc(bytes(data)) if kind == "qc" else decode_tc(bytes(data)))
            except DecodeError as e:
                raise LedgerError(f"{self.path}: corrupt consensus state: {e}") from e
            return RecoveryState(
                safety=self._safety,
                blocks=tuple(blocks.values()),
                certificates=tuple(certs),
                committed_id=self._last_id,
            )

    # -- reading ---------------------------------------------------------------------------

    @property
    def committed_height(self) -> int:
        """Number of committed blocks appended (the height of the last one)."""
        return self._height

    @property
    def last_committed_id(self) -> bytes:
        """Id of the last committed block (the genesis block's id when empty)."""
        return self._last_id

    def committed(self, start_height: int = 1) -> list[tuple[int, Block]]:
        """Committed blocks from ``start_height`` on, as ``(height, block)``, in commit order."""
        with self._lock:
            rows = self._c().execute(
                "SELECT height, block FROM blocks WHERE height >= ? ORDER BY height",
                (start_height,),
            )
            return [(int(h), decode_block(bytes(b))) for h, b in rows]

    def verdict(self, task_id: str) -> VerdictRow | None:
        """The verdict of ``task_id`` (its first committed one), or None."""
        with self._lock:
            row = (
                self._c()
                .execute(
                    "SELECT task_id, entry, outcome, digest, judgements FROM verdicts "
                    "WHERE task_id = ? ORDER BY height, entry LIMIT 1",
                    (task_id,),
                )
                .fetchone()
            )
        if row is None:
            return None
        judgements = tuple(
            (j[0], j[1], j[2], j[3]) for j in json.loads(row[4])
        )  # stored canonical; audit() checks it
        return VerdictRow(row[0], int(row[1]), row[2], bytes(row[3]), judgements)

    def verdicts(self, height: int) -> list[VerdictRow]:
        """The verdict rows of the block at ``height``, in entry order."""
        with self._lock:
            rows = (
                self._c()
                .execute(
                    "SELECT task_id, entry, outcome, digest, judgements FROM verdicts "
                    "WHERE height = ? ORDER BY entry",
                    (height,),
                )
                .fetchall()
            )
        return [
            VerdictRow(
                r[0], int(r[1]), r[2], bytes(r[3]), tuple(tuple(j) for j in json.loads(r[4]))
            )
            for r in rows
        ]

    def safety_history(self) -> list[SafetyData]:
        """Every safety state persisted, oldest first."""
        with self._lock:
            rows = self._c().execute("SELECT data FROM safety_history ORDER BY seq").fetchall()
        return [self._decode_safety(r[0]) for r in rows]

    def close(self) -> None:
        """Close the file (idempotent).

        The file is left in rollback-journal mode, a single self-contained file that can be
        copied and audited read-only without ``-wal`` / ``-shm`` companions; reopening
        switches it back to WAL.
        """
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute("PRAGMA journal_mode=DELETE")
                except sqlite3.OperationalError:  # another connection (an auditor) is reading
                    logger.debug("ledger %s stays in WAL mode", self.path)
                self._conn.close()
                self._conn = None
                logger.debug("closed ledger %s", self.path)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, index={self.index}, height={self._height})"


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (durable on return), ``ROLLBACK`` on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def __enter__(self) -> sqlite3.Connection:
        self._c.execute("BEGIN IMMEDIATE")
        return self._c

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._c.execute("COMMIT")
        else:
            self._c.execute("ROLLBACK")
