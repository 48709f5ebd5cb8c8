"""Offline audit of verifier ledgers: passes on real ledgers, names the row of each tampering.

The ledgers come from a real 4-replica Ed25519 consensus run (the harness of
``test_ledger.py``); each tampering test edits a copy of one of them with plain SQL.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bft_ray.cli import main
from bft_ray.consensus import CommitRule, QuorumCert
from bft_ray.verifier.audit import audit, audit_dir
from bft_ray.verifier.ledger import (
    Ledger,
    VerdictRow,
    decode_proof,
    encode_proof,
    judgements_json,
    row_signing_bytes,
    verdict_row_hash,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_ledger import Cluster, _key, schedule

HEIGHT = 8


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory):
    """Four closed ledgers of one real run (read-only: tests copy them), and the cluster."""
    d = tmp_path_factory.mktemp("ledgers")
    c = Cluster(d)
    c.run_to_height(HEIGHT)
    c.close()
    return d, c


@pytest.fixture
def copy(ledgers, tmp_path):
    """A private copy of replica 0's ledger."""
    d, _ = ledgers
    dst = tmp_path / "verifier-0.sqlite"
    shutil.copy(d / "verifier-0.sqlite", dst)
    return dst


def sql(path: Path, stmt: str, *args) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(stmt, args).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def a_verdict(path: Path) -> tuple[int, int, str, str, str]:
    """(height, entry, task id, outcome, judgements) of an accepted verdict in the middle."""
    return sql(
        path,
        "SELECT height, entry, task_id, outcome, judgements FROM verdicts "
        "WHERE outcome = 'accepted' AND height >= 3 ORDER BY height, entry LIMIT 1",
    )[0]


# -- real ledgers pass -----------------------------------------------------------------------


def test_real_ledgers_pass(ledgers):
    d, c = ledgers
    keys = list(c.vs.public_keys)
    reports = audit_dir(d, verifier_keys=keys)
    assert len(reports) == 4
    for r in reports:
        assert r.ok, r.problems
        assert r.first_bad is None and r.problems == []
        assert r.blocks >= HEIGHT and r.verdicts == 12  # schedule(6): two claims in rounds 1..6
        assert r.line().startswith("OK")
    assert audit(d / "verifier-1.sqlite").ok  # without outside keys too


def test_three_chain_ledgers_pass(tmp_path):
    c = Cluster(tmp_path, rule=CommitRule.THREE_CHAIN, claims=schedule(3))
    c.run_to_height(4)
    c.close()
    for r in audit_dir(tmp_path):
        assert r.ok, r.problems
        assert r.verdicts == 6


def test_audit_reads_a_ledger_that_is_open_and_in_use(tmp_path):
    c = Cluster(tmp_path, claims=schedule(2))
    try:
        c.run_to_height(3)
        r = audit(c.path(2))
        assert r.ok and r.blocks == c.ledger(2).committed_height, r.problems
        c.run_to_height(5)
        assert audit(c.path(2)).blocks >= 5
    finally:
        c.close()


# -- each tampering is caught and named --------------------------------------------------------


def test_flipped_byte_in_a_stored_block(copy):
    (data,) = sql(copy, "SELECT block FROM blocks WHERE height = 4")[0]
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    sql(copy, "UPDATE blocks SET block = ? WHERE height = 4", bytes(flipped))
    r = audit(copy)
    assert not r.ok
    assert r.first_bad.startswith("blocks height 4: block bytes do not ")


def test_deleted_middle_row(copy):
    (n,) = sql(copy, "SELECT COUNT(*) FROM blocks")[0]
    sql(copy, "DELETE FROM blocks WHERE height = 3")
    r = audit(copy)
    assert not r.ok
    assert r.first_bad == "blocks height 3: row missing (heights jump from 2 to 4)"
    assert r.blocks == n - 1
    # Its verdict rows are left without a block row.
    assert any(p.startswith("verdicts task 'task-3-") and "no block row" in p for p in r.problems)


@pytest.mark.parametrize("column", ["label", "outcome"])
def test_changed_verdict(copy, column):
    h, e, task, _, js = a_verdict(copy)
    if column == "label":
        new = js.replace('"agreed"', '"disagreed"', 1)
        assert new != js
        sql(copy, "UPDATE verdicts SET judgements = ? WHERE height = ? AND entry = ?", new, h, e)
    else:
        sql(copy, "UPDATE verdicts SET outcome = 'failed' WHERE height = ? AND entry = ?", h, e)
    r = audit(copy)
    assert not r.ok
    assert r.first_bad.startswith(f"verdicts task {task!r} (height {h}, entry {e}): ")


