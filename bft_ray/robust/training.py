"""Seeded, in-process data-parallel training with Byzantine workers and robust aggregation.

The pieces are separate so a Ray layer can run them on remote actors unchanged:

* :class:`Worker` - one worker's shard, minibatch sampler and momentum buffer;
  ``worker.compute(params)`` returns the vector it sends (its momentum). An executor actor can
  hold one ``Worker``.
* :class:`WorkerGroup` - the same workers computed together in one batched forward/backward
  (bit-for-bit the same minibatches, numerically the same vectors); used in-process.
* :func:`byzantine_rows` / :func:`assemble` - what the Byzantine workers send for a vector attack
  (omniscient: computed from the honest vectors of the step), placed at their worker ids.
* :class:`Server` and the pure :func:`server_step` - aggregate with the robust rule, take the SGD
  step. :func:`server_step` takes and returns the rule's state explicitly, so it can run as a
  replicated deterministic (``verified_remote``) task when the server itself is not trusted.
* :class:`InProcessTrainer` / :func:`train` - the loop: sample, compute, attack, aggregate,
  update, evaluate once per epoch.

Example:
    >>> cfg = TrainConfig(aggregator="trimmed_mean", attack="sign_flip", epochs=2)
    >>> result = train(cfg)
    >>> len(result.accuracy), 0.0 <= result.final_accuracy <= 1.0
    (2, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bft_ray.errors import ConfigError
from bft_ray.robust.attacks import Attack, DataAttack, VectorAttack, make_attack
from bft_ray.robust.base import Aggregator, NonFiniteInputError
from bft_ray.robust.data import Dataset, load_digits_dataset, partition
from bft_ray.robust.model import MLP
from bft_ray.robust.registry import make_aggregator

__all__ = [
    "InProcessTrainer",
    "Server",
    "TrainConfig",
    "TrainResult",
    "Worker",
    "WorkerGroup",
    "assemble",
    "attack_generator",
    "byzantine_rows",
    "derive_seed",
    "initial_params",
    "make_model",
    "make_shards",
    "server_step",
    "steps_per_epoch",
    "train",
]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, worker id, purpose...).

    Independent streams per worker make a worker's minibatches the same whether it runs in
    this process or in a remote actor.
    """
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Args:
        aggregator: Rule specification for :func:`~bft_ray.robust.make_aggregator`.
        attack: Attack specification for :func:`~bft_ray.robust.make_attack`.
        n_workers: Number of workers ``n``.
        f: Byzantine workers the rule must tolerate.
        n_byzantine: Workers that actually attack (default ``f``); they are the last ids.
        split: ``"iid"`` or ``"dirichlet"``.
        alpha: Dirichlet concentration for the non-IID split.
        epochs: Evaluations; one epoch is ``steps_per_epoch`` server steps.
        steps_per_epoch: Default: one pass over an average shard (``ceil(shard / batch)``).
        batch_size: Per-worker minibatch (sampled with replacement from the shard).
        lr: Server learning rate.
        momentum: Worker momentum ``beta``: ``m <- beta m + (1 - beta) g``.
        hidden: Hidden layer sizes of the MLP.
        seed: Seed of the split, the initialisation, the minibatches and randomised attacks.
    """

    aggregator: str = "nnm+trimmed_mean"
    attack: str = "none"
    n_workers: int = 15
    f: int = 3
    n_byzantine: int | None = None
    split: str = "iid"
    alpha: float = 0.3
    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_size: int = 32
    lr: float = 0.5
    momentum: float = 0.9
    hidden: tuple[int, ...] = (32,)
    seed: int = 0

    @property
    def byzantine(self) -> int:
        return self.f if self.n_byzantine is None else self.n_byzantine

    @property
    def byzantine_ids(self) -> tuple[int, ...]:
        return tuple(range(self.n_workers - self.byzantine, self.n_workers))

    def validate(self) -> None:
        """Raise :class:`ConfigError` for inconsistent settings."""
        if self.n_workers < 1:
            raise ConfigError(f"n_workers must be >= 1, got {self.n_workers}")
        if self.f < 0 or not 0 <= self.byzantine < self.n_workers:
            raise ConfigError(
                f"need f >= 0 and 0 <= n_byzantine < n_workers (got f={self.f}, "
                f"n_byzantine={self.byzantine}, n_workers={self.n_workers}): at least one "
                "worker must be honest"
            )
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("need epochs >= 0, batch_size >= 1 and lr > 0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")


@dataclass
class TrainResult:
    """Outcome of one run: test accuracy (and mean honest training loss) per epoch."""

    config: TrainConfig
    accuracy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    diverged: bool = False
    halted: str | None = None
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1] if self.accuracy else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "accuracy": self.accuracy,
            "loss": self.loss,
            "final_accuracy": self.final_accuracy,
            "diverged": self.diverged,
            "halted": self.halted,
            "seconds": self.seconds,
        }


class Worker:
    """One worker: a data shard, a minibatch sampler and a momentum buffer.

    ``compute(params)`` samples a minibatch, takes the gradient at ``params`` and returns the
    updated momentum ``m <- beta m + (1 - beta) g``, which is what the worker sends (worker
    momentum, Karimireddy et al. 2021, shrinks the honest spread that attacks hide in).

    Args:
        worker_id: Index of the worker (part of its seed).
        x: ``(s, in)`` shard features.
        y: ``(s,)`` shard labels (already poisoned for a data attack).
        model: The network.
        batch_size: Minibatch size.
        momentum: ``beta``.
        seed: Run seed.

    Example:
        >>> ds = load_digits_dataset()
        >>> w = Worker(0, ds.x_train[:50], ds.y_train[:50], MLP(), batch_size=8, seed=0)
        >>> tuple(w.compute(MLP().init(torch.Generator().manual_seed(0))).shape)
        (2410,)
    """

    def __init__(
        self,
        worker_id: int,
        x: Tensor,
        y: Tensor,
        model: MLP,
        *,
        batch_size: int = 32,
        momentum: float = 0.9,
        seed: int = 0,
    ) -> None:
        if len(y) == 0:
            raise ConfigError(f"worker {worker_id} has an empty shard")
        self.worker_id = worker_id
        self.x = x
        self.y = y
        self.model = model
        self.batch_size = batch_size
        self.beta = momentum
        self.generator = torch.Generator().manual_seed(derive_seed(seed, worker_id, 1))
        self.buffer = torch.zeros(model.num_params)
        self.last_loss = float("nan")

    def sample(self) -> Tensor:
        """Positions (within the shard) of the next minibatch."""
        return torch.randint(len(self.y), (self.batch_size,), generator=self.generator)

    def compute(self, params: Tensor) -> Tensor:
        """The vector this worker sends for ``params``: its updated momentum."""
        pos = self.sample()
        grads, loss = self.model.per_worker_gradients(
            params, self.x[pos].unsqueeze(0), self.y[pos].unsqueeze(0)
        )
        self.buffer = self.beta * self.buffer + (1 - self.beta) * grads[0]
        self.last_loss = float(loss[0])
        return self.buffer.clone()


class WorkerGroup:
    """Several workers computed in one batched pass; equivalent to calling each :class:`Worker`.

    Args:
        shards: ``(x, y)`` per worker.
        model, batch_size, momentum, seed: As for :class:`Worker`.
    """

    def __init__(
        self,
        shards: Sequence[tuple[Tensor, Tensor]],
        model: MLP,
        *,
        batch_size: int = 32,
        momentum: float = 0.9,
        seed: int = 0,
    ) -> None:
        if not shards or any(len(y) == 0 for _, y in shards):
            raise ConfigError("every worker needs a non-empty shard")
        self.model = model
        self.batch_size = batch_size
        self.beta = momentum
        self.n = len(shards)
        self.x = torch.cat([x for x, _ in shards])
        self.y = torch.cat([y for _, y in shards])
        self.sizes = [len(y) for _, y in shards]
        self.offsets = np.cumsum([0, *self.sizes[:-1]]).tolist()
        self.generators = [
            torch.Generator().manual_seed(derive_seed(seed, i, 1)) for i in range(self.n)
        ]
        self.buffers = torch.zeros(self.n, model.num_params)
        self.last_losses = torch.full((self.n,), float("nan"))

    def compute(self, params: Tensor, ids: Sequence[int] | None = None) -> Tensor:
        """Vectors of workers ``ids`` (default: all) at ``params``, shape ``(len(ids), P)``.

        Workers not in ``ids`` do not sample (their streams do not advance), exactly as a remote
        worker that is not asked to compute.
        """
        ids = list(range(self.n)) if ids is None else list(ids)
        rows = torch.stack(
            [
                self.offsets[i]
                + torch.randint(self.sizes[i], (self.batch_size,), generator=self.generators[i])
                for i in ids
            ]
        )
        grads, losses = self.model.per_worker_gradients(params, self.x[rows], self.y[rows])
        index = torch.tensor(ids)
        updated = self.beta * self.buffers[index] + (1 - self.beta) * grads
        self.buffers[index] = updated
        self.last_losses[index] = losses
        return updated


def byzantine_rows(
    attack: VectorAttack,
    honest: Tensor,
    n_byzantine: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The ``(n_byzantine, P)`` vectors the Byzantine workers send, from the honest ``(h, P)``."""
    return attack.byzantine_matrix(honest, n_byzantine, generator=generator)


