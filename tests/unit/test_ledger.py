"""The SQLite verifier ledger, driven by a real 4-replica consensus group in memory.

The harness (:class:`Cluster`) runs four :class:`~bft_ray.consensus.node.Node` replicas with
Ed25519 keys over an in-memory network, follows the ``Ready`` contract with one
:class:`~bft_ray.verifier.ledger.Ledger` per replica, and proposes blocks whose payloads are
signed verdict claims; on commit each replica appends the claims' verdict rows. It is shared
with ``test_audit.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import subprocess
import sys
import textwrap
from collections import deque
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bft_ray.config import Policy
from bft_ray.consensus import (
    Block,
    CommitRule,
    CommittedBlock,
    MemoryStore,
    Node,
    NodeConfig,
    Proposal,
    RecoveryState,
    SafetyData,
    ValidatorSet,
    Vote,
    ed25519_crypto,
    genesis_block,
)
from bft_ray.consensus.node import Ready
from bft_ray.consensus.types import proposal_signing_bytes
from bft_ray.crypto import SigningKey
from bft_ray.errors import BftRayError
from bft_ray.executor.attestation import Attestation
from bft_ray.verifier.claims import (
    Judged,
    ReplicaClaim,
    SignedClaim,
    VerdictClaim,
    decode_payload,
    encode_payload,
)
from bft_ray.verifier.ledger import Ledger, LedgerError, VerdictRow, row_of_claim

N = 4


def _key(seed: bytes) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(blake3.blake3(seed).digest()))


def validator_key(i: int, seed: bytes = b"ed25519") -> SigningKey:
    """The ledger key of replica ``i``: the private key ``ed25519_crypto`` gives its signer."""
    raw = blake3.blake3(seed + b"/ed25519/" + i.to_bytes(4, "big")).digest()
    return SigningKey(Ed25519PrivateKey.from_private_bytes(raw))


DISPATCHER = _key(b"test/dispatcher")
EXECUTORS = {f"ex{i}": _key(b"test/executor/%d" % i) for i in range(3)}
POLICY = Policy(replicas=3).model_dump_json()


def make_claim(task_id: str, accept: bool = True) -> SignedClaim:
    """A dispatcher-signed claim over three answered replicas."""
    replicas = tuple(
        ReplicaClaim(eid, f"slot{k}", 0, "ab" * 14, "answered") for k, eid in enumerate(EXECUTORS)
    )
    executors = tuple((eid, k.public_bytes, "aa" * 16) for eid, k in EXECUTORS.items())
    digest = blake3.blake3(task_id.encode()).digest() if accept else b""
    judged = tuple(
        Judged(
            r.executor_id,
            r.slot,
            "agreed",
            "",
            Attestation.create(
                EXECUTORS[r.executor_id], task_id, r.attempt, r.executor_id, r.slot, "value", digest
            ),
        )
        if accept
        else Judged(r.executor_id, r.slot, "crashed", f"replica {k} crashed", None)
        for k, r in enumerate(replicas)
    )
    claim = VerdictClaim(
        task_id,
        "f",
        POLICY,
        ("m", "f", "00"),
        b"a" * 32,
        b"k" * 32,
        0,
        replicas,
        "accept" if accept else "fail",
        digest,
        "ex0" if accept else "",
        executors,
        judged,
    )
    return claim.sign(DISPATCHER)


_VERDICTS: dict[bytes, list[VerdictRow]] = {}


def verdicts_for(block: Block) -> list[VerdictRow]:
    """The verdict rows of a committed block (deterministic: every replica derives the same)."""
    if block.id in _VERDICTS:
        return _VERDICTS[block.id]
    rows = [
        row_of_claim(i, SignedClaim.decode(entry))
        for i, entry in enumerate(decode_payload(block.payload))
    ]
    _VERDICTS[block.id] = rows
    return rows


class ClaimApp:
    """Leader of round ``r`` proposes the claims scheduled for ``r`` (empty payload after)."""

    def __init__(self, by_round: dict[int, list[bytes]]) -> None:
        self.by_round = by_round

    def propose_payload(self, round: int, parent: Block) -> bytes:
        return encode_payload(self.by_round.get(round, []))

    def validate_payload(self, block: Block) -> bool:
        try:
            return all(
                SignedClaim.decode(e).verify(DISPATCHER.public_bytes)
                for e in decode_payload(block.payload)
            )
        except ValueError:
            return False


def schedule(rounds: int, per_round: int = 2, tag: str = "") -> dict[int, list[bytes]]:
    """Claims for rounds 1..rounds; every third claim is a failure."""
    out: dict[int, list[bytes]] = {}
    k = 0
    for r in range(1, rounds + 1):
        out[r] = []
        for _ in range(per_round):
            out[r].append(make_claim(f"task{tag}-{r}-{k}", accept=k % 3 != 2).encode())
            k += 1
    return out


class Cluster:
    """Four replicas, their ledgers, and an in-memory network (FIFO, no loss)."""

    def __init__(
        self,
        directory: Path,
        *,
        rule: CommitRule = CommitRule.TWO_CHAIN,
        claims: dict[int, list[bytes]] | None = None,
        mirror: bool = False,
    ) -> None:
        self.dir = directory
        self.rule = rule
        self.vs, self.signers, self.verifier = ed25519_crypto(N)
        self.app = ClaimApp(claims if claims is not None else schedule(6))
        self.ledgers: list[Ledger | None] = [self.open_ledger(i) for i in range(N)]
        self.nodes: list[Node | None] = [self.make_node(i) for i in range(N)]
        self.queue: deque[tuple[int, object]] = deque()
        self.sent: list[tuple[int, object]] = []  # (sender, message), every message sent
        self.committed: list[list[CommittedBlock]] = [[] for _ in range(N)]
        self.down: set[int] = set()
        self.mirror = MemoryStore() if mirror else None
        self.mirror_checks = 0

    def path(self, i: int) -> Path:
        return self.dir / f"verifier-{i}.sqlite"

    def open_ledger(self, i: int) -> Ledger:
        return Ledger(
            self.path(i),
            index=i,
            validators=self.vs,
            signing_key=validator_key(i),
            commit_rule=self.rule,
        )

    def make_node(self, i: int, recovery: RecoveryState | None = None) -> Node:
        cfg = NodeConfig(i, self.vs, commit_rule=self.rule)
        return Node(cfg, self.signers[i], self.verifier, self.app, recovery=recovery)

    def ledger(self, i: int) -> Ledger:
        led = self.ledgers[i]
        assert led is not None
        return led

    def up(self) -> list[int]:
        return [i for i in range(N) if i not in self.down]

    def drain(self, i: int) -> None:
        node, led = self.nodes[i], self.ledger(i)
        assert node is not None
        while node.has_ready():
            rd = node.ready()
            led.persist(rd)  # 1. durable before any message leaves
            if i == 0 and self.mirror is not None:
                self.mirror.persist(rd)
            for out in rd.messages:  # 2. send
                self.sent.append((i, out.message))
                targets = [out.to] if out.to is not None else [j for j in range(N) if j != i]
                self.queue.extend((t, out.message) for t in targets)
            for cb in rd.committed:  # 3. apply
                led.append(cb, verdicts_for(cb.block))
                self.committed[i].append(cb)
            if i == 0 and self.mirror is not None:
                self.mirror.apply(rd)
                self._compare_with_mirror(led)
            node.advance(rd)  # 4.

    def _compare_with_mirror(self, led: Ledger) -> None:
        assert self.mirror is not None
        want, got = self.mirror.recovery(), led.recovery()
        assert got.safety == want.safety
        assert {b.id for b in got.blocks} == {b.id for b in want.blocks}
        assert got.certificates == want.certificates
        assert got.committed_id == want.committed_id
        self.mirror_checks += 1

    def run(self, until: Callable[[], bool], max_iters: int = 50_000) -> None:
        """Drain, deliver one message, repeat; tick everyone when the network is idle."""
        for _ in range(max_iters):
            for i in self.up():
                self.drain(i)
            if until():
                return
            if self.queue:
                to, msg = self.queue.popleft()
                if to not in self.down:
                    node = self.nodes[to]
                    assert node is not None
                    node.step(msg)  # type: ignore[arg-type]
                    self.drain(to)
                    if until():
                        return
            else:
                for i in self.up():
                    node = self.nodes[i]
                    assert node is not None
                    node.tick()
        raise AssertionError("the cluster made no progress")

    def run_to_height(self, height: int) -> None:
        self.run(lambda: all(self.ledger(i).committed_height >= height for i in self.up()))

    def crash(self, i: int) -> None:
        self.down.add(i)
        self.ledger(i).close()
        self.ledgers[i] = None
        self.nodes[i] = None

    def restart(self, i: int) -> Node:
        self.ledgers[i] = self.open_ledger(i)
        node = self.make_node(i, recovery=self.ledger(i).recovery())
        self.nodes[i] = node
        self.down.discard(i)
        return node

    def close(self) -> None:
        for i, led in enumerate(self.ledgers):
            if led is not None:
                led.close()
                self.ledgers[i] = None


def votes_by(sent: list[tuple[int, object]], author: int) -> list[Vote]:
    return [m for s, m in sent if s == author and isinstance(m, Vote)]


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


# -- recording a real run --------------------------------------------------------------------


def test_every_replica_records_the_same_committed_chain_and_verdicts(cluster):
    cluster.run_to_height(6)
    chains = []
    for i in range(N):
        led = cluster.ledger(i)
        blocks = led.committed()
        assert [h for h, _ in blocks] == list(range(1, led.committed_height + 1))
        parent = genesis_block().id
        for _, b in blocks:
            assert b.parent_id == parent
            parent = b.id
        assert led.last_committed_id == parent
        chains.append([b.id for _, b in blocks[:6]])
    assert all(c == chains[0] for c in chains)

    led = cluster.ledger(2)
    rows = [v for _, b in led.committed() for v in verdicts_for(b)]
    assert len(rows) >= 8  # the first blocks carry two claims each
    for want in rows:
        assert led.verdict(want.task_id) == want
    failed = [v for v in rows if v.outcome == "failed"]
    assert failed and all(v.digest == b"" and v.judgements[0][3] is None for v in failed)
    assert led.verdict("no-such-task") is None
    assert led.committed(start_height=3)[0][0] == 3


def test_ledger_recovery_tracks_memory_store_at_every_ready(tmp_path):
    c = Cluster(tmp_path, mirror=True)
    try:
        c.run_to_height(5)
        assert c.mirror_checks >= 5
        rec = c.ledger(0).recovery()
        assert rec.committed_id == c.ledger(0).last_committed_id != genesis_block().id
        # Only blocks at or above the committed round are kept (like MemoryStore.apply).
        committed_round = c.committed[0][-1].block.round
        assert rec.blocks and all(b.round >= committed_round for b in rec.blocks)
        n_pending = sqlite3.connect(c.path(0)).execute("SELECT COUNT(*) FROM pending").fetchone()
        assert n_pending[0] <= len(rec.blocks) + 1
    finally:
        c.close()


def test_reopened_ledger_has_the_same_state(cluster):
    cluster.run_to_height(4)
    led = cluster.ledger(1)
    before = (led.committed_height, led.last_committed_id, led.recovery(), led.safety_history())
    verdict = led.verdict("task-1-0")
    cluster.crash(1)
    led = cluster.open_ledger(1)
    try:
        assert (
            led.committed_height,
            led.last_committed_id,
            led.recovery(),
            led.safety_history(),
        ) == before
        assert before[0] >= 4 and verdict is not None and led.verdict("task-1-0") == verdict
    finally:
        led.close()


# -- crash recovery ----------------------------------------------------------------------------


def test_rebuilt_replica_never_votes_twice_in_a_round(cluster):
    victim = 2
    cluster.run_to_height(2)
    mark = len(cluster.sent)
    # Run until the victim has just released a vote for another leader's block (round robin:
    # the leader of round r is r % N), then crash it before it does anything else.
    cluster.run(lambda: any(v.round % N != victim for v in votes_by(cluster.sent[mark:], victim)))
    last_vote = votes_by(cluster.sent[mark:], victim)[-1]
    r = last_vote.data.round
    assert r % N != victim
    proposal = next(
        m
        for _, m in cluster.sent
        if isinstance(m, Proposal) and m.block.id == last_vote.data.block_id
    )
    cluster.crash(victim)

    led = cluster.open_ledger(victim)
    rec = led.recovery()
    led.close()
    assert rec.safety.last_voted_round == r

    # A conflicting block of the same round, signed by that round's leader (equivocation).
    leader = proposal.block.author
    evil = Block(r, proposal.block.qc, encode_payload([make_claim("evil").encode()]), leader)
    evil_p = Proposal(
        evil, None, cluster.signers[leader].sign(proposal_signing_bytes(cluster.vs.domain, evil.id))
    )

    def votes_after_replay(node: Node) -> list[Vote]:
        out = []
        for msg in (evil_p, proposal):
            node.step(msg)
            while node.has_ready():
                rd = node.ready()
                out += [o.message for o in rd.messages if isinstance(o.message, Vote)]
                node.advance(rd)
        return out

    # Control: the same replica rebuilt without its safety data signs a second vote in round r.
    amnesiac = cluster.make_node(victim, recovery=dataclasses.replace(rec, safety=SafetyData()))
    assert amnesiac.round == r
    double = votes_after_replay(amnesiac)
    assert [v.data.block_id for v in double] == [evil.id] != [last_vote.data.block_id]

    node = cluster.restart(victim)
    assert node.round == r and node.safety_data == rec.safety
    assert votes_after_replay(node) == []
    # ... and the ledger refuses safety data that goes back.
    with pytest.raises(LedgerError, match="behind the stored"):
        cluster.ledger(victim).persist(Ready(SafetyData(last_voted_round=r - 1), (), (), (), ()))

    height = cluster.ledger(victim).committed_height
    cluster.run_to_height(height + 4)
    rounds = [v.data.round for v in votes_by(cluster.sent, victim)]
    assert len(rounds) > 4 and len(rounds) == len(set(rounds)), rounds
    history = cluster.ledger(victim).safety_history()
    assert len(history) > 4
    for a, b in itertools.pairwise(history):
        assert b.dominates(a), (a, b)
    assert history[-1].last_voted_round > r


def test_restart_replays_commits_idempotently(cluster):
    cluster.run_to_height(3)
    cluster.crash(3)
    cluster.run_to_height(6)  # the others go on without replica 3
    node = cluster.restart(3)
    assert node.committed_round == cluster.committed[3][-1].block.round
    cluster.run_to_height(8)
    led = cluster.ledger(3)
    ids = [b.id for _, b in led.committed()]
    assert len(ids) == len(set(ids)) == led.committed_height >= 8
    assert ids[:6] == [b.id for _, b in cluster.ledger(0).committed()][:6]


# -- misuse --------------------------------------------------------------------------------


def test_append_is_idempotent_and_checks_order_and_rows(cluster):
    cluster.run_to_height(4)
    led = cluster.ledger(0)
    cbs = cluster.committed[0]
    height = led.committed_height
    led.append(cbs[1], verdicts_for(cbs[1].block))  # already there: no-op
    assert led.committed_height == height

    fork = dataclasses.replace(
        cbs[-1], block=dataclasses.replace(cbs[-1].block, payload=b"", author=0)
    )
    with pytest.raises(LedgerError, match="does not extend"):
        led.append(fork, [])

    # A fresh ledger of another replica's key: append its first blocks with broken rows.
    other = Ledger(
        cluster.dir / "fresh.sqlite", index=0, validators=cluster.vs, signing_key=validator_key(0)
    )
    try:
        first = cbs[0]
        assert first.block.parent_id == genesis_block().id and decode_payload(first.block.payload)
        good = verdicts_for(first.block)
        bad_rows = [
            [dataclasses.replace(good[0], task_id="someone-else")],
            [dataclasses.replace(good[0], entry=len(good))],
            [dataclasses.replace(good[0], outcome="maybe")],
            [good[0], good[0]],
        ]
        for rows in bad_rows:
            with pytest.raises(LedgerError):
                other.append(first, rows)
            assert other.committed_height == 0
        tampered = good[0].judgements[0][3] | {"digest": "00" * 32}
        j = ((good[0].judgements[0][0], "agreed", "", tampered),)
        with pytest.raises(LedgerError, match="attestation signature"):
            other.append(first, [dataclasses.replace(good[0], judgements=j)])
        with pytest.raises(LedgerError, match="commit proof"):
            other.append(dataclasses.replace(first, commit_proof=()), good)
        other.append(first, good)
        assert other.committed_height == 1 and other.verdict(good[0].task_id) == good[0]
    finally:
        other.close()


def _other_identity(cluster: Cluster, what: str) -> dict:
    keys = list(cluster.vs.public_keys)
    base = dict(index=0, validators=cluster.vs, signing_key=validator_key(0))
    if what == "validator key":
        keys[3] = _key(b"stranger").public_bytes
        return base | {"validators": ValidatorSet(tuple(keys))}
    if what == "chain id":
        return base | {"validators": ValidatorSet(cluster.vs.public_keys, chain_id=b"other")}
    if what == "f":
        return base | {"validators": ValidatorSet(cluster.vs.public_keys, f=0)}
    if what == "commit rule":
        return base | {"commit_rule": CommitRule.THREE_CHAIN}
    assert what == "index"
    return base | {"index": 1, "signing_key": validator_key(1)}


@pytest.mark.parametrize("what", ["validator key", "chain id", "f", "commit rule", "index"])
def test_reopen_as_another_verifier_raises(cluster, what):
    cluster.run_to_height(1)
    cluster.crash(0)
    with pytest.raises(LedgerError, match="belongs to verifier 0") as e:
        Ledger(cluster.path(0), **_other_identity(cluster, what))
    assert isinstance(e.value, BftRayError)
    field = {"validator key": "validator_keys", "chain id": "chain_id"}.get(what, what)
    assert "differs in: " + field.replace(" ", "_") in str(e.value)
    Ledger(cluster.path(0), index=0, validators=cluster.vs, signing_key=validator_key(0)).close()


def test_open_refuses_foreign_files_and_keys(tmp_path):
    vs, _, _ = ed25519_crypto(N)
    with pytest.raises(LedgerError, match="not verifier 1's key"):
        Ledger(tmp_path / "a.sqlite", index=1, validators=vs, signing_key=validator_key(0))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        Ledger(junk, index=0, validators=vs, signing_key=validator_key(0))
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(LedgerError, match="not a bft-ray ledger"):
        Ledger(other, index=0, validators=vs, signing_key=validator_key(0))


def test_persist_is_durable_without_close(tmp_path):
    """A process that dies right after persist() (no close, no atexit) loses nothing."""
    path = tmp_path / "v0.sqlite"
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_ledger import validator_key
        from bft_ray.consensus import SafetyData, ed25519_crypto, genesis_block
        from bft_ray.consensus.node import Ready
        from bft_ray.verifier.ledger import Ledger
        vs, _, _ = ed25519_crypto(4)
        led = Ledger({str(path)!r}, index=0, validators=vs, signing_key=validator_key(0))
        led.persist(Ready(SafetyData(7, 3, 5, 6), (), (), (), ()))
        os._exit(0)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    vs, _, _ = ed25519_crypto(N)
    with Ledger(path, index=0, validators=vs, signing_key=validator_key(0)) as led:
        assert led.recovery().safety == SafetyData(7, 3, 5, 6)
        assert led.safety_history() == [SafetyData(7, 3, 5, 6)]
        with pytest.raises(LedgerError):
            led.persist(Ready(SafetyData(8, 3, 4, 6), (), (), (), ()))  # locked round went back
        assert led.safety_history() == [SafetyData(7, 3, 5, 6)]  # the refused write left nothing


def test_closed_ledger_raises(tmp_path):
    vs, _, _ = ed25519_crypto(N)
    led = Ledger(tmp_path / "v.sqlite", index=0, validators=vs, signing_key=validator_key(0))
    led.close()
    led.close()
    with pytest.raises(LedgerError, match="closed"):
        led.recovery()
