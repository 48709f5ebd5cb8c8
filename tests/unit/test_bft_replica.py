"""The BFT verifier replica without Ray: a deterministic in-memory network of VerifierReplicas.

Claims are built the way the dispatcher builds them (real executor envelopes, admission,
CallState), offered to every verifier after its own recheck, and ordered by the real HotStuff
core. Byzantine verifiers run the honest core with a lying application (``FaultyApp``) and a
transport that drops their messages (``silent``). Checked: every claim commits, no rewritten
or invalid claim ever commits, honest ledgers and reputation never diverge, and an idle group
sends nothing. Standing (credit, streaks, quarantine, operator bans) derived from committed
records is byte-identical on honest verifiers and survives a restart.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from bft_ray.compare import wire
from bft_ray.config import Policy
from bft_ray.consensus import Node, NodeConfig, sim_crypto
from bft_ray.crypto import SigningKey
from bft_ray.errors import TrustStateError
from bft_ray.executor.envelope import VALUE, build
from bft_ray.trust.standing import Status as TrustStatus
from bft_ray.verifier.admission import Expected, NoAnswer, Status, admit
from bft_ray.verifier.byzantine import FaultyApp
from bft_ray.verifier.claims import (
    OperatorClaim,
    ReplicaClaim,
    SignedClaim,
    SignedOperator,
    VerdictClaim,
    decode_entry,
)
from bft_ray.verifier.decision import CallState, Step
from bft_ray.verifier.recheck import judged, recheck
from bft_ray.verifier.replica import OPERATOR_OK, MemoryLedger, VerifierReplica
from bft_ray.verifier.trust_state import TrustRules, agree

EXEC = [SigningKey.generate() for _ in range(4)]
DISPATCHER = SigningKey.generate()
POLICY = Policy(replicas=3)


def answer(task: str, i: int, value, attempt: int = 0) -> bytes:
    return build(EXEC[i], VALUE, task, attempt, f"ex{i}", f"s{i}", payload=wire.encode(value))


def make_claim(task: str, values: dict[int, object], *, lie=None) -> tuple[bytes, dict]:
    """A dispatcher's signed claim for ``task``; ``None`` values are replicas that timed out.

    Returns the encoded signed claim and the answers each verifier reads (object id -> bytes or
    NoAnswer). ``lie`` may rewrite the claim before signing (a lying dispatcher).
    """
    state = CallState(task, POLICY, b"t" * 32)
    state.start(len(values))
    replicas, answers = [], {}
    for i, v in values.items():
        oid = f"{task}-{i}".encode().hex()
        exp = Expected(task, 0, f"ex{i}", f"s{i}", EXEC[i].public_bytes)
        raw = NoAnswer(Status.TIMEOUT, "stalled") if v is None else answer(task, i, v)
        out = admit(raw, exp)
        state.feed(out)
        answers[oid] = raw
        state_name = "answered" if out.comparable else "failed"
        failure = "" if out.comparable else "timeout"
        replicas.append(ReplicaClaim(f"ex{i}", f"s{i}", 0, oid, state_name, failure, out.reason))
    d = state.decide(spare=0)
    assert d.step in (Step.ACCEPT, Step.FAIL)
    rep = d.record.accepted
    claim = VerdictClaim(
        task,
        "f",
        POLICY.model_dump_json(),
        ("m", "f", "00"),
        b"a" * 32,
        b"t" * 32,
        0,
        tuple(replicas),
        "accept" if rep else "fail",
        rep.digest if rep else b"",
        rep.executor_id if rep else "",
        tuple((f"ex{i}", EXEC[i].public_bytes, "00") for i in sorted(values)),
        judged(d.record),
    )
    if lie is not None:
        claim = lie(claim)
    return claim.sign(DISPATCHER).encode(), answers


class AlwaysValid(FaultyApp):
    """SEEDED BUG (test-only): votes without rechecking (every replica runs it)."""

    def validate_payload(self, block):
        self._remember(block)
        return True

    def offer(self, entry, result):
        return super().offer(entry, dataclasses.replace(result, verdict=type(result.verdict).VALID))


class Net:
    """n replicas, FIFO delivery, ticks only when no message is in flight."""

    def __init__(
        self,
        n: int,
        faults: dict[int, str] | None = None,
        app_cls=FaultyApp,
        rules: TrustRules | None = None,
        app_cls_for: dict[int, type] | None = None,
    ):
        self.faults = faults or {}
        vs, signers, verifier = sim_crypto(n)
        self.reps = []
        for i in range(n):
            cls = (app_cls_for or {}).get(i, app_cls)
            app = cls(DISPATCHER.public_bytes, censor_after=10, rules=rules)
            app.fault = self.faults.get(i, "honest")
            node = Node(
                NodeConfig(i, vs, base_timeout_ticks=4, max_timeout_ticks=32),
                signers[i],
                verifier,
                app,
            )
            self.reps.append(VerifierReplica(node, app, MemoryLedger()))
        self.queue: collections.deque = collections.deque()
        self.sent = 0
        self.committed: dict[int, list[bytes]] = {i: [] for i in range(n)}

    def honest(self) -> list[int]:
        return [i for i in range(len(self.reps)) if self.faults.get(i, "honest") == "honest"]

    def pump(self, i: int) -> None:
        sends, applied = self.reps[i].drain()
        self.committed[i] += [c.claim.encode() for c in applied]
        if self.faults.get(i) == "silent":
            return
        for out in sends:
            for t in [out.to] if out.to is not None else range(len(self.reps)):
                if t != i:
                    self.queue.append((t, out.message))
                    self.sent += 1

    def offer(self, entry: bytes, answers: dict) -> None:
        sc = SignedClaim.decode(entry)
        for i, r in enumerate(self.reps):
            r.offer(entry, recheck(sc.claim, answers))
            self.pump(i)

    def offer_operator(self, entry: bytes) -> None:
        """The dispatcher sends an operator record to every verifier (no recheck needed)."""
        for i, r in enumerate(self.reps):
            r.offer(entry, OPERATOR_OK)
            self.pump(i)

    def run(self, steps: int = 20_000) -> None:
        for _ in range(steps):
            if self.queue:
                t, msg = self.queue.popleft()
                self.reps[t].step(msg)
                self.pump(t)
                continue
            busy = [i for i, r in enumerate(self.reps) if r.busy()]
            if not busy:
                return
            for i in busy:
                self.reps[i].tick()
                self.pump(i)

    def tasks(self, i: int) -> list[str]:
        return [decode_entry(e).task_id for e in self.committed[i]]


def workload(net: Net, k: int = 6) -> dict[str, bytes]:
    """k claims: honest replicas agree; executor 3 returns a wrong value on odd tasks."""
    entries = {}
    for t in range(k):
        task = f"t{t}"
        good = np.arange(3.0) + t
        values = {0: good, 1: good + 1e-9, 3: good + (100.0 if t % 2 else 0.0)}
        entry, answers = make_claim(task, values)
        entries[task] = entry
        net.offer(entry, answers)
    return entries


def assert_honest_agree(net: Net) -> None:
    honest = net.honest()
    logs = [net.committed[i] for i in honest]
    first = logs[0]
    for log in logs[1:]:
        assert log == first, "honest verifiers committed different claims or orders"
    digests = {net.reps[i].app.reputation_digest() for i in honest}
    assert len(digests) == 1, "honest verifiers' reputation diverged"
    # Committed logs are prefixes of one another (some may have committed a trailing empty block
    # more), and every block with claims is in all of them.
    blocks = [[b for b, _ in net.reps[i].store.rows] for i in honest]
    longest = max(blocks, key=len)
    for b in blocks:
        assert b == longest[: len(b)], "honest ledgers hold conflicting committed blocks"
    with_rows = [[b for b, rows in net.reps[i].store.rows if rows] for i in honest]
    assert all(w == with_rows[0] for w in with_rows)


@pytest.mark.parametrize("n", [4, 7])
def test_honest_group_commits_every_claim_once_and_agrees(n):
    net = Net(n)
    entries = workload(net)
    net.run()
    for i in range(n):
        assert sorted(net.tasks(i)) == sorted(entries), f"verifier {i}"
        assert set(net.committed[i]) == set(entries.values())  # the dispatcher's exact bytes
    assert_honest_agree(net)
    # Executor 3 answered wrong on 3 tasks: flagged by every verifier, from committed records.
    rec = {r.executor_id: r for r in net.reps[0].app.reputation.records()}
    assert rec["ex3"].disagreed == 3 and rec["ex0"].agreed == 6


def test_an_idle_group_sends_nothing():
    net = Net(4)
    net.run()
    assert net.sent == 0
    workload(net, 2)
    net.run()
    sent = net.sent
    for _ in range(200):  # long after the commits: no timer runs, no block is proposed
        for i in range(4):
            if net.reps[i].busy():
                net.reps[i].tick()
            net.pump(i)
    assert net.sent == sent


@pytest.mark.parametrize("fault", ["censor", "bad_verdict", "silent", "wrong_vote"])
@pytest.mark.parametrize("n", [4, 7])
def test_up_to_f_byzantine_verifiers_gain_nothing_but_delay(fault, n):
    f = (n - 1) // 3
    # Verifier 1 leads round 1, so a Byzantine leader is in charge from the start.
    faults = {1 + 2 * k: fault for k in range(f)}
    net = Net(n, faults)
    entries = workload(net)
    net.run()
    for i in net.honest():
        assert sorted(net.tasks(i)) == sorted(entries), f"verifier {i} under {fault}"
        # Only the dispatcher's own signed bytes ever commit (no rewritten claim).
        assert set(net.committed[i]) <= set(entries.values())
    assert_honest_agree(net)
    if fault == "bad_verdict":
        refused = sum(
            net.reps[i].node.stats.rejected.get("invalid_payload", 0) for i in net.honest()
        )
        assert refused > 0, "the Byzantine leader's rewritten blocks should have been refused"


def test_no_vote_for_a_block_that_leaves_out_an_old_claim():
    """The censorship rule: a claim held for censor_after ticks must be in the chain voted for."""
    from bft_ray.consensus import GENESIS_QC, Block

    app = FaultyApp(DISPATCHER.public_bytes, censor_after=5)
    entry, answers = make_claim("c", {0: np.ones(2), 1: np.ones(2), 3: np.ones(2)})
    app.offer(entry, recheck(SignedClaim.decode(entry).claim, answers))
    empty = Block(1, GENESIS_QC, b"", 1)
    assert app.validate_payload(empty)  # young claim: an empty block is fine
    app.now += 5
    assert not app.validate_payload(Block(2, GENESIS_QC, b"", 2))
    from bft_ray.verifier.claims import encode_payload

    assert app.validate_payload(Block(3, GENESIS_QC, encode_payload([entry]), 3))


def _wrong_representative(claim: VerdictClaim) -> VerdictClaim:
    """A lying dispatcher: certify the wrong executor's answer (digest and representative)."""
    return dataclasses.replace(claim, digest=b"\x01" * 32, representative="ex3")


