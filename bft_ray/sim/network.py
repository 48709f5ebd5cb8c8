"""Seeded discrete-event simulator for the consensus core.

Time is in logical ticks. Each tick the simulator delivers the messages due, then ticks every
live replica. Messages get a random delay in ``[min_delay, max_delay]`` (so they reorder), may
be dropped or duplicated, and are cut by partitions (by time, or by message round for Twins).
Replicas can crash and restart from their :class:`~bft_ray.consensus.storage.MemoryStore`,
including at the most dangerous point: right after a ``Ready``'s messages were sent and before
``advance`` (``crash_after_vote_prob``). Byzantine replicas run the correct core wrapped in a
:mod:`~bft_ray.sim.byzantine` behaviour that rewrites what they send.

The simulator follows the ``Ready`` contract exactly (persist, send, apply, advance), feeds the
:class:`~bft_ray.sim.invariants.InvariantChecker`, and hashes every delivery into a trace
digest: the same config and seed give the same digest, in any process.

Example:
    >>> res = Simulation(SimConfig(seed=1, max_ticks=200)).run()
    >>> res.ok and min(res.commit_heights.values()) > 10
    True
"""

from __future__ import annotations

import heapq
import logging
import random
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3

from bft_ray.consensus.config import CommitRule, NodeConfig, SeededBugs
from bft_ray.consensus.crypto import ed25519_crypto, sim_crypto
from bft_ray.consensus.errors import SafetyViolationError
from bft_ray.consensus.leader import LeaderElection, RoundRobin
from bft_ray.consensus.node import Node, Outgoing
from bft_ray.consensus.storage import MemoryStore
from bft_ray.consensus.types import Block, Message, Vote

from .byzantine import Behavior, make_behavior
from .invariants import InvariantChecker, Violation

__all__ = ["Crash", "NetworkConfig", "Partition", "SimConfig", "SimResult", "Simulation"]

logger = logging.getLogger(__name__)

_DELIVER = 0
_CRASH = 1
_RESTART = 2
_SEND = 3


@dataclass(frozen=True)
class Partition:
    """During ticks ``[start, end)`` only instances in the same group can talk.

    Instances in no group are isolated.
    """

    start: int
    end: int
    groups: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Crash:
    """Crash ``instance`` at tick ``at``; restart it from its store at ``restart_at`` (if set)."""

    instance: int
    at: int
    restart_at: int | None = None


@dataclass(frozen=True)
class NetworkConfig:
    """Message delivery model.

    Attributes:
        min_delay: Minimum delay in ticks (>= 1).
        max_delay: Maximum delay in ticks.
        drop_prob: Probability a message copy is lost (before ``gst``).
        duplicate_prob: Probability a message copy is delivered twice.
        partitions: Time-based partitions; all heal at their ``end``.
        gst: Global stabilisation tick: from then on no drops, no partitions and delays of at
            most ``stable_max_delay``.
        stable_max_delay: Maximum delay after ``gst``.
    """

    min_delay: int = 1
    max_delay: int = 3
    drop_prob: float = 0.0
    duplicate_prob: float = 0.0
    partitions: tuple[Partition, ...] = ()
    gst: int | None = None
    stable_max_delay: int = 2


