"""Canonical encoding, ids and decoding of consensus messages."""

from __future__ import annotations

import pickle

import pytest
from consensus_helpers import SIGNERS, chain, qc_for, tc_for
from hypothesis import given
from hypothesis import strategies as st

from bft_ray.consensus import (
    GENESIS_QC,
    Block,
    BlockRequest,
    BlockResponse,
    DecodeError,
    Proposal,
    Timeout,
    Vote,
    VoteData,
    decode_block,
    decode_message,
    decode_qc,
    decode_safety_data,
    decode_tc,
    genesis_block,
)
from bft_ray.consensus.safety import SafetyData

ids = st.binary(min_size=32, max_size=32)
rounds = st.integers(min_value=0, max_value=2**63)
small = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def qcs(draw):
    data = VoteData(draw(ids), draw(rounds), draw(ids), draw(rounds))
    signers = sorted(draw(st.sets(st.integers(0, 50), max_size=5)))
    return __import__("bft_ray.consensus", fromlist=["QuorumCert"]).QuorumCert(
        data, tuple((s, draw(st.binary(max_size=70))) for s in signers)
    )


@st.composite
def messages(draw):
    qc = draw(qcs())
    block = Block(draw(rounds), qc, draw(st.binary(max_size=64)), draw(small))
    kind = draw(st.sampled_from(["proposal", "vote", "timeout", "req", "resp"]))
    if kind == "proposal":
        return Proposal(block, None, draw(st.binary(max_size=64)))
    if kind == "vote":
        return Vote(qc.data, draw(small), draw(st.binary(max_size=64)))
    if kind == "timeout":
        return Timeout(draw(rounds), qc, draw(small), draw(st.binary(max_size=64)))
    if kind == "req":
        return BlockRequest(draw(ids), draw(small), draw(small))
    return BlockResponse((block, block), draw(small))


@given(messages())
def test_message_roundtrip_is_canonical(msg):
    enc = msg.encode()
    back = decode_message(enc)
    assert back == msg
    assert back.encode() == enc


@given(messages(), st.integers(1, 20))
def test_truncated_or_extended_encodings_are_rejected(msg, cut):
    enc = msg.encode()
    with pytest.raises(DecodeError):
        decode_message(enc[: max(0, len(enc) - cut)])
    with pytest.raises(DecodeError):
        decode_message(enc + b"\x00")


def test_block_id_covers_every_field():
    g = genesis_block()
    b = Block(1, GENESIS_QC, b"x", 1)
    variants = [
        Block(2, GENESIS_QC, b"x", 1),
        Block(1, GENESIS_QC, b"y", 1),
        Block(1, GENESIS_QC, b"x", 2),
        Block(1, qc_for(g), b"x", 1),
    ]
    assert len({b.id, *(v.id for v in variants)}) == 5
    assert decode_block(b.encode()).id == b.id


def test_certificates_and_safety_data_roundtrip():
    blocks, qcs_ = chain([1, 2])
    tc = tc_for(3, {0: qcs_[0], 1: qcs_[1], 2: qcs_[1]})
    assert decode_qc(qcs_[1].encode()) == qcs_[1]
    assert decode_tc(tc.encode()) == tc
    assert tc.highest_hqc_round == 2
    sd = SafetyData(5, 3, 4, 5)
    assert decode_safety_data(sd.encode()) == sd
    p = Proposal(blocks[1], tc, SIGNERS[1].sign(b"x"))
    assert decode_message(p.encode()) == p


def test_pickle_does_not_carry_cached_ids():
    b = Block(1, GENESIS_QC, b"x", 1)
    _ = b.id
    object.__setattr__(b, "_digest", b"\x00" * 32)  # a forged cache must not travel
    back = pickle.loads(pickle.dumps(b))
    assert back.id == Block(1, GENESIS_QC, b"x", 1).id != b"\x00" * 32


@pytest.mark.parametrize("data", [b"", b"\xff", b"\x03\x02", "not bytes"])
def test_garbage_is_rejected(data):
    with pytest.raises(DecodeError):
        decode_message(data)  # type: ignore[arg-type]