def _invented_timeout(claim: VerdictClaim) -> VerdictClaim:
    reps = list(claim.replicas)
    r = reps[0]
    reps[0] = ReplicaClaim(r.executor_id, r.slot, 0, r.object_id, "failed", "timeout", "made up")
    return dataclasses.replace(claim, replicas=tuple(reps))


def _dropped_flag(claim: VerdictClaim) -> VerdictClaim:
    js = tuple(dataclasses.replace(j, label="agreed") for j in claim.judgements)
    return dataclasses.replace(claim, judgements=js)


@pytest.mark.parametrize("lie", [_wrong_representative, _invented_timeout, _dropped_flag])
def test_a_lying_dispatcher_claim_never_commits_even_with_f_wrong_voters(lie):
    good = np.arange(3.0)
    values = {0: good, 1: good, 3: good + 100.0}
    net = Net(4, {2: "wrong_vote"})
    entry, answers = make_claim("lie", values, lie=lie)
    assert not recheck(SignedClaim.decode(entry).claim, answers).ok
    net.offer(entry, answers)
    honest_entry, honest_answers = make_claim("ok", values)
    net.offer(honest_entry, honest_answers)
    net.run(5_000)
    for i in net.honest():
        assert "lie" not in net.tasks(i)
        assert "ok" in net.tasks(i)


