"""One BFT verifier without Ray: the verdict application and the drain loop around the core.

The Ray actor (:mod:`bft_ray.verifier.group`) and the tests' in-memory network drive the same
:class:`VerifierReplica`, so everything but transport and timers is tested without Ray.

:class:`VerdictApp` is the consensus core's application:

* **Intake.** A claim is *offered* once this verifier has rechecked it
  (:func:`~bft_ray.verifier.recheck.recheck`): the recheck result is kept with it.
* **Proposing.** A leader proposes the valid claims it holds that are neither committed nor in
  the chain it extends, oldest first, at most ``max_claims`` per block. It proposes only when
  there is something to order or to finish: a payload block is committed by a certificate of
  a later block, which the other replicas only see in the proposal after it, so a leader also
  proposes while the chain it extends holds payload it has not applied yet. Otherwise it stays
  quiet, and an idle group sends nothing.
* **Voting.** A replica votes for a block only if every claim in it is one it rechecked and
  found valid, and the block does not leave out a valid claim it has held for more than
  ``censor_after`` ticks (a censoring leader's blocks get no votes, its round times out, and the
  next leader orders the claim). A claim still uncommitted after ``give_up_after`` ticks is
  dropped, so honest verifiers that judged one claim differently cannot block each other for
  good.
* **Applying.** A committed claim's judgements are the record every verifier applies to its
  reputation and its standing (:mod:`bft_ray.verifier.trust_state`: credit, streaks,
  quarantine), including one that never read the answers: they were rechecked by the
  ``2f + 1`` voters, at least ``f + 1`` of them honest. A committed operator record
  (``ban``/``reinstate``, signed by the dispatcher) is applied to the standing in the same
  order. Both are rebuilt by replaying the ledger after a restart (:meth:`VerdictApp.restore`).

:class:`VerifierReplica` is the drain loop of the ``Ready`` contract: persist, collect the
messages to send, apply the committed blocks (ledger rows and reputation), ``advance``.

Example:
    >>> from bft_ray.consensus import NodeConfig, Node, sim_crypto
    >>> from bft_ray.crypto import SigningKey
    >>> vs, signers, verifier = sim_crypto(4)
    >>> app = VerdictApp(SigningKey.generate().public_bytes)
    >>> rep = VerifierReplica(Node(NodeConfig(1, vs), signers[1], verifier, app), app)
    >>> rep.drain()       # nothing to order: the leader of round 1 stays quiet
    ([], [])
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import blake3

from bft_ray.consensus.blocktree import CommittedBlock
from bft_ray.consensus.node import Node, Outgoing, Ready
from bft_ray.consensus.types import Block, Message
from bft_ray.trust.reputation import Reputation
from bft_ray.verifier.claims import (
    ClaimError,
    SignedClaim,
    SignedOperator,
    decode_entry,
    decode_payload,
    encode_payload,
)
from bft_ray.verifier.recheck import Recheck, Verdict, record_of
from bft_ray.verifier.trust_state import TrustRules, blocked

__all__ = ["Committed", "LedgerStore", "MemoryLedger", "VerdictApp", "VerifierReplica"]

logger = logging.getLogger(__name__)

_KEEP_COMMITTED = 200_000  # task ids remembered as committed (duplicates are ignored)
_MAX_REJECTED = 10_000  # refused claims remembered (their recheck answers repeat asks)
# An operator record needs no recheck: the dispatcher's signature over it is the whole check.
OPERATOR_OK = Recheck(Verdict.VALID)


@dataclasses.dataclass(frozen=True)
class Committed:
    """One claim of a committed block, as this verifier applies it.

    Attributes:
        task_id: The call (an operator record's ``op-`` id).
        entry: Index of the claim in the block's payload.
        claim: The signed claim (or signed operator record) as committed.
        block: The committed block.
        recheck: This verifier's own recheck, or ``None`` if it never rechecked the claim
            (it then does not sign a certificate for it).
        standing_digest: Digest of this verifier's standing once the whole block is applied
            (equal on every honest verifier after the same block).
        blocked: Executors quarantined or banned in that standing, ``(id, status)`` sorted.
        chain: The committed blocks from ``block`` (exclusive) to the block the commit rule
            committed directly (inclusive); empty when ``block`` is that block.
        commit_qcs: The QCs proving the commit rule for that head (``CommittedBlock``).
    """

    task_id: str
    entry: int
    claim: SignedClaim | SignedOperator
    block: Block
    recheck: Recheck | None
    standing_digest: bytes = b""
    blocked: tuple[tuple[str, str], ...] = ()
    chain: tuple[Block, ...] = ()
    commit_qcs: tuple[Any, ...] = ()

    @property
    def operator(self) -> bool:
        """Whether this entry is an operator record rather than a verdict claim."""
        return isinstance(self.claim, SignedOperator)


@dataclasses.dataclass
class _Held:
    claim: SignedClaim | SignedOperator
    entry: bytes
    recheck: Recheck
    since: int  # tick when it was offered


class VerdictApp:
    """The verifier group's consensus application (pure; see the module docstring).

    Args:
        dispatcher_key: Public key whose signature every claim must carry.
        max_claims: Most claims per block.
        censor_after: Ticks a valid claim may wait before a block that omits it gets no vote.
        give_up_after: Ticks after which an uncommitted claim is dropped.
        rules: The standing rules (prices, quarantine); identical on every verifier of a group.
    """

    def __init__(
        self,
        dispatcher_key: bytes,
        max_claims: int = 256,
        censor_after: int = 20,
        give_up_after: int | None = None,
        rules: TrustRules | None = None,
    ):
        self.dispatcher_key = dispatcher_key
        self._accepted = {dispatcher_key}  # keys whose entries decode (more only in restore)
        self.max_claims = max_claims
        self.censor_after = censor_after
        # A claim still uncommitted after this many ticks is dropped: honest verifiers that
        # read its answers differently (an answer that landed between their reads) would
        # otherwise refuse each other's blocks forever. The call then fails to certify.
        self.give_up_after = give_up_after if give_up_after is not None else 10 * censor_after
        self.now = 0
        self._held: OrderedDict[str, _Held] = OrderedDict()  # task id -> valid, uncommitted
        self._rejected: dict[bytes, Recheck] = {}  # entry digest -> invalid recheck
        self._committed: OrderedDict[str, None] = OrderedDict()
        self._blocks: dict[bytes, tuple[bytes, int, tuple[str, ...]]] = {}
        self._decoded: dict[bytes, SignedClaim | SignedOperator | None] = {}
        self.committed_round = 0
        self.reputation = Reputation()
        self.rules = rules or TrustRules()
        self.standing = self.rules.new_standing()

    # -- intake ----------------------------------------------------------------------------

    def decode(self, entry: bytes) -> SignedClaim | SignedOperator | None:
        """The signed claim (or operator record) in a payload entry, if well formed and signed
        by the dispatcher."""
        key = blake3.blake3(entry).digest()
        if key not in self._decoded:
            if len(self._decoded) > 10_000:
                self._decoded.clear()
            try:
                sc = decode_entry(entry)
                ok = any(sc.verify(k) for k in self._accepted)
                self._decoded[key] = sc if ok else None
            except ClaimError:
                self._decoded[key] = None
        return self._decoded[key]

    def offer(self, entry: bytes, result: Recheck) -> bool:
        """Hold a claim this verifier rechecked. Returns whether it is new and valid."""
        sc = self.decode(entry)
        if sc is None or sc.task_id in self._committed:
            return False
        if not result.ok:
            if len(self._rejected) >= _MAX_REJECTED:  # bounded: refusals are anyone's to cause
                self._rejected.pop(next(iter(self._rejected)))
            self._rejected[blake3.blake3(entry).digest()] = result
            logger.warning("claim for %s refused: %s", sc.task_id, result.reason)
            return False
        held = self._held.get(sc.task_id)
        if held is not None:
            return False
        self._held[sc.task_id] = _Held(sc, entry, result, self.now)
        return True

    def recheck_of(self, entry: bytes) -> Recheck | None:
        """This verifier's recheck of a claim, if it holds one."""
        sc = self.decode(entry)
        if sc is None:
            return None
        if isinstance(sc, SignedOperator):
            return OPERATOR_OK  # valid wherever its signature is: nothing to read or replay
        held = self._held.get(sc.task_id)
        if held is not None and held.entry == entry:
            return held.recheck
        return self._rejected.get(blake3.blake3(entry).digest())

    def pending(self) -> int:
        """Valid claims held and not committed yet."""
        return len(self._held)

    def is_committed(self, task_id: str) -> bool:
        return task_id in self._committed

    # -- the core's hooks --------------------------------------------------------------------

    def _chain_tasks(self, block_id: bytes) -> set[str]:
        """Task ids in the uncommitted chain ending at ``block_id``."""
        out: set[str] = set()
        seen = 0
        while block_id in self._blocks and seen < 1000:
            parent, rnd, tasks = self._blocks[block_id]
            if rnd <= self.committed_round:
                break
            out.update(tasks)
            block_id = parent
            seen += 1
        return out

    def _remember(self, block: Block) -> tuple[str, ...]:
        if block.id in self._blocks:
            return self._blocks[block.id][2]
        tasks = []
        for entry in _entries(block.payload):
            sc = self.decode(entry)
            if sc is not None:
                tasks.append(sc.task_id)
        self._blocks[block.id] = (block.parent_id, block.round, tuple(tasks))
        return tuple(tasks)

    def _orderable(self, parent: Block) -> list[_Held]:
        self._remember(parent)
        in_chain = self._chain_tasks(parent.id)
        return [h for t, h in self._held.items() if t not in in_chain]

    continuous = False  # benchmarks: leaders always propose (consensus alone, empty blocks)

    def should_propose(self, round: int, parent: Block) -> bool:
        """Propose if a claim waits, or while the chain holds payload not yet applied here.

        The second case finishes earlier work: the block that certifies a payload block's child
        commits it at the leader, but the others learn that QC only from the next proposal, so
        a leader keeps extending the chain until the payload is committed in its own view. That
        costs one more (empty) block after the leader's commit; an idle group then stops.
        """
        if self.continuous or self._orderable(parent):
            return True
        return self._chain_has_payload(parent.id)

    def _chain_has_payload(self, block_id: bytes) -> bool:
        seen = 0
        while block_id in self._blocks and seen < 1000:
            parent, rnd, tasks = self._blocks[block_id]
            if rnd <= self.committed_round:
                return False
            if tasks:
                return True
            block_id = parent
            seen += 1
        return False

    def propose_payload(self, round: int, parent: Block) -> bytes:
        """The waiting valid claims, oldest first, up to ``max_claims``."""
        held = self._orderable(parent)[: self.max_claims]
        return encode_payload([h.entry for h in held])

    def validate_payload(self, block: Block) -> bool:
        """Vote only for rechecked, valid claims, and not for a block that censors one."""
        entries = _entries(block.payload)
        if entries is None:
            return False
        self._remember(block)
        for entry in entries:
            r = self.recheck_of(entry)
            if r is None or not r.ok:
                return False
        self._expire()
        in_chain = self._chain_tasks(block.id)
        for task_id, held in self._held.items():
            if self.now - held.since < self.censor_after:
                break  # held in arrival order: the rest is younger
            if task_id not in in_chain:
                logger.info("block of round %d leaves out %s: no vote", block.round, task_id)
                return False
        return True

    def _expire(self) -> None:
        while self._held:
            task_id, held = next(iter(self._held.items()))
            if self.now - held.since < self.give_up_after:
                return
            logger.warning(
                "claim for %s not committed after %d ticks: dropped", task_id, self.now - held.since
            )
            del self._held[task_id]

    # -- applying ----------------------------------------------------------------------------

    def commit(self, block: Block) -> list[Committed]:
        """Apply one committed block: mark its claims committed, update reputation and standing."""
        done = []
        self.committed_round = max(self.committed_round, block.round)
        for i, entry in enumerate(_entries(block.payload) or []):
            sc = self.decode(entry)
            if sc is None or sc.task_id in self._committed:
                continue  # a duplicate (a claim ordered twice counts once)
            self._committed[sc.task_id] = None
            if len(self._committed) > _KEEP_COMMITTED:
                self._committed.popitem(last=False)
            held = self._held.pop(sc.task_id, None)
            mine = held.recheck if held is not None and held.entry == entry else None
            if isinstance(sc, SignedOperator):
                mine = OPERATOR_OK
            self.apply_committed(sc)
            done.append((sc, i, mine))
        self._blocks = {k: v for k, v in self._blocks.items() if v[1] >= self.committed_round}
        if not done:
            return []
        # One view per block: every honest verifier holds it after applying this block, so the
        # dispatcher can adopt it once f + 1 verifiers report the same one for the same block.
        digest, stops = self.standing_digest(), blocked(self.standing)
        return [Committed(sc.task_id, i, sc, block, mine, digest, stops) for sc, i, mine in done]

    def apply_committed(self, sc: SignedClaim | SignedOperator) -> None:
        """Apply one committed entry to the derived state (reputation, standing), in commit
        order. The only place committed entries change that state."""
        if isinstance(sc, SignedOperator):
            self.rules.apply_operator(self.standing, sc.op)
            return
        record = record_of(sc.claim)
        for j in record.judgements:
            if j.executor_id != "-":
                self.reputation.register(j.executor_id, 0, j.slot)
        self.reputation.apply(record)
        self.rules.apply_claim(self.standing, self.reputation, sc.claim)

    def restore(
        self, blocks: Sequence[Block], former_keys: Sequence[bytes] = ()
    ) -> list[SignedClaim]:
        """Rebuild the committed set, reputation and standing from committed blocks (after a
        restart): the same entries in the same order give the same state.

        Args:
            blocks: The committed blocks, in commit order.
            former_keys: Dispatcher keys of former runs that used this ledger: their entries
                were committed under those keys, so they are applied too (a new run keeps the
                standing of the last). Only here: a live block needs the current key, so an old
                entry replayed by a leader is never applied twice.

        Returns:
            The current dispatcher's claims among them, in commit order (the verifier pins
            their executors; a former run's executors had other keys).
        """
        current = self.dispatcher_key
        mine: list[SignedClaim] = []
        try:
            self._accepted = {current, *former_keys}
            for block in blocks:
                for c in self.commit(block):
                    if isinstance(c.claim, SignedClaim) and (
                        not former_keys or c.claim.verify(current)
                    ):
                        mine.append(c.claim)
        finally:
            self._accepted = {current}
            self._decoded.clear()  # nothing decoded under a former key outlives the restore
        return mine

    def standing_digest(self) -> bytes:
        """Digest of the standing (equal on every honest verifier; see ``Standing.digest``)."""
        return self.standing.digest()

    def reputation_digest(self) -> bytes:
        """Digest of the reputation state (equal on every honest verifier)."""
        rows = [
            (
                r.executor_id,
                r.tasks,
                r.agreed,
                r.disagreed,
                r.unaligned,
                r.invalid,
                r.crashed,
                r.timeouts,
                r.disputed,
            )
            for r in self.reputation.records()
        ]
        return blake3.blake3(repr(sorted(rows)).encode()).digest()


def _chain_to_head(committed: Sequence[CommittedBlock], k: int) -> tuple[Block, ...]:
    """The blocks after ``committed[k]`` up to its head (the batch is in commit order)."""
    head = committed[k].head_id
    if committed[k].block.id == head:
        return ()
    out = []
    for later in committed[k + 1 :]:
        out.append(later.block)
        if later.block.id == head:
            return tuple(out)
    return ()  # the head is not in this batch: no proof can be built (never expected)


def _entries(payload: bytes) -> list[bytes] | None:
    try:
        return decode_payload(payload)
    except ClaimError:
        return None


class LedgerStore(Protocol):
    """What the drain loop needs of a store (the SQLite ``Ledger`` or :class:`MemoryLedger`)."""

    def persist(self, ready: Ready) -> None: ...

    def append(self, committed: CommittedBlock, verdicts: Sequence[Any]) -> None: ...


class MemoryLedger:
    """In-memory store for the simulator and tests (the consensus ``MemoryStore`` plus rows)."""

    def __init__(self) -> None:
        from bft_ray.consensus.storage import MemoryStore

        self.store = MemoryStore()
        self.rows: list[tuple[bytes, list[Any]]] = []
        self.blocks: list[Block] = []
        self._safety: list[Any] = []

    def persist(self, ready: Ready) -> None:
        self.store.persist(ready)
        if ready.safety_state is not None:
            self._safety.append(ready.safety_state)

    def safety_history(self) -> list[Any]:
        """Every safety state persisted, in order (as ``Ledger.safety_history``)."""
        return list(self._safety)

    def append(self, committed: CommittedBlock, verdicts: Sequence[Any]) -> None:
        self.rows.append((committed.block.id, list(verdicts)))
        if not self.blocks or self.blocks[-1].id != committed.block.id:
            self.blocks.append(committed.block)  # a restarted node re-emits its last commit
        b = committed.block
        self.store.committed_id, self.store.committed_round = b.id, b.round

    def recovery(self) -> Any:
        return self.store.recovery()

    def committed(self, start_height: int = 1) -> list[tuple[int, Block]]:
        """Committed blocks as ``(height, block)``, in commit order (as ``Ledger.committed``)."""
        return [(h, b) for h, b in enumerate(self.blocks, 1) if h >= start_height]


class VerifierReplica:
    """A consensus node, its verdict application and its store, driven by one drain loop.

    Args:
        node: The consensus core (built with ``app``).
        app: Its :class:`VerdictApp`.
        store: Where ``Ready`` state and committed blocks go (default: in memory).
        rows: Maps the applied claims of one committed block to the store's verdict rows.
    """

    def __init__(
        self,
        node: Node,
        app: VerdictApp,
        store: LedgerStore | None = None,
        rows: Any = None,
    ) -> None:
        self.node = node
        self.app = app
        self.store: LedgerStore = store if store is not None else MemoryLedger()
        self.rows = rows or (lambda applied: [])

    @property
    def index(self) -> int:
        return self.node.index

    def step(self, message: Message) -> bool:
        """Feed one message from a peer."""
        return self.node.step(message)

    def tick(self) -> None:
        """One logical tick (timers, censorship clock, dropping claims that never commit)."""
        self.app.now += 1
        self.app._expire()
        self.node.tick()

    def offer(self, entry: bytes, result: Recheck) -> bool:
        """Hold a rechecked claim and let the leader propose it."""
        new = self.app.offer(entry, result)
        if new:
            self.node.poke()
        return new

    def busy(self) -> bool:
        """Whether the timers should run: a claim waits, or a payload block is uncommitted."""
        return self.app.pending() > 0 or self.app.continuous

    def drain(self) -> tuple[list[Outgoing], list[Committed]]:
        """Do the ``Ready`` work: persist, then collect sends, apply commits, advance.

        Returns the messages to send (only now: their safety state is persisted) and the
        claims committed, in commit order.
        """
        sends: list[Outgoing] = []
        applied: list[Committed] = []
        if not self.node.has_ready():
            return sends, applied
        batch = getattr(self.store, "batch", None)
        # One durable write for everything below; the messages are handed out only after it.
        with batch() if batch is not None else contextlib.nullcontext():
            while self.node.has_ready():
                rd = self.node.ready()
                self.store.persist(rd)  # durable (at the batch's end) BEFORE rd.messages leave
                sends.extend(rd.messages)
                for k, cb in enumerate(rd.committed):
                    done = self.app.commit(cb.block)
                    self.store.append(cb, self.rows(done))
                    if done:  # what a certificate needs to prove the commit on its own
                        chain = _chain_to_head(rd.committed, k)
                        done = [
                            dataclasses.replace(c, chain=chain, commit_qcs=cb.commit_proof)
                            for c in done
                        ]
                    applied.extend(done)
                self.node.advance(rd)
        return sends, applied
