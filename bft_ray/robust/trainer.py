"""``RobustTrainer``: Byzantine-robust data-parallel training of your own torch module.

You give three functions and an optimiser:

* ``model_fn()`` builds the :class:`torch.nn.Module` (on every worker, and once on the driver,
  which holds the trained copy);
* ``data_fn(worker_index, n_workers)`` returns an iterable of that worker's minibatches (it is
  called again when exhausted; it must give the same batches for the same arguments);
* ``loss_fn(model, batch)`` returns the scalar loss;
* ``optimizer_fn(params)`` builds the driver's :class:`torch.optim.Optimizer`.

Each server step the driver puts the model's state (parameters and buffers, one ``float32``
vector) in the object store once; every worker loads it, takes the gradient of one minibatch
and sends its momentum; the driver aggregates the ``n`` rows with the robust rule, writes the
result into the parameters' ``.grad`` and calls ``optimizer.step()``.

Two backends run the same :class:`~bft_ray.robust.model_worker.ModelWorker` code:

* ``backend="ray"`` (default): worker ``i`` lives on executor slot ``i`` of a
  :func:`bft_ray.init` cluster (GPU when the executor has one). Its rows come back through the
  executor: the executor's injected fault behaviour applies, the answer is encoded to the
  canonical wire format, signed, and admitted by the driver like a verified replica (never
  unpickled). Byzantine workers come from fault injection, exactly as for
  :func:`~bft_ray.robust.train_on_ray`: ``faults={i: robust_attack("ipm(epsilon=10)")}``.
  With ``verify_aggregation=True`` each aggregation runs as a replicated, certified
  ``verified_remote`` task.
* ``backend="local"``: the workers are objects in the driver process, fault behaviours are
  applied in-process (a ``crash`` fault is emulated as a lost worker). Same rows, bit for bit
  (one torch thread), no Ray: for tests, and to measure what Ray costs per step.

Example:
    >>> import torch
    >>> from torch import nn
    >>> def data_fn(i, n):
    ...     g = torch.Generator().manual_seed(i)
    ...     x = torch.randn(64, 3, generator=g)
    ...     return [(x[k:k + 16], x[k:k + 16].sum(1, keepdim=True)) for k in range(0, 64, 16)]
    >>> trainer = RobustTrainer(lambda: nn.Linear(3, 1),
    ...                         lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), data_fn,
    ...                         optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1),
    ...                         aggregator="trimmed_mean", f=1, workers=5, steps=60,
    ...                         backend="local", faults=byzantine_faults("sign_flip", 5, 1))
    >>> result = trainer.fit()
    >>> result.history[-1]["loss"] < 0.01, len(result.history)
    (True, 10)
"""

from __future__ import annotations

import copy
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor, nn

from bft_ray import faults as fault_lib
from bft_ray.config import _Model
from bft_ray.errors import ConfigError
from bft_ray.robust.attacks import Attack, DataAttack, NoAttack, VectorAttack
from bft_ray.robust.base import NonFiniteInputError
from bft_ray.robust.model_worker import Layout, ModelWorker, aggregate_rows, blocks_for
from bft_ray.robust.ray_training import AGGREGATION_TOLERANCE, AttackBehaviour
from bft_ray.robust.registry import make_aggregator
from bft_ray.robust.training import derive_seed

__all__ = [
    "FitResult",
    "RobustTrainer",
    "TrainerConfig",
    "byzantine_faults",
    "verified_aggregate_rows",
]

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


