"""Byzantine behaviours for simulated replicas.

A Byzantine replica runs the correct core (so it knows rounds, QCs and TCs) and a
:class:`Behavior` decides what actually leaves it, signing extra or altered messages with its
own key. Behaviours by name (for :class:`~bft_ray.sim.network.SimConfig` ``byzantine=``):

* ``silent``: sends nothing;
* ``equivocate``: as leader, sends one block to half the replicas and a conflicting block to
  the other half;
* ``equivocate_late``: as ``equivocate``, and a few ticks later sends each replica the block it
  did *not* get (a replica that forgot its vote would vote again);
* ``double_vote``: every vote is followed by a vote for a made-up conflicting block;
* ``conflicting_votes``: votes for every proposal it sees, whatever its safety rules say;
* ``forge``: corrupts its signatures and impersonates other replicas, including a forged QC;
* ``replay``: re-sends old messages it received to random replicas;
* ``stale_proposer``: as leader, proposes on the genesis QC (ignoring every lock) with its
  latest TC attached; only a replica that skips its lock check votes for it.

Example:
    >>> make_behavior("silent").name
    'silent'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bft_ray.consensus.node import Outgoing
from bft_ray.consensus.types import (
    GENESIS_QC,
    Block,
    Proposal,
    QuorumCert,
    Timeout,
    Vote,
    VoteData,
    digest,
    proposal_signing_bytes,
    timeout_signing_bytes,
    vote_signing_bytes,
)

if TYPE_CHECKING:
    from .network import Simulation, _Instance

__all__ = ["BEHAVIORS", "Behavior", "make_behavior"]


class Behavior:
    """Base behaviour: forwards everything unchanged. Subclasses override the hooks."""

    name = "honest"

    def on_send(self, sim: Simulation, inst: _Instance, out: Outgoing) -> None:
        """Called for each message the wrapped core wants to send."""
        sim.send_from(inst, out)

    def on_receive(self, sim: Simulation, inst: _Instance, msg: Any) -> None:
        """Called for each message delivered to the replica (before the core sees it)."""

    @staticmethod
    def _domain(sim: Simulation) -> bytes:
        return sim.validators.domain

    @staticmethod
    def _others(sim: Simulation, inst: _Instance) -> list[int]:
        return [k for k in range(sim.config.n) if k != inst.key]


class Silent(Behavior):
    """Never sends anything."""

    name = "silent"

    def on_send(self, sim: Simulation, inst: _Instance, out: Outgoing) -> None:
        return


class Equivocate(Behavior):
    """Leader sends conflicting blocks to two halves of the replicas."""

    name = "equivocate"

    def __init__(self, late_delay: int | None = None) -> None:
        self.late_delay = late_delay

    def on_send(self, sim: Simulation, inst: _Instance, out: Outgoing) -> None:
        msg = out.message
        if not isinstance(msg, Proposal):
            sim.send_from(inst, out)
            return
        b = msg.block
        alt_block = Block(b.round, b.qc, b.payload + b"/equivocation", b.author)
        sig = inst.signer.sign(proposal_signing_bytes(self._domain(sim), alt_block.id))
        alt = Proposal(alt_block, msg.last_round_tc, sig)
        others = self._others(sim, inst)
        half = len(others) // 2
        first, second = others[:half], others[half:]
        for k in first:
            sim.send_from(inst, Outgoing(k, msg))
        for k in second:
            sim.send_from(inst, Outgoing(k, alt))
        if self.late_delay is not None:
            for k in first:
                sim.schedule_send(inst, Outgoing(k, alt), self.late_delay)
            for k in second:
                sim.schedule_send(inst, Outgoing(k, msg), self.late_delay)


class DoubleVote(Behavior):
    """Each vote is followed by a vote for a fabricated conflicting block of the same round."""

    name = "double_vote"

    def on_send(self, sim: Simulation, inst: _Instance, out: Outgoing) -> None:
        sim.send_from(inst, out)
        msg = out.message
        if isinstance(msg, Vote):
            d = msg.data
            fake = VoteData(digest(b"fake" + d.block_id), d.round, d.parent_id, d.parent_round)
            sig = inst.signer.sign(vote_signing_bytes(self._domain(sim), fake))
            sim.send_from(inst, Outgoing(out.to, Vote(fake, inst.key, sig)))


class ConflictingVotes(Behavior):
    """Votes for every proposal it receives, conflicting or not."""

    name = "conflicting_votes"

    def on_receive(self, sim: Simulation, inst: _Instance, msg: Any) -> None:
        if isinstance(msg, Proposal):
            data = msg.block.vote_data()
            sig = inst.signer.sign(vote_signing_bytes(self._domain(sim), data))
            to = sim.leaders.leader(data.round + 1)
            sim.send_from(inst, Outgoing(to, Vote(data, inst.key, sig)))


class Forge(Behavior):
    """Sends corrupted signatures, impersonations and a forged QC besides its real messages."""

    name = "forge"

    def on_send(self, sim: Simulation, inst: _Instance, out: Outgoing) -> None:
        msg = out.message
        n = sim.config.n
        victim = (inst.key + 1) % n
        dom = self._domain(sim)
        if isinstance(msg, Vote):
            # Impersonate another replica with our own signature, then a corrupted signature.
            sim.send_from(inst, Outgoing(out.to, Vote(msg.data, victim, msg.signature)))
            bad = bytes([msg.signature[0] ^ 1]) + msg.signature[1:]
            sim.send_from(inst, Outgoing(out.to, Vote(msg.data, inst.key, bad)))
            # A forged QC one round ahead, carried by a timeout signed correctly by us.
            d = msg.data
            fake_data = VoteData(digest(b"forged" + d.block_id), d.round + 1, d.block_id, d.round)
            sig = inst.signer.sign(vote_signing_bytes(dom, fake_data))
            forged_qc = QuorumCert(fake_data, tuple((i, sig) for i in range(sim.validators.quorum)))
            t_round = d.round + 2
            t_sig = inst.signer.sign(timeout_signing_bytes(dom, t_round, fake_data.round))
            sim.send_from(inst, Outgoing(None, Timeout(t_round, forged_qc, inst.key, t_sig)))
            # Duplicate-signer QC: one signature counted 2f + 1 times.
            dup_qc = QuorumCert(fake_data, tuple((inst.key, sig) for _ in range(3)))
            sim.send_from(inst, Outgoing(None, Timeout(t_round, dup_qc, inst.key, t_sig)))
        elif isinstance(msg, Proposal):
            bad = bytes([msg.signature[0] ^ 1]) + msg.signature[1:]
            sim.send_from(inst, Outgoing(out.to, Proposal(msg.block, msg.last_round_tc, bad)))
            return
        elif isinstance(msg, Timeout):
            sim.send_from(
                inst,
                Outgoing(
                    None,
                    Timeout(msg.round, msg.high_qc, victim, msg.signature, msg.last_round_tc),
                ),
            )
        sim.send_from(inst, out)


class Replay(Behavior):
    """Re-sends stale messages it has received, to random replicas."""

    name = "replay"

    def __init__(self, prob: float = 0.5, memory: int = 64) -> None:
        self.prob = prob
        self.memory = memory
        self._seen: list[Any] = []

    def on_receive(self, sim: Simulation, inst: _Instance, msg: Any) -> None:
        self._seen.append(msg)
        if len(self._seen) > self.memory:
            del self._seen[0]

    def on_send(self, sim: Simulation, inst: _Instance, out: Outgoing) -> None:
        sim.send_from(inst, out)
        if self._seen and sim.rng.random() < self.prob:
            old = self._seen[sim.rng.randrange(len(self._seen))]
            sim.send_from(inst, Outgoing(sim.rng.randrange(sim.config.n), old))


class StaleProposer(Behavior):
    """As leader, proposes on the genesis QC with its latest TC (violates every lock)."""

    name = "stale_proposer"

    def on_send(self, sim: Simulation, inst: _Instance, out: Outgoing) -> None:
        msg = out.message
        if not isinstance(msg, Proposal):
            sim.send_from(inst, out)
            return
        b = msg.block
        node = inst.node
        tc = msg.last_round_tc
        high_tc = node.high_tc if node is not None else None
        if tc is None and high_tc is not None and high_tc.round == b.round - 1:
            tc = high_tc
        stale = Block(b.round, GENESIS_QC, b.payload + b"/stale", b.author)
        sig = inst.signer.sign(proposal_signing_bytes(self._domain(sim), stale.id))
        sim.send_from(inst, Outgoing(None, Proposal(stale, tc, sig)))


BEHAVIORS: dict[str, Any] = {
    "silent": Silent,
    "equivocate": Equivocate,
    "equivocate_late": lambda: Equivocate(late_delay=6),
    "double_vote": DoubleVote,
    "conflicting_votes": ConflictingVotes,
    "forge": Forge,
    "replay": Replay,
    "stale_proposer": StaleProposer,
}


def make_behavior(name: str) -> Behavior:
    """Instantiate a behaviour by name (see module docs).

    Raises:
        KeyError: For an unknown name (the message lists the known ones).
    """
    try:
        return BEHAVIORS[name]()
    except KeyError:
        raise KeyError(f"unknown behaviour {name!r}; known: {sorted(BEHAVIORS)}") from None
