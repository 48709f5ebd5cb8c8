"""The executor pool: placement, identity, liveness and replacement of executor actors.

Executors are placed with a Ray placement group (one bundle per executor, ``SPREAD`` strategy),
so they land on distinct GPUs and spread over nodes. The driver creates the pool in
``bft_ray.init`` (so placement problems surface there with a clear message); the verifier then
owns its liveness: a crashed executor is marked dead, a stalled one is killed to free its GPU,
and either is respawned in its bundle with a fresh identity, up to ``max_respawns`` times per
slot. Faults are injected per slot: they model the machine, so a respawned executor keeps them.

Identity is by slot (``slot3``: bundle 3, a GPU of a node). A respawn keeps its slot, so a
task's replicas are drawn from distinct slots and no slot votes twice in one task. An
executor's node comes from the placement group table (Ray's control plane), never from what the
executor says; what it does say (its key, GPU ids) travels as canonical wire bytes read through
the deserialisation guard.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from bft_ray.actor_facade import public_actor
from bft_ray.compare.wire import WireFormatError, decode, decode_canonical, encode
from bft_ray.config import ClusterSpec
from bft_ray.errors import ConfigError, ExecutorUnavailableError
from bft_ray.executor import guard
from bft_ray.executor.actor import (
    ExecutorActor,
    ExecutorInfo,
    capability_commitment,
    slot_capability,
)
from bft_ray.executor.lanes import Lanes
from bft_ray.executor.placement import Candidate, assign

__all__ = ["ExecutorPool", "PoolSetup", "Slot", "create_pool", "local_gpu_count"]

logger = logging.getLogger(__name__)

# Only its public methods reach Ray: any worker can call an actor it has a handle to.
_RemoteExecutor = ray.remote(public_actor(ExecutorActor))


@dataclasses.dataclass
class Slot:
    """One executor slot: a bundle in the placement group and the actor living in it."""

    index: int
    handle: Any
    info: ExecutorInfo
    fault: Any
    status: str = "alive"  # alive | dead | respawning | quarantined | removed
    generation: int = 0
    respawns: int = 0
    # Where the slot lives: a bundle of the pool's first placement group (``group`` None, bundle
    # = index) or of a group added by ``ExecutorPool.grow``.
    group: PlacementGroup | None = None
    bundle: int = -1


@dataclasses.dataclass
class PoolSetup:
    """Everything the verifier needs to take over a pool created by the driver."""

    placement_group: PlacementGroup | None
    slots: list[Slot]
    actor_options: dict[str, Any]
    seed: int
    max_respawns: int
    master: bytes = b""  # the driver's secret; slot capabilities derive from it
    bundle: dict[str, float] = dataclasses.field(default_factory=dict)  # one executor's share

    def capability(self, index: int) -> bytes:
        return slot_capability(self.master, slot_name(index))


def _future(ref: Any) -> asyncio.Future:
    return asyncio.wrap_future(ref.future())


def local_gpu_count() -> int:
    """Number of NVIDIA GPUs visible on this machine (0 when there is no driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _bundle(spec: ClusterSpec) -> dict[str, float]:
    bundle = {"CPU": spec.cpus_per_executor, "GPU": spec.gpus_per_executor}
    # Custom resources of the executors (e.g. {"bft_executor": 1}, which only untrusted GPU
    # worker nodes advertise) go in the bundle too: an actor in a placement group bundle may
    # only use what the bundle reserved.
    bundle.update(spec.executor_options.get("resources") or {})
    bundle = {k: float(v) for k, v in bundle.items() if v > 0}
    # Ray rejects empty bundles; a token CPU share keeps CPU-only, zero-CPU executors placeable.
    return bundle or {"CPU": 0.01}


def _executor_id(index: int, generation: int) -> str:
    return f"ex{index}" if generation == 0 else f"ex{index}.{generation}"


def slot_name(index: int) -> str:
    return f"slot{index}"


class BadExecutorInfo(ValueError):
    """An executor's start-up answer is malformed or names another identity."""


def _info_structure(gpus: int) -> str:
    """The exact canonical shape of an honest executor's start-up answer with ``gpus`` GPU ids."""
    template = {
        "executor_id": "",
        "slot": "",
        "public_key": b"",
        "gpu_ids": [""] * gpus,
        "pid": 0,
        "fault": "",
    }
    return decode_canonical(encode(template)).structure


def read_info(raw: Any, who: str) -> dict[str, Any]:
    """Strictly read an executor's start-up answer (untrusted bytes) into its plain fields.

    The BFT verifiers read it too, from the actor itself, to pin the key it states
    (:mod:`bft_ray.verifier.registry`).

    Raises:
        BadExecutorInfo: If it is not exactly an honest answer's shape and types.
    """
    if isinstance(raw, BaseException):
        raise BadExecutorInfo(f"executor {who} did not start: {raw}")
    if not isinstance(raw, bytes):
        raise BadExecutorInfo(f"executor {who} answered {type(raw).__name__}, not bytes")
    try:
        canon = decode_canonical(raw)
        # Check the exact shape first: decode() of plain dicts, lists and scalars builds no
        # class and imports nothing.
        if len(canon.leaves) < 5 or canon.structure != _info_structure(len(canon.leaves) - 5):
            raise WireFormatError("unexpected shape")
        info = decode(raw)
    except WireFormatError as exc:
        raise BadExecutorInfo(f"executor {who} sent malformed info: {exc}") from None
    ok = (
        type(info) is dict
        and set(info) == {"executor_id", "slot", "public_key", "gpu_ids", "pid", "fault"}
        and type(info["executor_id"]) is str
        and type(info["slot"]) is str
        and type(info["public_key"]) is bytes
        and len(info["public_key"]) == 32
        and type(info["gpu_ids"]) is list
        and all(type(g) is str for g in info["gpu_ids"])
        and type(info["pid"]) is int
        and type(info["fault"]) is str
    )
    if not ok:
        raise BadExecutorInfo(f"executor {who} sent info of another shape")
    return info


def parse_info(raw: Any, index: int, executor_id: str, node_id: str) -> ExecutorInfo:
    """Strictly parse an executor's start-up answer (untrusted bytes)."""
    info = read_info(raw, executor_id)
    if info["executor_id"] != executor_id or info["slot"] != slot_name(index):
        raise BadExecutorInfo(f"executor {executor_id} sent info for another identity or shape")
    return ExecutorInfo(
        index=index,
        executor_id=executor_id,
        slot=slot_name(index),
        public_key=info["public_key"],
        node_id=node_id,
        gpu_ids=tuple(info["gpu_ids"]),
        pid=info["pid"],
        fault=info["fault"][:200],
    )


def _shortfall(bundle: dict[str, float], count: int) -> str:
    """What the cluster lacks, right now, to hold ``count`` bundles (empty if nothing)."""
    total = ray.cluster_resources()
    for res, amount in bundle.items():
        need = amount * count
        if total.get(res, 0.0) + 1e-9 < need:
            fix = (
                f"lower {'gpus' if res == 'GPU' else 'cpus'}_per_executor"
                if res in ("CPU", "GPU")
                else f"declare {res!r} on the nodes that may host executors (`ray start "
                "--resources`, or `resources:` of a node type in cluster.yaml)"
            )
            return (
                f"{count} executors x {amount:g} {res} need {need:g} {res}, but the Ray "
                f"cluster has {total.get(res, 0.0):g}. Use fewer executors, {fix}, or add nodes."
            )
    return ""


def bundle_nodes(pg: PlacementGroup | None) -> dict[int, str]:
    """Bundle index -> node id, from Ray's placement group table."""
    if pg is None:
        return {}
    table = ray.util.placement_group_table(pg)
    return {int(k): v for k, v in (table.get("bundles_to_node_id") or {}).items()}


def _new_actor(
    setup_opts: dict[str, Any],
    pg: PlacementGroup | None,
    index: int,
    fault: Any,
    seed: int,
    generation: int,
    master: bytes,
    bundle: int | None = None,
) -> Any:
    opts = dict(setup_opts)
    if pg is not None:
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=pg,
            placement_group_bundle_index=index if bundle is None else bundle,
        )
    commitment = capability_commitment(slot_capability(master, slot_name(index)))
    handle = _RemoteExecutor.options(**opts).remote(
        index, _executor_id(index, generation), slot_name(index), commitment, fault, seed
    )
    # Everything this actor produces is read strictly: raw bytes or nothing.
    guard.guard_actor(handle)
    return handle