def test_seeded_bug_voting_without_recheck_is_caught():
    """With the recheck skipped everywhere, the lying claim commits: the test above can fail."""
    good = np.arange(3.0)
    net = Net(4, app_cls=AlwaysValid)
    entry, answers = make_claim("lie", {0: good, 1: good, 3: good + 100.0}, lie=_dropped_flag)
    net.offer(entry, answers)
    net.run(5_000)
    assert "lie" in net.tasks(0)


def test_restarted_replica_recovers_and_never_votes_twice():
    net = Net(4)
    workload(net, 3)
    net.run()
    victim = net.reps[2]
    history = victim.store.safety_history()
    rounds = [s.last_voted_round for s in history]
    assert rounds == sorted(rounds) and rounds
    # Rebuild replica 2 from its persisted state; it must refuse to vote again in old rounds.
    vs, signers, verifier = sim_crypto(4)
    app = FaultyApp(DISPATCHER.public_bytes)
    node = Node(
        NodeConfig(2, vs, base_timeout_ticks=4),
        signers[2],
        verifier,
        app,
        recovery=victim.store.recovery(),
    )
    assert node.safety_data.last_voted_round == rounds[-1]
    net.reps[2] = VerifierReplica(node, app, victim.store)
    workload_more = make_claim("later", {0: np.ones(2), 1: np.ones(2), 3: np.ones(2)})
    net.offer(*workload_more)
    net.run()
    assert "later" in net.tasks(2) and "later" in net.tasks(0)
    after = [s.last_voted_round for s in net.reps[2].store.safety_history()]
    assert after == sorted(after)


