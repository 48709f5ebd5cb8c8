"""Consensus data types and their canonical encoding.

Blocks, votes, quorum certificates (QC), timeouts and timeout certificates (TC) are frozen
dataclasses. Each has a canonical byte encoding (:meth:`encode`) and a matching decoder
(:func:`decode_message` and friends). A block's id is the blake3 digest of its encoding; every
signature covers a domain-separated canonical encoding (see ``*_signing_bytes``).

A vote signs :class:`VoteData`, which names the block and its parent (id and round). A QC is the
vote data plus ``2f + 1`` ``(signer, signature)`` pairs sorted by signer. Because the parent is
part of what was signed, the two-chain commit rule can be evaluated from a QC alone.

Example:
    >>> g = genesis_block()
    >>> g.round, len(g.id)
    (0, 32)
    >>> decode_block(g.encode()) == g
    True
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import blake3

from .encoding import ID_LEN, Reader, blob, u32, u64
from .errors import DecodeError

__all__ = [
    "GENESIS_QC",
    "NO_AUTHOR",
    "ZERO_ID",
    "Block",
    "BlockRequest",
    "BlockResponse",
    "Message",
    "Proposal",
    "QuorumCert",
    "Timeout",
    "TimeoutCert",
    "Vote",
    "VoteData",
    "decode_block",
    "decode_message",
    "decode_qc",
    "decode_tc",
    "digest",
    "genesis_block",
    "proposal_signing_bytes",
    "timeout_signing_bytes",
    "vote_signing_bytes",
]

ZERO_ID = bytes(ID_LEN)
#: Author field of the genesis block (no replica proposed it).
NO_AUTHOR = 2**32 - 1

_TAG_BLOCK = 1
_TAG_VOTEDATA = 2
_TAG_VOTE = 3
_TAG_QC = 4
_TAG_TIMEOUT = 5
_TAG_TC = 6
_TAG_PROPOSAL = 7
_TAG_BLOCK_REQUEST = 8
_TAG_BLOCK_RESPONSE = 9


def digest(data: bytes) -> bytes:
    """blake3 digest (32 bytes) of ``data``."""
    return blake3.blake3(data).digest()


class _Struct:
    """Mixin: cached canonical encoding, and pickling that drops the caches.

    Caches live in the instance ``__dict__`` and are never trusted across a process boundary:
    ``__reduce__`` rebuilds the object from its fields, so a forged cached id cannot travel.
    """

    def encode(self) -> bytes:
        """Canonical byte encoding (computed once per object)."""
        enc = self.__dict__.get("_enc")
        if enc is None:
            enc = self._encode()
            object.__setattr__(self, "_enc", enc)
        return enc

    def _encode(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def digest(self) -> bytes:
        """blake3 digest of the canonical encoding (cached)."""
        d = self.__dict__.get("_digest")
        if d is None:
            d = blake3.blake3(self.encode()).digest()
            object.__setattr__(self, "_digest", d)
        return d

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), tuple(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class VoteData(_Struct):
    """What a vote signs: a block and its parent.

    Attributes:
        block_id: Id of the voted block.
        round: Round of the voted block.
        parent_id: Id of its parent (the block its QC certifies).
        parent_round: Round of the parent.
    """

    block_id: bytes
    round: int
    parent_id: bytes
    parent_round: int

    def _encode(self) -> bytes:
        return b"\x02" + self.block_id + u64(self.round) + self.parent_id + u64(self.parent_round)

    @classmethod
    def _read(cls, r: Reader) -> VoteData:
        r.expect_tag(_TAG_VOTEDATA, "VoteData")
        return cls(r.fixed(ID_LEN), r.u64(), r.fixed(ID_LEN), r.u64())


@dataclass(frozen=True)
class QuorumCert(_Struct):
    """A quorum certificate: vote data signed by ``2f + 1`` distinct replicas.

    Attributes:
        data: The certified vote data.
        signatures: ``(signer index, signature)`` pairs, strictly increasing by signer.
    """

    data: VoteData
    signatures: tuple[tuple[int, bytes], ...]

    @property
    def block_id(self) -> bytes:
        """Id of the certified block."""
        return self.data.block_id

    @property
    def round(self) -> int:
        """Round of the certified block."""
        return self.data.round

    @property
    def parent_id(self) -> bytes:
        """Id of the certified block's parent."""
        return self.data.parent_id

    @property
    def parent_round(self) -> int:
        """Round of the certified block's parent."""
        return self.data.parent_round

    @property
    def signers(self) -> tuple[int, ...]:
        """Signer indices."""
        return tuple(s for s, _ in self.signatures)

    def _encode(self) -> bytes:
        parts = [b"\x04", self.data.encode(), u32(len(self.signatures))]
        for signer, sig in self.signatures:
            parts.append(u32(signer))
            parts.append(blob(sig))
        return b"".join(parts)

    @classmethod
    def _read(cls, r: Reader) -> QuorumCert:
        r.expect_tag(_TAG_QC, "QuorumCert")
        data = VoteData._read(r)
        k = r.count(8)
        sigs = tuple((r.u32(), r.blob()) for _ in range(k))
        return cls(data, sigs)