def create_pool(
    spec: ClusterSpec,
    *,
    seed: int = 0,
    max_respawns: int = 2,
    placement_timeout_s: float = 60.0,
    master: bytes | None = None,
    wait_for_resources: bool = False,
) -> PoolSetup:
    """Place and start ``spec.executors`` executors; blocks until all report their identity.

    Args:
        wait_for_resources: The cluster may still grow (an autoscaler adds nodes for the
            pending placement group): wait up to ``placement_timeout_s`` for the resources,
            logging progress every 10 s, instead of failing at once when they are missing now.

    Raises:
        ConfigError: When the cluster cannot hold the requested executors (at once, or after
            ``placement_timeout_s`` when waiting).
    """
    bundle = _bundle(spec)
    shortfall = _shortfall(bundle, spec.executors)
    if shortfall and not wait_for_resources:
        raise ConfigError(shortfall)
    pg = placement_group([dict(bundle) for _ in range(spec.executors)], strategy="SPREAD")
    deadline = time.monotonic() + placement_timeout_s
    while True:
        step = min(10.0, max(deadline - time.monotonic(), 0.0))
        try:
            ray.get(pg.ready(), timeout=step)
            break
        except ray.exceptions.GetTimeoutError:
            pass
        missing = _shortfall(bundle, spec.executors)
        if time.monotonic() >= deadline:
            remove_placement_group(pg)
            raise ConfigError(
                f"could not place {spec.executors} executors with {bundle} each within "
                f"{placement_timeout_s:g}s. "
                + (missing or "The resources exist but are taken by other work; free them.")
                + " If nodes are still being added, raise bft_ray.init(ready_timeout_s=...)."
            ) from None
        logger.warning(
            "bft-ray: waiting for resources of %d executors (%s each), %.0fs left: %s",
            spec.executors,
            bundle,
            deadline - time.monotonic(),
            missing or "resources exist but are in use",
        )
    actor_options: dict[str, Any] = {
        "num_cpus": spec.cpus_per_executor
        if "CPU" in bundle and spec.cpus_per_executor > 0
        else bundle.get("CPU", 0),
        "num_gpus": spec.gpus_per_executor,
        "max_restarts": 0,
        "max_task_retries": 0,
        "max_concurrency": 1,
        **spec.executor_options,
    }
    master = master or os.urandom(32)
    handles = [
        _new_actor(actor_options, pg, i, spec.faults.get(i), seed, 0, master)
        for i in range(spec.executors)
    ]
    raws = ray.get([h.info.remote() for h in handles], timeout=placement_timeout_s + 120)
    nodes = bundle_nodes(pg)
    infos = []
    for i, raw in enumerate(raws):
        try:
            infos.append(parse_info(raw, i, _executor_id(i, 0), nodes.get(i, "")))
        except BadExecutorInfo as exc:
            for h in handles:
                ray.kill(h, no_restart=True)
            remove_placement_group(pg)
            raise ExecutorUnavailableError(str(exc)) from None
    slots = [
        Slot(i, h, info, spec.faults.get(i)) for i, (h, info) in enumerate(zip(handles, infos))
    ]
    return PoolSetup(pg, slots, actor_options, seed, max_respawns, master, dict(bundle))


