"""Offline audit of BFT verifier ledgers (:mod:`bft_ray.verifier.ledger` files).

:func:`audit` opens a ledger file read-only and re-checks everything it claims, trusting
nothing stored in it except, when ``verifier_keys`` is given, nothing at all:

* the meta data is well formed, names a valid replica set, and (when given) its validator
  keys are exactly ``verifier_keys``;
* committed heights run 1, 2, 3, ... without gaps; each block's bytes decode and hash to its
  stored id; height 1 extends the genesis block and each block extends the previous one;
  rounds strictly increase; each block's own QC (certifying its parent) is valid;
* every QC of each commit proof is signed by ``2f + 1`` distinct validators with valid
  signatures, and the proof satisfies the commit rule for the row's head (this block or a
  later committed row);
* the hash chain recomputes from the meta data's root hash, and each row hash carries a valid
  signature of the ledger's owner (``validators.public_keys[index]``);
* each verdict row hashes to its stored hash, its entry index is within its block's payload
  and names the same task, its judgements are canonical JSON, every attestation in them is
  validly signed and for that task, and the block row binds exactly these verdict rows;
* the persisted safety history never goes back.

A ledger cut short at its end is indistinguishable from one that has not grown yet; compare
the verifiers' ledgers with :func:`audit_dir`, which also reports verifiers that disagree on a
height.

:func:`audit` never raises: a missing, corrupt or foreign file gives ``ok=False`` and the
reason. ``first_bad`` names the first bad row.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "not-a-ledger.sqlite"
    >>> _ = path.write_bytes(b"hello")
    >>> report = audit(path)
    >>> report.ok, report.first_bad.startswith("file:")
    (False, True)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bft_ray.consensus.blocktree import verify_commit_proof
from bft_ray.consensus.crypto import CertificateVerifier, Ed25519Verifier, ValidatorSet
from bft_ray.consensus.errors import DecodeError
from bft_ray.consensus.safety import SafetyData, decode_safety_data
from bft_ray.consensus.types import Block, decode_block, genesis_block
from bft_ray.crypto import verify_signature
from bft_ray.verifier.claims import ClaimError, decode_payload
from bft_ray.verifier.ledger import (
    FORMAT,
    LedgerMeta,
    VerdictRow,
    check_verdict_row,
    decode_proof,
    judgements_json,
    root_hash,
    row_hash,
    row_signing_bytes,
    verdict_row_hash,
    verdicts_digest,
)

__all__ = ["AuditReport", "audit", "audit_dir"]

logger = logging.getLogger(__name__)

_MAX_PROBLEMS = 200


@dataclasses.dataclass
class AuditReport:
    """The result of auditing one ledger file.

    Attributes:
        ok: True iff no problem was found.
        path: The audited file.
        blocks: Committed block rows read.
        verdicts: Verdict rows read.
        first_bad: The first problem (names the table and row), or None.
        problems: Every problem found, in file order (capped at 200).
    """

    ok: bool
    path: str
    blocks: int = 0
    verdicts: int = 0
    first_bad: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        """One line for a terminal: ``OK ...`` or ``FAILED ...: first_bad``."""
        if self.ok:
            return f"OK      {self.path} ({self.blocks} blocks, {self.verdicts} verdicts)"
        more = len(self.problems) - 1
        extra = f" (and {more} more problem{'s' if more != 1 else ''})" if more > 0 else ""
        return f"FAILED  {self.path}: {self.first_bad}{extra}"


class _Problems(list):
    def add(self, msg: str) -> None:
        if len(self) < _MAX_PROBLEMS:
            self.append(msg)
        elif len(self) == _MAX_PROBLEMS:
            self.append("... more problems not listed")


def audit(path: str | Path, *, verifier_keys: Sequence[bytes] | None = None) -> AuditReport:
    """Audit one ledger file (see the module docstring for what is checked).

    Args:
        path: The ledger file. It is opened read-only and never modified.
        verifier_keys: The replica set's public keys as known from outside the file; when
            given, the ledger must name exactly these keys and they are used to check every
            signature.

    Returns:
        The report; ``ok`` is False with the reason for a missing, corrupt or foreign file.
    """
    p = Path(path)
    problems = _Problems()
    counts = [0, 0]
    try:
        if not p.is_file():
            problems.add(f"file: {p} is not a file")
        else:
            uri = p.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True)
            try:
                _Auditor(conn, problems, verifier_keys).run(counts)
            finally:
                conn.close()
    except sqlite3.DatabaseError as e:
        problems.add(f"file: not a readable SQLite ledger: {e}")
    except Exception as e:  # never raise on a corrupt or foreign file
        logger.debug("audit of %s failed", p, exc_info=True)
        problems.add(f"file: audit stopped by {type(e).__name__}: {e}")
    report = AuditReport(
        ok=not problems,
        path=str(p),
        blocks=counts[0],
        verdicts=counts[1],
        first_bad=problems[0] if problems else None,
        problems=list(problems),
    )
    logger.info("audit %s: %s", p, "ok" if report.ok else report.first_bad)
    return report


def audit_dir(
    path: str | Path, *, verifier_keys: Sequence[bytes] | None = None
) -> list[AuditReport]:
    """Audit every ``*.sqlite`` ledger in a directory, and compare the ledgers with each other.

    Ledgers of the same replica group that pass on their own must agree on the block at every
    height they share; a disagreement (a fork, or a file replaced by another chain) fails both.

    Args:
        path: A directory.
        verifier_keys: As for :func:`audit`.

    Returns:
        One report per file, sorted by file name (empty if there is none).

    Raises:
        NotADirectoryError: If ``path`` is not a directory.
    """
    d = Path(path)
    if not d.is_dir():
        raise NotADirectoryError(f"{d} is not a directory")
    files = sorted(f for f in d.glob("*.sqlite") if f.is_file())
    reports = [audit(f, verifier_keys=verifier_keys) for f in files]
    _cross_check(files, reports)
    return reports


def _cross_check(files: Sequence[Path], reports: Sequence[AuditReport]) -> None:
    """Fail ledgers of one group that disagree on a committed height."""
    chains: dict[Any, list[tuple[Path, AuditReport, list[bytes]]]] = {}
    for f, r in zip(files, reports):
        if not r.ok:
            continue
        try:
            conn = sqlite3.connect(f.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                ids = [bytes(x[0]) for x in conn.execute("SELECT id FROM blocks ORDER BY height")]
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            _fail(r, f"file: cannot re-read for comparison: {e}")
            continue
        # Grouped by the keys alone: a ledger whose meta names another f or chain id is still
        # the same group's, and its blocks are compared with the others'.
        group = meta.get("validators")
        chains.setdefault(group, []).append((f, r, ids))
    for members in chains.values():
        for i, (fa, ra, a) in enumerate(members):
            for fb, rb, b in members[i + 1 :]:
                for h, (x, y) in enumerate(zip(a, b), start=1):
                    if x != y:
                        _fail(ra, f"blocks height {h}: differs from {fb.name} (fork)")
                        _fail(rb, f"blocks height {h}: differs from {fa.name} (fork)")
                        break


def _fail(report: AuditReport, msg: str) -> None:
    report.problems.append(msg)
    report.ok = False
    if report.first_bad is None:
        report.first_bad = msg


class _Auditor:
    def __init__(
        self,
        conn: sqlite3.Connection,
        problems: _Problems,
        verifier_keys: Sequence[bytes] | None,
    ) -> None:
        self.c = conn
        self.p = problems
        self.expected = None if verifier_keys is None else tuple(bytes(k) for k in verifier_keys)

    def run(self, counts: list[int]) -> None:
        meta = self._meta()
        if meta is None:
            return
        counts[0] = self.c.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
        counts[1] = self.c.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
        self._blocks(meta)
        self._orphans()
        self._safety()

    # -- meta ------------------------------------------------------------------------------

    def _meta(self) -> tuple[LedgerMeta, ValidatorSet, CertificateVerifier] | None:
        p = self.p
        try:
            rows = dict(self.c.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as e:  # an SQLite database, but not a ledger
            p.add(f"meta: not a bft-ray ledger ({e})")
            return None
        try:
            meta = LedgerMeta.from_rows(rows)
        except (ValueError, TypeError) as e:
            p.add(f"meta: malformed: {e}")
            return None
        if meta.format != FORMAT:
            p.add(f"meta: format {meta.format!r}, this auditor reads {FORMAT!r}")
            return None
        try:
            stored = meta.validators()
        except Exception as e:
            p.add(f"meta: not a valid replica set: {e}")
            return None
        keys = meta.validator_keys
        if self.expected is not None and self.expected != keys:
            if len(self.expected) != len(keys):
                p.add(
                    f"meta: names {len(keys)} validator keys, expected the {len(self.expected)} "
                    "given verifier keys"
                )
            else:
                bad = [i for i, (a, b) in enumerate(zip(keys, self.expected)) if a != b]
                p.add(
                    "meta: validator keys differ from the given verifier keys at index "
                    + ", ".join(map(str, bad))
                )
            keys = self.expected
        if not 0 <= meta.index < len(keys):
            p.add(f"meta: owner index {meta.index} is not a replica of a set of {len(keys)}")
            return None
        if meta.owner_key != keys[meta.index]:
            p.add(f"meta: owner key is not validator {meta.index}'s key")
        # The quorum comes from the keys, never from the file: a ledger that says f = 0 would
        # let its owner's lone signatures pass as 2f + 1 (a bft-ray group always has
        # f = (n - 1) // 3). A larger f only asks for more signatures.
        least_f = (len(keys) - 1) // 3
        if stored.f < least_f:
            p.add(
                f"meta: f = {stored.f}, but a group of {len(keys)} verifiers tolerates "
                f"f = {least_f}; checked with f = {least_f}"
            )
        try:
            vs = ValidatorSet(keys, f=max(stored.f, least_f), chain_id=stored.chain_id)
            verifier = CertificateVerifier(vs, Ed25519Verifier(keys))
        except Exception as e:
            p.add(f"meta: validator keys are not Ed25519 public keys of a valid set: {e}")
            return None
        return meta, vs, verifier

    # -- committed blocks ------------------------------------------------------------------

    def _blocks(self, ctx: tuple[LedgerMeta, ValidatorSet, CertificateVerifier]) -> None:
        meta, vs, certs = ctx
        add = self.p.add
        owner = vs.public_keys[meta.index]
        index: dict[bytes, tuple[int, int]] = {}
        for h, bid, rnd in self.c.execute("SELECT height, id, round FROM blocks ORDER BY height"):
            if type(bid) is bytes and type(rnd) is int:
                index.setdefault(bid, (h, rnd))

        prev_h, prev_id, prev_round, prev_hash = 0, genesis_block().id, 0, root_hash(meta)
        for row in self.c.execute(
            "SELECT height, id, round, block, head_id, proof, verdicts_digest, prev_hash, "
            "row_hash, signature FROM blocks ORDER BY height"
        ):
            h = int(row[0])  # INTEGER PRIMARY KEY: always an integer
            where = f"blocks height {h}"
            if type(row[2]) is not int or not all(
                type(row[i]) is bytes for i in (1, *range(3, 10))
            ):
                add(f"{where}: a column has the wrong type")
                prev_h = h
                continue
            bid, rnd, data, head, proof_bytes, vd, ph, rh, sig = row[1:]
            linked = h == prev_h + 1
            if not linked:
                if prev_h == 0:
                    add(f"blocks height 1: row missing (the first row has height {h})")
                else:
                    add(
                        f"blocks height {prev_h + 1}: row missing (heights jump from {prev_h} "
                        f"to {h})"
                    )
            block: Block | None
            try:
                block = decode_block(data)
            except DecodeError as e:
                add(f"{where}: block bytes do not decode: {e}")
                block = None
            if block is not None:
                if block.id != bid:
                    add(f"{where}: block bytes do not hash to the stored id")
                if block.round != rnd:
                    add(f"{where}: stored round {rnd} is not the block's round {block.round}")
                if linked and block.parent_id != prev_id:
                    what = "the genesis block" if h == 1 else f"the block at height {prev_h}"
                    add(f"{where}: its parent is not {what}")
                if linked and block.round <= prev_round:
                    add(f"{where}: round {block.round} does not increase (was {prev_round})")
                if not certs.verify_qc(block.qc):
                    add(
                        f"{where}: the block's own QC (certifying its parent) is not signed by "
                        f"{vs.quorum} distinct validators with valid signatures"
                    )
            self._proof(where, h, bid, rnd, head, proof_bytes, meta, vs, certs, index)
            if linked and ph != prev_hash:
                what = "the meta data's root hash" if h == 1 else f"the row hash of height {prev_h}"
                add(f"{where}: prev_hash is not {what} (hash chain broken)")
            self._verdicts(where, h, block, vd)
            if row_hash(ph, h, data, head, proof_bytes, vd) != rh:
                add(f"{where}: row hash does not match the row's contents")
            if not verify_signature(owner, row_signing_bytes(vs.domain, meta.index, rh), sig):
                add(f"{where}: row signature does not verify under the ledger owner's key")
            prev_h, prev_id, prev_round, prev_hash = h, bid, rnd, rh

    def _proof(
        self,
        where: str,
        h: int,
        bid: bytes,
        rnd: int,
        head: bytes,
        proof_bytes: bytes,
        meta: LedgerMeta,
        vs: ValidatorSet,
        certs: CertificateVerifier,
        index: dict[bytes, tuple[int, int]],
    ) -> None:
        add = self.p.add
        try:
            proof = decode_proof(proof_bytes)
        except DecodeError as e:
            add(f"{where}: commit proof does not decode: {e}")
            return
        if not proof:
            add(f"{where}: empty commit proof")
            return
        for k, qc in enumerate(proof, start=1):
            if qc.data.round == 0 or not certs.verify_qc(qc):
                add(
                    f"{where}: commit proof QC {k} of {len(proof)} (round {qc.data.round}) is not "
                    f"signed by {vs.quorum} = 2f+1 distinct validators with valid signatures"
                )
        found = index.get(head)
        if found is not None and found[0] >= h:
            head_round = found[1]
        else:
            # Every block of a commit is appended with its head in one transaction (the drain
            # loop's batch), so a head missing from the ledger was never committed here. (A
            # ledger's owner could otherwise end it with a block of its own making, naming a
            # real later head and copying that head's commit QCs.)
            add(f"{where}: its head {head.hex()[:12]} is not this block or a later committed row")
            return
        if not verify_commit_proof(head, head_round, proof, meta.commit_rule):
            add(
                f"{where}: commit proof does not satisfy the {meta.commit_rule.value} rule for "
                f"head {head.hex()[:12]} (round {head_round})"
            )
        elif head == bid and head_round != rnd:
            add(f"{where}: it is its own head but the proof commits round {head_round}")

    # -- verdict rows ----------------------------------------------------------------------

    def _verdicts(self, where: str, h: int, block: Block | None, vd: bytes) -> None:
        add = self.p.add
        entries: list[bytes] | None = None
        payload_error = ""
        if block is not None:
            try:
                entries = decode_payload(block.payload)
            except ClaimError as e:
                payload_error = str(e)
        hashes = []
        rows = self.c.execute(
            "SELECT entry, task_id, outcome, digest, judgements, row_hash FROM verdicts "
            "WHERE height = ? ORDER BY entry",
            (h,),
        ).fetchall()
        for entry, task_id, outcome, digest, js, stored in rows:
            vwhere = f"verdicts task {task_id!r} (height {h}, entry {entry})"
            if not (
                type(entry) is int
                and type(task_id) is str
                and type(outcome) is str
                and type(digest) is bytes
                and type(js) is str
                and type(stored) is bytes
            ):
                add(f"{vwhere}: a column has the wrong type")
                hashes.append(b"")
                continue
            hashes.append(stored)
            if verdict_row_hash(h, entry, task_id, outcome, digest, js) != stored:
                add(f"{vwhere}: stored fields do not hash to the row's hash (altered)")
            try:
                parsed = json.loads(js)
                canonical = type(parsed) is list and judgements_json(parsed) == js
            except (ValueError, TypeError):
                parsed, canonical = None, False
            if not canonical:
                add(f"{vwhere}: judgements are not canonical JSON")
                continue
            if block is None:
                continue
            if entries is None:
                add(f"{vwhere}: its block's payload is not a list of claims: {payload_error}")
                continue
            judgements = tuple(tuple(j) if type(j) is list else j for j in parsed)
            why = check_verdict_row(
                VerdictRow(task_id, entry, outcome, digest, judgements), entries
            )  # type: ignore[arg-type]
            if why:
                add(f"{vwhere}: {why}")
        if verdicts_digest(hashes) != vd:
            add(
                f"{where}: its verdict rows do not match the digest bound into the row "
                "(a verdict row was added, removed or altered)"
            )

    def _orphans(self) -> None:
        for task_id, h, entry in self.c.execute(
            "SELECT task_id, height, entry FROM verdicts WHERE height NOT IN "
            "(SELECT height FROM blocks) ORDER BY height, entry"
        ):
            self.p.add(
                f"verdicts task {task_id!r} (height {h}, entry {entry}): no block row at that "
                "height"
            )

    # -- safety history --------------------------------------------------------------------

    def _safety(self) -> None:
        add = self.p.add
        prev: SafetyData | None = None
        for seq, data in self.c.execute("SELECT seq, data FROM safety_history ORDER BY seq"):
            try:
                s = decode_safety_data(bytes(data))
            except (DecodeError, TypeError) as e:
                add(f"safety_history seq {seq}: does not decode: {e}")
                continue
            if prev is not None and not s.dominates(prev):
                add(f"safety_history seq {seq}: {s} goes back from {prev} (possible double vote)")
            prev = s
        row = self.c.execute("SELECT data FROM safety WHERE id = 0").fetchone()
        if row is None and prev is not None:
            add("safety: no stored safety data, but safety_history has entries")
        if row is not None and prev is not None:
            try:
                cur = decode_safety_data(bytes(row[0]))
            except (DecodeError, TypeError) as e:
                add(f"safety: does not decode: {e}")
                return
            if cur != prev:
                add("safety: the stored safety data is not the last entry of safety_history")
