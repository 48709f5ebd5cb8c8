"""Replica set validation, signature schemes and certificate verification."""

from __future__ import annotations

import pytest
from consensus_helpers import SIGNERS, VERIFIER, VS, chain, qc_for, raw_qc, tc_for

from bft_ray.consensus import (
    GENESIS_QC,
    CertificateVerifier,
    ConsensusConfigError,
    NodeConfig,
    QuorumCert,
    TimeoutCert,
    ValidatorSet,
    VoteData,
    ed25519_crypto,
    genesis_block,
)


@pytest.mark.parametrize(("n", "f"), [(3, 1), (6, 2), (1, 1)])
def test_too_few_replicas_for_f_is_a_clear_error(n, f):
    with pytest.raises(ConsensusConfigError, match=r"n >= 3f \+ 1"):
        ValidatorSet(tuple(bytes([i]) for i in range(n)), f=f)


def test_default_f_and_quorum():
    assert (VS.n, VS.f, VS.quorum) == (4, 1, 3)
    vs7 = ValidatorSet(tuple(bytes([i]) for i in range(7)))
    assert (vs7.f, vs7.quorum) == (2, 5)
    with pytest.raises(ConsensusConfigError):
        NodeConfig(index=4, validators=VS)


def test_ed25519_signatures():
    vs, signers, verifier = ed25519_crypto(4)
    sig = signers[2].sign(b"hello")
    assert len(sig) == 64
    assert verifier.verify(2, b"hello", sig)
    assert not verifier.verify(1, b"hello", sig)
    assert not verifier.verify(2, b"hellO", sig)
    assert not verifier.verify(9, b"hello", sig)
    assert not verifier.verify(2, b"hello", b"short")
    # Keys are deterministic in the seed.
    assert ed25519_crypto(4)[0].public_keys == vs.public_keys


def test_qc_verification_rules():
    cv = CertificateVerifier(VS, VERIFIER)
    b = chain([1])[0][0]
    good = qc_for(b)
    assert cv.verify_qc(good)
    assert cv.verify_qc(GENESIS_QC)
    data = b.vote_data()
    too_few = QuorumCert(data, good.signatures[:2])
    dup = QuorumCert(data, (good.signatures[0], good.signatures[0], good.signatures[1]))
    unsorted = QuorumCert(data, tuple(reversed(good.signatures)))
    non_member = QuorumCert(data, (*good.signatures[:2], (7, good.signatures[2][1])))
    bad_sig = QuorumCert(data, (*good.signatures[:2], (2, b"\x00" * 16)))
    other_data = QuorumCert(VoteData(b"z" * 32, 1, data.parent_id, 0), good.signatures)
    fake_genesis = QuorumCert(VoteData(genesis_block().id, 0, b"\x01" * 32, 0), ())
    for bad in (too_few, dup, unsorted, non_member, bad_sig, other_data, fake_genesis):
        assert not CertificateVerifier(VS, VERIFIER).verify_qc(bad)


def test_verified_certificates_are_cached():
    cv = CertificateVerifier(VS, VERIFIER)
    qc = qc_for(chain([1])[0][0])
    assert cv.verify_qc(qc)
    checks = cv.signature_checks
    assert checks == 3
    for _ in range(5):
        assert cv.verify_qc(qc)
    assert cv.signature_checks == checks


def test_tc_verification_rules():
    _, qcs = chain([1, 2])
    cv = CertificateVerifier(VS, VERIFIER)
    tc = tc_for(3, {0: qcs[0], 1: qcs[1], 3: qcs[0]})
    assert cv.verify_tc(tc)
    # high_qc must be the highest reported one.
    lying = TimeoutCert(3, qcs[0], tc.signatures)
    assert not CertificateVerifier(VS, VERIFIER).verify_tc(lying)
    # A signer's reported round is covered by its signature.
    s = list(tc.signatures)
    s[0] = (s[0][0], 2, s[0][2])
    assert not CertificateVerifier(VS, VERIFIER).verify_tc(TimeoutCert(3, qcs[1], tuple(s)))
    # Two signers are not a quorum.
    assert not CertificateVerifier(VS, VERIFIER).verify_tc(
        TimeoutCert(3, qcs[1], tc.signatures[:2])
    )
    # A QC forged with too few signers inside a TC poisons the TC.
    weak = raw_qc(qcs[1].data, signers=(0, 1))
    assert not CertificateVerifier(VS, VERIFIER).verify_tc(TimeoutCert(3, weak, tc.signatures))


def test_signatures_are_domain_separated():
    other_vs = ValidatorSet(VS.public_keys, chain_id=b"other-group")
    b = chain([1])[0][0]
    qc = qc_for(b)
    assert CertificateVerifier(VS, VERIFIER).verify_qc(qc)
    assert not CertificateVerifier(other_vs, VERIFIER).verify_qc(qc)
    assert SIGNERS[0].sign(b"a") != SIGNERS[1].sign(b"a")