def test_changed_verdict_with_its_row_hash_recomputed(copy):
    """An editor who also recomputes the verdict row's own hash is caught by the block row."""
    h, e, task, outcome, js = a_verdict(copy)
    judgements = json.loads(js)
    judgements[1][1] = "disagreed"
    new = judgements_json(judgements)
    (digest,) = sql(copy, "SELECT digest FROM verdicts WHERE height = ? AND entry = ?", h, e)[0]
    vh = verdict_row_hash(h, e, task, outcome, digest, new)
    sql(
        copy,
        "UPDATE verdicts SET judgements = ?, row_hash = ? WHERE height = ? AND entry = ?",
        new,
        vh,
        h,
        e,
    )
    r = audit(copy)
    assert not r.ok
    assert "judgements are not the committed claim's" in r.first_bad  # the claim says otherwise
    assert any(
        p.startswith(f"blocks height {h}: its verdict rows do not match the digest")
        for p in r.problems
    )


def test_deleted_verdict_row(copy):
    h, e, *_ = a_verdict(copy)
    sql(copy, "DELETE FROM verdicts WHERE height = ? AND entry = ?", h, e)
    r = audit(copy)
    assert not r.ok and r.first_bad.startswith(f"blocks height {h}: its verdict rows")


def test_forged_row_signature(ledgers, copy):
    _, c = ledgers
    (rh,) = sql(copy, "SELECT row_hash FROM blocks WHERE height = 5")[0]
    forged = _key(b"forger").sign(row_signing_bytes(c.vs.domain, 0, rh))
    sql(copy, "UPDATE blocks SET signature = ? WHERE height = 5", forged)
    r = audit(copy)
    assert not r.ok
    assert (
        r.first_bad == "blocks height 5: row signature does not verify under the ledger owner's key"
    )
    assert r.problems == [r.first_bad]


def test_swapped_meta_validator_key(ledgers, copy):
    _, c = ledgers
    keys = [k.hex() for k in c.vs.public_keys]
    keys[2] = _key(b"impostor").public_bytes.hex()
    sql(copy, "UPDATE meta SET value = ? WHERE key = 'validators'", json.dumps(keys))
    alone = audit(copy)
    assert not alone.ok
    assert alone.first_bad.startswith("blocks height 1: ")  # root hash / replica 2's signatures
    with_keys = audit(copy, verifier_keys=c.vs.public_keys)
    assert not with_keys.ok
    assert with_keys.first_bad == (
        "meta: validator keys differ from the given verifier keys at index 2"
    )


def test_qc_with_a_signature_removed(copy):
    (proof,) = sql(copy, "SELECT proof FROM blocks WHERE height = 6")[0]
    (qc,) = decode_proof(proof)
    assert len(qc.signatures) == 3
    thinner = QuorumCert(qc.data, qc.signatures[1:])
    sql(copy, "UPDATE blocks SET proof = ? WHERE height = 6", encode_proof([thinner]))
    r = audit(copy)
    assert not r.ok
    assert r.first_bad.startswith("blocks height 6: commit proof QC 1 of 1")


def test_regressing_safety_history(copy):
    rows = sql(copy, "SELECT seq, data FROM safety_history ORDER BY seq")
    assert len(rows) > 3
    sql(copy, "UPDATE safety_history SET data = ? WHERE seq = ?", rows[0][1], rows[-2][0])
    r = audit(copy)
    assert not r.ok and r.first_bad.startswith(f"safety_history seq {rows[-2][0]}: ")


def test_fork_between_ledgers_is_reported(ledgers, tmp_path):
    """Two ledgers that are each valid but disagree on a height fail in audit_dir."""
    d, _ = ledgers
    (tmp_path / "other").mkdir()
    other = Cluster(tmp_path / "other", claims=schedule(6, tag="x"))
    other.run_to_height(3)
    other.close()
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(d / "verifier-0.sqlite", both / "a.sqlite")
    shutil.copy(tmp_path / "other" / "verifier-1.sqlite", both / "b.sqlite")
    assert audit(both / "a.sqlite").ok and audit(both / "b.sqlite").ok
    a, b = audit_dir(both)
    assert not a.ok and not b.ok
    assert a.first_bad == "blocks height 1: differs from b.sqlite (fork)"


@pytest.mark.parametrize("content", [b"", b"not sqlite at all" * 50, None, "empty-db"])
def test_foreign_or_missing_files_never_raise(tmp_path, content):
    path = tmp_path / "x.sqlite"
    if content == "empty-db":
        sql(path, "CREATE TABLE unrelated (x)")
    elif content is not None:
        path.write_bytes(content)
    r = audit(path)
    assert not r.ok and r.first_bad
    assert r.first_bad.startswith(("file:", "meta:"))