def assemble(
    honest: Tensor, honest_ids: Sequence[int], byzantine: Tensor, byzantine_ids: Sequence[int]
) -> Tensor:
    """Place honest and Byzantine rows at their worker ids: an ``(n, P)`` matrix."""
    n = len(honest_ids) + len(byzantine_ids)
    out = honest.new_empty((n, honest.shape[1]))
    out[list(honest_ids)] = honest
    if len(byzantine_ids):
        out[list(byzantine_ids)] = byzantine.to(honest.dtype)
    return out


def server_step(
    params: Tensor,
    vectors: Tensor,
    rule: str | Aggregator,
    f: int,
    lr: float,
    rule_state: dict[str, Any] | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Pure server update: aggregate ``vectors`` with ``rule`` and take one SGD step.

    Deterministic in its arguments (the rule's state goes in and out explicitly), so replicas
    of this function agree and it can run as a ``verified_remote`` task.

    Args:
        params: ``(P,)`` current parameters.
        vectors: ``(n, P)`` vectors received from the workers.
        rule: A rule specification (built fresh) or an aggregator (its state is overwritten).
        f: Byzantine workers tolerated (used when ``rule`` is a string).
        lr: Learning rate.
        rule_state: The state returned by the previous call (``None`` at the first step).

    Returns:
        ``(new_params, new_rule_state)``.

    Example:
        >>> p, state = server_step(torch.zeros(2), torch.ones(5, 2), "median", f=2, lr=0.5)
        >>> p.tolist(), state
        ([-0.5, -0.5], {})
    """
    aggregator = make_aggregator(rule, f) if isinstance(rule, str) else rule
    aggregator.load_state_dict(rule_state or {})
    update = aggregator.aggregate_matrix(vectors)
    return params - lr * update.to(params.dtype), aggregator.state_dict()


class Server:
    """Holds the parameters and the aggregator; ``step(vectors)`` returns new parameters."""

    def __init__(self, params: Tensor, aggregator: Aggregator, lr: float) -> None:
        self.params = params
        self.aggregator = aggregator
        self.lr = lr
        self.steps = 0

    def step(self, vectors: Tensor) -> Tensor:
        update = self.aggregator.aggregate_matrix(vectors)
        self.params = self.params - self.lr * update.to(self.params.dtype)
        self.steps += 1
        return self.params


def make_model(config: TrainConfig, dataset: Dataset) -> MLP:
    """The MLP for ``config`` on ``dataset``: ``features -> hidden... -> classes``."""
    return MLP((dataset.num_features, *config.hidden, dataset.num_classes))


def make_shards(
    config: TrainConfig, dataset: Dataset, attack: Attack | None = None
) -> list[tuple[Tensor, Tensor]]:
    """Each worker's ``(x, y)`` shard for ``config``; Byzantine shards poisoned by a data attack.

    Deterministic in ``config.seed``: a Ray layer that builds its workers from these shards and
    :func:`initial_params` reproduces the in-process run.
    """
    attack = make_attack(config.attack) if attack is None else attack
    indices = partition(
        dataset.y_train,
        config.n_workers,
        split=config.split,
        alpha=config.alpha,
        seed=derive_seed(config.seed, 0),
    )
    byzantine = set(config.byzantine_ids)
    shards = []
    for i, idx in enumerate(indices):
        index = torch.as_tensor(idx)
        y = dataset.y_train[index]
        if i in byzantine and isinstance(attack, DataAttack):
            y = attack.transform_labels(y)
        shards.append((dataset.x_train[index], y))
    return shards


def steps_per_epoch(config: TrainConfig, shard_sizes: Sequence[int]) -> int:
    """Server steps per epoch: ``config.steps_per_epoch``, else one pass over a mean shard."""
    return config.steps_per_epoch or max(1, math.ceil(np.mean(shard_sizes) / config.batch_size))


def initial_params(config: TrainConfig, model: MLP) -> Tensor:
    """The seeded initial parameters of a run."""
    return model.init(torch.Generator().manual_seed(derive_seed(config.seed, 2)))


def attack_generator(config: TrainConfig) -> torch.Generator:
    """The seeded random stream of randomised attacks (Gaussian noise)."""
    return torch.Generator().manual_seed(derive_seed(config.seed, 3))


class InProcessTrainer:
    """The whole data-parallel loop in one process (vectorised across workers).

    Args:
        config: The run.
        dataset: Data to use; default :func:`load_digits_dataset` (cached by the caller if many
            runs share it).
    """

    def __init__(self, config: TrainConfig, dataset: Dataset | None = None) -> None:
        config.validate()
        self.config = config
        self.dataset = dataset if dataset is not None else load_digits_dataset()
        self.model = make_model(config, self.dataset)
        self.aggregator = make_aggregator(config.aggregator, config.f)
        # Fail now, not at the first step, if (n, f) is beyond the rule's breakdown point.
        self.aggregator.check(config.n_workers)
        self.attack: Attack = make_attack(config.attack)
        self.byzantine_ids = list(config.byzantine_ids)
        self.honest_ids = [i for i in range(config.n_workers) if i not in self.byzantine_ids]
        if isinstance(self.attack, VectorAttack) and not self.honest_ids:
            raise ConfigError("a vector attack needs at least one honest worker")
        shards = make_shards(config, self.dataset, self.attack)
        self.shard_sizes = [len(y) for _, y in shards]
        self.steps_per_epoch = steps_per_epoch(config, self.shard_sizes)
        self.workers = WorkerGroup(
            shards,
            self.model,
            batch_size=config.batch_size,
            momentum=config.momentum,
            seed=config.seed,
        )
        self.server = Server(initial_params(config, self.model), self.aggregator, config.lr)
        self.attack_generator = attack_generator(config)

    @property
    def params(self) -> Tensor:
        return self.server.params

    def step(self) -> float:
        """One server step; returns the mean training loss of the honest workers."""
        params = self.server.params
        if isinstance(self.attack, VectorAttack):
            honest = self.workers.compute(params, self.honest_ids)
            byz = byzantine_rows(
                self.attack, honest, len(self.byzantine_ids), generator=self.attack_generator
            )
            vectors = assemble(honest, self.honest_ids, byz, self.byzantine_ids)
        else:
            vectors = self.workers.compute(params)
        self.server.step(vectors)
        return float(self.workers.last_losses[self.honest_ids].mean())

    def evaluate(self) -> float:
        """Test accuracy of the current parameters."""
        return self.model.accuracy(self.server.params, self.dataset.x_test, self.dataset.y_test)

    def run(self, on_epoch: Callable[[int, float, float], None] | None = None) -> TrainResult:
        """Train for ``config.epochs`` epochs; ``on_epoch(epoch, accuracy, loss)`` after each."""
        start = time.perf_counter()
        result = TrainResult(self.config)
        for epoch in range(self.config.epochs):
            if result.diverged:
                # Non-finite parameters cannot recover and a halted server does not move: repeat
                # the last evaluation for the remaining epochs and skip the work.
                result.accuracy.append(result.accuracy[-1])
                result.loss.append(float("nan"))
                continue
            try:
                losses = [self.step() for _ in range(self.steps_per_epoch)]
            except NonFiniteInputError as exc:
                # The rule refused the step (more non-finite vectors than f, or overflow): a
                # server would stop here, so the run ends with the last good parameters.
                result.halted = str(exc)
                result.diverged = True
                losses = [float("nan")]
            else:
                result.diverged = not bool(torch.isfinite(self.server.params).all())
            result.accuracy.append(self.evaluate())
            result.loss.append(float(np.mean(losses)))
            if on_epoch is not None:
                on_epoch(epoch, result.accuracy[-1], result.loss[-1])
        result.seconds = time.perf_counter() - start
        return result


def train(
    config: TrainConfig,
    *,
    dataset: Dataset | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Run one seeded in-process training run (see :class:`InProcessTrainer`)."""
    return InProcessTrainer(config, dataset).run(on_epoch)
