"""Signatures behind a small interface, the replica set, and cached certificate checks.

Two schemes implement :class:`Signer` / :class:`SignatureVerifier`:

* Ed25519 (the ``cryptography`` package) for real deployments;
* a fast deterministic stand-in (keyed blake3) for simulation. The stand-in's verifier holds
  every replica's secret, so it is **not** a signature scheme: never use it outside tests.

:class:`CertificateVerifier` checks votes, proposals, timeouts, QCs and TCs against a
:class:`ValidatorSet`; a QC or TC that verified once is remembered by digest and never checked
again.

Example:
    >>> vs, signers, verifier = sim_crypto(4)
    >>> (vs.n, vs.f, vs.quorum)
    (4, 1, 3)
    >>> verifier.verify(2, b"m", signers[2].sign(b"m"))
    True
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import ConsensusConfigError
from .types import (
    GENESIS_QC,
    Proposal,
    QuorumCert,
    Timeout,
    TimeoutCert,
    Vote,
    proposal_signing_bytes,
    timeout_signing_bytes,
    vote_signing_bytes,
)

__all__ = [
    "CertificateVerifier",
    "Ed25519Signer",
    "Ed25519Verifier",
    "SignatureVerifier",
    "Signer",
    "SimSigner",
    "SimVerifier",
    "ValidatorSet",
    "ed25519_crypto",
    "sim_crypto",
]


@runtime_checkable
class Signer(Protocol):
    """Signs bytes with one replica's key."""

    index: int

    def sign(self, message: bytes) -> bytes:
        """Return a signature over ``message``."""
        ...