# -- standing derived from committed records --------------------------------------------------

RULES = TrustRules(quarantine_below=0.3, quarantine_min_tasks=2, prices=(("stake", 10.0),))


def operator(action: str, executor_id: str, op_id: str) -> bytes:
    return OperatorClaim(op_id, action, executor_id).sign(DISPATCHER).encode()


def flagged_workload(net: Net) -> dict[str, bytes]:
    """ex3 wrong on every call (so it is quarantined by the committed record), and in the middle
    the operator bans the honest ex1 (a committed operator record)."""
    entries = {}
    for t in range(6):
        if t == 3:
            entries["op-ban"] = operator("ban", "ex1", "op-ban")
            net.offer_operator(entries["op-ban"])
        good = np.arange(3.0) + t
        entry, answers = make_claim(f"t{t}", {0: good, 1: good + 1e-9, 3: good + 100.0})
        entries[f"t{t}"] = entry
        net.offer(entry, answers)
    return entries


def assert_standing_agree(net: Net) -> None:
    honest = net.honest()
    digests = {net.reps[i].app.standing_digest() for i in honest}
    assert len(digests) == 1, "honest verifiers' standing diverged"
    states = [net.reps[i].app.standing.to_json() for i in honest]
    assert all(st == states[0] for st in states)


@pytest.mark.parametrize(
    ("n", "fault"),
    [
        (4, "honest"),
        (4, "censor"),
        (4, "bad_verdict"),
        (4, "silent"),
        (4, "wrong_vote"),
        (7, "bad_verdict"),
        (7, "wrong_vote"),
    ],
)
def test_honest_verifiers_derive_identical_standing_with_f_byzantine(n, fault):
    f = (n - 1) // 3
    faults = {} if fault == "honest" else {1 + 2 * k: fault for k in range(f)}
    net = Net(n, faults, rules=RULES)
    entries = flagged_workload(net)
    net.run()
    for i in net.honest():
        assert sorted(net.tasks(i)) == sorted(entries), f"verifier {i} under {fault}"
    assert_honest_agree(net)
    assert_standing_agree(net)
    st = net.reps[net.honest()[0]].app.standing
    # Flagged from committed records: every wrong answer costs the stake, and after two the
    # trust score is below 0.3, so the committed rule quarantines it.
    assert st.get("ex3").status is TrustStatus.QUARANTINED
    assert st.account("ex3")["proven_wrong"] == 6 and st.account("ex3")["balance"] == -60.0
    assert st.get("ex1").status is TrustStatus.BANNED  # the operator's committed record
    # Honest executors are never penalised.
    for eid in ("ex0", "ex1"):
        acct = st.account(eid)
        assert acct["proven_wrong"] == 0 and acct["penalties"] == 0.0
        assert acct["credited"] == 6 and acct["balance"] == 6.0
    fn = st.functions("ex0")
    assert list(fn) == ["m:f:00"] and fn["m:f:00"]["streak"] == 6