class TrainerConfig(_Model):
    """Validated settings of a :class:`RobustTrainer` (errors are :class:`ConfigError`).

    Attributes:
        aggregator: Rule specification (``"nnm+cc"``, ``"trimmed_mean"``, ...).
        f: Byzantine workers the rule must tolerate (missing workers count against it).
        workers: ``n``, one per executor slot ``0..n-1`` on Ray.
        steps: Server steps of :meth:`RobustTrainer.fit`.
        steps_per_epoch: Steps between history entries (default ``ceil(steps / 10)``).
        momentum: Worker momentum ``beta`` (``0``: workers send plain gradients).
        seed: Seeds the driver's model, dropout per (worker, step) and randomised attacks.
        backend: ``"ray"`` (workers on executors) or ``"local"`` (in-process).
        aggregate_by: ``"model"`` (the rule sees whole vectors), ``"tensor"`` (one rule per
            parameter tensor) or an int chunk size; see :func:`blocks_for`.
        verify_aggregation: Run each aggregation as a certified verified task (Ray only).
        aggregation_replicas: Replicas of a verified aggregation.
        worker_timeout_s: How long the driver waits for the rows of a step.
        max_recreations: Re-creations of a crashed worker allowed per slot.
        recreate_timeout_s: How long to wait for a crashed worker's executor to respawn.
        progress: Show a progress bar.

    Example:
        >>> try:
        ...     TrainerConfig(aggregator="krum", f=2, workers=6, steps=10)
        ... except ConfigError as e:
        ...     print(str(e).splitlines()[1].split(" (got {")[0])
          TrainerConfig: Krum needs n > 2f + 2 (got n=6, f=2): use at most f=1 or add workers (n >= 7)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregator: str = "nnm+cc"
    f: int = Field(ge=0)
    workers: int = Field(ge=1)
    steps: int = Field(ge=1)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    seed: int = 0
    backend: Literal["ray", "local"] = "ray"
    aggregate_by: Literal["model", "tensor"] | int = "model"
    verify_aggregation: bool = False
    aggregation_replicas: int = Field(default=3, ge=1)
    worker_timeout_s: float = Field(default=120.0, gt=0)
    max_recreations: int = Field(default=2, ge=0)
    recreate_timeout_s: float = Field(default=60.0, gt=0)
    progress: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.f >= self.workers:
            raise ValueError(
                f"f={self.f} must be < workers={self.workers}: at least one worker must be "
                "honest; lower f or add workers"
            )
        rule = make_aggregator(self.aggregator, self.f)  # ConfigError (a ValueError) if unknown
        rule.check(self.workers)
        if isinstance(self.aggregate_by, int) and self.aggregate_by < 1:
            raise ValueError(
                f"aggregate_by={self.aggregate_by}: a chunk size must be >= 1 (or use 'model' "
                "or 'tensor')"
            )
        if self.verify_aggregation and self.backend != "ray":
            raise ValueError(
                "verify_aggregation=True runs the aggregation as verified tasks on executors: "
                "use backend='ray' (with bft_ray.init(...)) or verify_aggregation=False"
            )
        return self

    @property
    def epoch_steps(self) -> int:
        return self.steps_per_epoch or max(1, math.ceil(self.steps / 10))


def byzantine_faults(attack: str, workers: int, count: int) -> dict[int, AttackBehaviour]:
    """``faults`` making the last ``count`` of ``workers`` slots run ``attack``.

    For :func:`bft_ray.init` (Ray backend) or ``RobustTrainer(..., faults=...)`` (local).

    Example:
        >>> byzantine_faults("alie", workers=5, count=2)
        {3: robust_attack('alie'), 4: robust_attack('alie')}
    """
    if not 0 <= count < workers:
        raise ConfigError(f"need 0 <= count < workers (got count={count}, workers={workers})")
    if count == 0:
        return {}
    return {i: AttackBehaviour(attack) for i in range(workers - count, workers)}


def verified_aggregate_rows(
    rows: Tensor,
    blocks: list[tuple[int, int]],
    num_params: int,
    rule: str,
    f: int,
    states: list[dict[str, Any]] | None,
) -> tuple[Tensor, Tensor, Tensor, list[dict[str, Any]]]:
    """:func:`~bft_ray.robust.model_worker.aggregate_rows` as one replica of a verified task.

    Single-threaded, deterministic in its arguments (rule states go in and out).

    Example:
        >>> rows = torch.tensor([[1.0, 0.5], [3.0, 0.7], [2.0, 0.6]])
        >>> update, _, loss, _ = verified_aggregate_rows(rows, [(0, 1)], 1, "median", 1, None)
        >>> update.tolist(), round(float(loss), 2)
        ([2.0], 0.6)
    """
    torch.set_num_threads(1)
    update, buffers, loss, new = aggregate_rows(list(rows), blocks, num_params, rule, f, states)
    return update, buffers, torch.tensor(loss), new


@dataclass
class FitResult:
    """What :meth:`RobustTrainer.fit` returns.

    Attributes:
        model: The trained module (the driver's copy).
        history: One dict per epoch: ``epoch``, ``step``, ``loss`` (mean over the epoch's
            steps of the median loss the workers reported; untrusted, for monitoring),
            ``seconds`` (wall time of the epoch) and what ``eval_fn`` returned.
        steps: Server steps done.
        diverged: The parameters became non-finite, or the rule refused a step.
        halted: The rule's refusal message, if it refused a step (the run stops there).
        missing: Step -> worker slots whose row was missing (crash, timeout, bad answer).
        recreated: ``(step, slot)`` for each worker re-created after a crash.
        compute_seconds: Per step, the worker phase (broadcast, compute, gather).
        aggregate_seconds: Per step, the server phase (aggregate, optimiser step).
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    diverged: bool = False
    halted: str | None = None
    missing: dict[int, list[int]] = field(default_factory=dict)
    recreated: list[tuple[int, int]] = field(default_factory=list)
    compute_seconds: list[float] = field(default_factory=list)
    aggregate_seconds: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


def _callable(name: str, fn: Any, example: str) -> None:
    if not callable(fn):
        raise ConfigError(f"{name} must be callable, got {type(fn).__name__}: e.g. {example}")


class RobustTrainer:
    """Data-parallel training of any torch module with up to ``f`` Byzantine workers.

    See the module docstring for the protocol. Buffers (batch-norm running statistics and
    ``num_batches_tracked``) are not trained by gradients: every worker runs its forward pass
    in train mode (batch norm normalises with the batch's own statistics, so the broadcast
    running statistics do not enter the gradient), sends its updated buffers beside its
    momentum, and the server sets each buffer entry to the coordinate-wise median of the
    workers' values (robust to ``f`` rows, whatever the rule). The driver's model therefore
    evaluates with robustly aggregated running statistics.

    Memory per server step (``n`` workers, ``P`` trainable parameters, ``B`` buffer entries,
    4 bytes each): the ``n`` received rows, ``4 n (P + B + 1)`` bytes, kept until the next step
    (they are the workers' momentum, needed to re-create a crashed worker and for
    checkpoints); plus one ``(n, block)`` matrix at a time for the rule, ``4 n P`` with
    ``aggregate_by="model"``, ``4 n max_tensor`` with ``"tensor"``, ``4 n k`` with chunks of
    ``k``; plus the rule's own work space (``n x n`` distances for Krum/NNM, a few
    vectors for the geometric median or centered clipping). The simulated omniscient attack
    (when a slot carries ``robust_attack``) stacks the ``h`` honest momenta once more (``4 h P``).
    Note that per-tensor or chunked aggregation is a different rule for distance-based rules
    (Krum picks per block); coordinate-wise rules are the same.

    Args:
        model_fn: Builds the module (same architecture every call).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        data_fn: ``data_fn(worker_index, n_workers) -> iterable of minibatches``.
        optimizer_fn: ``optimizer_fn(parameters) -> torch.optim.Optimizer`` (driver side).
        aggregator, f, workers, steps, verify_aggregation: See :class:`TrainerConfig`.
        eval_fn: ``eval_fn(model) -> float or dict`` once per epoch, on the driver.
        on_epoch: ``on_epoch(metrics_dict)`` after each epoch.
        cluster: Ray backend: the :func:`bft_ray.init` cluster (default: the current one).
        faults: Fault map (slot -> behaviour). Local backend: the only source of Byzantine
            workers. Ray backend: default ``cluster.spec.faults``; pass the current map if
            you changed behaviours with ``cluster.inject_fault``.
        **options: Other :class:`TrainerConfig` fields (``backend``, ``seed``, ``momentum``,
            ``aggregate_by``, ``steps_per_epoch``, ``progress``, ...).
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        loss_fn: Callable[[nn.Module, Any], Tensor],
        data_fn: Callable[[int, int], Any],
        *,
        optimizer_fn: Callable[[Any], torch.optim.Optimizer],
        aggregator: str = "nnm+cc",
        f: int,
        workers: int,
        steps: int,
        eval_fn: Callable[[nn.Module], Any] | None = None,
        verify_aggregation: bool = False,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        cluster: Any = None,
        faults: Mapping[int, Any] | None = None,
        **options: Any,
    ) -> None:
        self.config = TrainerConfig(
            aggregator=aggregator,
            f=f,
            workers=workers,
            steps=steps,
            verify_aggregation=verify_aggregation,
            **options,
        )
        _callable("model_fn", model_fn, "lambda: torch.nn.Linear(4, 2)")
        _callable("loss_fn", loss_fn, "lambda model, batch: F.mse_loss(model(batch[0]), batch[1])")
        _callable("data_fn", data_fn, "lambda i, n: my_loader(shard=i, of=n)")
        _callable("optimizer_fn", optimizer_fn, "lambda p: torch.optim.SGD(p, lr=0.1)")
        if eval_fn is not None:
            _callable("eval_fn", eval_fn, "lambda model: {'accuracy': ...}")
        self.model_fn, self.loss_fn, self.data_fn = model_fn, loss_fn, data_fn
        self.optimizer_fn, self.eval_fn, self.on_epoch = optimizer_fn, eval_fn, on_epoch
        self._fault_spec = dict(faults) if faults is not None else None
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, 0, 10))
            self.model = model_fn()
        self.layout = Layout(self.model)
        self.optimizer = optimizer_fn(self.model.parameters())
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise ConfigError(
                "optimizer_fn(params) must return a torch.optim.Optimizer, got "
                f"{type(self.optimizer).__name__}: e.g. lambda p: torch.optim.SGD(p, lr=0.1)"
            )
        self.blocks = blocks_for(self.layout, cfg.aggregate_by)
        self.rule_states: list[dict[str, Any]] | None = None
        self.step_count = 0
        self.momenta: dict[int, Tensor] = {}
        self.asked: dict[int, int] = dict.fromkeys(range(cfg.workers), 0)
        self.attack_generator = torch.Generator().manual_seed(derive_seed(cfg.seed, 3))
        self._result = FitResult(self.model)
        self._epoch_losses: list[float] = []
        self._epoch_start = time.perf_counter()
        self._stopped = False
        self.last_aggregation: Any = None
        if cfg.backend == "local":
            self.backend: _Backend = _LocalBackend(self, self._fault_spec or {})
        else:
            self.backend = _RayBackend(self, cluster, self._fault_spec)
        self._started = False

    # -- setup ---------------------------------------------------------------------------------

    def _split_faults(
        self, fault_map: Mapping[int, Any]
    ) -> tuple[Attack | None, set[int], dict[int, Any]]:
        """Attack slots (simulated adversary) and other faulty slots of ``fault_map``."""
        attack: Attack | None = None
        attack_slots: set[int] = set()
        faulty: dict[int, Any] = {}
        n = self.config.workers
        for index, spec in sorted(fault_map.items()):
            behaviour = fault_lib.resolve(spec)
            if isinstance(behaviour, AttackBehaviour):
                if isinstance(behaviour.attack, NoAttack):
                    continue
                if index >= n:
                    raise ConfigError(
                        f"slot {index} carries {behaviour!r} but only slots 0..{n - 1} host "
                        "workers: put attacks on worker slots"
                    )
                if isinstance(behaviour.attack, DataAttack):
                    raise ConfigError(
                        f"{behaviour!r} rewrites labels, which RobustTrainer cannot find in "
                        "your batches: poison that worker's data in data_fn instead, or use a "
                        "vector attack (alie, ipm, minmax, minsum, sign_flip, ...)"
                    )
                if attack is not None and repr(behaviour.attack) != repr(attack):
                    raise ConfigError(
                        f"slots carry different attacks ({attack!r} and {behaviour.attack!r}): "
                        "the simulated adversary runs one attack per run"
                    )
                attack = behaviour.attack
                attack_slots.add(index)
            elif not behaviour.is_honest and index < n:
                faulty[index] = spec
        if len(attack_slots) + len(faulty) > self.config.f:
            logger.warning(
                "%d attack slots and %d faulty slots exceed f=%d",
                len(attack_slots),
                len(faulty),
                self.config.f,
            )
        return attack, attack_slots, faulty

    def _ensure_started(self) -> None:
        if not self._started:
            self.backend.start()
            self._started = True

    def worker_args(self, slot: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Constructor arguments of worker ``slot``'s :class:`ModelWorker`, from the current state."""
        cfg = self.config
        args = (slot, cfg.workers, self.model_fn, self.loss_fn, self.data_fn)
        kwargs = {
            "momentum": cfg.momentum,
            "seed": cfg.seed,
            "momentum_init": self.momenta.get(slot),
            "batches_done": self.asked[slot],
        }
        return args, kwargs

    # -- one step --------------------------------------------------------------------------------

    def _rows(self, received: dict[int, Tensor]) -> list[Tensor]:
        """The ``n`` rows the rule sees: received rows, attack rows, NaN for missing ones."""
        n, size, p = self.config.workers, self.layout.row_size, self.layout.num_params
        missing = torch.full((size,), float("nan"))  # one shared row for every missing worker
        rows = [received.get(i, missing) for i in range(n)]
        backend = self.backend
        if isinstance(backend.attack, VectorAttack) and backend.attack_slots:
            finite = [i for i in sorted(received) if bool(torch.isfinite(received[i]).all())]
            seen = [i for i in finite if i not in backend.faulty_slots] or finite
            if not seen:
                raise NonFiniteInputError(
                    "no worker answered this step: nothing to train on (and nothing for the "
                    "simulated attack to see)"
                )
            slots = sorted(backend.attack_slots)
            honest = torch.stack([received[i] for i in seen])
            gen = self.attack_generator
            # Parameters and the rest (buffers, loss) are attacked separately, each from the
            # honest values of the step, as the attacks are defined on the vectors they see.
            byz_p = backend.attack.byzantine_matrix(honest[:, :p], len(slots), generator=gen)
            byz_x = backend.attack.byzantine_matrix(honest[:, p:], len(slots), generator=gen)
            byz = torch.cat([byz_p.to(torch.float32), byz_x.to(torch.float32)], dim=1)
            for k, i in enumerate(slots):
                rows[i] = byz[k]
        return rows

    def _aggregate(self, rows: list[Tensor]) -> tuple[Tensor, Tensor, float, list[dict]]:
        cfg, p = self.config, self.layout.num_params
        if not cfg.verify_aggregation:
            return aggregate_rows(rows, self.blocks, p, cfg.aggregator, cfg.f, self.rule_states)
        assert isinstance(self.backend, _RayBackend)
        return self.backend.verified_aggregate(torch.stack(rows), self.rule_states)

    def step(self) -> float:
        """One server step (broadcast, compute, aggregate, optimiser step); the median loss.

        Raises:
            NonFiniteInputError: The rule refused the step (the parameters are unchanged).
        """
        self._ensure_started()
        start = time.perf_counter()
        state = self.layout.state(self.model)
        received = self.backend.gather(state, self.step_count)
        for i, row in received.items():
            self.momenta[i] = row[: self.layout.num_params]
        computed = time.perf_counter()
        rows = self._rows(received)
        update, buffers, loss, states = self._aggregate(rows)
        self.layout.set_grads(self.model, update)
        self.optimizer.step()
        if self.layout.num_buffers:
            self.layout.load_buffers(self.model, buffers)
        self.rule_states = states
        missing = sorted(i for i in self.backend.worker_slots if i not in received)
        if missing:
            self._result.missing[self.step_count] = missing
        self.step_count += 1
        self._result.compute_seconds.append(computed - start)
        self._result.aggregate_seconds.append(time.perf_counter() - computed)
        return loss

    # -- the loop --------------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self) -> dict[str, Any]:
        if self.eval_fn is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.eval_fn(self.model)
        finally:
            self.model.train(was_training)
        if isinstance(out, Mapping):
            return {str(k): float(v) for k, v in out.items()}
        return {"eval": float(out)}

    def _end_epoch(self) -> None:
        cfg = self.config
        losses = self._epoch_losses
        metrics: dict[str, Any] = {
            "epoch": len(self._result.history),
            "step": self.step_count,
            "loss": float(sum(losses) / len(losses)) if losses else float("nan"),
            "seconds": time.perf_counter() - self._epoch_start,
        }
        metrics.update(self._evaluate())
        self._result.history.append(metrics)
        logger.info(
            "epoch %d (step %d/%d): %s",
            metrics["epoch"],
            self.step_count,
            cfg.steps,
            ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)),
        )
        if self.on_epoch is not None:
            self.on_epoch(metrics)
        self._epoch_losses = []
        self._epoch_start = time.perf_counter()

    def fit(self, until: int | None = None) -> FitResult:
        """Train up to step ``until`` (default ``config.steps``); can be called again to go on.

        Returns:
            The :class:`FitResult` (the driver's model, the per-epoch history, timings).
        """
        cfg = self.config
        target = cfg.steps if until is None else min(until, cfg.steps)
        result = self._result
        with self._progress(target) as advance:
            while self.step_count < target and not self._stopped:
                try:
                    loss = self.step()
                except NonFiniteInputError as exc:
                    result.halted, result.diverged, self._stopped = str(exc), True, True
                    logger.warning("step %d refused: %s", self.step_count, exc)
                    self._end_epoch()
                    break
                self._epoch_losses.append(loss)
                if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                    result.diverged, self._stopped = True, True
                    self._end_epoch()
                    break
                advance(loss)
                if self.step_count % cfg.epoch_steps == 0 or self.step_count == cfg.steps:
                    self._end_epoch()
        result.steps = self.step_count
        return result

    @contextmanager
    def _progress(self, target: int) -> Iterator[Callable[[float], None]]:
        if not self.config.progress:
            yield lambda _loss: None
            return
        from bft_ray.progress import progress_bar

        with progress_bar("robust training", total=target, transient=True) as bar:
            bar.completed = self.step_count  # resumed from a checkpoint
            yield lambda loss: bar.advance(status=f"loss {loss:.4g}")

    @property
    def result(self) -> FitResult:
        return self._result

    def close(self) -> None:
        """Drop the workers (the cluster keeps running)."""
        self.backend.close()
        self._started = False

    def __enter__(self) -> RobustTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def certificate(self, timeout: float | None = 60.0) -> Any:
        """Certificate of the last verified aggregation (``verify_aggregation=True``)."""
        import bft_ray

        if self.last_aggregation is None:
            raise ConfigError("no verified aggregation yet: use verify_aggregation=True and fit")
        return bft_ray.certificate(self.last_aggregation, timeout=timeout)

    # -- checkpoints -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write a checkpoint that :meth:`load` resumes on the same trajectory.

        Holds the driver's model and optimiser state, the rules' states, the step, every
        worker's last momentum and number of minibatches drawn, the attack's random stream,
        the history and, pickled with cloudpickle where possible, the functions and the fault
        map. A checkpoint is pickled data: load only checkpoints you wrote.
        """
        from ray import cloudpickle

        try:
            functions = cloudpickle.dumps(
                {
                    "model_fn": self.model_fn,
                    "loss_fn": self.loss_fn,
                    "data_fn": self.data_fn,
                    "optimizer_fn": self.optimizer_fn,
                    "eval_fn": self.eval_fn,
                    "faults": self._fault_spec,
                }
            )
        except Exception as exc:  # pass them to load() instead
            logger.warning("checkpoint without functions (not picklable: %s)", exc)
            functions = None
        result = self._result
        blob = {
            "version": CHECKPOINT_VERSION,
            "config": self.config.model_dump(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rule_states": self.rule_states,
            "step": self.step_count,
            "momenta": dict(self.momenta),
            "asked": dict(self.asked),
            "attack_generator": self.attack_generator.get_state(),
            "history": result.history,
            "epoch_losses": self._epoch_losses,
            "missing": result.missing,
            "recreated": result.recreated,
            "functions": functions,
        }
        torch.save(blob, Path(path))
        logger.info("checkpoint at step %d written to %s", self.step_count, path)

    @classmethod
    def load(cls, path: str | Path, *, cluster: Any = None, **overrides: Any) -> RobustTrainer:
        """A trainer resumed from :meth:`save`'s checkpoint; ``fit()`` continues it.

        Args:
            path: The checkpoint.
            cluster: Ray backend: the cluster to resume on.
            **overrides: Functions (``model_fn``, ``loss_fn``, ``data_fn``, ``optimizer_fn``,
                ``eval_fn``, ``on_epoch``, ``faults``) to use instead of the pickled ones, and
                config fields to change (``steps`` to train longer, ``progress``, ...).
        """
        from ray import cloudpickle

        blob = torch.load(Path(path), weights_only=False)
        if blob.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(
                f"{path}: not a RobustTrainer checkpoint (version {blob.get('version')})"
            )
        saved = cloudpickle.loads(blob["functions"]) if blob["functions"] else {}
        names = ("model_fn", "loss_fn", "data_fn", "optimizer_fn", "eval_fn", "faults", "on_epoch")
        fns = {k: overrides.pop(k, saved.get(k)) for k in names}
        for k in ("model_fn", "loss_fn", "data_fn", "optimizer_fn"):
            if fns[k] is None:
                raise ConfigError(f"{path} holds no {k} (it was not picklable): pass {k}=...")
        config = {**blob["config"], **overrides}
        trainer = cls(
            fns["model_fn"],
            fns["loss_fn"],
            fns["data_fn"],
            optimizer_fn=fns["optimizer_fn"],
            eval_fn=fns["eval_fn"],
            on_epoch=fns["on_epoch"],
            cluster=cluster,
            faults=fns["faults"],
            **config,
        )
        trainer.model.load_state_dict(blob["model"])
        trainer.optimizer.load_state_dict(blob["optimizer"])
        trainer.rule_states = blob["rule_states"]
        trainer.step_count = blob["step"]
        trainer.momenta = dict(blob["momenta"])
        trainer.asked = dict(blob["asked"])
        trainer.attack_generator.set_state(blob["attack_generator"])
        result = trainer._result
        result.history = list(blob["history"])
        result.missing = dict(blob["missing"])
        result.recreated = list(blob["recreated"])
        result.steps = trainer.step_count
        trainer._epoch_losses = list(blob["epoch_losses"])
        logger.info("resumed from %s at step %d", path, trainer.step_count)
        return trainer


# -- backends ------------------------------------------------------------------------------------


class _Backend:
    attack: Attack | None
    attack_slots: set[int]
    faulty_slots: set[int]
    worker_slots: list[int]

    def __init__(self, trainer: RobustTrainer, fault_map: Mapping[int, Any]) -> None:
        self.trainer = trainer
        self.attack, self.attack_slots, self.faulty = trainer._split_faults(fault_map)
        self.faulty_slots = set(self.faulty)
        vector = isinstance(self.attack, VectorAttack)
        n = trainer.config.workers
        self.worker_slots = [i for i in range(n) if not (vector and i in self.attack_slots)]
        if not self.worker_slots:
            raise ConfigError("every worker is a vector attacker: at least one must be honest")
        self.recreations: dict[int, int] = {}

    def start(self) -> None:
        raise NotImplementedError

    def gather(self, state: Tensor, step: int) -> dict[int, Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _may_recreate(self, slot: int) -> bool:
        done = self.recreations.get(slot, 0)
        if done >= self.trainer.config.max_recreations:
            logger.warning("worker %d lost for good (re-created %d times already)", slot, done)
            return False
        self.recreations[slot] = done + 1
        return True


class _LocalBackend(_Backend):
    """Workers as objects in this process; fault behaviours applied here."""

    def __init__(self, trainer: RobustTrainer, fault_map: Mapping[int, Any]) -> None:
        super().__init__(trainer, fault_map)
        for index, spec in self.faulty.items():
            behaviour = fault_lib.resolve(spec)
            if isinstance(behaviour, fault_lib.Slow) or type(behaviour).on_wire is not (
                fault_lib.Behaviour.on_wire
            ):
                raise ConfigError(
                    f"slot {index}: {behaviour!r} needs executors (timeouts, wire bytes): "
                    "use backend='ray' for it"
                )
        self.behaviours: dict[int, fault_lib.Behaviour] = {}
        self.workers: dict[int, ModelWorker] = {}

    def _fresh_behaviour(self, slot: int) -> fault_lib.Behaviour:
        # A respawned executor gets a fresh copy of its slot's behaviour (fresh counters).
        return copy.deepcopy(fault_lib.resolve(self.faulty.get(slot)))

    def _answered(self, slot: int) -> bool:
        """Emulate a crash fault: ``False`` when the executor would have died answering."""
        b = self.behaviours[slot]
        if isinstance(b, fault_lib.Crash):
            b._seen += 1
            return b._seen <= b.after
        return True

    def _create(self, slot: int) -> bool:
        while True:
            self.behaviours[slot] = self._fresh_behaviour(slot)
            args, kwargs = self.trainer.worker_args(slot)
            worker = ModelWorker(*args, **kwargs)
            if self._answered(slot):
                self.workers[slot] = worker
                return True
            if not self._may_recreate(slot):
                self.workers.pop(slot, None)
                return False

    def start(self) -> None:
        for i in self.worker_slots:
            self._create(i)

    def gather(self, state: Tensor, step: int) -> dict[int, Tensor]:
        trainer = self.trainer
        rows: dict[int, Tensor] = {}
        for i in self.worker_slots:
            worker = self.workers.get(i)
            if worker is None:
                continue
            trainer.asked[i] += 1
            row = worker.compute(state, step)
            if not self._answered(i):
                logger.warning("worker %d crashed at step %d (emulated)", i, step)
                self.workers.pop(i)
                if self._may_recreate(i) and self._create(i):
                    trainer._result.recreated.append((step, i))
                continue
            behaviour = self.behaviours[i]
            if not behaviour.is_honest and not isinstance(behaviour, fault_lib.Crash):
                ctx = fault_lib.FaultContext(i, _task_id(trainer, step, i), 0, 0)
                behaviour.before(ctx)
                row = torch.as_tensor(behaviour.corrupt(row, ctx), dtype=torch.float32)
            rows[i] = row.reshape(-1)
        return rows


def _task_id(trainer: RobustTrainer, step: int | str, slot: int) -> str:
    # Deterministic: fault behaviours seed on task ids, so runs replay exactly.
    return f"robust-trainer-s{trainer.config.seed}-{step}-w{slot}"


class _RayBackend(_Backend):
    """Worker ``i`` hosted by executor slot ``i``; rows admitted like verified replicas."""

    def __init__(self, trainer: RobustTrainer, cluster: Any, fault_map: Any) -> None:
        import bft_ray

        if cluster is None:
            try:
                cluster = bft_ray.current_cluster()
            except Exception as exc:
                raise ConfigError(
                    "backend='ray' needs a cluster: call bft_ray.init(executors=workers, "
                    "faults=...) first (or pass cluster=), or use backend='local'"
                ) from exc
        self.cluster = cluster
        n = trainer.config.workers
        if cluster.spec.executors < n:
            raise ConfigError(
                f"{n} workers need {n} executors (one worker per executor slot) but the cluster "
                f"has {cluster.spec.executors}: use bft_ray.init(executors={n}) or fewer workers"
            )
        super().__init__(trainer, cluster.spec.faults if fault_map is None else fault_map)
        self.instance_id = f"robust-trainer-{uuid.uuid4().hex[:12]}"
        self.handles: dict[int, Any] = {}
        self.entries: dict[int, dict[str, Any]] = {}
        self._verified = None
        if trainer.config.verify_aggregation:
            self._verified = bft_ray.verified_remote(
                replicas=trainer.config.aggregation_replicas, tolerance=AGGREGATION_TOLERANCE
            )(verified_aggregate_rows)

    def _create(self, slot: int, entry: dict[str, Any]) -> bool:
        from bft_ray.verifier.admission import Status

        args, kwargs = self.trainer.worker_args(slot)
        spec = self._spec(slot, "start")
        ref = entry["handle"].create_instance.remote(
            entry["capability"], spec, self.instance_id, ModelWorker, *args, threads=1, **kwargs
        )
        self.entries[slot] = entry
        out = self._admit(slot, spec, ref)
        if out.status is Status.OK:
            self.handles[slot] = entry["handle"]
            return True
        logger.warning("worker %d did not start: %s (%s)", slot, out.status.value, out.reason)
        self.handles.pop(slot, None)
        return out.status in (Status.CRASHED, Status.TIMEOUT) and self._recover(slot)

    def _recover(self, slot: int) -> bool:
        """A crashed worker: have its executor respawned and re-create the worker there."""
        old = self.entries.get(slot, {}).get("executor_id")
        while self._may_recreate(slot):
            entry = self.cluster.recover_executor(slot, self.trainer.config.recreate_timeout_s)
            if entry is None or entry["executor_id"] == old:
                logger.warning("worker %d: its executor was not respawned", slot)
                return False
            old = entry["executor_id"]
            from bft_ray.verifier.admission import Status

            args, kwargs = self.trainer.worker_args(slot)
            spec = self._spec(slot, f"recreate{self.recreations[slot]}")
            ref = entry["handle"].create_instance.remote(
                entry["capability"], spec, self.instance_id, ModelWorker, *args, threads=1, **kwargs
            )
            self.entries[slot] = entry
            out = self._admit(slot, spec, ref)
            if out.status is Status.OK:
                self.handles[slot] = entry["handle"]
                logger.info("worker %d re-created on %s", slot, entry["executor_id"])
                return True
            if out.status not in (Status.CRASHED, Status.TIMEOUT):
                return False
        return False

    def start(self) -> None:
        entries = {e["index"]: e for e in self.cluster.executor_handles(include_quarantined=True)}
        for i in self.worker_slots:
            entry = entries.get(i)
            if entry is None:
                logger.warning("worker %d: executor slot not in service", i)
                continue
            self._create(i, entry)
        if not self.handles:
            raise ConfigError("no worker could be started: every worker slot is out of service")

    def _spec(self, slot: int, step: int | str) -> Any:
        from bft_ray.executor.actor import TaskSpec

        return TaskSpec(_task_id(self.trainer, step, slot), 0, "ModelWorker.compute")

    def _admit(self, slot: int, spec: Any, ref: Any) -> Any:
        from bft_ray.robust.ray_training import admit_answer

        return admit_answer(self.entries[slot], spec, ref)

    def gather(self, state: Tensor, step: int) -> dict[int, Tensor]:
        import ray

        from bft_ray.verifier.admission import Status

        trainer = self.trainer
        state_ref = ray.put(state)  # once per step: every worker's call shares this object
        pending: dict[Any, tuple[int, Any]] = {}
        for i in self.worker_slots:
            if i not in self.handles:
                continue
            spec = self._spec(i, step)
            cap = self.entries[i]["capability"]
            ref = self.handles[i].call.remote(
                cap, spec, self.instance_id, "compute", state_ref, step
            )
            trainer.asked[i] += 1
            pending[ref] = (i, spec)
        if not pending:
            return {}
        ready, late = ray.wait(
            list(pending), num_returns=len(pending), timeout=trainer.config.worker_timeout_s
        )
        for ref in late:
            logger.warning("worker %d: no row within the timeout at step %d", pending[ref][0], step)
        rows: dict[int, Tensor] = {}
        crashed = []
        for ref in ready:
            i, spec = pending[ref]
            out = self._admit(i, spec, ref)
            if out.status in (Status.CRASHED, Status.TIMEOUT):
                logger.warning("worker %d crashed at step %d: %s", i, step, out.reason)
                self.handles.pop(i, None)
                crashed.append(i)
                continue
            if out.status is not Status.OK:
                logger.warning("worker %d: answer refused (%s)", i, out.reason)
                continue
            leaves = out.canonical.leaves if out.canonical is not None else ()
            if len(leaves) == 1 and leaves[0].array.dtype.kind in "fiu":
                row = torch.from_numpy(leaves[0].array.astype("float32").reshape(-1))
                if row.numel() == trainer.layout.row_size:
                    rows[i] = row
                    continue
            logger.warning("worker %d: answer is not one row of %d", i, trainer.layout.row_size)
        for i in crashed:
            if self._recover(i):
                trainer._result.recreated.append((step, i))
        return rows

    def verified_aggregate(
        self, rows: Tensor, states: list[dict[str, Any]] | None
    ) -> tuple[Tensor, Tensor, float, list[dict[str, Any]]]:
        import bft_ray

        cfg, trainer = self.trainer.config, self.trainer
        assert self._verified is not None
        ref = self._verified.remote(
            rows, trainer.blocks, trainer.layout.num_params, cfg.aggregator, cfg.f, states
        )
        try:
            update, buffers, loss, new = bft_ray.get(ref, timeout=cfg.worker_timeout_s * 2)
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, NonFiniteInputError):
                raise cause from None
            raise
        trainer.last_aggregation = ref
        return update, buffers, float(loss), new

    def close(self) -> None:
        import ray

        handles, self.handles = self.handles, {}
        refs = []
        for i, handle in handles.items():
            try:
                refs.append(
                    handle.drop_instance.remote(self.entries[i]["capability"], self.instance_id)
                )
            except Exception as exc:
                logger.debug("drop_instance: %s", exc)
        if refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=2.0)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as exc:
                    logger.debug("drop_instance: %s", exc)