def test_malformed_meta_never_raises(copy):
    sql(copy, "UPDATE meta SET value = 'zz' WHERE key = 'owner_key'")
    r = audit(copy)
    assert not r.ok and r.first_bad.startswith("meta: malformed")


# -- command line ------------------------------------------------------------------------------


def test_cli_exit_codes(ledgers, copy, tmp_path):
    d, c = ledgers
    run = CliRunner().invoke
    good = run(main, ["audit", str(d / "verifier-2.sqlite")])
    assert good.exit_code == 0 and good.output.startswith("OK"), good.output

    whole = run(main, ["audit", str(d)])
    assert whole.exit_code == 0 and whole.output.count("OK ") == 4, whole.output

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([k.hex() for k in c.vs.public_keys]))
    assert run(main, ["audit", str(d), "--keys", str(keys)]).exit_code == 0
    wrong = [k.hex() for k in c.vs.public_keys]
    wrong[1] = _key(b"someone").public_bytes.hex()
    keys.write_text(json.dumps(wrong))
    res = run(main, ["audit", str(d / "verifier-0.sqlite"), "--keys", str(keys)])
    assert res.exit_code == 1 and "FAILED" in res.output and "index 1" in res.output

    sql(copy, "DELETE FROM blocks WHERE height = 2")
    bad = run(main, ["audit", str(copy)])
    assert bad.exit_code == 1
    assert bad.output.startswith("FAILED") and "blocks height 2: row missing" in bad.output

    assert run(main, ["audit", str(tmp_path / "missing.sqlite")]).exit_code == 2
    assert run(main, ["audit"]).exit_code == 2
    keys.write_text("{not json")
    assert run(main, ["audit", str(d), "--keys", str(keys)]).exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run(main, ["audit", str(empty)])
    assert none.exit_code == 1 and "no *.sqlite" in none.output