def test_commits_carry_the_blocked_executors_after_their_block():
    net = Net(4, rules=RULES)
    applied = []
    pump = net.pump

    def recording_pump(i):
        sends, done = net.reps[i].drain()
        applied.extend(c for c in done if i == 0)
        net.committed[i] += [c.claim.encode() for c in done]
        for out in sends:
            for t in [out.to] if out.to is not None else range(4):
                if t != i:
                    net.queue.append((t, out.message))

    net.pump = recording_pump
    flagged_workload(net)
    net.run()
    net.pump = pump
    last = applied[-1]
    assert last.blocked == (("ex1", "banned"), ("ex3", "quarantined"))
    assert last.standing_digest == net.reps[0].app.standing_digest()
    ops = [c for c in applied if c.operator]
    assert len(ops) == 1 and ops[0].task_id == "op-ban"
    assert ("ex1", "banned") in ops[0].blocked


def test_a_new_run_on_the_same_ledger_keeps_the_standing_and_takes_no_old_entry_live():
    """A new run has a new dispatcher key: its verifiers restore the former run's entries under
    the key that signed them (the ban and the quarantine carry over), but a former entry offered
    again, live, is not the current dispatcher's and is never applied."""
    net = Net(4, rules=RULES)
    flagged_workload(net)
    net.run()
    blocks = [b for _, b in net.reps[1].store.committed()]
    new_run = SigningKey.generate().public_bytes
    lost = FaultyApp(new_run, rules=RULES)
    lost.restore(blocks)  # what a new run did before: every former entry dropped
    assert lost.standing_digest() != net.reps[1].app.standing_digest()
    app = FaultyApp(new_run, rules=RULES)
    # Its claims are not the new run's: none is handed back for the registry to learn.
    assert app.restore(blocks, former_keys=[DISPATCHER.public_bytes]) == []
    same_run = FaultyApp(DISPATCHER.public_bytes, rules=RULES)
    assert [sc.task_id for sc in same_run.restore(blocks)] == [f"t{t}" for t in range(6)]
    assert app.standing.to_json() == net.reps[1].app.standing.to_json()
    assert app.standing.get("ex1").status is TrustStatus.BANNED
    replayed = operator("reinstate", "ex1", "op-replayed")  # signed by the former dispatcher
    assert app.decode(replayed) is None
    assert app.decode(operator("ban", "ex1", "op-ban")) is None  # not even from the cache