@dataclass
class SimConfig:
    """A simulation: replicas, faults, network and checks.

    Attributes:
        n: Number of replica keys.
        seed: Seed of the single ``random.Random`` all randomness comes from.
        commit_rule: Commit rule of every replica.
        network: Delivery model.
        crashes: Scheduled crashes/restarts.
        crash_after_vote_prob: Probability to crash an honest replica right after it sent a
            vote (after send, before ``advance``), restarting ``restart_delay`` ticks later.
        max_crash_after_vote: Cap on those crashes per run.
        restart_delay: Ticks until a crashed-after-vote replica restarts.
        byzantine: Replica index -> behaviour name (see :mod:`bft_ray.sim.byzantine`) or object.
        bugs: Seeded bugs of the correct replicas (test-only).
        twins: Extra instance -> key it duplicates (instances ``n, n+1, ...``).
        leaders: Leader election (round robin by default).
        base_timeout_ticks: Pacemaker base timeout.
        max_timeout_ticks: Pacemaker back-off cap.
        crypto: ``"sim"`` (fast stand-in) or ``"ed25519"``.
        max_ticks: Stop after this tick.
        round_partitions: Twins: round -> groups of instances; a message is delivered iff sender
            and receiver share a group in the partition of the sender's round.
        drop_rounds_above: Twins: drop messages sent from rounds above this.
        stop_rounds_above: Stop once every live instance is past this round.
        stop_after_commits: Stop once every live correct instance committed this many blocks.
        check_commit_proofs: Let the checker verify each commit's proof against the rule.
        record_trace: Hash every delivery into ``SimResult.trace_digest``.
        payload_size: Bytes of payload per proposed block.
        probe_tick: Record every instance's round at this tick (``SimResult.probe_rounds``).
    """

    n: int = 4
    seed: int = 0
    commit_rule: CommitRule | str = CommitRule.TWO_CHAIN
    network: NetworkConfig = field(default_factory=NetworkConfig)
    crashes: tuple[Crash, ...] = ()
    crash_after_vote_prob: float = 0.0
    max_crash_after_vote: int = 4
    restart_delay: int = 3
    byzantine: Mapping[int, str | Behavior] = field(default_factory=dict)
    bugs: SeededBugs = field(default_factory=SeededBugs)
    twins: Mapping[int, int] = field(default_factory=dict)
    leaders: LeaderElection | None = None
    base_timeout_ticks: int = 8
    max_timeout_ticks: int = 64
    crypto: str = "sim"
    max_ticks: int = 400
    round_partitions: Mapping[int, Sequence[Sequence[int]]] | None = None
    drop_rounds_above: int | None = None
    stop_rounds_above: int | None = None
    stop_after_commits: int | None = None
    check_commit_proofs: bool = True
    record_trace: bool = True
    payload_size: int = 16
    probe_tick: int | None = None


