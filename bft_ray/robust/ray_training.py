"""Byzantine-robust data-parallel training on Ray: one training worker per bft-ray executor.

Phase 1 (:mod:`bft_ray.robust.training`) split the in-process trainer into a worker step, the
Byzantine rows and a pure server step. This module runs those pieces on the executors of a
:func:`bft_ray.init` cluster:

* **Workers.** Executor slot ``i`` hosts training worker ``i`` (shard ``i``, a model replica,
  its own minibatch stream and momentum buffer) through ``create_instance``. Every step the
  driver puts the parameters in the object store once and calls ``compute`` on every worker;
  each returns its vector (the momentum of its gradients) through the executor, so the answer
  passes through the executor's injected fault behaviour and comes with a signed attestation.
  These calls are *not* replicated: honest gradients legitimately differ between workers.
* **Byzantine workers come from fault injection.** Pass ``faults={i: robust_attack("alie")}``
  (or :func:`attack_faults` of a :class:`~bft_ray.robust.TrainConfig`) to
  :func:`bft_ray.init`. Omniscient vector attacks (ALIE, IPM, sign flip, mimic, Gaussian,
  non-finite) need the honest vectors of the step, which no single executor sees. As ByzFL
  does, the omniscient adversary is **simulated at the collection point**: the harness knows
  which slots carry an :class:`AttackBehaviour` (from ``cluster.spec.faults``), computes their
  rows from the honest rows with the phase-1 attack, and writes them at those slots' positions.
  The aggregation rule is never told which rows are Byzantine. Data attacks (label flipping)
  are ordinary workers on poisoned shards. Generic executor faults (``gaussian_noise``,
  ``zeros``, ``bitflip``, ``stale``, a user callable, ...) corrupt the vector inside the
  executor through the normal ``corrupt`` path, so they act as Byzantine workers with no
  special handling. :class:`AttackBehaviour` itself corrupts nothing (identity), so an attack
  is never applied twice.
* **Server step.** The trusted driver aggregates with
  :func:`~bft_ray.robust.server_step`. With ``verify_aggregation=True`` the server is not
  trusted: the step runs as a ``verified_remote`` task replicated on distinct executors, whose
  outputs must agree within a tolerance, and every step gets a certificate. The rule's state
  (centered clipping's centre, bucketing's counter) travels in and out of the task explicitly,
  so replicas are deterministic functions of their arguments.

Worker ``i`` of the Ray run draws exactly the minibatches of worker ``i`` of the in-process
trainer and the attack uses the same seeded stream, so with ``faults=attack_faults(config)``
the Ray run follows the in-process run of the same :class:`~bft_ray.robust.TrainConfig`
(numerically: single-worker gradients versus the batched pass differ in the last bits).

Example:
    .. code-block:: python

        import bft_ray
        from bft_ray.robust import TrainConfig
        from bft_ray.robust.ray_training import attack_faults, train_on_ray

        cfg = TrainConfig(aggregator="nnm+cc(tau=0.1)", attack="alie", n_workers=15, f=3)
        cluster = bft_ray.init(executors=15, faults=attack_faults(cfg), num_cpus=17)
        result = train_on_ray(cfg, cluster, verify_aggregation=True)
        print(result.accuracy)          # test accuracy after each epoch
        cluster.shutdown()
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from torch import Tensor
from torch.nn import functional as F

import bft_ray
from bft_ray import faults as fault_lib
from bft_ray.config import Tolerance
from bft_ray.errors import ConfigError
from bft_ray.executor.actor import TaskSpec
from bft_ray.executor.guard import no_answer
from bft_ray.robust.attacks import Attack, DataAttack, NoAttack, VectorAttack, make_attack
from bft_ray.robust.base import NonFiniteInputError
from bft_ray.robust.data import Dataset, load_digits_dataset
from bft_ray.robust.registry import make_aggregator
from bft_ray.robust.training import (
    TrainConfig,
    TrainResult,
    Worker,
    attack_generator,
    byzantine_rows,
    initial_params,
    make_model,
    make_shards,
    server_step,
    steps_per_epoch,
)
from bft_ray.verifier.admission import Expected, Outcome, Status, admit, own_object

__all__ = [
    "AGGREGATION_TOLERANCE",
    "AttackBehaviour",
    "RayTrainResult",
    "RayTrainer",
    "attack_faults",
    "robust_attack",
    "train_on_ray",
    "verified_server_step",
]

logger = logging.getLogger(__name__)

#: Default tolerance between replicas of a verified server step. Replicas on identical
#: hardware and software agree bit for bit (measured); the tolerance absorbs different CPUs,
#: BLAS builds or GPUs, and is far below the size of one SGD step on these parameters.
AGGREGATION_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)


# -- fault behaviours ------------------------------------------------------------------------


class AttackBehaviour(fault_lib.Behaviour):
    """Marks an executor slot as a Byzantine training worker running a robust-training attack.

    Pass it in ``bft_ray.init(faults={i: AttackBehaviour("alie")})``. The harness
    (:class:`RayTrainer`) reads it from ``cluster.spec.faults``:

    * a **vector attack** (ALIE, IPM, sign flip, mimic, Gaussian, non-finite) is omniscient: its
      rows are computed at the collection point from the honest rows of the step, the way
      ByzFL simulates the adversary, and written at this slot's position. The slot hosts no
      worker; nothing it could compute alone would matter.
    * a **data attack** (label flipping) makes the slot an ordinary worker on a poisoned shard.

    Its own :meth:`corrupt` is the identity: the attack is applied once, by the harness, and
    any other call the executor serves (for instance a replica of a verified aggregation step)
    is answered honestly. Model a lying aggregation replica with a generic fault instead.

    Args:
        attack: An attack specification for :func:`~bft_ray.robust.make_attack` (``"alie"``,
            ``"ipm(epsilon=10)"``, ``"label_flip"``, ...) or an :class:`~bft_ray.robust.Attack`.

    Example:
        >>> b = AttackBehaviour("ipm(epsilon=10)")
        >>> b, b.attack.kind
        (robust_attack('ipm(epsilon=10)'), 'vector')
        >>> import numpy as np
        >>> b.corrupt(np.ones(2), fault_lib.FaultContext(0, "t", 0)).tolist()  # identity
        [1.0, 1.0]
    """

    name = "robust_attack"

    def __init__(self, attack: str | Attack = "alie") -> None:
        # Keep the specification (a short string) for reports; build the attack once to fail
        # fast on a bad name, in the driver, before any executor starts.
        self.spec = attack if isinstance(attack, str) else repr(attack)
        self._attack = make_attack(attack) if isinstance(attack, str) else attack
        if not isinstance(self._attack, Attack):
            raise ConfigError(f"AttackBehaviour needs an attack, got {attack!r}")

    @property
    def attack(self) -> Attack:
        """The phase-1 attack object."""
        return self._attack

    def corrupt(self, output: Any, ctx: fault_lib.FaultContext) -> Any:
        # Identity on purpose: the harness applies the attack at the collection point.
        return output

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttackBehaviour) and repr(other.attack) == repr(self.attack)

    def __hash__(self) -> int:
        return hash(repr(self.attack))

    def __repr__(self) -> str:
        return f"robust_attack({self.spec!r})"


def admit_answer(entry: dict[str, Any], spec: TaskSpec, ref: Any) -> Outcome:
    """Read one worker's answer bytes (never unpickled) and admit them like any replica.

    ``entry`` is the worker's :meth:`BftCluster.executor_handles` row; ``ref`` the object ref of
    its answer envelope for ``spec``.
    """
    expected = Expected(
        spec.task_id, spec.attempt, entry["executor_id"], entry["slot"], entry["public_key"]
    )
    try:
        raw: Any = ray.get(ref)
    except Exception as exc:
        raw = no_answer(exc)
    return own_object(admit(raw, expected))  # submitted here: a misattributed answer is a replay


def robust_attack(attack: str | Attack = "alie") -> AttackBehaviour:
    """A fault behaviour that makes an executor slot a Byzantine worker (see :class:`AttackBehaviour`).

    Example:
        >>> robust_attack("label_flip").attack.kind
        'data'
    """
    return AttackBehaviour(attack)


def attack_faults(config: TrainConfig) -> dict[int, AttackBehaviour]:
    """The ``faults`` for :func:`bft_ray.init` that reproduce ``config``'s attackers.

    The in-process trainer's Byzantine workers are the last ``config.byzantine`` ids; this
    puts ``robust_attack(config.attack)`` on those executor slots (nothing for ``"none"``).

    Example:
        >>> attack_faults(TrainConfig(attack="alie", n_workers=7, f=2))
        {5: robust_attack('alie'), 6: robust_attack('alie')}
        >>> attack_faults(TrainConfig(attack="none"))
        {}
    """
    if isinstance(make_attack(config.attack), NoAttack):
        return {}
    return {i: AttackBehaviour(config.attack) for i in config.byzantine_ids}


# -- what runs inside the executors ------------------------------------------------------------


class _ExecutorWorker(Worker):
    """A :class:`~bft_ray.robust.Worker` hosted by an executor (one torch thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Many executors share few cores and the tensors are tiny: more threads only add waits.
        torch.set_num_threads(1)
        super().__init__(*args, **kwargs)


def verified_server_step(
    params: Tensor,
    vectors: Tensor,
    rule: str,
    f: int,
    lr: float,
    rule_state: dict[str, Any] | None,
) -> tuple[Tensor, dict[str, Any]]:
    """:func:`~bft_ray.robust.server_step` as it runs on each replica of a verified step.

    Deterministic in its arguments (the rule is rebuilt from its specification and its state
    is loaded from ``rule_state``), and single-threaded so that a replica's result does not
    depend on how many cores its executor happens to use.

    Example:
        >>> p, state = verified_server_step(torch.zeros(2), torch.ones(5, 2), "median", 2, 0.5, None)
        >>> p.tolist(), state
        ([-0.5, -0.5], {})
    """
    torch.set_num_threads(1)
    return server_step(params, vectors, rule, f, lr, rule_state)


# -- results ---------------------------------------------------------------------------------


@dataclass
class RayTrainResult(TrainResult):
    """A :class:`~bft_ray.robust.TrainResult` plus what the Ray layer measured.

    ``loss`` holds the cross-entropy of the whole (clean) training set at the end of each
    epoch, computed by the driver (the in-process trainer reports the honest workers' mean
    minibatch loss instead: executors' own loss reports would be untrusted).

    Attributes:
        verified_aggregation: Whether every server step ran as a verified task.
        attack: The attack the Byzantine slots ran (``None`` without attackers).
        attack_slots: Executor slots whose rows came from the simulated omniscient adversary
            (vector attack) or from a poisoned shard (data attack).
        faulty_slots: Slots with another injected fault (their executors corrupt their rows).
        lost_slots: Slots whose worker crashed, stalled past the timeout or sent an invalid
            answer at least once (a missing row is sent to the rule as a non-finite row).
        compute_seconds: Wall time of each step's worker phase (broadcast, compute, gather).
        aggregate_seconds: Wall time of each step's server step (verified or local).
        aggregation_tasks: Task ids of the accepted verified server steps, in order.

    Example:
        >>> r = RayTrainResult(TrainConfig(), accuracy=[0.9], aggregate_seconds=[0.002, 0.004])
        >>> r.final_accuracy, r.to_dict()["mean_aggregate_seconds"]
        (0.9, 0.003)
    """

    verified_aggregation: bool = False
    attack: str | None = None
    attack_slots: list[int] = field(default_factory=list)
    faulty_slots: list[int] = field(default_factory=list)
    lost_slots: list[int] = field(default_factory=list)
    compute_seconds: list[float] = field(default_factory=list)
    aggregate_seconds: list[float] = field(default_factory=list)
    aggregation_tasks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        steps = len(self.aggregate_seconds)
        out.update(
            verified_aggregation=self.verified_aggregation,
            attack=self.attack,
            attack_slots=self.attack_slots,
            faulty_slots=self.faulty_slots,
            lost_slots=self.lost_slots,
            steps=steps,
            mean_compute_seconds=sum(self.compute_seconds) / steps if steps else None,
            mean_aggregate_seconds=sum(self.aggregate_seconds) / steps if steps else None,
        )
        return out


# -- the trainer -----------------------------------------------------------------------------


class RayTrainer:
    """Data-parallel training whose workers are the executors of a bft-ray cluster.

    Worker ``i`` lives on executor slot ``i`` (the cluster needs at least ``n_workers``
    executors; extra executors host no worker but can run verified server steps). Byzantine
    workers come from the cluster's fault injection (see :class:`AttackBehaviour` and the
    module docstring): ``config.attack`` and ``config.n_byzantine`` do not create attackers
    here. A config naming an attack must match the cluster's attack slots
    (``faults=attack_faults(config)``), so a run never silently trains without its attack.

    Args:
        config: The run (rule, ``n``, ``f``, split, epochs, learning rate, seed...).
        cluster: A cluster from :func:`bft_ray.init`; default the current one.
        dataset: Data; default scikit-learn's digits (:func:`~bft_ray.robust.data.load_digits_dataset`).
        verify_aggregation: Run every server step as a ``verified_remote`` task on
            ``aggregation_replicas`` distinct executors instead of in the trusted driver.
        aggregation_replicas: Replicas of a verified server step.
        aggregation_quorum: Agreeing replicas needed (default: a strict majority).
        tolerance: Tolerance between replicas (default :data:`AGGREGATION_TOLERANCE`).
        worker_timeout_s: Seconds the driver waits for the workers' vectors each step; a
            worker still computing then is missing for that step (a non-finite row, which
            robust rules drop within their ``f`` budget and the mean refuses).
        check_attestations: Kept for compatibility; answers are always admitted like verified
            replicas (registered key, task, slot, signature over the bytes received), and a
            vector that fails admission counts as missing.
        faults: The fault map the harness reads its attack slots from; default
            ``cluster.spec.faults`` (what :func:`bft_ray.init` got). Pass the current map if
            you changed behaviours with ``cluster.inject_fault`` since.

    Example:
        .. code-block:: python

            with RayTrainer(cfg, cluster) as trainer:
                result = trainer.run(on_epoch=lambda e, acc, loss: print(e, acc))
    """

    def __init__(
        self,
        config: TrainConfig,
        cluster: bft_ray.BftCluster | None = None,
        *,
        dataset: Dataset | None = None,
        verify_aggregation: bool = False,
        aggregation_replicas: int = 3,
        aggregation_quorum: int | None = None,
        tolerance: Tolerance | None = None,
        worker_timeout_s: float = 120.0,
        check_attestations: bool = True,
        faults: dict[int, Any] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.cluster = cluster if cluster is not None else bft_ray.current_cluster()
        self.dataset = dataset if dataset is not None else load_digits_dataset()
        self.model = make_model(config, self.dataset)
        self.n = config.n_workers
        if self.cluster.spec.executors < self.n:
            raise ConfigError(
                f"{self.n} workers need {self.n} executors (one worker per executor slot) but the "
                f"cluster has {self.cluster.spec.executors}: use "
                f"bft_ray.init(executors={self.n}) or fewer workers."
            )
        # Fail now, not at the first step, if (n, f) is beyond the rule's breakdown point.
        make_aggregator(config.aggregator, config.f).check(self.n)
        self.attack, self.attack_slots, self.faulty_slots = self._read_faults(
            self.cluster.spec.faults if faults is None else faults
        )
        self.vector_attack = isinstance(self.attack, VectorAttack)
        # Vector-attack slots host no worker: the simulated adversary writes their rows.
        self.worker_slots = [
            i for i in range(self.n) if not (self.vector_attack and i in self.attack_slots)
        ]
        if not self.worker_slots:
            raise ConfigError("every worker is a vector attacker: at least one must be honest")
        if len(self.attack_slots) + len(self.faulty_slots) > config.f:
            logger.warning(
                "%d attack slots and %d faulty slots exceed f=%d: %s is not guaranteed to hold",
                len(self.attack_slots),
                len(self.faulty_slots),
                config.f,
                config.aggregator,
            )
        self.verify_aggregation = verify_aggregation
        self.tolerance = tolerance or AGGREGATION_TOLERANCE
        self._verified_step = None
        if verify_aggregation:
            self._verified_step = bft_ray.verified_remote(
                replicas=aggregation_replicas,
                quorum=aggregation_quorum,
                tolerance=self.tolerance,
            )(verified_server_step)
        self.worker_timeout_s = worker_timeout_s
        self.check_attestations = check_attestations

        self.params = initial_params(config, self.model)
        self.rule_state: dict[str, Any] | None = None
        self.attack_generator = attack_generator(config)
        self.steps_done = 0
        self.last_aggregation: ray.ObjectRef | None = None
        self.lost_slots: set[int] = set()
        self._result = RayTrainResult(
            config,
            verified_aggregation=verify_aggregation,
            attack=None if self.attack is None else repr(self.attack),
            attack_slots=sorted(self.attack_slots),
            faulty_slots=sorted(self.faulty_slots),
        )
        self._instance_id = f"robust-worker-{uuid.uuid4().hex[:12]}"
        self._handles: dict[int, Any] = {}
        self._entries: dict[int, dict[str, Any]] = {}
        shards = self._shards()
        self.shard_sizes = [len(y) for _, y in shards]
        self.steps_per_epoch = steps_per_epoch(config, self.shard_sizes)
        self._start_workers(shards)

    # -- setup --------------------------------------------------------------------------------

    def _read_faults(self, fault_map: dict[int, Any]) -> tuple[Attack | None, set[int], set[int]]:
        """Split injected faults into attack slots and generically faulty slots."""
        attack: Attack | None = None
        attack_slots: set[int] = set()
        faulty: set[int] = set()
        for index, spec in sorted(fault_map.items()):
            behaviour = fault_lib.resolve(spec)
            if isinstance(behaviour, AttackBehaviour):
                if index >= self.n:
                    raise ConfigError(
                        f"executor slot {index} carries {behaviour!r} but only slots "
                        f"0..{self.n - 1} host workers: put attacks on worker slots"
                    )
                if attack is not None and repr(behaviour.attack) != repr(attack):
                    raise ConfigError(
                        f"slots carry different attacks ({attack!r} and {behaviour.attack!r}): "
                        "the simulated adversary runs one attack per run"
                    )
                if not isinstance(behaviour.attack, NoAttack):
                    attack = behaviour.attack
                    attack_slots.add(index)
            elif not behaviour.is_honest and index < self.n:
                faulty.add(index)
        wanted = make_attack(self.config.attack)
        if not isinstance(wanted, NoAttack):
            expected = set(self.config.byzantine_ids)
            if attack_slots != expected or (expected and repr(attack) != repr(wanted)):
                raise ConfigError(
                    f"the config names attack {self.config.attack!r} on workers "
                    f"{sorted(expected)} but the cluster's attack slots are "
                    f"{sorted(attack_slots)} ({attack!r}). On Ray, attackers come from fault "
                    "injection: bft_ray.init(faults=attack_faults(config), ...), or set "
                    "attack='none' in the config and choose the slots yourself."
                )
        return attack, attack_slots, faulty

    def _shards(self) -> list[tuple[Tensor, Tensor]]:
        # The same split as the in-process trainer; poisoning follows the cluster's slots.
        shards = make_shards(self.config, self.dataset, NoAttack())
        if isinstance(self.attack, DataAttack):
            for i in self.attack_slots:
                x, y = shards[i]
                shards[i] = (x, self.attack.transform_labels(y))
        return shards

    def _start_workers(self, shards: Sequence[tuple[Tensor, Tensor]]) -> None:
        # Quarantine keeps executors out of verified work; a training worker's gradients go
        # through the robust rule whatever its executor's reputation, so keep those too.
        entries = {e["index"]: e for e in self.cluster.executor_handles(include_quarantined=True)}
        refs = {}
        for i in self.worker_slots:
            entry = entries.get(i)
            if entry is None:
                # Crashed or respawning: the worker is absent for the whole run
                # and its row is missing (non-finite), which counts against the rule's f.
                self._lose(i, "executor slot not in service (crashed or respawning)")
                continue
            self._handles[i] = entry["handle"]
            self._entries[i] = entry
            x, y = shards[i]
            refs[i] = entry["handle"].create_instance.remote(
                entry["capability"],
                self._spec(i, "start"),
                self._instance_id,
                _ExecutorWorker,
                i,
                x,
                y,
                self.model,
                batch_size=self.config.batch_size,
                momentum=self.config.momentum,
                seed=self.config.seed,
            )
        for i, ref in refs.items():
            out = self._admit(i, self._spec(i, "start"), ref)
            if out.status is not Status.OK:
                # An executor that died unnoticed (the pool learns of deaths from verified
                # calls only), or one that could not build the worker: the slot is out.
                self._lose(i, f"worker did not start: {out.status.value} ({out.reason})", True)
        if not self._handles:
            raise ConfigError("no worker could be started: every worker slot is out of service")
        logger.info(
            "%d workers started on executors %s (attack %r on slots %s, faulty slots %s)",
            len(self.worker_slots),
            self.worker_slots,
            self.attack,
            sorted(self.attack_slots),
            sorted(self.faulty_slots),
        )

    def close(self) -> None:
        """Drop the worker instances from the executors (the cluster keeps running)."""
        handles, self._handles = self._handles, {}
        refs = []
        for i, handle in handles.items():
            try:
                refs.append(
                    handle.drop_instance.remote(self._entries[i]["capability"], self._instance_id)
                )
            except Exception as exc:  # a dead actor: nothing to drop
                logger.debug("drop_instance: %s", exc)
        if not refs:
            return
        # Best effort and bounded: a straggler's queue of late calls must not hold up the
        # driver; its instance goes when the queue drains (or with the executor).
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=2.0)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as exc:  # a dead executor: nothing left to drop
                logger.debug("drop_instance: %s", exc)

    def __enter__(self) -> RayTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one step -----------------------------------------------------------------------------

    def _gather(self, params: Tensor) -> tuple[dict[int, Tensor], float]:
        """Every live worker's vector at ``params`` (slot -> row); missing ones are left out."""
        start = time.perf_counter()
        params_ref = ray.put(params)  # once: every worker's call shares this object
        pending: dict[Any, tuple[int, TaskSpec]] = {}
        for i in self.worker_slots:
            if i not in self._handles:
                continue
            spec = self._spec(i, str(self.steps_done))
            # One object back per worker: its signed answer envelope (bytes only).
            cap = self._entries[i]["capability"]
            ref = self._handles[i].call.remote(cap, spec, self._instance_id, "compute", params_ref)
            pending[ref] = (i, spec)
        if not pending:  # every worker is gone: the rule sees only missing rows
            return {}, time.perf_counter() - start
        ready, late = ray.wait(
            list(pending), num_returns=len(pending), timeout=self.worker_timeout_s
        )
        rows: dict[int, Tensor] = {}
        for ref in late:
            self._lose(pending[ref][0], f"no vector within {self.worker_timeout_s:g}s")
        for ref in ready:
            i, spec = pending[ref]
            out = self._admit(i, spec, ref)
            if out.status in (Status.CRASHED, Status.TIMEOUT):
                # A crashed executor: its worker (state and all) is gone, so the slot stays
                # missing for the rest of the run.
                self._lose(i, f"worker failed: {out.reason}", forget=True)
                continue
            if out.status is not Status.OK:
                self._lose(i, f"answer refused: {out.status.value} ({out.reason})")
                continue
            row = self._as_row(i, out)
            if row is not None:
                rows[i] = row
        return rows, time.perf_counter() - start

    def _spec(self, slot: int, step: str) -> TaskSpec:
        # Deterministic task ids: fault behaviours seed on them, so runs replay exactly.
        return TaskSpec(f"robust-s{self.config.seed}-{step}-w{slot}", 0, "Worker.compute")

    def _admit(self, slot: int, spec: TaskSpec, ref: Any) -> Outcome:
        return admit_answer(self._entries[slot], spec, ref)

    def _lose(self, slot: int, reason: str, forget: bool = False) -> None:
        if slot not in self.lost_slots:
            logger.warning("worker %d missing from step %d: %s", slot, self.steps_done, reason)
        self.lost_slots.add(slot)
        if forget:
            self._handles.pop(slot, None)

    def _as_row(self, slot: int, out: Outcome) -> Tensor | None:
        """The worker's answer as a ``(P,)`` float32 row, or ``None`` if it is not one.

        Read from the admitted canonical form (one numeric leaf), never by decoding the
        answer into Python objects.
        """
        leaves = out.canonical.leaves if out.canonical is not None else ()
        row = None
        if len(leaves) == 1 and leaves[0].array.dtype.kind in "fiu":
            row = torch.from_numpy(leaves[0].array.astype("float32").reshape(-1))
        if row is None or row.numel() != self.model.num_params:
            self._lose(slot, "invalid answer: not one numeric vector of the model's size")
            return None
        return row

    def _vectors(self, rows: dict[int, Tensor]) -> Tensor:
        """The ``(n, P)`` matrix the rule sees; missing rows are NaN (no answer)."""
        vectors = torch.full((self.n, self.model.num_params), float("nan"))
        for i, row in rows.items():
            vectors[i] = row
        if self.vector_attack and self.attack_slots:
            # The simulated omniscient adversary computes its rows from the honest vectors of
            # the step, as the attacks are defined: the rows of workers on slots without any
            # injected fault (the harness knows the fault map). Rows that executors corrupted
            # in place are not honest; if nothing else answered, it uses what did. It writes
            # its rows at the attack slots; nothing marks them for the rule.
            finite = [i for i in sorted(rows) if bool(torch.isfinite(rows[i]).all())]
            seen = [i for i in finite if i not in self.faulty_slots] or finite
            if not seen:
                raise ConfigError("no worker answered this step: the attack has nothing to see")
            honest = torch.stack([rows[i] for i in seen])
            slots = sorted(self.attack_slots)
            assert isinstance(self.attack, VectorAttack)
            byz = byzantine_rows(self.attack, honest, len(slots), generator=self.attack_generator)
            vectors[slots] = byz.to(vectors.dtype)
        return vectors

    def _aggregate(self, vectors: Tensor) -> tuple[Tensor, dict[str, Any]]:
        cfg = self.config
        if self._verified_step is None:
            return server_step(self.params, vectors, cfg.aggregator, cfg.f, cfg.lr, self.rule_state)
        ref = self._verified_step.remote(
            self.params, vectors, cfg.aggregator, cfg.f, cfg.lr, self.rule_state
        )
        try:
            params, state = bft_ray.get(ref, timeout=self.worker_timeout_s * 2)
        except ray.exceptions.RayTaskError as exc:
            # bft_ray.get surfaces bft-ray errors (NonFiniteInputError is one) as themselves;
            # unwrap here too in case the rule's refusal arrives wrapped.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, NonFiniteInputError):
                raise cause from None
            raise
        # Only accepted steps: certificate() then always refers to the parameters in use.
        self.last_aggregation = ref
        self._result.aggregation_tasks.append(bft_ray.task_id(ref))
        return params, state

    def step(self) -> None:
        """One server step: broadcast, compute, attack, aggregate, update."""
        rows, compute_s = self._gather(self.params)
        vectors = self._vectors(rows)
        start = time.perf_counter()
        self.params, self.rule_state = self._aggregate(vectors)
        self._result.compute_seconds.append(compute_s)
        self._result.aggregate_seconds.append(time.perf_counter() - start)
        self.steps_done += 1

    # -- evaluation and the loop ------------------------------------------------------------

    @property
    def result(self) -> RayTrainResult:
        """The result so far (filled in by :meth:`run` and :meth:`step`)."""
        return self._result

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and clean training-set loss of the current parameters (in the driver)."""
        ds = self.dataset
        accuracy = self.model.accuracy(self.params, ds.x_test, ds.y_test)
        if not bool(torch.isfinite(self.params).all()):
            return accuracy, float("nan")
        loss = F.cross_entropy(self.model.forward(self.params, ds.x_train), ds.y_train)
        return accuracy, float(loss)

    def run(
        self,
        on_epoch: Callable[[int, float, float], None] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> RayTrainResult:
        """Train for ``config.epochs`` epochs.

        Args:
            on_epoch: Called as ``on_epoch(epoch, accuracy, loss)`` after each evaluation.
            on_step: Called with the number of steps done after each server step.

        Returns:
            The :class:`RayTrainResult` (accuracy per epoch, timings, slots).
        """
        start = time.perf_counter()
        result = self._result
        for epoch in range(self.config.epochs):
            if result.diverged:
                # Non-finite parameters cannot recover and a halted server does not move.
                result.accuracy.append(result.accuracy[-1])
                result.loss.append(float("nan"))
                continue
            try:
                for _ in range(self.steps_per_epoch):
                    self.step()
                    if on_step is not None:
                        on_step(self.steps_done)
            except NonFiniteInputError as exc:
                # The rule refused the step: a server stops here with its last good parameters.
                result.halted = str(exc)
                result.diverged = True
            else:
                result.diverged = not bool(torch.isfinite(self.params).all())
            accuracy, loss = self.evaluate()
            result.accuracy.append(accuracy)
            result.loss.append(loss)
            if on_epoch is not None:
                on_epoch(epoch, accuracy, loss)
        result.lost_slots = sorted(self.lost_slots)
        result.seconds = time.perf_counter() - start
        return result

    def certificate(self, timeout: float | None = 60.0) -> bft_ray.Certificate:
        """The certificate of the last accepted verified server step (the current parameters).

        Raises:
            ConfigError: When aggregation is not verified or no step ran yet.
        """
        if self.last_aggregation is None:
            raise ConfigError(
                "no verified server step yet: use verify_aggregation=True and run a step"
            )
        return bft_ray.certificate(self.last_aggregation, timeout=timeout)


def train_on_ray(
    config: TrainConfig,
    cluster: bft_ray.BftCluster | None = None,
    *,
    on_epoch: Callable[[int, float, float], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    **options: Any,
) -> RayTrainResult:
    """Run one training run on the executors of ``cluster`` (see :class:`RayTrainer`).

    Example:
        .. code-block:: python

            cluster = bft_ray.init(executors=7, faults=attack_faults(cfg))
            result = train_on_ray(cfg, cluster, verify_aggregation=True)
    """
    with RayTrainer(config, cluster, **options) as trainer:
        return trainer.run(on_epoch=on_epoch, on_step=on_step)