def test_standing_after_a_restart_equals_standing_before():
    net = Net(4, rules=RULES)
    flagged_workload(net)
    net.run()
    before = net.reps[2]
    # Rebuild verifier 2 from its persisted state: core from the recovery, standing by replay.
    vs, signers, verifier = sim_crypto(4)
    app = FaultyApp(DISPATCHER.public_bytes, censor_after=10, rules=RULES)
    app.restore([b for _, b in before.store.committed()])
    assert app.standing_digest() == before.app.standing_digest()
    assert app.standing.to_json() == before.app.standing.to_json()
    assert app.reputation_digest() == before.app.reputation_digest()
    # The digest depends on the configured prices: the comparison above can fail.
    other = FaultyApp(DISPATCHER.public_bytes, rules=TrustRules(quarantine_below=0.3))
    other.restore([b for _, b in before.store.committed()])
    assert other.standing_digest() != before.app.standing_digest()
    node = Node(
        NodeConfig(2, vs, base_timeout_ticks=4, max_timeout_ticks=32),
        signers[2],
        verifier,
        app,
        recovery=before.store.recovery(),
    )
    net.reps[2] = VerifierReplica(node, app, before.store)
    net.offer_operator(operator("reinstate", "ex1", "op-back"))
    entry, answers = make_claim("later", {0: np.ones(2), 1: np.ones(2), 3: np.ones(2)})
    net.offer(entry, answers)
    net.run()
    assert "later" in net.tasks(2) and "op-back" in net.tasks(2)
    assert_standing_agree(net)
    assert app.standing.get("ex1").status is TrustStatus.ACTIVE  # reinstated, in commit order


class AppliesFirstFlagTwice(FaultyApp):
    """SEEDED BUG (test-only): the first claim with a flag is applied to the standing twice."""

    doubled = False

    def apply_committed(self, sc):
        super().apply_committed(sc)
        flags = isinstance(sc, SignedClaim) and any(
            j.label == "disagreed" for j in sc.claim.judgements
        )
        if flags and not self.doubled:
            self.doubled = True
            self.rules.apply_claim(self.standing, self.reputation, sc.claim)


class SkipsOperatorRecords(FaultyApp):
    """SEEDED BUG (test-only): operator records are not applied (a rule swapped for a no-op)."""

    def apply_committed(self, sc):
        if not isinstance(sc, SignedOperator):
            super().apply_committed(sc)


@pytest.mark.parametrize("buggy", [AppliesFirstFlagTwice, SkipsOperatorRecords])
def test_seeded_bug_in_applying_records_breaks_the_digest_comparison(buggy):
    net = Net(4, rules=RULES, app_cls_for={0: buggy})
    flagged_workload(net)
    net.run()
    assert_honest_agree(net) if buggy is SkipsOperatorRecords else None  # reputation agrees
    with pytest.raises(AssertionError, match="standing diverged"):
        assert_standing_agree(net)


def test_operator_entries_are_distinct_from_claims_and_signed():
    entry = operator("ban", "ex2", "op-1")
    sc = decode_entry(entry)
    assert isinstance(sc, SignedOperator) and sc.verify(DISPATCHER.public_bytes)
    assert not sc.verify(SigningKey.generate().public_bytes)
    from bft_ray.verifier.byzantine import rewrite_claim

    flipped = decode_entry(rewrite_claim(entry))
    assert flipped.op.action == "reinstate" and not flipped.verify(DISPATCHER.public_bytes)
    claim_entry, _ = make_claim("c", {0: np.ones(2), 1: np.ones(2), 3: np.ones(2)})
    assert isinstance(decode_entry(claim_entry), SignedClaim)


