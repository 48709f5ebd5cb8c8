"""The BFT verifier group on Ray (n = 4, f = 1): certificates, Byzantine verifiers, restarts.

One cluster for the module. Verifier behaviours are switched at run time with
``cluster.inject_verifier_fault`` and healed after each test; calls run one after another so
that every verifier leads some rounds while it misbehaves. The last tests crash verifiers
for good, so they run last.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

import bft_ray
from bft_ray.verifier.audit import audit_dir

pytestmark = pytest.mark.ray

N_EXEC = 4


@pytest.fixture(scope="module")
def cluster(ray_module, tmp_path_factory):
    ledgers = tmp_path_factory.mktemp("ledgers")
    c = bft_ray.init(executors=N_EXEC, verifiers=4, quarantine_below=0.0, ledger_dir=str(ledgers))
    c.ledgers = ledgers
    yield c
    c.shutdown()


@pytest.fixture
def vfault(cluster):
    injected = []

    def inject(index, name):
        injected.append(index)
        return cluster.inject_verifier_fault(index, name)

    yield inject
    for index in injected:
        cluster.inject_verifier_fault(index, "honest")


@bft_ray.verified_remote(replicas=3, num_gpus=1, tolerance=bft_ray.Tolerance(rtol=1e-6, atol=1e-9))
def affine(x, k):
    return x * 2.0 + k


def run_one_by_one(count: int, offset: int = 0):
    refs = []
    for i in range(offset, offset + count):
        x = np.linspace(0, 1, 16) + i
        ref = affine.remote(x, i)
        np.testing.assert_array_equal(bft_ray.get(ref, timeout=120), x * 2.0 + i)
        refs.append(ref)
    return refs


def honest_digests(cluster, skip=()):
    st = [s for s in cluster.verifier_status() if s["index"] not in skip and "error" not in s]
    return {(s["reputation_digest"], s["standing_digest"]) for s in st}, st


def wait_settled(cluster, skip=(), timeout=30.0):
    """Until every listed verifier has applied the same reputation and standing."""
    deadline = time.monotonic() + timeout
    while True:
        digests, st = honest_digests(cluster, skip)
        if len(digests) == 1 or time.monotonic() > deadline:
            return digests, st
        time.sleep(0.2)


def test_values_come_with_a_group_certificate_anyone_can_check(cluster):
    (ref,) = run_one_by_one(1)
    cert = bft_ray.certificate(ref)
    keys = cluster.verifier_keys()
    assert cert.mode == "bft" and len(keys) == 4 and cert.block_round >= 1
    assert len({s.public_key for s in cert.signatures}) >= 3
    assert bft_ray.verify_certificate(cert, keys, task_id=bft_ray.task_id(ref))
    back = bft_ray.Certificate.from_json(cert.to_json())
    assert bft_ray.verify_certificate(back, keys)
    # Rejections: changed digest, 2f signers, duplicated signer, an unknown key, another task.
    assert not bft_ray.verify_certificate(dataclasses.replace(cert, digest=b"\0" * 32), keys)
    two = dataclasses.replace(cert, signatures=cert.signatures[:2])
    assert not bft_ray.verify_certificate(two, keys)
    dup = dataclasses.replace(cert, signatures=(*cert.signatures[:2], cert.signatures[0]))
    assert not bft_ray.verify_certificate(dup, keys)
    from bft_ray.crypto import SigningKey

    # A signer's key replaced by an unknown one: only the known keys' signatures count.
    swapped = [SigningKey.generate().public_bytes, *keys[1:]]
    counted = sum(s.public_key in swapped for s in cert.signatures)
    assert bft_ray.verify_certificate(cert, swapped) == (counted >= 3)
    rogues = [SigningKey.generate().public_bytes for _ in range(3)]
    lone = [cert.signatures[0].public_key, *rogues]
    assert not bft_ray.verify_certificate(cert, lone)  # one known key of four: 1 < 2f + 1
    (other,) = run_one_by_one(1, offset=1)
    assert not bft_ray.verify_certificate(cert, keys, task_id=bft_ray.task_id(other))
    _the_commit_proof_proves_the_block_committed(cert, bft_ray.certificate(other), keys)


def _the_commit_proof_proves_the_block_committed(cert, other, keys):
    """The certificate carries the block, its chain to the committed head and the head's QCs
    (2f + 1 signatures each); it verifies with the keys alone, in any order, and every
    tampering with it is refused."""
    from bft_ray.compare.wire import decode, encode
    from bft_ray.consensus.types import QuorumCert, decode_qc

    def ok(c, ks=keys, **kw):
        return bft_ray.verify_certificate(c, ks, require_commit_proof=True, **kw)

    assert cert.commit_proof and ok(cert) and ok(cert, list(reversed(keys)))
    assert ok(bft_ray.Certificate.from_json(cert.to_json()))
    assert not ok(dataclasses.replace(cert, commit_proof=b""))  # required, absent
    block, chain, proof, order = decode(cert.commit_proof)

    def rebuilt(*parts):
        return dataclasses.replace(cert, commit_proof=encode(list(parts)))

    qc = decode_qc(proof[0])
    (signer, _), *rest = qc.signatures
    forged = QuorumCert(qc.data, ((signer, bytes(64)), *rest)).encode()
    two = QuorumCert(qc.data, qc.signatures[: 2 * ((len(keys) - 1) // 3)]).encode()  # 2f
    refused = {
        "a QC signature zeroed": rebuilt(block, chain, [forged, *proof[1:]], order),
        "a QC with 2f signatures": rebuilt(block, chain, [two, *proof[1:]], order),
        "no QC": rebuilt(block, chain, [], order),
        "another task's block": dataclasses.replace(cert, commit_proof=other.commit_proof),
        "a chain link dropped": rebuilt(block, chain[:-1], proof, order) if chain else None,
        "a key left out": rebuilt(block, chain, proof, order[1:]),
        "junk": dataclasses.replace(cert, commit_proof=b"junk"),
    }
    # The dispatcher's checker (one decode per distinct blob, shared by a block's claims) gives
    # the offline check's answer on every one, asked in any order and more than once.
    from bft_ray.verifier.commit_proof import ProofChecker, check_proof

    checker = ProofChecker(keys)
    cases = [cert, other, *(b for b in refused.values() if b is not None)]
    for c in [*cases, *reversed(cases)]:
        for task, digest, rep in [(cert.task_id, cert.digest, cert.representative),
                                  (other.task_id, other.digest, other.representative)]:  # fmt: skip
            args = (c.commit_proof, c.block_id, c.block_round, task, digest, rep)
            assert checker.check(*args) == check_proof(*args, keys)
    for what, bad in refused.items():
        if bad is not None and bad.commit_proof != cert.commit_proof:
            assert not ok(bad), what
            # Present but wrong is refused even when not required (same keys).
            if what != "a key left out":
                assert not bft_ray.verify_certificate(bad, keys), what


@bft_ray.verified_remote(replicas=3, num_gpus=1)
class Tally:
    def __init__(self, start):
        self.n = start

    def add(self, k):
        self.n += k
        return self.n


def test_a_replicated_instance_is_constructed_on_the_record(cluster):
    # The constructor's verdict is a claim like a call's: rechecked by every verifier and
    # committed, so its certificate carries 2f + 1 verifier signatures and a commit proof,
    # and its holders are the executors the committed verdict credits.
    t = Tally.remote(5)
    cert = t.certificate(timeout=120)
    keys = cluster.verifier_keys()
    assert cert.mode == "bft" and cert.kind == "value"
    assert bft_ray.verify_certificate(
        cert, keys, task_id=t.instance_id, require_commit_proof=True, raise_on_failure=True
    )
    assert set(cert.signers) <= set(t.holders()) and len(cert.signers) >= 2
    assert bft_ray.get([t.add.remote(1) for _ in range(3)], timeout=120) == [6, 7, 8]
    # A method call's certificate is the group's too.
    ref = t.add.remote(0)
    assert bft_ray.get(ref, timeout=120) == 8
    assert bft_ray.verify_certificate(bft_ray.certificate(ref), keys, require_commit_proof=True)


def test_every_agreeing_constructor_replica_holds_the_instance(cluster):
    """The constructor's third replica usually answers while the verdict is being certified:
    it is no longer pending, and was not counted in the verdict. It still holds the instance
    (dropped, its honest slot was never asked again: the instance ran on two replicas and
    every disagreement between those two was refused)."""
    cluster.inject_fault(3, bft_ray.faults.slow(0.05))  # its answers land mid-certification
    try:
        tallies = [Tally.remote(i) for i in range(6)]
        assert [len(t.holders(timeout=120)) for t in tallies] == [3] * 6
        assert bft_ray.get([t.add.remote(1) for t in tallies], timeout=120) == list(range(1, 7))
        for t in tallies:
            t.close()
    finally:
        cluster.inject_fault(3, "honest")


# A bounded sample in `make test`: the two that attack certificates and verdicts directly plus
# censorship; silence, wrong votes, equivocation and forged signatures run in `make test-full`
# (each is also covered without Ray: tests/unit/test_bft_replica.py's network of verifier
# replicas, and the consensus core's suites, whose simulator runs a forging node and whose
# node test refuses forged messages).
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("silent", marks=_SLOW),
        "censor",
        "bad_verdict",
        pytest.param("wrong_vote", marks=_SLOW),
        pytest.param("forge", marks=_SLOW),
        pytest.param("equivocate", marks=_SLOW),
    ],
)
def test_one_byzantine_verifier_gains_nothing_but_delay(cluster, vfault, fault):
    vfault(1, fault)
    refs = run_one_by_one(8, offset=10)  # each call takes a few rounds: verifier 1 leads some
    keys = cluster.verifier_keys()
    for ref in refs:
        cert = bft_ray.certificate(ref)
        assert bft_ray.verify_certificate(cert, keys, raise_on_failure=True)
        if fault in ("forge", "silent"):
            assert keys[1] not in {s.public_key for s in cert.signatures}
    digests, _ = wait_settled(cluster, skip=(1,))
    assert len(digests) == 1, f"honest verifiers diverged under {fault}"


def test_wrong_outputs_are_never_certified_with_a_byzantine_verifier(cluster, vfault):
    cluster.inject_fault(3, "zeros")
    try:
        vfault(2, "wrong_vote")
        # A burst (batched blocks); x != 0 so the zeros executor is always wrong.
        refs = [affine.remote(np.ones(8) * (i + 1), 0) for i in range(12)]
        values = bft_ray.get(refs, timeout=180)
        for i, v in enumerate(values):
            np.testing.assert_array_equal(v, np.ones(8) * (i + 1) * 2.0)
        keys = cluster.verifier_keys()
        for ref in refs:
            cert = bft_ray.certificate(ref)
            assert bft_ray.verify_certificate(cert, keys)
            assert "ex3" not in cert.signers  # the zeros executor never vouches for a value
    finally:
        cluster.inject_fault(3, "honest")
    digests, _ = wait_settled(cluster, skip=(2,))
    assert len(digests) == 1
    rows = {r["executor"]: r for r in ray.get(cluster.verifier_handles()[0].reputation.remote())}
    assert rows.get("ex3", {}).get("disagreed", 0) >= 1  # flagged from committed records


def test_committed_standing_penalises_the_liar_and_a_ban_is_committed(cluster, vfault):
    """Trust state from committed verdicts, vouched for by f + 1 verifiers; bans are committed."""
    vfault(1, "bad_verdict")  # a Byzantine verifier: the committed standing must not care
    cluster.inject_fault(3, "zeros")
    try:
        refs = [affine.remote(np.ones(8) * (i + 1), 0) for i in range(6)]
        bft_ray.get(refs, timeout=180)
    finally:
        cluster.inject_fault(3, "honest")
    trust = cluster.trust_report()
    assert trust["mode"] == "bft" and trust["f"] == 1
    assert len(trust["agreed_by"]) >= 2 and set(trust["agreed_by"]) <= {0, 1, 2, 3}
    accts = {a["executor"]: a for a in trust["executors"]}
    ex3 = accts["ex3"]
    assert ex3["proven_wrong"] >= 1 and ex3["penalties"] == 10.0 * ex3["proven_wrong"]
    for eid in ("ex0", "ex1", "ex2"):  # honest executors are never penalised
        assert accts[eid]["proven_wrong"] == 0 and accts[eid]["penalties"] == 0.0, accts[eid]
        assert accts[eid]["credited"] > 0
    rows = {r["executor"]: r for r in cluster.report().executors}
    assert rows["ex3"]["credit"] == round(ex3["balance"], 6)
    # A committed operator record: every verifier applies it; the dispatcher follows.
    assert cluster.ban("ex1") == "banned"
    before = cluster.trust_report()
    credited = {a["executor"]: a["credited"] for a in before["executors"]}
    tasks = cluster.report().row("ex1")["tasks"]
    run_one_by_one(4, offset=30)
    after = {a["executor"]: a for a in cluster.trust_report()["executors"]}
    assert after["ex1"]["status"] == "banned" and after["ex1"]["credited"] == credited["ex1"]
    assert cluster.report().row("ex1")["tasks"] == tasks  # no more work
    # The others did the work: at least the quorum (2) of each call was credited (a replica
    # still running at the verdict is not in the committed claim, so earns no credit here).
    assert 8 <= sum(after[e]["credited"] - credited[e] for e in ("ex0", "ex2", "ex3")) <= 12
    assert cluster.reinstate("ex1") == "active"
    digests, _ = wait_settled(cluster, skip=(1,))
    assert len(digests) == 1, "honest verifiers' standing diverged"


def test_spot_checks_are_refused_in_bft_mode_for_lack_of_a_shared_coin(cluster):
    @bft_ray.verified_remote(replicas=3, num_gpus=1, policy=bft_ray.spot_check(0.1))
    def lone(x):
        return x

    with pytest.raises(bft_ray.ConfigError, match="shared random coin"):
        lone.remote(1.0)


@bft_ray.verified_remote(replicas=3, num_gpus=1)
def bump(x):
    return x + 1


def test_ledgers_pass_the_audit_and_a_tampered_copy_fails(cluster, tmp_path):
    run_one_by_one(2, offset=40)
    # A burst of a trivial function reaches the executors in batches: the ledgers then hold
    # batched attestations (one signature per batch, a Merkle path each), which the audit
    # checks like any other.
    assert bft_ray.get(bump.remote(-1), timeout=60) == 0
    assert bft_ray.get([bump.remote(i) for i in range(48)], timeout=120) == list(range(1, 49))
    time.sleep(1.0)  # let the trailing commits reach every ledger
    reports = audit_dir(cluster.ledgers, verifier_keys=cluster.verifier_keys())
    assert len(reports) == 4 and all(r.ok for r in reports), [r.line() for r in reports]
    assert all(r.blocks > 0 for r in reports)
    # The CLI on the real directory, then on a copy with one verdict changed.
    ok = subprocess.run([sys.executable, "-m", "bft_ray", "audit", str(cluster.ledgers)])
    assert ok.returncode == 0
    import sqlite3

    src = next(p for p in cluster.ledgers.rglob("verifier-0.sqlite"))
    copy = tmp_path / "verifier-0.sqlite"
    con = sqlite3.connect(src)
    con.execute(f"VACUUM INTO '{copy}'")  # a consistent copy of a live database
    con.close()
    tampered = sqlite3.connect(copy)
    tables = [r[0] for r in tampered.execute("select name from sqlite_master where type='table'")]
    vt = next(t for t in tables if "verdict" in t)
    batched = tampered.execute(f"select count(*) from {vt} where judgements like '%\"path\"%'")
    assert batched.fetchone()[0] > 0, "no batched attestation reached the ledger"
    cols = [r[1] for r in tampered.execute(f"pragma table_info({vt})")]
    col = "outcome" if "outcome" in cols else cols[-1]
    tampered.execute(f"update {vt} set {col} = 'failed' where rowid = 1")
    tampered.commit()
    tampered.close()
    bad = subprocess.run(
        [sys.executable, "-m", "bft_ray", "audit", str(copy)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "verdict" in (bad.stdout + bad.stderr).lower()


def test_a_verifier_that_crashes_restarts_recovers_and_never_votes_twice(cluster, vfault):
    before = {s["index"]: s for s in cluster.verifier_status()}
    vfault(3, "crash")  # exits at its next message; Ray restarts it; it recovers from disk
    run_one_by_one(6, offset=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = cluster.verifier_status()[3]
        if "error" not in st and st["ledger_height"] >= before[3]["ledger_height"] + 1:
            break
        time.sleep(0.5)
    st = cluster.verifier_status()[3]
    assert "error" not in st, st
    assert st["fault"] == "honest" and st["ledger_height"] > before[3]["ledger_height"]
    # Its persisted votes: the last voted round never went backwards across the restart, so
    # it never signed twice in a round (votes leave only after their round is persisted).
    import sqlite3

    from bft_ray.consensus import decode_safety_data

    con = sqlite3.connect(f"file:{st['ledger']}?mode=ro", uri=True)
    rows = con.execute("select data from safety_history order by seq").fetchall()
    con.close()
    voted = [decode_safety_data(bytes(r[0])).last_voted_round for r in rows]
    assert len(voted) > 3 and voted == sorted(voted)
    reports = audit_dir(os.path.dirname(st["ledger"]), verifier_keys=cluster.verifier_keys())
    assert len(reports) == 4 and all(r.ok for r in reports), [r.line() for r in reports]
    # It rebuilt its reputation and standing from the ledger: the same state as everyone's.
    run_one_by_one(1, offset=70)
    digests, _ = wait_settled(cluster)
    assert len(digests) == 1


def test_every_verifier_pins_each_executors_key_from_the_executor_itself(cluster):
    """The keys claims may name are the ones the executors stated to each verifier directly
    (bft_ray/verifier/registry.py); a respawned executor is confirmed before it gets work, and
    no worker but the dispatcher can register an identity."""
    from bft_ray.errors import CapabilityError
    from bft_ray.executor.pool import read_info

    def own_keys():
        # What each live executor says about itself, read here from the actor.
        out = {}
        for e in cluster.executor_handles():
            info = read_info(ray.get(e["handle"].info.remote(), timeout=60), e["executor_id"])
            out[e["executor_id"]] = info["public_key"]
        return out

    def pinned_everywhere(keys):
        return all(
            s.get("executors", {}).get(eid) == key
            for s in cluster.verifier_status()
            for eid, key in keys.items()
        )

    before = own_keys()
    assert len(before) == N_EXEC and pinned_everywhere(before)
    victim = cluster.executor_handles()[0]
    ray.kill(victim["handle"], no_restart=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run_one_by_one(1, offset=75)  # certified by the group throughout
        ids = {e["executor_id"] for e in cluster.executor_handles()}
        if len(ids) == N_EXEC and victim["executor_id"] not in ids:
            break
        time.sleep(0.5)
    after = own_keys()
    respawned = set(after) - set(before)
    assert len(respawned) == 1, after
    assert pinned_everywhere(after)
    refused = [s["counters"]["refused"] for s in cluster.verifier_status()]
    run_one_by_one(3, offset=76)  # the new incarnation gets work; no verifier refuses it
    assert [s["counters"]["refused"] for s in cluster.verifier_status()] == refused

    # An executor added to the running cluster is confirmed before it gets work too.
    cluster.scale(executors=N_EXEC + 1, timeout_s=120)
    try:
        grown = own_keys()
        assert len(grown) == N_EXEC + 1 and pinned_everywhere(grown)
        run_one_by_one(2, offset=79)
    finally:
        cluster.scale(executors=N_EXEC)

    verifier = cluster.verifier_handles()[1]
    handle = cluster.executor_handles()[1]["handle"]
    forged = [("ex9", handle._actor_id.hex(), handle)]
    with pytest.raises(CapabilityError, match="dispatcher's signature"):
        ray.get(verifier.register_executors.remote(b"\0" * 64, forged), timeout=60)
    assert "ex9" not in cluster.verifier_status()[1]["executors"]


def test_an_attached_process_checks_group_certificates(cluster):
    (ref,) = run_one_by_one(1, offset=80)
    cert_json = bft_ray.certificate(ref).to_json()

    @ray.remote(num_cpus=0)
    def check(text):
        import bft_ray as b

        attached = b.init()
        cert = b.Certificate.from_json(text)
        return b.verify_certificate(cert, attached.verifier_keys()), len(attached.verifier_keys())

    assert ray.get(check.remote(cert_json), timeout=120) == (True, 4)


def test_losing_a_verifier_for_good_loses_no_task(cluster):
    """Kill verifier 0 mid-burst (no restart): pending calls still commit with 2f + 1 = 3."""
    refs = [affine.remote(np.ones(4) * i, 1) for i in range(10)]
    ray.kill(cluster.verifier_handles()[0], no_restart=True)
    values = bft_ray.get(refs, timeout=180)
    for i, v in enumerate(values):
        np.testing.assert_array_equal(v, np.ones(4) * i * 2.0 + 1)
    more = run_one_by_one(4, offset=90)  # progress continues after the view changes
    keys = cluster.verifier_keys()
    assert all(bft_ray.verify_certificate(bft_ray.certificate(r), keys) for r in refs + more)


def test_a_new_run_on_the_same_ledgers_keeps_the_committed_standing(cluster):
    """A new ``init`` on these ledgers has a new dispatcher key; its verifiers still apply the
    former run's entries (under the key that signed them), so the committed standing carries
    over, and the new run's executors (new keys under the same ids) are pinned afresh."""
    before = cluster.committed_standing()
    cluster.shutdown()
    again = bft_ray.init(
        executors=N_EXEC, verifiers=4, quarantine_below=0.0, ledger_dir=str(cluster.ledgers)
    )
    try:
        after = again.committed_standing()
        assert after.digest == before.digest and after.agreed_by
        run_one_by_one(2, offset=120)  # certified by the group: the registry is this run's
        assert again.committed_standing().digest != before.digest  # and the record goes on
    finally:
        again.shutdown()


