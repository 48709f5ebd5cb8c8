"""What a BFT verifier does with a proposal before its core sees it. No Ray: the verifier object
is driven directly.

Anyone in a Ray cluster can call a verifier's ``deliver``; decoding a proposal's claims and
checking their signatures costs about 0.4 ms per entry, so only proposals their author really
signed get that work ahead of the core (an adversarial review found the verifier did it for any
bytes, and kept a future per entry it waited for, forever).
"""

from __future__ import annotations

from bft_ray.consensus import GENESIS_QC, Block, Proposal, ValidatorSet
from bft_ray.consensus.crypto import Ed25519Signer
from bft_ray.consensus.types import proposal_signing_bytes
from bft_ray.crypto import SigningKey
from bft_ray.verifier.group import BftVerifier, GroupSetup


def _verifier(tmp_path) -> tuple[BftVerifier, list[Ed25519Signer], ValidatorSet]:
    signers = [Ed25519Signer(i, bytes([i]) * 32) for i in range(4)]
    validators = ValidatorSet(tuple(s.public_key for s in signers))
    verifier = BftVerifier(
        GroupSetup("unit", 0, 4, SigningKey.generate().public_bytes, str(tmp_path))
    )
    verifier.validators = validators
    return verifier, signers, validators


def test_only_a_proposal_its_author_signed_is_worth_its_claims(tmp_path):
    verifier, signers, vs = _verifier(tmp_path)
    block = Block(1, GENESIS_QC, b"payload", 1)
    good = signers[1].sign(proposal_signing_bytes(vs.domain, block.id))
    assert verifier._signed_by_author(Proposal(block, None, good))
    by_another = signers[2].sign(proposal_signing_bytes(vs.domain, block.id))
    assert not verifier._signed_by_author(Proposal(block, None, by_another))
    assert not verifier._signed_by_author(Proposal(block, None, bytes(64)))
    stranger = Block(1, GENESIS_QC, b"payload", 9)  # no such replica
    assert not verifier._signed_by_author(Proposal(stranger, None, good))