@runtime_checkable
class SignatureVerifier(Protocol):
    """Checks a signature of replica ``index``."""

    def verify(self, index: int, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is ``index``'s valid signature over ``message``."""
        ...


@dataclass(frozen=True)
class ValidatorSet:
    """The replica set: public keys indexed ``0..n-1``, fault bound and quorum.

    Args:
        public_keys: One public key per replica (opaque bytes; raw Ed25519 keys for real use).
        f: Number of Byzantine replicas tolerated; default ``(n - 1) // 3``.
        chain_id: Separates the signatures of independent replica groups.

    Raises:
        ConsensusConfigError: If ``n < 3f + 1`` or ``f < 0`` or there are no replicas.

    Example:
        >>> ValidatorSet((b"a", b"b", b"c", b"d")).quorum
        3
    """

    public_keys: tuple[bytes, ...]
    f: int = -1
    chain_id: bytes = b"bft-ray"

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_keys", tuple(self.public_keys))
        n = len(self.public_keys)
        if n == 0:
            raise ConsensusConfigError("a validator set needs at least one replica")
        if self.f == -1:
            object.__setattr__(self, "f", (n - 1) // 3)
        if self.f < 0:
            raise ConsensusConfigError(f"f must be >= 0, got {self.f}")
        if n < 3 * self.f + 1:
            raise ConsensusConfigError(
                f"n = {n} replicas cannot tolerate f = {self.f} Byzantine faults: "
                f"BFT needs n >= 3f + 1 = {3 * self.f + 1}; add replicas or lower f"
            )

    @property
    def n(self) -> int:
        """Number of replicas."""
        return len(self.public_keys)

    @property
    def quorum(self) -> int:
        """Votes needed for a certificate: ``2f + 1``."""
        return 2 * self.f + 1

    @property
    def domain(self) -> bytes:
        """Prefix of every signed statement."""
        return b"bft-ray/consensus/v1/" + self.chain_id


class Ed25519Signer:
    """Ed25519 signer for replica ``index``.

    Args:
        index: Replica index.
        private_key: An ``Ed25519PrivateKey`` or its 32 raw bytes.
    """

    def __init__(self, index: int, private_key: Ed25519PrivateKey | bytes) -> None:
        if isinstance(private_key, (bytes, bytearray)):
            private_key = Ed25519PrivateKey.from_private_bytes(bytes(private_key))
        self.index = index
        self._key = private_key

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte public key."""
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature (64 bytes)."""
        return self._key.sign(message)


class Ed25519Verifier:
    """Verifies Ed25519 signatures against raw public keys (index = position)."""

    def __init__(self, public_keys: Sequence[bytes]) -> None:
        self._keys = [Ed25519PublicKey.from_public_bytes(bytes(k)) for k in public_keys]

    def verify(self, index: int, message: bytes, signature: bytes) -> bool:
        """True iff the signature is valid; unknown indices and malformed input are invalid."""
        if not (0 <= index < len(self._keys)) or not isinstance(signature, bytes):
            return False
        try:
            self._keys[index].verify(signature, message)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


class SimSigner:
    """Simulation stand-in: ``blake3(message, key=secret)[:16]``. Not a signature scheme."""

    def __init__(self, index: int, secret: bytes) -> None:
        self.index = index
        self._secret = secret

    def sign(self, message: bytes) -> bytes:
        """Keyed-hash "signature" (16 bytes)."""
        return blake3.blake3(message, key=self._secret).digest(16)


class SimVerifier:
    """Verifier of :class:`SimSigner`; knows every secret (so only for simulation)."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        self._secrets = list(secrets)

    def verify(self, index: int, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is ``index``'s keyed hash of ``message``."""
        if not (0 <= index < len(self._secrets)) or not isinstance(signature, bytes):
            return False
        good = blake3.blake3(message, key=self._secrets[index]).digest(16)
        return hmac.compare_digest(good, signature)


def sim_crypto(
    n: int, seed: bytes = b"sim", f: int = -1, chain_id: bytes = b"bft-ray"
) -> tuple[ValidatorSet, list[SimSigner], SimVerifier]:
    """Deterministic stand-in keys for ``n`` replicas.

    Returns:
        ``(validator set, one signer per replica, shared verifier)``.
    """
    secrets = [blake3.blake3(seed + b"/secret/" + i.to_bytes(4, "big")).digest() for i in range(n)]
    pubs = tuple(blake3.blake3(s).digest() for s in secrets)
    return (
        ValidatorSet(pubs, f=f, chain_id=chain_id),
        [SimSigner(i, s) for i, s in enumerate(secrets)],
        SimVerifier(secrets),
    )


def ed25519_crypto(
    n: int, seed: bytes = b"ed25519", f: int = -1, chain_id: bytes = b"bft-ray"
) -> tuple[ValidatorSet, list[Ed25519Signer], Ed25519Verifier]:
    """Deterministic Ed25519 keys for ``n`` replicas (derived from ``seed``; for tests and demos).

    Returns:
        ``(validator set, one signer per replica, verifier)``.
    """
    signers = [
        Ed25519Signer(i, blake3.blake3(seed + b"/ed25519/" + i.to_bytes(4, "big")).digest())
        for i in range(n)
    ]
    pubs = tuple(s.public_key for s in signers)
    return ValidatorSet(pubs, f=f, chain_id=chain_id), signers, Ed25519Verifier(pubs)


class CertificateVerifier:
    """Checks signed consensus objects against a validator set, caching verified certificates.

    A QC is valid iff it is the genesis QC, or it has at least ``2f + 1`` signers, signers are
    strictly increasing (hence distinct) members, and every signature is valid. A TC is valid
    iff the same holds for its signers, each over ``(round, own high-QC round)``, its
    ``high_qc`` is valid, has a round below the TC's, and equals the highest reported round.

    Args:
        validators: The replica set.
        verifier: Signature checker for its keys.
        cache_size: How many verified certificate digests to remember.
    """

    def __init__(
        self, validators: ValidatorSet, verifier: SignatureVerifier, cache_size: int = 4096
    ) -> None:
        self.validators = validators
        self._verifier = verifier
        self._domain = validators.domain
        self._n = validators.n
        self._quorum = validators.quorum
        self._cache: dict[bytes, None] = {}
        self._cache_size = cache_size
        #: Number of signature checks performed (for tests and benchmarks).
        self.signature_checks = 0

    def _remember(self, key: bytes) -> None:
        cache = self._cache
        cache[key] = None
        if len(cache) > self._cache_size:
            del cache[next(iter(cache))]  # oldest first: dicts keep insertion order

    def mark_verified(self, cert: QuorumCert | TimeoutCert) -> None:
        """Record a certificate built locally from individually verified messages."""
        self._remember(cert.digest)

    def _sig(self, index: int, message: bytes, signature: bytes) -> bool:
        self.signature_checks += 1
        return self._verifier.verify(index, message, signature)

    def _signers_ok(self, signers: Sequence[int]) -> bool:
        if len(signers) < self._quorum:
            return False
        prev = -1
        for s in signers:
            if not isinstance(s, int) or s <= prev or s >= self._n:
                return False
            prev = s
        return True

    def verify_qc(self, qc: QuorumCert) -> bool:
        """True iff ``qc`` is valid (see class docs). Cached by digest."""
        if qc.data.round == 0:
            return qc == GENESIS_QC
        key = qc.digest
        if key in self._cache:
            return True
        if not self._signers_ok([s for s, _ in qc.signatures]):
            return False
        if qc.data.parent_round >= qc.data.round:
            return False
        msg = vote_signing_bytes(self._domain, qc.data)
        for signer, sig in qc.signatures:
            if not self._sig(signer, msg, sig):
                return False
        self._remember(key)
        return True

    def verify_tc(self, tc: TimeoutCert) -> bool:
        """True iff ``tc`` is valid (see class docs). Cached by digest."""
        key = tc.digest
        if key in self._cache:
            return True
        if tc.round < 1 or not self._signers_ok([s for s, _, _ in tc.signatures]):
            return False
        hqc = tc.high_qc
        if hqc.round >= tc.round or hqc.round != tc.highest_hqc_round:
            return False
        if not self.verify_qc(hqc):
            return False
        for signer, hqc_round, sig in tc.signatures:
            if not isinstance(hqc_round, int) or hqc_round >= tc.round:
                return False
            if not self._sig(signer, timeout_signing_bytes(self._domain, tc.round, hqc_round), sig):
                return False
        self._remember(key)
        return True

    def verify_vote(self, vote: Vote) -> bool:
        """True iff the vote's signature is its author's."""
        return self._sig(vote.author, vote_signing_bytes(self._domain, vote.data), vote.signature)

    def verify_timeout(self, timeout: Timeout) -> bool:
        """True iff the timeout's signature is valid and its high QC is below its round and valid.

        The optional ``last_round_tc`` is checked separately by the caller.
        """
        hqc = timeout.high_qc
        if hqc.round >= timeout.round:
            return False
        msg = timeout_signing_bytes(self._domain, timeout.round, hqc.round)
        return self._sig(timeout.author, msg, timeout.signature) and self.verify_qc(hqc)

    def verify_proposal(self, proposal: Proposal) -> bool:
        """True iff the proposal is signed by its block's author (leadership checked elsewhere)."""
        block = proposal.block
        msg = proposal_signing_bytes(self._domain, block.id)
        return self._sig(block.author, msg, proposal.signature)