@dataclass
class SimResult:
    """Outcome of a run.

    Attributes:
        violations: Broken invariants (empty when safe).
        commit_logs: Instance -> committed block ids in order.
        commit_heights: Instance -> number of committed blocks.
        committed_rounds: Instance -> rounds of committed blocks in order.
        trace_digest: blake3 over every delivery and commit (determinism witness).
        ticks: Ticks simulated.
        steps: ``Node.step`` calls.
        tick_calls: ``Node.tick`` calls.
        deliveries: Messages delivered.
        max_round: Highest round reached by any instance.
        rejected: Reason -> count, summed over correct instances.
        commit_times: Instance -> list of (tick, round) of each commit.
        probe_rounds: Instance -> round at ``SimConfig.probe_tick`` (live instances).
    """

    violations: list[Violation]
    commit_logs: dict[int, list[bytes]]
    commit_heights: dict[int, int]
    committed_rounds: dict[int, list[int]]
    trace_digest: str
    ticks: int
    steps: int
    tick_calls: int
    deliveries: int
    max_round: int
    rejected: dict[str, int]
    commit_times: dict[int, list[tuple[int, int]]]
    probe_rounds: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True iff no invariant was violated."""
        return not self.violations

    @property
    def violation_kinds(self) -> set[str]:
        """Set of violated invariant kinds."""
        return {v.kind for v in self.violations}


class _SimApp:
    """Payload = instance id + round (so twins' and equivocators' blocks differ)."""

    __slots__ = ("instance", "size")

    def __init__(self, instance: int, size: int) -> None:
        self.instance = instance
        self.size = size

    def propose_payload(self, round: int, parent: Block) -> bytes:
        p = b"i%d/r%d/" % (self.instance, round)
        return p + bytes(max(0, self.size - len(p)))

    def validate_payload(self, block: Block) -> bool:
        return True


class _Instance:
    __slots__ = (
        "app",
        "behavior",
        "checked",
        "commit_rounds",
        "commit_times",
        "id",
        "key",
        "node",
        "signer",
        "store",
        "up",
    )

    def __init__(self, iid: int, key: int) -> None:
        self.id = iid
        self.key = key
        self.node: Node | None = None
        self.store = MemoryStore()
        self.up = False
        self.behavior: Behavior | None = None
        self.checked = True
        self.signer: Any = None
        self.app: _SimApp | None = None
        self.commit_rounds: list[int] = []
        self.commit_times: list[tuple[int, int]] = []


class Simulation:
    """Runs one :class:`SimConfig`.

    Args:
        config: What to simulate.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = c = config
        self.rng = random.Random(c.seed)
        self.rule = CommitRule(c.commit_rule)
        make = ed25519_crypto if c.crypto == "ed25519" else sim_crypto
        self.validators, self.signers, self.verifier = make(c.n)
        self.leaders: LeaderElection = c.leaders or RoundRobin(c.n)
        self.now = 0
        self._seq = 0
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._trace = blake3.blake3() if c.record_trace else None
        self.steps = 0
        self.tick_calls = 0
        self.deliveries = 0
        self._crash_after_vote_count = 0
        self._probe: dict[int, int] = {}
        net = c.network
        self._net = net
        # Instances: 0..n-1 own keys 0..n-1; twins follow.
        self.instances: list[_Instance] = [_Instance(i, i) for i in range(c.n)]
        for extra, key in sorted(c.twins.items()):
            if extra != len(self.instances):
                raise ValueError("twin instances must be numbered n, n+1, ... in order")
            self.instances.append(_Instance(extra, key))
        self._by_key: dict[int, list[int]] = {}
        for inst in self.instances:
            self._by_key.setdefault(inst.key, []).append(inst.id)
        self._all_ids = [inst.id for inst in self.instances]
        twinned = {k for k, ids in self._by_key.items() if len(ids) > 1}
        byz_keys = set(c.byzantine)
        honest = [k for k in range(c.n) if k not in twinned and k not in byz_keys]
        self.checker = InvariantChecker(
            self.validators,
            self.verifier,
            self.rule,
            self.leaders,
            honest,
            check_commit_proofs=c.check_commit_proofs,
        )
        for inst in self.instances:
            inst.signer = self.signers[inst.key]
            inst.app = _SimApp(inst.id, c.payload_size)
            spec = c.byzantine.get(inst.key)
            if spec is not None:
                inst.behavior = make_behavior(spec) if isinstance(spec, str) else spec
                inst.checked = False
        self._round_groups: dict[int, dict[int, int]] | None = None
        if c.round_partitions is not None:
            self._round_groups = {
                r: {i: g for g, grp in enumerate(groups) for i in grp}
                for r, groups in c.round_partitions.items()
            }
        self._time_groups = [
            (p.start, p.end, {i: g for g, grp in enumerate(p.groups) for i in grp})
            for p in net.partitions
        ]
        for cr in c.crashes:
            self._push(cr.at, _CRASH, cr.instance, None)
            if cr.restart_at is not None:
                self._push(cr.restart_at, _RESTART, cr.instance, None)
        for inst in self.instances:
            self._start(inst, recover=False)

    # ------------------------------------------------------------------ plumbing

    def _push(self, t: int, kind: int, inst: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, inst, payload))

    def _node_config(self, inst: _Instance) -> NodeConfig:
        c = self.config
        return NodeConfig(
            index=inst.key,
            validators=self.validators,
            commit_rule=self.rule,
            base_timeout_ticks=c.base_timeout_ticks,
            max_timeout_ticks=c.max_timeout_ticks,
            bugs=c.bugs if inst.checked else SeededBugs(),
        )

    def _start(self, inst: _Instance, recover: bool) -> None:
        rec = inst.store.recovery() if recover else None
        inst.node = Node(
            self._node_config(inst),
            inst.signer,
            self.verifier,
            inst.app,
            leader_election=self.leaders,
            recovery=rec,
        )
        inst.up = True
        self._drain(inst)

    def _crash(self, inst: _Instance) -> None:
        inst.up = False
        inst.node = None

    def schedule_send(self, inst: _Instance, out: Outgoing, delay: int) -> None:
        """Let a Byzantine behaviour send ``out`` from ``inst`` ``delay`` ticks from now."""
        self._push(self.now + max(1, delay), _SEND, inst.id, out)

    def _link_ok(self, src: int, dst: int, msg_round: int) -> bool:
        rg = self._round_groups
        if rg is not None:
            groups = rg.get(msg_round)
            if groups is not None:
                gs = groups.get(src, -1)
                return gs != -1 and gs == groups.get(dst, -2)
        if self._time_groups:
            t = self.now
            gst = self._net.gst
            if gst is None or t < gst:
                for start, end, groups in self._time_groups:
                    if start <= t < end:
                        gs = groups.get(src, -1)
                        if gs == -1 or gs != groups.get(dst, -2):
                            return False
        return True

    def _route(self, inst: _Instance, out: Outgoing) -> None:
        c = self.config
        msg = out.message
        node = inst.node
        msg_round = node.round if node is not None else 0
        if c.drop_rounds_above is not None and msg_round > c.drop_rounds_above:
            return
        dsts = self._all_ids if out.to is None else self._by_key.get(out.to, ())
        net = self._net
        rng = self.rng
        stable = net.gst is not None and self.now >= net.gst
        lo = net.min_delay
        hi = min(net.max_delay, net.stable_max_delay) if stable else net.max_delay
        hi = max(hi, lo)
        drop = 0.0 if stable else net.drop_prob
        dup = net.duplicate_prob
        for d in dsts:
            if d == inst.id or not self._link_ok(inst.id, d, msg_round):
                continue
            if drop and rng.random() < drop:
                continue
            delay = lo if lo == hi else rng.randint(lo, hi)
            self._push(self.now + delay, _DELIVER, d, (inst.id, msg))
            if dup and rng.random() < dup:
                self._push(self.now + rng.randint(lo, hi), _DELIVER, d, (inst.id, msg))

    def send_from(self, inst: _Instance, out: Outgoing) -> None:
        """Route ``out`` from ``inst`` now (used by Byzantine behaviours)."""
        self._route(inst, out)

    def _drain(self, inst: _Instance) -> None:
        """Handle every pending Ready of ``inst`` following the persist/send/apply/advance contract."""
        checker = self.checker
        while inst.up:
            node = inst.node
            assert node is not None
            if not node.has_ready():
                return
            rd = node.ready()
            # 1. persist
            if rd.safety_state is not None and inst.checked:
                checker.on_persist(inst.id, rd.safety_state, self.now)
            inst.store.persist(rd)
            # 2. send
            sent_vote = False
            beh = inst.behavior
            for out in rd.messages:
                msg = out.message
                if beh is not None:
                    beh.on_send(self, inst, out)
                    continue
                if inst.checked:
                    checker.on_send(inst.id, inst.key, msg, self.now)
                if type(msg) is Vote:
                    sent_vote = True
                self._route(inst, out)
            # Crash point: messages are out, nothing after them has happened yet.
            c = self.config
            if (
                sent_vote
                and c.crash_after_vote_prob
                and self._crash_after_vote_count < c.max_crash_after_vote
                and self.rng.random() < c.crash_after_vote_prob
            ):
                self._crash_after_vote_count += 1
                self._crash(inst)
                self._push(self.now + c.restart_delay, _RESTART, inst.id, None)
                return
            # 3. apply
            if rd.committed:
                if inst.checked:
                    checker.on_commit(inst.id, rd.committed, self.now)
                inst.store.apply(rd)
                for cb in rd.committed:
                    inst.commit_rounds.append(cb.block.round)
                    inst.commit_times.append((self.now, cb.block.round))
                if self._trace is not None:
                    self._trace.update(
                        struct.pack(">QI", self.now, inst.id) + rd.committed[-1].block.id[:8]
                    )
            # 4. advance
            node.advance(rd)

    def _core_call(self, inst: _Instance, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except SafetyViolationError as e:
            self.checker.on_core_error(inst.id, e, self.now)
            self._crash(inst)  # a replica that detects it cannot continue safely stops
            return
        self._drain(inst)

    def _deliver(self, dst: int, src: int, msg: Message) -> None:
        inst = self.instances[dst]
        if not inst.up:
            return
        self.deliveries += 1
        if self._trace is not None:
            self._trace.update(struct.pack(">QII", self.now, src, dst) + msg.digest[:8])
        if inst.behavior is not None:
            inst.behavior.on_receive(self, inst, msg)
        node = inst.node
        assert node is not None
        self.steps += 1
        self._core_call(inst, lambda: node.step(msg))

    # ------------------------------------------------------------------ main loop

    def _should_stop(self) -> bool:
        c = self.config
        live = [i for i in self.instances if i.up and i.node is not None]
        if (
            c.stop_rounds_above is not None
            and live
            and all(i.node.round > c.stop_rounds_above for i in live)  # type: ignore[union-attr]
        ):
            return True
        if c.stop_after_commits is not None and live:
            target = c.stop_after_commits
            if all(len(i.commit_rounds) >= target for i in live if i.checked):
                return True
        return False

    def run(self) -> SimResult:
        """Run to ``max_ticks`` (or a stop condition) and return the result."""
        c = self.config
        heap = self._heap
        while self.now <= c.max_ticks:
            while heap and heap[0][0] <= self.now:
                _, _, kind, iid, payload = heapq.heappop(heap)
                if kind == _DELIVER:
                    self._deliver(iid, payload[0], payload[1])
                elif kind == _CRASH:
                    self._crash(self.instances[iid])
                elif kind == _RESTART:
                    inst = self.instances[iid]
                    if not inst.up:
                        self._start(inst, recover=True)
                else:  # _SEND from a behaviour
                    inst = self.instances[iid]
                    if inst.up:
                        self._route(inst, payload)
            for inst in self.instances:
                if inst.up:
                    node = inst.node
                    assert node is not None
                    self.tick_calls += 1
                    self._core_call(inst, node.tick)
            if self.now == c.probe_tick:
                self._probe = {
                    i.id: i.node.round for i in self.instances if i.up and i.node is not None
                }
            if (c.stop_rounds_above is not None or c.stop_after_commits is not None) and (
                self._should_stop()
            ):
                break
            self.now += 1
        return self._result()

    def _result(self) -> SimResult:
        rejected: dict[str, int] = {}
        max_round = 0
        for inst in self.instances:
            if inst.node is not None:
                max_round = max(max_round, inst.node.round)
                if inst.checked:
                    for k, v in inst.node.stats.rejected.items():
                        rejected[k] = rejected.get(k, 0) + v
        logs = {i.id: list(self.checker.logs.get(i.id, [])) for i in self.instances if i.checked}
        return SimResult(
            violations=list(self.checker.violations),
            commit_logs=logs,
            commit_heights={i.id: len(i.commit_rounds) for i in self.instances if i.checked},
            committed_rounds={i.id: list(i.commit_rounds) for i in self.instances if i.checked},
            trace_digest=self._trace.hexdigest() if self._trace is not None else "",
            ticks=self.now,
            steps=self.steps,
            tick_calls=self.tick_calls,
            deliveries=self.deliveries,
            max_round=max_round,
            rejected=rejected,
            commit_times={i.id: list(i.commit_times) for i in self.instances if i.checked},
            probe_rounds=dict(self._probe),
        )