@dataclass(frozen=True)
class Block(_Struct):
    """A proposed block. Its parent is the block certified by ``qc``.

    Attributes:
        round: The round it was proposed in (strictly greater than ``qc.round``).
        qc: Certificate of the parent block.
        payload: Opaque application bytes.
        author: Index of the proposer (the round's leader), ``NO_AUTHOR`` for genesis.
    """

    round: int
    qc: QuorumCert
    payload: bytes
    author: int

    @property
    def id(self) -> bytes:
        """blake3 digest of the canonical encoding."""
        return self.digest

    @property
    def parent_id(self) -> bytes:
        """Id of the parent block."""
        return self.qc.data.block_id

    def vote_data(self) -> VoteData:
        """The vote data a replica signs to vote for this block."""
        return VoteData(self.digest, self.round, self.qc.data.block_id, self.qc.data.round)

    def _encode(self) -> bytes:
        return b"".join(
            (b"\x01", u64(self.round), self.qc.encode(), blob(self.payload), u32(self.author))
        )

    @classmethod
    def _read(cls, r: Reader) -> Block:
        r.expect_tag(_TAG_BLOCK, "Block")
        return cls(r.u64(), QuorumCert._read(r), r.blob(), r.u32())


@dataclass(frozen=True)
class TimeoutCert(_Struct):
    """A timeout certificate: ``2f + 1`` replicas gave up on ``round``.

    Each signer signed ``(round, its own high-QC round)``; ``high_qc`` is the highest of the
    QCs they reported, so a leader that extends it respects every signer's lock.

    Attributes:
        round: The round that timed out.
        high_qc: The QC with the highest round among the signers' reports.
        signatures: ``(signer, high-QC round, signature)`` triples, increasing by signer.
    """

    round: int
    high_qc: QuorumCert
    signatures: tuple[tuple[int, int, bytes], ...]

    @property
    def highest_hqc_round(self) -> int:
        """Largest high-QC round reported by a signer."""
        return max(h for _, h, _ in self.signatures) if self.signatures else 0

    @property
    def signers(self) -> tuple[int, ...]:
        """Signer indices."""
        return tuple(s for s, _, _ in self.signatures)

    def _encode(self) -> bytes:
        parts = [b"\x06", u64(self.round), self.high_qc.encode(), u32(len(self.signatures))]
        for signer, hqc_round, sig in self.signatures:
            parts.append(u32(signer))
            parts.append(u64(hqc_round))
            parts.append(blob(sig))
        return b"".join(parts)

    @classmethod
    def _read(cls, r: Reader) -> TimeoutCert:
        r.expect_tag(_TAG_TC, "TimeoutCert")
        rnd = r.u64()
        hqc = QuorumCert._read(r)
        k = r.count(16)
        sigs = tuple((r.u32(), r.u64(), r.blob()) for _ in range(k))
        return cls(rnd, hqc, sigs)


