"""Commit rules on hand-built chains, and the block tree's commit walk."""

from __future__ import annotations

import pytest
from consensus_helpers import chain, qc_for, tc_for

from bft_ray.consensus import (
    Block,
    BlockTree,
    CommitRule,
    SafetyViolationError,
    SeededBugs,
    three_chain_commit,
    two_chain_commit,
    verify_commit_proof,
)

BUG = SeededBugs(non_consecutive_commit=True)


def test_two_chain_needs_consecutive_rounds():
    blocks, qcs = chain([1, 2, 4])
    # QC(B2) with parent B1 in round 1: commits B1.
    assert two_chain_commit(qcs[1])[:2] == (blocks[0].id, 1)
    # QC(B4) with parent B2 in round 2: a gap, no commit.
    assert two_chain_commit(qcs[2]) is None
    # ... unless the seeded bug drops the check.
    assert two_chain_commit(qcs[2], BUG)[:2] == (blocks[1].id, 2)
    assert verify_commit_proof(blocks[0].id, 1, (qcs[1],), CommitRule.TWO_CHAIN)
    assert not verify_commit_proof(blocks[1].id, 2, (qcs[2],), CommitRule.TWO_CHAIN)


def test_three_chain_needs_two_consecutive_links():
    blocks, qcs = chain([1, 2, 3, 5, 6])
    assert three_chain_commit(qcs[2], qcs[1])[:2] == (blocks[0].id, 1)
    # B2 <- B3 <- B5: the second link has a gap.
    assert three_chain_commit(qcs[3], qcs[2]) is None
    # B3 <- B5 <- B6: the first link has a gap.
    assert three_chain_commit(qcs[4], qcs[3]) is None
    assert three_chain_commit(qcs[4], qcs[3], BUG)[:2] == (blocks[2].id, 3)
    # The parent QC must certify qc's parent.
    assert three_chain_commit(qcs[2], qcs[0]) is None
    assert verify_commit_proof(blocks[0].id, 1, (qcs[1], qcs[2]), CommitRule.THREE_CHAIN)
    assert not verify_commit_proof(blocks[0].id, 1, (qcs[2],), CommitRule.THREE_CHAIN)


@pytest.mark.parametrize(
    ("rule", "committed"), [(CommitRule.TWO_CHAIN, 3), (CommitRule.THREE_CHAIN, 2)]
)
def test_tree_commits_ancestors_in_order(rule, committed):
    blocks, qcs = chain([1, 2, 3, 4])
    tree = BlockTree(rule)
    for b in blocks:
        tree.add_block(b)
    for q in qcs:
        tree.add_qc(q)
    out, missing = tree.take_commits()
    assert missing is None
    assert [c.block.round for c in out] == list(range(1, committed + 1))
    assert all(c.head_id == blocks[committed - 1].id for c in out)
    assert tree.committed_round == committed
    assert tree.take_commits() == ([], None)


def test_tree_reports_missing_block_then_commits():
    blocks, qcs = chain([1, 2, 3])
    tree = BlockTree()
    tree.add_block(blocks[2])
    for q in qcs:
        tree.add_qc(q)
    out, missing = tree.take_commits()
    assert out == [] and missing == blocks[1].id
    tree.add_block(blocks[1])
    out, missing = tree.take_commits()
    assert missing == blocks[0].id
    tree.add_block(blocks[0])
    out, missing = tree.take_commits()
    assert [c.block.round for c in out] == [1, 2] and missing is None


def test_tree_refuses_a_conflicting_commit():
    blocks, qcs = chain([1, 2, 3])
    tree = BlockTree()
    for b, q in zip(blocks, qcs):
        tree.add_block(b)
        tree.add_qc(q)
    tree.take_commits()
    assert tree.committed_round == 2
    # A fork from genesis, certified in rounds 5 and 6 (only possible with > f faults).
    fork, fqcs = chain([5, 6], author=2)
    for b, q in zip(fork, fqcs):
        tree.add_block(b)
        tree.add_qc(q)
    with pytest.raises(SafetyViolationError, match="does not extend"):
        tree.take_commits()


def test_commit_needs_direct_parent_not_just_a_descendant():
    # B1 <- B2 <- B4: QC(B4) proves B2 is certified by its child but the rounds are not
    # consecutive, so even though B2 extends B1 nothing new may commit from QC(B4).
    blocks, qcs = chain([1, 2, 4])
    tree = BlockTree()
    for b in blocks:
        tree.add_block(b)
    tree.add_qc(qcs[0])
    tree.add_qc(qcs[2])
    assert tree.take_commits() == ([], None)
    buggy = BlockTree(bugs=BUG)
    for b in blocks:
        buggy.add_block(b)
    buggy.add_qc(qcs[2])
    out, _ = buggy.take_commits()
    assert [c.block.round for c in out] == [1, 2]


def test_tc_is_not_a_certificate_of_a_block():
    _blocks, qcs = chain([1, 2])
    tc = tc_for(3, {0: qcs[1], 1: qcs[1], 2: qcs[0]})
    assert tc.high_qc == qcs[1]
    b4 = Block(4, qcs[1], b"x", 0)
    q4 = qc_for(b4)
    # QC(B4) on top of QC(B2) with a TC in round 3 between them: no two-chain commit of B2.
    assert two_chain_commit(q4) is None
