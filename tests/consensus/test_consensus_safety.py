"""Each safety rule on its own, for both commit rules, and the seeded lock bug."""

from __future__ import annotations

import itertools

import pytest
from consensus_helpers import DOMAIN, SIGNERS, chain, qc_for, tc_for

from bft_ray.consensus import (
    GENESIS_QC,
    Block,
    CommitRule,
    SafetyData,
    SafetyRules,
    SeededBugs,
    UnsafeActionError,
)

TWO, THREE = CommitRule.TWO_CHAIN, CommitRule.THREE_CHAIN


def rules(data=None, rule=TWO, bugs=None, index=0):
    return SafetyRules(data or SafetyData(), SIGNERS[index], DOMAIN, rule, bugs)


@pytest.mark.parametrize("rule", [TWO, THREE])
def test_one_vote_per_round(rule):
    sr = rules(rule=rule)
    sr.vote(Block(1, GENESIS_QC, b"a", 1), None)
    with pytest.raises(UnsafeActionError, match="already voted"):
        sr.vote(Block(1, GENESIS_QC, b"b", 1), None)
    with pytest.raises(UnsafeActionError):
        sr.vote(Block(1, GENESIS_QC, b"a", 1), None)  # not even the same block twice
    assert sr.data.last_voted_round == 1


@pytest.mark.parametrize("rule", [TWO, THREE])
def test_no_vote_for_an_older_round(rule):
    sr = rules(SafetyData(last_voted_round=5), rule=rule)
    _blocks, qcs = chain([1, 2, 3, 4])
    with pytest.raises(UnsafeActionError):
        sr.vote(Block(4, qcs[2], b"x", 0), None)


def test_two_chain_vote_needs_consecutive_qc_or_tc():
    _blocks, qcs = chain([1, 2])
    sr = rules()
    # Round 4 on a QC of round 2 without a TC of round 3: refused.
    with pytest.raises(UnsafeActionError, match="no TC"):
        sr.vote(Block(4, qcs[1], b"x", 0), None)
    # With a TC of round 3 whose highest high-QC is round 2: accepted.
    tc = tc_for(3, {0: qcs[1], 1: qcs[0], 2: qcs[0]})
    sr.vote(Block(4, qcs[1], b"x", 0), tc)
    assert sr.data.last_voted_round == 4
    assert sr.data.locked_round == 2


def test_two_chain_lock_via_tc_and_seeded_bug():
    _blocks, qcs = chain([1, 2])
    tc = tc_for(3, {0: qcs[1], 1: qcs[0], 2: qcs[0]})  # someone holds a QC of round 2
    stale = Block(4, qcs[0], b"stale", 0)  # extends round 1 only
    with pytest.raises(UnsafeActionError, match="lock"):
        rules().vote(stale, tc)
    # The seeded bug skips exactly this check.
    rules(bugs=SeededBugs(skip_lock_check=True)).vote(stale, tc)


def test_three_chain_preferred_round_and_seeded_bug():
    _blocks, qcs = chain([1, 2, 3])
    sr = rules(rule=THREE)
    sr.vote(Block(4, qcs[2], b"x", 0), None)  # QC of 3 whose parent round is 2
    assert sr.data.preferred_round == 2
    with pytest.raises(UnsafeActionError, match="preferred"):
        sr.vote(Block(5, qcs[0], b"y", 0), None)
    sr.vote(Block(6, qcs[1], b"z", 0), None)  # QC round 2 >= preferred round 2: fine
    bug = rules(SafetyData(last_voted_round=4, preferred_round=2), THREE, SeededBugs(True))
    bug.vote(Block(5, qcs[0], b"y", 0), None)


def test_timeout_rules_two_chain():
    _blocks, qcs = chain([1, 2])
    sr = rules()
    sr.vote(Block(3, qcs[1], b"x", 0), None)
    t = sr.timeout(3, qcs[1], None)  # may time out the round it voted in
    assert (t.round, t.high_qc.round) == (3, 2)
    assert sr.data.highest_timeout_round == 3
    # ... but never vote there afterwards.
    with pytest.raises(UnsafeActionError):
        sr.vote(Block(3, qcs[1], b"other", 0), None)
    # Timing out an older round is refused.
    with pytest.raises(UnsafeActionError):
        sr.timeout(2, qcs[0], None)
    # A high QC below the lock is refused.
    with pytest.raises(UnsafeActionError, match="lock"):
        rules(SafetyData(locked_round=2)).timeout(2, qcs[0], None)
    # The round must follow the high QC or a TC.
    with pytest.raises(UnsafeActionError, match="not justified"):
        rules().timeout(5, qcs[1], None)
    tc4 = tc_for(4, {0: qcs[1], 1: qcs[1], 2: qcs[1]})
    t5 = rules().timeout(5, qcs[1], tc4)
    assert t5.last_round_tc == tc4


def test_timeout_rule_three_chain():
    _, qcs = chain([1])
    with pytest.raises(UnsafeActionError, match="preferred"):
        rules(SafetyData(preferred_round=3), THREE).timeout(3, qcs[0], None)
    rules(SafetyData(preferred_round=3), THREE).timeout(4, qcs[0], None)


def test_proposal_rule():
    sr = rules(index=1)
    p = sr.propose(Block(1, GENESIS_QC, b"x", 1), None)
    assert p.block.author == 1
    with pytest.raises(UnsafeActionError, match="own proposals"):
        sr.propose(Block(1, GENESIS_QC, b"x", 2), None)
    sr.vote(p.block, None)
    with pytest.raises(UnsafeActionError, match="already voted"):
        sr.propose(Block(1, GENESIS_QC, b"y", 1), None)


def test_safety_data_never_decreases():
    _blocks, qcs = chain([1, 2, 3, 4])
    sr = rules(rule=THREE)
    seen = [sr.data]
    for b in [Block(5, qcs[3], b"a", 0), Block(7, qcs[2], b"b", 0)]:
        sr.vote(b, None)
        seen.append(sr.data)
    sr.timeout(8, qcs[3], None)
    seen.append(sr.data)
    for a, b in itertools.pairwise(seen):
        assert b.dominates(a)
    assert sr.data == SafetyData(
        last_voted_round=8, preferred_round=3, locked_round=4, highest_timeout_round=8
    )


def test_votes_are_signed_over_the_block():
    b = Block(1, GENESIS_QC, b"x", 1)
    v = rules(index=2).vote(b, None)
    assert v.author == 2 and v.data == b.vote_data()
    assert qc_for(b).data == v.data
