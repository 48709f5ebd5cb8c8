"""The replica state machine: ``step`` / ``tick`` / ``ready`` / ``advance``.

Shaped like etcd raft's ``RawNode``. A transport drives a :class:`Node` like this::

    node = Node(config, signer, verifier, app)
    while True:
        for msg in inbox():  node.step(msg)      # messages from other replicas
        if timer_fired():    node.tick()         # one logical tick
        if node.has_ready():
            rd = node.ready()
            store.persist(rd)                    # 1. rd.safety_state, rd.blocks, rd.certificates
            for out in rd.messages: send(out)    # 2. out.to is a replica index or None (= all others)
            apply(rd.committed)                  # 3. committed blocks, in order
            node.advance(rd)                     # 4.

Step 1 must be durable before step 2: a vote or timeout is only ever released in a ``Ready``
whose ``safety_state`` already records it (persist-before-send), so a replica rebuilt from its
store never signs twice in a round. The core has no clocks, threads, randomness or I/O.

Example:
    >>> from bft_ray.consensus.crypto import sim_crypto
    >>> vs, signers, verifier = sim_crypto(4)
    >>> nodes = [Node(NodeConfig(i, vs), signers[i], verifier) for i in range(4)]
    >>> rd = nodes[1].ready()                    # replica 1 leads round 1 and proposes
    >>> [type(o.message).__name__ for o in rd.messages]
    ['Proposal', 'Vote']
    >>> rd.safety_state.last_voted_round         # its own vote is recorded in the same Ready
    1
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .app import Application, NullApplication, wants_to_propose
from .blocktree import BlockTree, CommittedBlock
from .config import NodeConfig
from .crypto import CertificateVerifier, SignatureVerifier, Signer
from .errors import ConsensusConfigError, UnsafeActionError
from .leader import LeaderElection, RoundRobin
from .pacemaker import Pacemaker
from .safety import SafetyData, SafetyRules
from .storage import RecoveryState
from .types import (
    GENESIS_QC,
    Block,
    BlockRequest,
    BlockResponse,
    Message,
    Proposal,
    QuorumCert,
    Timeout,
    TimeoutCert,
    Vote,
)

__all__ = ["Node", "NodeStats", "Outgoing", "Ready", "Status"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """A message to send.

    Attributes:
        to: Destination replica index, or ``None`` for every other replica.
        message: The message (send its canonical encoding, or pickle it).
    """

    to: int | None
    message: Message


@dataclass(frozen=True)
class Ready:
    """Work the transport must do, in this order: persist, send, apply, then ``advance``.

    Attributes:
        safety_state: New safety data to persist durably **before** sending ``messages``
            (None if unchanged).
        blocks: New blocks to add to the block store.
        certificates: New highest QC / TC (persist for a faster restart).
        messages: Messages to send.
        committed: Newly committed blocks, oldest first, to apply.
    """

    safety_state: SafetyData | None
    blocks: tuple[Block, ...]
    certificates: tuple[QuorumCert | TimeoutCert, ...]
    messages: tuple[Outgoing, ...]
    committed: tuple[CommittedBlock, ...]
    safety_version: int = field(default=0, repr=False, compare=False)


@dataclass(frozen=True)
class Status:
    """Snapshot of a replica's position (for monitoring and tests)."""

    index: int
    round: int
    high_qc_round: int
    high_tc_round: int
    committed_round: int
    committed_id: bytes
    safety: SafetyData


@dataclass
class NodeStats:
    """Counters; ``rejected`` maps a reason to how many messages were dropped for it."""

    steps: int = 0
    ticks: int = 0
    proposals: int = 0
    votes: int = 0
    timeouts: int = 0
    qcs_formed: int = 0
    tcs_formed: int = 0
    committed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class _VoteRound:
    __slots__ = ("authors", "by_data")

    def __init__(self) -> None:
        self.authors: dict[int, None] = {}
        self.by_data: dict[bytes, dict[int, bytes]] = {}


