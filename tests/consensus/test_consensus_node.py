"""The Node state machine: Ready contract, restarts, message validation, sync, pacemaker."""

from __future__ import annotations

import pytest
from consensus_helpers import SIGNERS, VERIFIER, VS, chain, qc_for, timeout_msg

from bft_ray.consensus import (
    GENESIS_QC,
    Block,
    BlockRequest,
    ConsensusConfigError,
    MemoryStore,
    Node,
    NodeConfig,
    Pacemaker,
    Proposal,
    SeededBugs,
    Timeout,
    Vote,
)
from bft_ray.consensus.types import proposal_signing_bytes


def make_nodes(n_bugs=None, **cfg):
    return [
        Node(NodeConfig(i, VS, bugs=n_bugs or SeededBugs(), **cfg), SIGNERS[i], VERIFIER)
        for i in range(4)
    ]


def pump(nodes, stores=None, drop=lambda src, dst, msg: False, rounds=200):
    """Deliver everything instantly until quiet; returns committed rounds per node."""
    stores = stores or [MemoryStore() for _ in nodes]
    committed = {i: [] for i in range(len(nodes))}
    for _ in range(rounds):
        moved = False
        for i, node in enumerate(nodes):
            while node.has_ready():
                rd = node.ready()
                stores[i].persist(rd)
                for out in rd.messages:
                    dsts = range(len(nodes)) if out.to is None else [out.to]
                    for d in dsts:
                        if d != i and not drop(i, d, out.message):
                            nodes[d].step(out.message)
                            moved = True
                committed[i].extend(c.block.round for c in rd.committed)
                stores[i].apply(rd)
                node.advance(rd)
        if not moved:
            for node in nodes:
                node.tick()
    return committed


def signed_proposal(block, tc=None):
    return Proposal(
        block, tc, SIGNERS[block.author].sign(proposal_signing_bytes(VS.domain, block.id))
    )


def test_four_replicas_commit_in_order():
    nodes = make_nodes()
    committed = pump(nodes, rounds=40)
    for i in range(4):
        assert committed[i][:10] == list(range(1, 11))
    heights = sorted(len(c) for c in committed.values())
    assert heights[-1] - heights[0] <= 2  # the next leader learns each QC first


def test_vote_leaves_only_with_its_safety_state():
    """Persist-before-send: the Ready that carries a vote carries the state recording it."""
    node = Node(NodeConfig(3, VS), SIGNERS[3], VERIFIER)
    node.step(signed_proposal(Block(1, GENESIS_QC, b"x", 1)))
    rd = node.ready()
    votes = [o for o in rd.messages if isinstance(o.message, Vote)]
    assert len(votes) == 1 and votes[0].to == 2  # to the leader of round 2
    assert rd.safety_state is not None and rd.safety_state.last_voted_round == 1


def test_seeded_bug_releases_vote_without_state():
    node = Node(NodeConfig(3, VS, bugs=SeededBugs(vote_before_persist=True)), SIGNERS[3], VERIFIER)
    node.step(signed_proposal(Block(1, GENESIS_QC, b"x", 1)))
    rd = node.ready()
    assert any(isinstance(o.message, Vote) for o in rd.messages)
    assert rd.safety_state is None  # the bug: the vote is out, its record is not
    node.advance(rd)
    assert node.ready().safety_state.last_voted_round == 1


@pytest.mark.parametrize("crash_point", ["after_persist", "after_send"])
def test_restarted_replica_never_votes_twice(crash_point):
    store = MemoryStore()
    node = Node(NodeConfig(3, VS), SIGNERS[3], VERIFIER)
    node.step(signed_proposal(Block(1, GENESIS_QC, b"A", 1)))
    rd = node.ready()
    store.persist(rd)
    if crash_point == "after_send":
        assert any(isinstance(o.message, Vote) for o in rd.messages)
    # crash: the node object is gone; rebuild it from the store
    again = Node(NodeConfig(3, VS), SIGNERS[3], VERIFIER, recovery=store.recovery())
    assert again.round == 1
    again.step(signed_proposal(Block(1, GENESIS_QC, b"B", 1)))  # equivocating leader
    rd2 = again.ready()
    assert not any(isinstance(o.message, Vote) for o in rd2.messages)
    assert again.stats.rejected.get("unsafe_vote") == 1


