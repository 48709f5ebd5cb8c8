"""Shared builders for the consensus tests (hand-made blocks, QCs and TCs signed with sim keys)."""

from __future__ import annotations

from bft_ray.consensus import (
    GENESIS_QC,
    Block,
    QuorumCert,
    Timeout,
    TimeoutCert,
    VoteData,
    sim_crypto,
)
from bft_ray.consensus.types import timeout_signing_bytes, vote_signing_bytes

VS, SIGNERS, VERIFIER = sim_crypto(4)
DOMAIN = VS.domain


def qc_for(block: Block, signers=(0, 1, 2)) -> QuorumCert:
    """A valid QC for ``block`` signed by ``signers``."""
    data = block.vote_data()
    msg = vote_signing_bytes(DOMAIN, data)
    return QuorumCert(data, tuple((i, SIGNERS[i].sign(msg)) for i in sorted(signers)))


def raw_qc(data: VoteData, signers=(0, 1, 2)) -> QuorumCert:
    """A validly signed QC over arbitrary vote data."""
    msg = vote_signing_bytes(DOMAIN, data)
    return QuorumCert(data, tuple((i, SIGNERS[i].sign(msg)) for i in sorted(signers)))


def tc_for(round: int, high_qcs: dict[int, QuorumCert]) -> TimeoutCert:
    """A valid TC of ``round`` whose signers report the given high QCs."""
    sigs = []
    for i in sorted(high_qcs):
        q = high_qcs[i]
        sigs.append((i, q.round, SIGNERS[i].sign(timeout_signing_bytes(DOMAIN, round, q.round))))
    high = max(high_qcs.values(), key=lambda q: q.round)
    return TimeoutCert(round, high, tuple(sigs))


def timeout_msg(author: int, round: int, high_qc: QuorumCert) -> Timeout:
    """A signed timeout message."""
    sig = SIGNERS[author].sign(timeout_signing_bytes(DOMAIN, round, high_qc.round))
    return Timeout(round, high_qc, author, sig)


def chain(rounds: list[int], author: int = 1, base: QuorumCert = GENESIS_QC):
    """Blocks with the given rounds, each extending the previous one; returns (blocks, qcs)."""
    blocks, qcs = [], []
    qc = base
    for r in rounds:
        b = Block(r, qc, b"p%d" % r, author)
        qc = qc_for(b)
        blocks.append(b)
        qcs.append(qc)
    return blocks, qcs