def test_agree_needs_f_plus_one_identical_states_and_recomputes_digests():
    net = Net(4, rules=RULES)
    flagged_workload(net)
    net.run()
    good = net.reps[0].app.standing
    state = good.to_json()
    forged = json_copy(state)
    forged["executors"]["ex3"]["penalties"] = 0.0  # a Byzantine verifier clears ex3's debt
    a = agree({0: {"state": state}, 1: {"state": forged}, 2: {"state": state}, 3: "gone"}, 4)
    assert a.agreed_by == (0, 2) and a.digest == good.digest() and set(a.others) == {1, 3}
    # The forged state under the honest digest is caught: digests are recomputed here.
    lie = {"state": forged, "digest": good.digest().hex()}
    a = agree({0: {"state": state}, 1: lie, 2: {"state": state}}, 4)
    assert "does not match" in a.others[1]
    with pytest.raises(TrustStateError, match="f \\+ 1 = 2"):
        agree({0: {"state": state}, 1: {"state": forged}, 2: "down", 3: "down"}, 4)
    # n = 7, f = 2: two matching answers are not enough.
    with pytest.raises(TrustStateError):
        agree({0: {"state": state}, 1: {"state": state}}, 7)


def json_copy(data):
    import json

    return json.loads(json.dumps(data))


# -- one commit proof per block in a batch answer -----------------------------------------------


def test_a_batch_answer_carries_each_proof_once_and_a_lying_pointer_gets_none():
    from bft_ray.verifier.group import share_proofs, take_shared_proofs

    p1, p2 = b"proof-of-block-1" * 300, b"proof-of-block-2" * 300
    acks = [
        {"block_id": b"1", "ok": True, "commit_proof": p1},
        {"block_id": b"1", "ok": True, "commit_proof": p1},
        {"block_id": b"2", "ok": True, "commit_proof": p2},
        {"block_id": b"1", "ok": True, "commit_proof": p1},
        {"ok": False, "reason": "refused"},
    ]
    shared = share_proofs(acks)
    assert [a.get("commit_proof") is not None for a in shared] == [True, False, True, False, False]
    assert take_shared_proofs(shared) == [*acks[:4], {"ok": False, "reason": "refused"}]
    # A faulty verifier's pointers: forward, to itself, to another block, not an int, to a
    # refusal. Each of those acks is left without a proof (other verifiers' proofs serve).
    lies = [
        {"block_id": b"1", "commit_proof": None, "proof_at": 1},
        {"block_id": b"1", "commit_proof": None, "proof_at": 1},
        {"block_id": b"1", "commit_proof": p2, "proof_at": 0},  # carries its own: kept
        {"block_id": b"2", "commit_proof": None, "proof_at": 2},
        {"block_id": b"1", "commit_proof": None, "proof_at": "0"},
        {"block_id": b"1", "commit_proof": None, "proof_at": 5},
    ]
    taken = take_shared_proofs(lies)
    assert [a["commit_proof"] for a in taken] == [None, None, p2, None, None, None]


def test_a_faulty_verifiers_answers_of_any_shape_are_refused_without_raising():
    """One Byzantine verifier's ack held a list where a block id goes, and the dispatcher's
    certify loop raised on it, failing the call; its registration and proof answers had the
    same kind of hole (a numpy array cannot even be compared with ``==`` in an ``if``)."""
    from bft_ray.verifier.group import take_shared_proofs
    from bft_ray.verifier.registry import unconfirmed
    from bft_ray.verifier.trusted import ack_signer

    key, arr = b"k" * 32, np.zeros(3)
    good = {"public_key": key, "signature": b"s" * 64, "block_round": 4, "block_id": b"b" * 32}
    assert ack_signer(good, {key}) == (key, b"s" * 64, (4, b"b" * 32))
    for field, junk in [
        ("block_id", [1]),
        ("block_id", arr),
        ("block_round", True),
        ("block_round", 4.0),
        ("public_key", [key]),
        ("public_key", arr),
        ("signature", "s"),
    ]:
        assert ack_signer({**good, field: junk}, {key}) is None, field
    assert unconfirmed({"ex0": key}, [{"ex0": {"public_key": arr}}] * 4, 4)
    assert unconfirmed({"ex0": key}, [{"ex0": {"public_key": key}}] * 3 + [arr], 4) == {}
    shared = [{"block_id": b"1", "commit_proof": b"p"}, {"block_id": arr, "proof_at": 0}]
    assert take_shared_proofs(shared)[1]["commit_proof"] is None