class Node:
    """One HotStuff replica as a pure state machine.

    Args:
        config: Index, replica set, commit rule, timers, seeded bugs.
        signer: This replica's signer (``signer.index == config.index``).
        verifier: Signature checker for the replica set's keys.
        app: Payload hooks; defaults to empty payloads that are always valid.
        leader_election: Who leads each round; round robin by default. Must be the same on
            every replica.
        recovery: Persisted state to resume from after a crash.

    Raises:
        ConsensusConfigError: If the signer does not belong to ``config.index``.
    """

    def __init__(
        self,
        config: NodeConfig,
        signer: Signer,
        verifier: SignatureVerifier,
        app: Application | None = None,
        *,
        leader_election: LeaderElection | None = None,
        recovery: RecoveryState | None = None,
    ) -> None:
        if signer.index != config.index:
            raise ConsensusConfigError(
                f"signer belongs to replica {signer.index}, config to replica {config.index}"
            )
        vs = config.validators
        self.config = config
        self.index = config.index
        self._n = vs.n
        self._f = vs.f
        self._quorum = vs.quorum
        self._window = config.future_round_window
        self._certs = CertificateVerifier(vs, verifier)
        self._app: Application = app if app is not None else NullApplication()
        self._leaders: LeaderElection = leader_election or RoundRobin(vs.n)
        self._bugs = config.bugs
        self._defer_vote_persist = config.bugs.vote_before_persist
        self._tree = BlockTree(config.commit_rule, config.bugs, config.retain_committed_blocks)
        self._pm = Pacemaker(config.base_timeout_ticks, config.max_timeout_ticks)
        self._round = 0
        self._high_qc: QuorumCert = GENESIS_QC
        self._high_tc: TimeoutCert | None = None
        self._proposed_round = 0
        self._stored_round = 0  # last round a proposal block was stored for (memory bound)
        self._votes: dict[int, _VoteRound] = {}
        self._timeouts: dict[int, dict[int, Timeout]] = {}
        self._my_timeout: Timeout | None = None
        self._wanted: dict[bytes, list[int]] = {}  # block id -> [peer, tick of last request]
        self._ticks = 0
        self.stats = NodeStats()
        self._out_msgs: list[Outgoing] = []
        self._out_blocks: list[Block] = []
        self._out_certs: list[QuorumCert | TimeoutCert] = []
        self._out_committed: list[CommittedBlock] = []
        self._safety = SafetyRules(
            recovery.safety if recovery is not None else SafetyData(),
            signer,
            vs.domain,
            config.commit_rule,
            config.bugs,
        )
        self._persisted_version = 0
        self._visible_version = 0
        if recovery is not None:
            self._recover(recovery)
        self._enter_round(
            max(self._high_qc.data.round, self._high_tc.round if self._high_tc else 0) + 1, True
        )
        self._maybe_propose()

    # ------------------------------------------------------------------ public API

    @property
    def round(self) -> int:
        """Current round."""
        return self._round

    @property
    def high_qc(self) -> QuorumCert:
        """Highest verified QC."""
        return self._high_qc

    @property
    def high_tc(self) -> TimeoutCert | None:
        """Highest verified TC."""
        return self._high_tc

    @property
    def safety_data(self) -> SafetyData:
        """Current (possibly not yet persisted) safety data."""
        return self._safety.data

    @property
    def committed_round(self) -> int:
        """Round of the last committed block."""
        return self._tree.committed_round

    def status(self) -> Status:
        """Snapshot of the replica's position."""
        return Status(
            self.index,
            self._round,
            self._high_qc.data.round,
            self._high_tc.round if self._high_tc else 0,
            self._tree.committed_round,
            self._tree.committed_id,
            self._safety.data,
        )

    def step(self, message: Message) -> bool:
        """Feed one message from the network.

        Invalid, forged, stale or duplicate messages are dropped (counted in
        ``stats.rejected``); they never raise.

        Returns:
            True if the message was accepted as new and authentic.
        """
        self.stats.steps += 1
        t = type(message)
        if t is Vote:
            ok = self._on_vote(message)  # type: ignore[arg-type]
        elif t is Proposal:
            ok = self._on_proposal(message)  # type: ignore[arg-type]
        elif t is Timeout:
            ok = self._on_timeout(message)  # type: ignore[arg-type]
        elif t is BlockRequest:
            ok = self._on_block_request(message)  # type: ignore[arg-type]
        elif t is BlockResponse:
            ok = self._on_block_response(message)  # type: ignore[arg-type]
        else:
            ok = self._reject("unknown_type")
        self._maybe_propose()
        return ok

    def tick(self) -> None:
        """Advance the logical clock by one tick (timeouts, fetch retries)."""
        self._ticks += 1
        self.stats.ticks += 1
        if self._pm.tick():
            self._local_timeout()
        if self._wanted and self._ticks % self.config.sync_retry_ticks == 0:
            self._retry_fetches()
        self._maybe_propose()

    def poke(self) -> None:
        """The application has new payload: propose now if this replica leads and has not.

        Only matters for applications with a ``should_propose`` hook (see
        :func:`~bft_ray.consensus.app.wants_to_propose`).
        """
        self._maybe_propose()

    def has_ready(self) -> bool:
        """True if :meth:`ready` has something to persist, send or apply."""
        return bool(
            self._out_msgs
            or self._out_blocks
            or self._out_committed
            or self._out_certs
            or self._visible_version > self._persisted_version
        )

    def ready(self) -> Ready:
        """Collect pending work. Call :meth:`advance` with it once it is done."""
        v = self._visible_version
        return Ready(
            self._safety.data if v > self._persisted_version else None,
            tuple(self._out_blocks),
            tuple(self._out_certs),
            tuple(self._out_msgs),
            tuple(self._out_committed),
            v,
        )

    def advance(self, ready: Ready) -> None:
        """Acknowledge that ``ready`` was persisted, sent and applied."""
        del self._out_blocks[: len(ready.blocks)]
        del self._out_certs[: len(ready.certificates)]
        del self._out_msgs[: len(ready.messages)]
        del self._out_committed[: len(ready.committed)]
        if ready.safety_state is not None and ready.safety_version > self._persisted_version:
            self._persisted_version = ready.safety_version
        if self._defer_vote_persist:
            # SEEDED BUG (test-only): the vote already left in `ready`; only now is the state
            # that records it offered for persistence.
            self._visible_version = self._safety.version

    # ------------------------------------------------------------------ internals

    def _reject(self, reason: str) -> bool:
        r = self.stats.rejected
        r[reason] = r.get(reason, 0) + 1
        return False

    def _safety_changed(self, by_vote: bool) -> None:
        if not (by_vote and self._defer_vote_persist):
            self._visible_version = self._safety.version

    def _send(self, to: int | None, msg: Message) -> None:
        self._out_msgs.append(Outgoing(to, msg))

    def _recover(self, rec: RecoveryState) -> None:
        blocks = sorted(rec.blocks, key=lambda b: b.round)
        for b in blocks:
            self._tree.add_block(b)
        self._tree.set_committed(rec.committed_id)
        for b in blocks:
            if b.round > self._tree.committed_round:
                self._process_qc(b.qc)
        for c in rec.certificates:
            if isinstance(c, QuorumCert):
                self._process_qc(c)
            else:
                self._process_tc(c)
        self._out_blocks.clear()
        self._out_certs.clear()
        self._emit_commits()

    def _enter_round(self, new_round: int, after_qc: bool) -> None:
        if new_round <= self._round:
            return
        self._round = new_round
        self._pm.enter_round(after_qc)
        self._my_timeout = None
        if self._votes:
            self._votes = {r: v for r, v in self._votes.items() if r >= new_round - 1}
        if self._timeouts:
            self._timeouts = {r: t for r, t in self._timeouts.items() if r >= new_round}

    def _process_qc(self, qc: QuorumCert) -> None:
        """Learn a verified QC: store it, maybe commit, maybe advance the round."""
        if self._tree.add_qc(qc) and self._tree.target is not None:
            self._emit_commits()
        r = qc.data.round
        if r > self._high_qc.data.round:
            self._high_qc = qc
            self._out_certs.append(qc)
        if r >= self._round:
            self._enter_round(r + 1, True)

    def _process_tc(self, tc: TimeoutCert) -> None:
        """Learn a verified TC: its high QC, and maybe advance the round."""
        self._process_qc(tc.high_qc)
        if self._high_tc is None or tc.round > self._high_tc.round:
            self._high_tc = tc
            self._out_certs.append(tc)
        if tc.round >= self._round:
            self._enter_round(tc.round + 1, False)

    def _emit_commits(self) -> None:
        committed, missing = self._tree.take_commits()
        if committed:
            self._out_committed.extend(committed)
            self.stats.committed += len(committed)
            for c in committed:
                self._wanted.pop(c.block.id, None)
        if missing is not None:
            self._want(missing, None)

    def _store_block(self, block: Block) -> None:
        if self._tree.add_block(block):
            self._out_blocks.append(block)
            self._wanted.pop(block.id, None)
            if self._tree.target is not None:
                self._emit_commits()

    # -- proposals ----------------------------------------------------------------

    def _maybe_propose(self) -> None:
        r = self._round
        if self._proposed_round >= r or self._leaders.leader(r) != self.index:
            return
        qc = self._high_qc
        tc = None
        if qc.data.round + 1 != r:
            tc = self._high_tc
            if tc is None or tc.round + 1 != r:
                return
        parent = self._tree.blocks.get(qc.data.block_id)
        if parent is None:
            self._want(qc.data.block_id, self._leaders.leader(qc.data.round))
            return
        if r <= self._safety.data.last_voted_round:
            self._proposed_round = r  # already voted or timed out here (e.g. before a restart)
            return
        if not wants_to_propose(self._app, r, parent):
            return  # nothing to order yet; the transport pokes when payload arrives
        payload = self._app.propose_payload(r, parent)
        try:
            proposal = self._safety.propose(Block(r, qc, payload, self.index), tc)
        except UnsafeActionError as e:
            logger.debug("replica %d does not propose: %s", self.index, e)
            return
        self._proposed_round = r
        self.stats.proposals += 1
        self._send(None, proposal)
        self._accept_proposal(proposal)

    def _on_proposal(self, p: Proposal) -> bool:
        b = p.block
        r = b.round
        author = b.author
        if r < self._round:
            if b.id in self._wanted and self._certs.verify_qc(b.qc):
                self._store_block(b)  # certified by a QC we hold; useful for commits
                return True
            return self._reject("stale_proposal")
        if not (0 <= author < self._n) or self._leaders.leader(r) != author:
            return self._reject("proposal_not_from_leader")
        qc = b.qc
        if qc.data.round >= r:
            return self._reject("proposal_qc_not_older")
        if not self._certs.verify_proposal(p):
            return self._reject("bad_proposal_signature")
        if not self._certs.verify_qc(qc):
            return self._reject("bad_qc")
        tc = p.last_round_tc
        if tc is not None and (tc.round >= r or not self._certs.verify_tc(tc)):
            return self._reject("bad_tc")
        self._process_qc(qc)
        if tc is not None:
            self._process_tc(tc)
        if r != self._round:
            return self._reject("proposal_round_not_justified")
        self._accept_proposal(p)
        return True

    def _accept_proposal(self, p: Proposal) -> None:
        """Store a verified proposal of the current round and vote for it if safe."""
        b = p.block
        if self._stored_round < b.round or b.id in self._wanted:
            # One block per round is stored from proposals; an equivocating leader's other
            # blocks are fetched later only if certified.
            self._stored_round = b.round
            self._store_block(b)
        try:
            valid = self._app.validate_payload(b)
        except Exception:
            logger.exception("replica %d: validate_payload raised; not voting", self.index)
            valid = False
        if not valid:
            self._reject("invalid_payload")
            return
        try:
            vote = self._safety.vote(b, p.last_round_tc)
        except UnsafeActionError as e:
            logger.debug("replica %d does not vote: %s", self.index, e)
            self._reject("unsafe_vote")
            return
        self._safety_changed(by_vote=True)
        self.stats.votes += 1
        nxt = self._leaders.leader(b.round + 1)
        if nxt == self.index:
            self._collect_vote(vote)
        else:
            self._send(nxt, vote)

    # -- votes --------------------------------------------------------------------

    def _on_vote(self, v: Vote) -> bool:
        r = v.data.round
        a = v.author
        if not (0 <= a < self._n):
            return self._reject("bad_author")
        if r + 1 < self._round or r > self._round + self._window:
            return self._reject("stale_vote")
        if self._leaders.leader(r + 1) != self.index:
            return self._reject("vote_not_for_me")
        coll = self._votes.get(r)
        if coll is not None and a in coll.authors:
            return self._reject("duplicate_vote")
        if not self._certs.verify_vote(v):
            return self._reject("bad_vote_signature")
        self._collect_vote(v)
        return True

    def _collect_vote(self, v: Vote) -> None:
        r = v.data.round
        coll = self._votes.get(r)
        if coll is None:
            coll = self._votes[r] = _VoteRound()
        if v.author in coll.authors:
            return
        coll.authors[v.author] = None
        sigs = coll.by_data.setdefault(v.data.encode(), {})
        sigs[v.author] = v.signature
        if len(sigs) == self._quorum:
            qc = QuorumCert(v.data, tuple(sorted(sigs.items())))
            self._certs.mark_verified(qc)
            self.stats.qcs_formed += 1
            self._process_qc(qc)

    # -- timeouts -----------------------------------------------------------------

    def _local_timeout(self) -> None:
        r = self._round
        if self._my_timeout is not None and self._my_timeout.round == r:
            self._send(None, self._my_timeout)  # re-broadcast: earlier copies may be lost
            return
        try:
            t = self._safety.timeout(r, self._high_qc, self._high_tc)
        except UnsafeActionError as e:
            logger.debug("replica %d does not time out: %s", self.index, e)
            return
        self._safety_changed(by_vote=False)
        self.stats.timeouts += 1
        self._my_timeout = t
        self._send(None, t)
        self._collect_timeout(t)

    def _on_timeout(self, t: Timeout) -> bool:
        r = t.round
        a = t.author
        if not (0 <= a < self._n):
            return self._reject("bad_author")
        if r < self._round:
            return self._reject("stale_timeout")
        coll = self._timeouts.get(r)
        if coll is not None and a in coll:
            return self._reject("duplicate_timeout")
        if not self._certs.verify_timeout(t):
            return self._reject("bad_timeout")
        tc = t.last_round_tc
        if tc is not None and (tc.round >= r or not self._certs.verify_tc(tc)):
            return self._reject("bad_tc")
        # Certificates are processed whatever the round, so a replica that fell far behind
        # catches up; only collection is bounded (memory a Byzantine sender could inflate).
        self._process_qc(t.high_qc)
        if tc is not None:
            self._process_tc(tc)
        if self._round <= r <= self._round + self._window:
            self._collect_timeout(t)
        return True

    def _collect_timeout(self, t: Timeout) -> None:
        r = t.round
        coll = self._timeouts.get(r)
        if coll is None:
            coll = self._timeouts[r] = {}
        if t.author in coll:
            return
        coll[t.author] = t
        if r == self._round and self._my_timeout is None and len(coll) > self._f:
            # f + 1 replicas gave up, so at least one honest one did: join them, so a TC forms
            # even if our own timer is later than theirs.
            self._local_timeout()
        if len(coll) >= self._quorum and (self._high_tc is None or self._high_tc.round < r):
            ts = sorted(coll.values(), key=lambda x: x.author)
            high = max(ts, key=lambda x: x.high_qc.data.round).high_qc
            tc = TimeoutCert(
                r, high, tuple((x.author, x.high_qc.data.round, x.signature) for x in ts)
            )
            self._certs.mark_verified(tc)
            self.stats.tcs_formed += 1
            self._process_tc(tc)

    # -- block sync -----------------------------------------------------------------

    def _want(self, block_id: bytes, peer: int | None) -> None:
        if block_id in self._wanted or block_id in self._tree.blocks:
            return
        if peer is None or peer == self.index or not (0 <= peer < self._n):
            peer = (self.index + 1) % self._n
        self._wanted[block_id] = [peer, self._ticks]
        if peer != self.index:
            self._send(peer, BlockRequest(block_id, self.config.max_fetch_blocks, self.index))

    def _retry_fetches(self) -> None:
        retry = self.config.sync_retry_ticks
        for bid, w in self._wanted.items():
            if self._ticks - w[1] >= retry:
                peer = (w[0] + 1) % self._n
                if peer == self.index:
                    peer = (peer + 1) % self._n
                w[0] = peer
                w[1] = self._ticks
                if peer != self.index:
                    self._send(peer, BlockRequest(bid, self.config.max_fetch_blocks, self.index))

    def _on_block_request(self, req: BlockRequest) -> bool:
        if not (0 <= req.author < self._n) or req.author == self.index:
            return self._reject("bad_author")
        out: list[Block] = []
        get = self._tree.get
        b = get(req.block_id)
        limit = min(max(req.count, 1), self.config.max_fetch_blocks)
        while b is not None and b.round > 0 and len(out) < limit:
            out.append(b)
            b = get(b.qc.data.block_id)
        if not out:
            return self._reject("unknown_block")
        self._send(req.author, BlockResponse(tuple(out), self.index))
        return True

    def _on_block_response(self, resp: BlockResponse) -> bool:
        chain_ok: dict[bytes, None] = {}  # ids certified by a block accepted from this answer
        accepted = 0
        for b in resp.blocks:
            if type(b) is not Block:
                return self._reject("malformed_block_response")
            bid = b.id
            if bid not in self._wanted and bid not in chain_ok:
                continue
            if bid in self._tree.blocks:
                self._wanted.pop(bid, None)
                continue
            qc = b.qc
            if qc.data.round >= b.round or not self._certs.verify_qc(qc):
                return self._reject("bad_fetched_block")
            self._store_block(b)
            self._wanted.pop(bid, None)
            self._process_qc(qc)
            chain_ok[qc.data.block_id] = None
            accepted += 1
        if not accepted:
            return self._reject("unwanted_blocks")
        self._emit_commits()
        return True