def test_restart_resumes_round_and_commits():
    nodes = make_nodes()
    stores = [MemoryStore() for _ in nodes]
    pump(nodes, stores, rounds=20)
    before = nodes[0].status()
    nodes[0] = Node(NodeConfig(0, VS), SIGNERS[0], VERIFIER, recovery=stores[0].recovery())
    after = nodes[0].status()
    assert after.round >= before.round - 1
    assert after.safety == before.safety
    committed = pump(nodes, stores, rounds=40)
    assert committed[0] and committed[0][0] > before.committed_round


def test_forged_and_misrouted_messages_are_rejected():
    node = Node(NodeConfig(2, VS), SIGNERS[2], VERIFIER)
    b = Block(1, GENESIS_QC, b"x", 1)
    good = signed_proposal(b)
    forged = Proposal(b, None, SIGNERS[3].sign(proposal_signing_bytes(VS.domain, b.id)))
    not_leader = signed_proposal(Block(1, GENESIS_QC, b"x", 3))
    assert not node.step(forged)
    assert not node.step(not_leader)
    assert node.step(good)
    # A vote that claims another author.
    data = b.vote_data()
    vote = Vote(data, 1, SIGNERS[0].sign(b"whatever"))
    assert not node.step(vote)
    # A timeout with a QC that has too few signers.
    weak_qc = qc_for(b, signers=(0, 1))
    assert not node.step(timeout_msg(0, 2, weak_qc))
    # A proposal for a round far ahead without certificates.
    assert not node.step(signed_proposal(Block(3, GENESIS_QC, b"y", 3)))
    rej = node.stats.rejected
    assert rej["bad_proposal_signature"] == 1
    assert rej["proposal_not_from_leader"] == 1
    assert rej["bad_vote_signature"] == 1 or rej.get("vote_not_for_me") == 1
    assert rej["bad_timeout"] == 1
    assert node.step("junk") is False  # type: ignore[arg-type]


def test_timeouts_form_a_tc_and_move_the_round():
    node = Node(NodeConfig(0, VS), SIGNERS[0], VERIFIER)
    for a in (1, 2, 3):
        node.step(timeout_msg(a, 1, GENESIS_QC))
    assert node.round == 2
    assert node.high_tc is not None and node.high_tc.round == 1
    assert sorted(node.high_tc.signers)[:2] == [0, 1] or len(node.high_tc.signers) >= 3
    # f + 1 timeouts made it join: its own timeout was broadcast.
    msgs = node.ready().messages
    assert any(isinstance(o.message, Timeout) and o.message.author == 0 for o in msgs)


def test_lagging_replica_fetches_missing_blocks():
    nodes = make_nodes()
    # Replica 3 hears nothing for a while.
    pump(nodes, drop=lambda s, d, m: d == 3, rounds=30)
    lag = nodes[3].committed_round
    committed = pump(nodes, rounds=60)
    assert nodes[3].committed_round > lag
    assert committed[3] == sorted(committed[3])
    req = BlockRequest(nodes[0].status().committed_id, 4, 3)
    assert nodes[0].step(req)


def test_pacemaker_backs_off_exponentially_and_resets():
    pm = Pacemaker(base_ticks=3, max_ticks=20)
    fires = [t for t in range(1, 60) if pm.tick()]
    assert fires[:4] == [3, 9, 21, 41]  # waits 3, 6, 12, 20(capped)
    pm.enter_round(after_qc=True)
    assert pm.current_timeout == 3


def test_signer_must_match_index():
    with pytest.raises(ConsensusConfigError, match="signer belongs"):
        Node(NodeConfig(0, VS), SIGNERS[1], VERIFIER)


def test_leader_proposes_on_tc_with_its_high_qc():
    blocks, qcs = chain([1])
    node = Node(NodeConfig(3, VS), SIGNERS[3], VERIFIER)
    node.step(signed_proposal(blocks[0]))
    node.step(signed_proposal(Block(2, qcs[0], b"x", 2)))  # learn QC(1) and B2
    node.advance(node.ready())
    for a in (0, 1, 2):
        node.step(timeout_msg(a, 2, qcs[0]))
    assert node.round == 3
    props = [o.message for o in node.ready().messages if isinstance(o.message, Proposal)]
    assert len(props) == 1
    p = props[0]
    assert p.block.qc.round == 1 and p.last_round_tc is not None and p.last_round_tc.round == 2