def _enc_opt_tc(tc: TimeoutCert | None) -> bytes:
    return b"\x00" if tc is None else b"\x01" + tc.encode()


def _read_opt_tc(r: Reader) -> TimeoutCert | None:
    flag = r.u8()
    if flag == 0:
        return None
    if flag != 1:
        raise DecodeError(f"bad option flag {flag}")
    return TimeoutCert._read(r)


@dataclass(frozen=True)
class Proposal(_Struct):
    """A leader's proposal: a block, the TC that justifies its round if any, and a signature.

    Attributes:
        block: The proposed block; ``block.author`` must be the round's leader.
        last_round_tc: TC for ``block.round - 1`` when the leader entered its round by timeout.
        signature: The author's signature over :func:`proposal_signing_bytes`.
    """

    block: Block
    last_round_tc: TimeoutCert | None
    signature: bytes

    @property
    def round(self) -> int:
        """Round of the proposed block."""
        return self.block.round

    @property
    def author(self) -> int:
        """Index of the proposer."""
        return self.block.author

    def _encode(self) -> bytes:
        return b"".join(
            (b"\x07", self.block.encode(), _enc_opt_tc(self.last_round_tc), blob(self.signature))
        )

    @classmethod
    def _read(cls, r: Reader) -> Proposal:
        r.expect_tag(_TAG_PROPOSAL, "Proposal")
        return cls(Block._read(r), _read_opt_tc(r), r.blob())


@dataclass(frozen=True)
class Vote(_Struct):
    """One replica's vote, sent to the leader of the next round.

    Attributes:
        data: The signed vote data.
        author: Index of the voter.
        signature: Signature over :func:`vote_signing_bytes`.
    """

    data: VoteData
    author: int
    signature: bytes

    @property
    def round(self) -> int:
        """Round of the voted block."""
        return self.data.round

    def _encode(self) -> bytes:
        return b"".join((b"\x03", self.data.encode(), u32(self.author), blob(self.signature)))

    @classmethod
    def _read(cls, r: Reader) -> Vote:
        r.expect_tag(_TAG_VOTE, "Vote")
        return cls(VoteData._read(r), r.u32(), r.blob())


@dataclass(frozen=True)
class Timeout(_Struct):
    """A replica gives up on ``round``; broadcast to everyone.

    Attributes:
        round: The round given up.
        high_qc: The sender's highest QC (its round is what the signature covers).
        author: Index of the sender.
        signature: Signature over :func:`timeout_signing_bytes` of ``(round, high_qc.round)``.
        last_round_tc: TC for ``round - 1`` if the sender has it (helps laggards catch up).
    """

    round: int
    high_qc: QuorumCert
    author: int
    signature: bytes
    last_round_tc: TimeoutCert | None = None

    def _encode(self) -> bytes:
        return b"".join(
            (
                b"\x05",
                u64(self.round),
                self.high_qc.encode(),
                u32(self.author),
                blob(self.signature),
                _enc_opt_tc(self.last_round_tc),
            )
        )

    @classmethod
    def _read(cls, r: Reader) -> Timeout:
        r.expect_tag(_TAG_TIMEOUT, "Timeout")
        return cls(r.u64(), QuorumCert._read(r), r.u32(), r.blob(), _read_opt_tc(r))


@dataclass(frozen=True)
class BlockRequest(_Struct):
    """Ask a peer for a block and up to ``count - 1`` of its ancestors.

    Attributes:
        block_id: The wanted block.
        count: Maximum number of blocks in the answer.
        author: Index of the requester (where to send the answer).
    """

    block_id: bytes
    count: int
    author: int

    def _encode(self) -> bytes:
        return b"\x08" + self.block_id + u32(self.count) + u32(self.author)

    @classmethod
    def _read(cls, r: Reader) -> BlockRequest:
        r.expect_tag(_TAG_BLOCK_REQUEST, "BlockRequest")
        return cls(r.fixed(ID_LEN), r.u32(), r.u32())