def test_release_at_verdict_returns_values_before_the_group_certifies_them(cluster, tmp_path):
    """``release="verdict"``: the value comes at the dispatcher's verdict and the certificate
    follows. A shutdown right after the last values waits for their certificates, so every
    verdict is on the ledgers. With more than f verifiers silent the group cannot certify: the
    value still comes, its certificate fails (and is counted)."""
    import sqlite3

    if not cluster.closed:
        cluster.shutdown()

    def start():
        return bft_ray.init(
            executors=N_EXEC,
            verifiers=4,
            quarantine_below=0.0,
            ledger_dir=str(tmp_path),  # fresh ledgers: little to restore
            release="verdict",
            certify_timeout_s=60.0,
        )

    x = np.linspace(0, 1, 16)
    c = start()
    try:
        keys = c.verifier_keys()
        (ref,) = run_one_by_one(1, offset=200)
        cert = bft_ray.certificate(ref, timeout=60)
        assert bft_ray.verify_certificate(
            cert, keys, task_id=bft_ray.task_id(ref), require_commit_proof=True
        )
        refs = [affine.remote(x, 300 + i) for i in range(6)]
        assert len(bft_ray.get(refs, timeout=120)) == 6
        ids = [bft_ray.task_id(r) for r in refs]
    finally:
        c.shutdown()  # at once: certificates still being committed are waited for
    on_record = []
    for path in sorted(tmp_path.glob("verifier-*.sqlite")):
        with sqlite3.connect(path) as db:
            rows = db.execute(
                f"SELECT DISTINCT task_id FROM verdicts WHERE task_id IN ({','.join('?' * 6)})",
                ids,
            ).fetchall()
        on_record.append(len(rows))
    assert sorted(on_record)[-3:] == [6, 6, 6]  # at least 2f + 1 ledgers hold all six

    c = start()  # again on these ledgers, for the group that cannot certify
    try:
        for i in (0, 1):  # f + 1 = 2 silent verifiers: no quorum certificate can form
            c.inject_verifier_fault(i, "silent")
        lost = affine.remote(x, 7)
        # Returned at the verdict, though the group cannot commit it (with the default
        # release="certified" the call itself fails). Silent verifiers refuse the claim at
        # once, so the certificate fails without waiting for certify_timeout_s.
        np.testing.assert_array_equal(bft_ray.get(lost, timeout=30), x * 2.0 + 7)
        with pytest.raises(bft_ray.VerificationError, match="did not certify"):
            bft_ray.certificate(lost, timeout=60)
        assert c.report().counters["uncertified"] == 1
    finally:
        c.shutdown()