def test_python_dash_m_audit(ledgers, tmp_path):
    d, _ = ledgers
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(d / "verifier-1.sqlite", mixed / "good.sqlite")
    shutil.copy(d / "verifier-3.sqlite", mixed / "tampered.sqlite")
    sql(mixed / "tampered.sqlite", "UPDATE blocks SET signature = zeroblob(64) WHERE height = 7")
    out = subprocess.run(
        [sys.executable, "-m", "bft_ray", "audit", str(mixed)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("OK") and "good.sqlite" in lines[0]
    assert (
        lines[1].startswith("FAILED")
        and "tampered.sqlite: blocks height 7: row signature" in lines[1]
    )


def _lone_verifier_ledger(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """Verifier 0 of four alone writes a ledger whose QCs carry only its own signature, its meta
    saying f = 0 (a quorum of one). Found by an adversarial review: the audit took f from the
    file, so ``audit --keys`` with the group's real keys passed it."""
    from test_ledger import EXECUTORS, ed25519_crypto, make_claim, validator_key

    from bft_ray.consensus import CommittedBlock, ValidatorSet
    from bft_ray.consensus.types import GENESIS_QC, Block, VoteData, vote_signing_bytes
    from bft_ray.executor.attestation import Attestation
    from bft_ray.verifier.claims import encode_payload

    real, signers, _ = ed25519_crypto(4)
    keys = list(real.public_keys)
    forged = ValidatorSet(tuple(keys), f=0)

    def qc_of(b: Block) -> QuorumCert:
        vd: VoteData = b.vote_data()
        return QuorumCert(vd, ((0, signers[0].sign(vote_signing_bytes(forged.domain, vd))),))

    claim = make_claim("task-X")
    b1 = Block(1, GENESIS_QC, encode_payload([claim.encode()]), 0)
    b2 = Block(2, qc_of(b1), b"", 0)
    b3 = Block(3, qc_of(b2), b"", 0)
    path = tmp_path / "verifier-0.sqlite"
    led = Ledger(path, index=0, validators=forged, signing_key=validator_key(0))
    c = claim.claim
    judgements = tuple(
        (
            r.executor_id,
            "agreed",
            "",
            Attestation.create(
                EXECUTORS[r.executor_id], c.task_id, 0, r.executor_id, r.slot, "value", c.digest
            ).to_dict(),
        )
        for r in c.replicas
    )
    led.append(
        CommittedBlock(b1, b1.id, (qc_of(b2),)),
        [VerdictRow("task-X", 0, "accepted", c.digest, judgements)],
    )
    led.append(CommittedBlock(b2, b2.id, (qc_of(b3),)), [])
    led.close()
    return path, keys


def test_a_ledger_claiming_a_lower_f_is_checked_with_the_groups_f(tmp_path):
    path, keys = _lone_verifier_ledger(tmp_path)
    report = audit(path, verifier_keys=keys)
    assert not report.ok
    assert any("f = 0, but a group of 4 verifiers tolerates f = 1" in p for p in report.problems)
    assert any("2f+1" in p or "validators" in p for p in report.problems), report.problems


def test_a_verdict_row_that_is_not_the_committed_claims_fails(tmp_path, monkeypatch):
    """The ledger's owner (one Byzantine verifier) records a committed *failed* claim as
    accepted, with a digest of its choice, and an honest executor as disagreed; the blocks are
    the group's own (3 real QC signatures). Found by an adversarial review: the audit compared
    a row's task id with its claim, not its outcome, digest or judgements."""
    from test_ledger import EXECUTORS, ed25519_crypto, make_claim, validator_key

    import bft_ray.verifier.ledger as ledger_mod
    from bft_ray.consensus import CommittedBlock
    from bft_ray.consensus.types import GENESIS_QC, Block, vote_signing_bytes
    from bft_ray.executor.attestation import Attestation
    from bft_ray.verifier.claims import encode_payload

    vs, signers, _ = ed25519_crypto(4)

    def qc_of(b: Block) -> QuorumCert:
        vd = b.vote_data()
        sigs = tuple((i, signers[i].sign(vote_signing_bytes(vs.domain, vd))) for i in (1, 2, 3))
        return QuorumCert(vd, sigs)

    claim = make_claim("task-F", accept=False)  # the committed claim says: failed
    b1 = Block(1, GENESIS_QC, encode_payload([claim.encode()]), 1)
    b2 = Block(2, qc_of(b1), b"", 2)
    b3 = Block(3, qc_of(b2), b"", 3)
    att = Attestation.create(EXECUTORS["ex1"], "task-F", 0, "ex1", "slot1", "value", b"\x01" * 32)
    lie = VerdictRow(
        "task-F", 0, "accepted", b"\x66" * 32, (("ex1", "disagreed", "", att.to_dict()),)
    )
    path = tmp_path / "verifier-0.sqlite"
    with monkeypatch.context() as m:  # the owner writes what it likes
        m.setattr(ledger_mod, "check_verdict_row", lambda *a, **k: "")
        led = Ledger(path, index=0, validators=vs, signing_key=validator_key(0))
        led.append(CommittedBlock(b1, b1.id, (qc_of(b2),)), [lie])
        led.append(CommittedBlock(b2, b2.id, (qc_of(b3),)), [])
        led.close()
    report = audit(path, verifier_keys=list(vs.public_keys))
    assert not report.ok
    assert "outcome 'accepted' is not the committed claim's ('failed')" in report.first_bad


def test_a_last_row_whose_head_is_not_in_the_ledger_fails(tmp_path):
    """The ledger's owner ends it with a block of its own making F (parent the real block 1,
    with its real QC) that names a real later head b3 and copies b3's genuine commit QC. Found
    by an adversarial review: the audit let the last rows name a missing head (a batch "cut
    short"), but every commit is appended with its head in one transaction."""
    from test_ledger import ed25519_crypto, make_claim, validator_key

    from bft_ray.consensus import CommittedBlock
    from bft_ray.consensus.types import GENESIS_QC, Block, vote_signing_bytes
    from bft_ray.verifier.claims import encode_payload
    from bft_ray.verifier.ledger import row_of_claim

    vs, signers, _ = ed25519_crypto(4)

    def qc_of(b: Block) -> QuorumCert:
        vd = b.vote_data()
        sigs = tuple((i, signers[i].sign(vote_signing_bytes(vs.domain, vd))) for i in (1, 2, 3))
        return QuorumCert(vd, sigs)

    b1 = Block(1, GENESIS_QC, b"", 1)
    b2 = Block(2, qc_of(b1), encode_payload([make_claim("real-task", accept=False).encode()]), 2)
    b3 = Block(3, qc_of(b2), b"", 3)
    b4 = Block(4, qc_of(b3), b"", 0)
    forged = make_claim("forged-task", accept=False)
    fake = Block(2, qc_of(b1), encode_payload([forged.encode()]), 0)  # never voted on
    path = tmp_path / "verifier-0.sqlite"
    led = Ledger(path, index=0, validators=vs, signing_key=validator_key(0))
    led.append(CommittedBlock(b1, b1.id, (qc_of(b2),)), [])
    led.append(CommittedBlock(fake, b3.id, (qc_of(b4),)), [row_of_claim(0, forged)])
    led.close()
    report = audit(path, verifier_keys=list(vs.public_keys))
    assert not report.ok
    assert "blocks height 2: its head" in report.first_bad
    assert "is not this block or a later committed row" in report.first_bad