class ExecutorPool:
    """Live view of the executors, used by the verifier to assign, fail and respawn them."""

    def __init__(self, setup: PoolSetup) -> None:
        self.setup = setup
        self.slots = {s.index: s for s in setup.slots}
        # Every incarnation ever seen: a respawned slot gets a new executor id, and flags against
        # the old id must still resolve to its node and key.
        self.by_id: dict[str, Slot] = {s.info.executor_id: s for s in setup.slots}
        self.infos: dict[str, ExecutorInfo] = {s.info.executor_id: s.info for s in setup.slots}
        self.keys: dict[str, bytes] = {s.info.executor_id: s.info.public_key for s in setup.slots}
        # Work sent to each executor and not answered yet: its load, and when each item's
        # time limit starts (see bft_ray.executor.lanes).
        self.lanes = Lanes()
        # Replicas assigned but still waiting in the verifier to be sent (batching): load too.
        self.waiting: dict[str, int] = {}
        self._groups: list[PlacementGroup] = []  # placement groups added by grow()
        self._respawn_tasks: set[asyncio.Task] = set()
        self.respawn_timeout_s = 300.0
        # Owner (anti-collusion) group of each slot index: replicas of one task never share one.
        self.groups: dict[int, str] = {}
        # BFT mode: the verifier group must confirm each new executor's key before it gets work
        # (bft_ray.verifier.registry). Maps an executor id to why it was not admitted.
        self.admit: Callable[[list[tuple[ExecutorInfo, Any]]], Awaitable[dict[str, str]]] | None
        self.admit = None
        self._grow_tries: dict[int, int] = {}  # slot index -> grows that created it (see grow)
        for s in setup.slots:
            guard.guard_actor(s.handle)  # this process reads their answers too

    def capability(self, executor_id: str) -> bytes:
        return self.setup.capability(self.by_id[executor_id].index)

    def live(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.status == "alive"]

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(s.info.executor_id, s.info.node_id, s.info.slot, self.groups.get(s.index, ""))
            for s in self.live()
        ]

    def group_of(self, executor_id: str) -> str:
        slot = self.by_id.get(executor_id)
        return self.groups.get(slot.index, "") if slot is not None else ""

    def pick(
        self,
        key: str,
        k: int,
        exclude: set[str],
        avoid_nodes: set[str],
        avoid_groups: set[str] | None = None,
    ) -> list[Slot]:
        """Up to ``k`` live executors for ``key``, from slots not in ``exclude`` and never from
        an owner group in ``avoid_groups`` (nor two from one group)."""
        load = self.lanes.load()
        for eid, n in self.waiting.items():
            load[eid] = load.get(eid, 0) + n
        chosen = assign(key, self.candidates(), k, exclude, avoid_nodes, load, avoid_groups or ())
        return [self.by_id[c.executor_id] for c in chosen]

    def spare(self, exclude: set[str], avoid_groups: set[str] | None = None) -> int:
        """Live executors whose slots are not in ``exclude`` that could still be picked: an
        owner group in ``avoid_groups`` gives none, any other group at most one."""
        ungrouped, groups = 0, set()
        for s in self.live():
            if s.info.slot in exclude:
                continue
            g = self.groups.get(s.index, "")
            if not g:
                ungrouped += 1
            elif not avoid_groups or g not in avoid_groups:
                groups.add(g)
        return ungrouped + len(groups)

    def slot_of(self, executor_id: str) -> str:
        return self.infos[executor_id].slot

    def is_alive(self, executor_id: str) -> bool:
        """Whether ``executor_id`` is the current, live incarnation of its slot."""
        slot = self.by_id.get(executor_id)
        return slot is not None and slot.info.executor_id == executor_id and slot.status == "alive"

    def node_of(self, executor_id: str) -> str:
        return self.infos[executor_id].node_id

    def retire(self, executor_id: str, reason: str, kill: bool = False) -> None:
        """Take an executor out of service (crashed or stalled) and respawn its slot."""
        if not self.is_alive(executor_id):
            return
        slot = self.by_id[executor_id]
        logger.warning("executor %s retired: %s", executor_id, reason)
        slot.status = "dead"
        if kill:
            ray.kill(slot.handle, no_restart=True)
        if slot.respawns < self.setup.max_respawns:
            slot.status = "respawning"
            # From no caller's context: whichever call retired the executor must not own the
            # respawn's Ray calls (ray.cancel is recursive; see verifier.trusted._detached_context).
            task = asyncio.get_running_loop().create_task(
                self._respawn(slot), context=contextvars.Context()
            )
            self._respawn_tasks.add(task)
            task.add_done_callback(self._respawn_tasks.discard)

    async def _respawn(self, slot: Slot) -> None:
        # The old actor's bundle frees once Ray has torn it down; retry placement until then.
        slot.respawns += 1
        slot.generation += 1
        start = time.monotonic()
        group, bundle = self._placement(slot)
        handle = _new_actor(
            self.setup.actor_options,
            group,
            slot.index,
            slot.fault,
            self.setup.seed,
            slot.generation,
            self.setup.master,
            bundle=bundle,
        )
        try:
            raw = await asyncio.wait_for(_future(handle.info.remote()), timeout=300)
            node = bundle_nodes(group).get(bundle, slot.info.node_id)
            info = parse_info(raw, slot.index, _executor_id(slot.index, slot.generation), node)
            if self.admit is not None:  # BFT mode: the group confirms the key first
                problem = (await self.admit([(info, handle)])).get(info.executor_id, "")
                if problem:
                    raise BadExecutorInfo(problem)
        except Exception as exc:
            logger.error("respawn of slot %d failed: %s", slot.index, exc)
            ray.kill(handle, no_restart=True)
            slot.status = "dead"
            return
        slot.handle, slot.info, slot.status = handle, info, "alive"
        self.by_id[info.executor_id] = slot
        self.infos[info.executor_id] = info
        self.keys[info.executor_id] = info.public_key
        logger.info(
            "slot %d respawned as %s in %.1fs",
            slot.index,
            info.executor_id,
            time.monotonic() - start,
        )

    def _placement(self, slot: Slot) -> tuple[PlacementGroup | None, int]:
        if slot.group is None:
            return self.setup.placement_group, slot.index
        return slot.group, slot.bundle

    async def grow(self, count: int, faults: dict[int, Any], timeout: float) -> list[Slot]:
        """Add ``count`` executors in a new placement group (slots numbered after the last).

        Waits up to ``timeout`` for the resources (an autoscaler may add nodes for them).

        Raises:
            ConfigError: The resources did not appear in time (nothing is left behind).
            ExecutorUnavailableError: A new executor did not start or sent malformed info.
        """
        first = max(self.slots) + 1 if self.slots else 0
        pg = placement_group([dict(self.setup.bundle) for _ in range(count)], strategy="SPREAD")
        try:
            await asyncio.wait_for(_future(pg.ready()), timeout=timeout)
        except asyncio.TimeoutError:
            remove_placement_group(pg)
            raise ConfigError(
                f"could not place {count} more executors with {self.setup.bundle} each within "
                f"{timeout:g}s. {_shortfall(self.setup.bundle, count)} Add nodes or scale by less."
            ) from None
        # A grow that failed leaves its ids pinned by the verifier group (BFT mode): a retry
        # of the same slots takes the next generation, so its executor ids are new.
        gens = [self._grow_tries.get(first + j, 0) for j in range(count)]
        for j in range(count):
            self._grow_tries[first + j] = gens[j] + 1
        handles = [
            _new_actor(
                self.setup.actor_options,
                pg,
                first + j,
                faults.get(first + j),
                self.setup.seed,
                gens[j],
                self.setup.master,
                bundle=j,
            )
            for j in range(count)
        ]
        results = await asyncio.gather(
            *(asyncio.wait_for(_future(h.info.remote()), timeout=300) for h in handles),
            return_exceptions=True,
        )
        nodes = bundle_nodes(pg)
        try:
            infos = [
                parse_info(raw, first + j, _executor_id(first + j, gens[j]), nodes.get(j, ""))
                for j, raw in enumerate(results)
            ]
            problems = await self.admit(list(zip(infos, handles))) if self.admit else {}
            if problems:
                raise BadExecutorInfo("; ".join(problems.values()))
        except BadExecutorInfo as exc:
            for h in handles:
                ray.kill(h, no_restart=True)
            remove_placement_group(pg)
            raise ExecutorUnavailableError(str(exc)) from None
        added = []
        for j, (h, info) in enumerate(zip(handles, infos)):
            slot = Slot(
                first + j, h, info, faults.get(first + j), generation=gens[j], group=pg, bundle=j
            )
            self.slots[slot.index] = slot
            self.by_id[info.executor_id] = slot
            self.infos[info.executor_id] = info
            self.keys[info.executor_id] = info.public_key
            guard.guard_actor(h)
            added.append(slot)
        self._groups.append(pg)
        return added

    async def shrink(self, count: int, drain_timeout: float = 60.0) -> list[str]:
        """Remove ``count`` executors, newest slots first; returns their executor ids.

        They get no new work at once; each is killed once the work already sent to it is
        answered (or after ``drain_timeout``), and is never respawned. A placement group whose
        slots are all removed is released, so an autoscaler can take its nodes back.
        """
        victims = sorted(
            (s for s in self.slots.values() if s.status in ("alive", "quarantined")),
            key=lambda s: -s.index,
        )[:count]
        for slot in victims:
            slot.status = "removed"
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and any(
            self.lanes.depth(s.info.executor_id) for s in victims
        ):
            await asyncio.sleep(0.05)
        for slot in victims:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:
                pass
        for pg in list(self._groups):
            if all(s.status == "removed" for s in self.slots.values() if s.group is pg):
                remove_placement_group(pg)
                self._groups.remove(pg)
        return [s.info.executor_id for s in victims]

    def size(self) -> int:
        """Slots in the pool, removed ones excluded."""
        return sum(1 for s in self.slots.values() if s.status != "removed")

    async def settle(self, timeout: float = 15.0) -> None:
        """Wait (at most ``timeout`` seconds) for respawns in progress.

        A respawn can wait long for its bundle (a lost node's bundles need a new node), so
        callers such as reports never block on it for more than ``timeout``.
        """
        if self._respawn_tasks:
            await asyncio.wait(list(self._respawn_tasks), timeout=timeout)

    def quarantine(self, executor_id: str) -> None:
        """Stop giving work to an executor (it stays alive; its record stays in reports)."""
        if self.is_alive(executor_id):
            logger.warning("executor %s quarantined", executor_id)
            self.by_id[executor_id].status = "quarantined"

    def readmit(self, executor_id: str) -> bool:
        """Give a quarantined executor work again (re-admission or an operator's reinstate)."""
        slot = self.by_id.get(executor_id)
        if slot is None or slot.info.executor_id != executor_id or slot.status != "quarantined":
            return False
        logger.warning("executor %s re-admitted", executor_id)
        slot.status = "alive"
        return True

    def require(self, needed: int, what: str) -> None:
        live = len(self.live())
        if live < needed:
            raise ExecutorUnavailableError(
                f"{what} needs {needed} live executors but only {live} of {len(self.slots)} are "
                "in service (others crashed, stalled or were quarantined). Add executors with "
                "bft_ray.init(executors=...) or lower replicas/quorum.",
                live=live,
                needed=needed,
            )

    def shutdown(self) -> None:
        for task in list(self._respawn_tasks):
            task.cancel()
        for slot in self.slots.values():
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:
                pass
        for pg in [self.setup.placement_group, *self._groups]:
            if pg is not None:
                try:
                    remove_placement_group(pg)
                except Exception:
                    pass
