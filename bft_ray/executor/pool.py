"""The executor pool: placement, liveness and replacement of executor actors.

Executors are placed with a Ray placement group (one bundle per executor, ``SPREAD`` strategy),
so they land on distinct GPUs and spread over nodes. The driver creates the pool in
``bft_ray.init`` (so placement problems surface there with a clear message); the verifier then
owns its liveness: a crashed executor is marked dead, a stalled one is killed to free its GPU,
and either is respawned in its bundle with a fresh identity, up to ``max_respawns`` times per
slot. Faults are injected per slot: they model the machine, so a respawned executor keeps them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import shutil
import subprocess
import time
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from bft_ray.config import ClusterSpec
from bft_ray.errors import ConfigError, ExecutorUnavailableError
from bft_ray.executor.actor import ExecutorActor, ExecutorInfo
from bft_ray.executor.placement import Candidate, assign

__all__ = ["ExecutorPool", "PoolSetup", "Slot", "create_pool", "local_gpu_count"]

logger = logging.getLogger(__name__)

_RemoteExecutor = ray.remote(ExecutorActor)


@dataclasses.dataclass
class Slot:
    """One executor slot: a bundle in the placement group and the actor living in it."""

    index: int
    handle: Any
    info: ExecutorInfo
    fault: Any
    status: str = "alive"  # alive | dead | respawning | quarantined
    generation: int = 0
    respawns: int = 0


@dataclasses.dataclass
class PoolSetup:
    """Everything the verifier needs to take over a pool created by the driver."""

    placement_group: PlacementGroup | None
    slots: list[Slot]
    actor_options: dict[str, Any]
    seed: int
    max_respawns: int


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
    bundle = {k: v for k, v in bundle.items() if v > 0}
    # Ray rejects empty bundles; a token CPU share keeps CPU-only, zero-CPU executors placeable.
    return bundle or {"CPU": 0.01}


def _executor_id(index: int, generation: int) -> str:
    return f"ex{index}" if generation == 0 else f"ex{index}.{generation}"


def _new_actor(
    setup_opts: dict[str, Any],
    pg: PlacementGroup | None,
    index: int,
    fault: Any,
    seed: int,
    generation: int,
) -> Any:
    opts = dict(setup_opts)
    if pg is not None:
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=index
        )
    return _RemoteExecutor.options(**opts).remote(
        index, _executor_id(index, generation), fault, seed
    )


def create_pool(
    spec: ClusterSpec, *, seed: int = 0, max_respawns: int = 2, placement_timeout_s: float = 60.0
) -> PoolSetup:
    """Place and start ``spec.executors`` executors; blocks until all report their identity.

    Raises:
        ConfigError: When the cluster cannot hold the requested executors.
    """
    bundle = _bundle(spec)
    total = ray.cluster_resources()
    for res, amount in bundle.items():
        need = amount * spec.executors
        if total.get(res, 0.0) + 1e-9 < need:
            raise ConfigError(
                f"{spec.executors} executors x {amount:g} {res} need {need:g} {res}, but the Ray "
                f"cluster has {total.get(res, 0.0):g}. Use fewer executors, lower "
                f"{'gpus' if res == 'GPU' else 'cpus'}_per_executor, or add nodes."
            )
    pg = placement_group([dict(bundle) for _ in range(spec.executors)], strategy="SPREAD")
    try:
        ray.get(pg.ready(), timeout=placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ConfigError(
            f"could not place {spec.executors} executors with {bundle} each within "
            f"{placement_timeout_s:g}s (resources taken by other work?). Free resources or use "
            "fewer executors."
        ) from None
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
    handles = [
        _new_actor(actor_options, pg, i, spec.faults.get(i), seed, 0) for i in range(spec.executors)
    ]
    infos = ray.get([h.info.remote() for h in handles], timeout=placement_timeout_s + 120)
    slots = [
        Slot(i, h, info, spec.faults.get(i)) for i, (h, info) in enumerate(zip(handles, infos))
    ]
    return PoolSetup(pg, slots, actor_options, seed, max_respawns)


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
        self.inflight: collections.Counter[str] = collections.Counter()  # calls per executor id
        self._respawn_tasks: set[asyncio.Task] = set()
        self.respawn_timeout_s = 300.0

    def live(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.status == "alive"]

    def candidates(self) -> list[Candidate]:
        return [Candidate(s.info.executor_id, s.info.node_id) for s in self.live()]

    def pick(self, key: str, k: int, exclude: set[str], avoid_nodes: set[str]) -> list[Slot]:
        chosen = assign(key, self.candidates(), k, exclude, avoid_nodes, self.inflight)
        return [self.by_id[c.executor_id] for c in chosen]

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
            task = asyncio.get_running_loop().create_task(self._respawn(slot))
            self._respawn_tasks.add(task)
            task.add_done_callback(self._respawn_tasks.discard)

    async def _respawn(self, slot: Slot) -> None:
        # The old actor's bundle frees once Ray has torn it down; retry placement until then.
        slot.respawns += 1
        slot.generation += 1
        start = time.monotonic()
        handle = _new_actor(
            self.setup.actor_options,
            self.setup.placement_group,
            slot.index,
            slot.fault,
            self.setup.seed,
            slot.generation,
        )
        try:
            info = await asyncio.wait_for(handle.info.remote(), timeout=300)
        except Exception as exc:
            logger.error("respawn of slot %d failed: %s", slot.index, exc)
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
        if self.setup.placement_group is not None:
            try:
                remove_placement_group(self.setup.placement_group)
            except Exception:
                pass