@dataclass(frozen=True)
class BlockResponse(_Struct):
    """Blocks answering a :class:`BlockRequest`, newest first.

    Blocks need no signature: the requester only accepts blocks whose id it already knows to
    be certified (a QC names it, or a certified child names it as parent).

    Attributes:
        blocks: The requested block followed by its ancestors.
        author: Index of the responder.
    """

    blocks: tuple[Block, ...]
    author: int

    def _encode(self) -> bytes:
        return b"".join(
            [b"\x09", u32(self.author), u32(len(self.blocks))] + [b.encode() for b in self.blocks]
        )

    @classmethod
    def _read(cls, r: Reader) -> BlockResponse:
        r.expect_tag(_TAG_BLOCK_RESPONSE, "BlockResponse")
        author = r.u32()
        k = r.count(40)
        return cls(tuple(Block._read(r) for _ in range(k)), author)


Message = Proposal | Vote | Timeout | BlockRequest | BlockResponse

_READERS = {
    _TAG_PROPOSAL: Proposal._read,
    _TAG_VOTE: Vote._read,
    _TAG_TIMEOUT: Timeout._read,
    _TAG_BLOCK_REQUEST: BlockRequest._read,
    _TAG_BLOCK_RESPONSE: BlockResponse._read,
}


def decode_message(data: bytes) -> Message:
    """Decode a message from its canonical encoding.

    Raises:
        DecodeError: If ``data`` is not exactly the canonical encoding of a message.

    Example:
        >>> req = BlockRequest(ZERO_ID, 4, 1)
        >>> decode_message(req.encode()) == req
        True
    """
    r = Reader(data)
    if not r.data:
        raise DecodeError("empty input")
    reader = _READERS.get(r.data[0])
    if reader is None:
        raise DecodeError(f"unknown message tag {r.data[0]}")
    msg = reader(r)
    r.finish()
    return msg


def _decode_with(fn: Any, data: bytes) -> Any:
    r = Reader(data)
    out = fn(r)
    r.finish()
    return out


def decode_block(data: bytes) -> Block:
    """Decode a :class:`Block` from its canonical encoding."""
    return _decode_with(Block._read, data)


def decode_qc(data: bytes) -> QuorumCert:
    """Decode a :class:`QuorumCert` from its canonical encoding."""
    return _decode_with(QuorumCert._read, data)


def decode_tc(data: bytes) -> TimeoutCert:
    """Decode a :class:`TimeoutCert` from its canonical encoding."""
    return _decode_with(TimeoutCert._read, data)


# --- signing domains -------------------------------------------------------------------
# Each signed statement has its own prefix so a signature on one kind can never be replayed
# as another; the chain id separates independent replica groups.


def vote_signing_bytes(domain: bytes, data: VoteData) -> bytes:
    """Bytes a replica signs to vote for ``data``."""
    return domain + b"/vote/" + data.encode()


def proposal_signing_bytes(domain: bytes, block_id: bytes) -> bytes:
    """Bytes a leader signs to propose the block ``block_id``."""
    return domain + b"/proposal/" + block_id


def timeout_signing_bytes(domain: bytes, round: int, hqc_round: int) -> bytes:
    """Bytes a replica signs to time out ``round`` while holding a QC of ``hqc_round``."""
    return domain + b"/timeout/" + u64(round) + u64(hqc_round)


_NULL_QC = QuorumCert(VoteData(ZERO_ID, 0, ZERO_ID, 0), ())
_GENESIS = Block(0, _NULL_QC, b"", NO_AUTHOR)
#: The certificate of the genesis block; the only valid QC without signatures.
GENESIS_QC = QuorumCert(VoteData(_GENESIS.id, 0, ZERO_ID, 0), ())


def genesis_block() -> Block:
    """The genesis block (round 0), root of every chain."""
    return _GENESIS
