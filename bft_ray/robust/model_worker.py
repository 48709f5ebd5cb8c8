"""Pieces of :class:`~bft_ray.robust.RobustTrainer` that know torch modules but not Ray.

* :class:`Layout` - where each parameter and buffer of a module lives in one flat ``float32``
  state vector (what the server broadcasts) and in the rows the workers send back.
* :class:`ModelWorker` - one training worker: a replica of the user's module, its minibatch
  stream and its momentum buffer. The same class runs inside a bft-ray executor (Ray backend)
  and in the driver's process (local backend), so both backends compute the same rows.
* :func:`aggregate_rows` - the pure server aggregation: the robust rule per block of
  coordinates (one block, one per parameter tensor, or fixed-size chunks), the
  coordinate-wise median of the buffers, the median of the reported losses.

A worker's row is ``[momentum (P) | buffers (B) | loss (1)]`` in ``float32``: ``P`` trainable
parameters, ``B`` buffer entries (batch-norm running statistics and counters), its minibatch
loss. Rows travel as one numeric array, which the executor encodes to the canonical wire
format and signs; the driver reads them back from the admitted canonical form.

Example:
    >>> import torch
    >>> from torch import nn
    >>> layout = Layout(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))
    >>> layout.num_params, layout.num_buffers, layout.row_size
    (12, 5, 18)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bft_ray.errors import ConfigError
from bft_ray.robust.aggregators import CoordinateWiseMedian
from bft_ray.robust.registry import make_aggregator
from bft_ray.robust.training import derive_seed

__all__ = ["Layout", "ModelWorker", "aggregate_rows", "blocks_for"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int
    stop: int


def _persistent_buffers(module: nn.Module) -> list[tuple[str, Tensor]]:
    """Buffers that belong to the module's state (``state_dict``); non-persistent ones
    (constants such as attention masks) are rebuilt by ``model_fn`` and not carried."""
    out = []
    for prefix, sub in module.named_modules():
        skip = getattr(sub, "_non_persistent_buffers_set", set())
        for name, b in sub._buffers.items():
            if b is not None and name not in skip:
                out.append((f"{prefix}.{name}" if prefix else name, b))
    return out


class Layout:
    """Flat ``float32`` views of a module's trainable parameters and its buffers.

    Parameters with ``requires_grad`` are trained; frozen parameters are left alone (every
    worker builds them with ``model_fn``). Every persistent buffer (those in ``state_dict``;
    non-persistent ones such as masks are constants that ``model_fn`` rebuilds) is carried: floating buffers exactly
    (``float32`` holds ``bfloat16``/``float16``/``float32`` values exactly), integer and bool
    buffers as ``float32`` (exact up to ``2**24``). ``float64`` and complex tensors are
    refused (they would not survive ``float32``).

    Args:
        module: The module whose layout to record (its names, shapes and dtypes).

    Example:
        >>> m = nn.Linear(2, 1)
        >>> layout = Layout(m)
        >>> state = layout.state(m)
        >>> state.dtype, tuple(state.shape)
        (torch.float32, (3,))
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"model_fn must return a torch.nn.Module, got {type(module).__name__}: "
                "e.g. model_fn=lambda: torch.nn.Linear(4, 2)"
            )
        self.params: list[_Entry] = []
        self.buffers: list[_Entry] = []
        offset = 0
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            self._check(name, p)
            self.params.append(_Entry(name, tuple(p.shape), p.dtype, offset, offset + p.numel()))
            offset += p.numel()
        self.num_params = offset
        for name, b in _persistent_buffers(module):
            self._check(name, b)
            self.buffers.append(_Entry(name, tuple(b.shape), b.dtype, offset, offset + b.numel()))
            offset += b.numel()
        self.num_buffers = offset - self.num_params
        if self.num_params == 0:
            raise ConfigError("the model has no trainable parameters (requires_grad=True)")
        # State vector: params + buffers; a row adds the worker's loss.
        self.state_size = offset
        self.row_size = offset + 1

    @staticmethod
    def _check(name: str, t: Tensor) -> None:
        if t.dtype in (torch.float64,) or t.is_complex():
            raise ConfigError(
                f"{name} is {t.dtype}: the trainer carries tensors as float32; use float32, "
                "bfloat16 or float16 parameters (model.float() or model.to(torch.bfloat16))"
            )

    def tensor_blocks(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each trainable parameter tensor in the flat vector."""
        return [(e.start, e.stop) for e in self.params]

    def state(self, module: nn.Module) -> Tensor:
        """``[params | buffers]`` of ``module`` as one ``float32`` CPU vector."""
        named_p = dict(module.named_parameters())
        named_b = dict(_persistent_buffers(module))
        parts = [named_p[e.name].detach().reshape(-1) for e in self.params]
        parts += [named_b[e.name].detach().reshape(-1) for e in self.buffers]
        return torch.cat([p.to("cpu", torch.float32) for p in parts])

    @torch.no_grad()
    def load(self, module: nn.Module, state: Tensor, *, buffers: bool = True) -> None:
        """Copy a state vector (or just its parameter part) into ``module`` in place."""
        named_p = dict(module.named_parameters())
        for e in self.params:
            p = named_p[e.name]
            p.copy_(state[e.start : e.stop].view(e.shape).to(p.device, p.dtype))
        if buffers:
            self.load_buffers(module, state[self.num_params : self.state_size])

    @torch.no_grad()
    def load_buffers(self, module: nn.Module, values: Tensor) -> None:
        """Copy the ``B`` buffer entries into ``module``; integer buffers are rounded."""
        named_b = dict(_persistent_buffers(module))
        for e in self.buffers:
            b = named_b[e.name]
            v = values[e.start - self.num_params : e.stop - self.num_params].view(e.shape)
            if not (b.dtype.is_floating_point or b.is_complex()):
                v = v.round()
            b.copy_(v.to(b.device, b.dtype))

    def grads(self, module: nn.Module) -> Tensor:
        """The trainable parameters' gradients as one ``float32`` vector (``None`` -> 0)."""
        named_p = dict(module.named_parameters())
        parts = []
        for e in self.params:
            g = named_p[e.name].grad
            n = e.stop - e.start
            parts.append(torch.zeros(n) if g is None else g.detach().reshape(-1).to("cpu"))
        return torch.cat([p.to(torch.float32) for p in parts])

    def set_grads(self, module: nn.Module, update: Tensor) -> None:
        """Write ``update`` (``(P,)``) into the ``.grad`` of each trainable parameter."""
        named_p = dict(module.named_parameters())
        for e in self.params:
            p = named_p[e.name]
            p.grad = update[e.start : e.stop].view(e.shape).to(p.device, p.dtype).clone()


def blocks_for(layout: Layout, aggregate_by: str | int) -> list[tuple[int, int]]:
    """Coordinate blocks the rule runs on: ``"model"`` (one), ``"tensor"`` or chunks of k.

    Example:
        >>> layout = Layout(nn.Linear(3, 2))           # 6 weights, 2 biases
        >>> blocks_for(layout, "model"), blocks_for(layout, "tensor"), blocks_for(layout, 3)
        ([(0, 8)], [(0, 6), (6, 8)], [(0, 3), (3, 6), (6, 8)])
    """
    p = layout.num_params
    if aggregate_by == "model":
        return [(0, p)]
    if aggregate_by == "tensor":
        return layout.tensor_blocks()
    if isinstance(aggregate_by, int) and aggregate_by >= 1:
        return [(i, min(i + aggregate_by, p)) for i in range(0, p, aggregate_by)]
    raise ConfigError(f"aggregate_by={aggregate_by!r}: use 'model', 'tensor' or a chunk size >= 1")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class ModelWorker:
    """One training worker of :class:`~bft_ray.robust.RobustTrainer`.

    Builds its own replica with ``model_fn()`` (on the GPU when the process has one) and
    iterates ``data_fn(index, n_workers)``; when that iterable is exhausted it is started
    again (the next pass over the worker's data). Each :meth:`compute` loads the broadcast
    state, draws the next minibatch, back-propagates ``loss_fn(model, batch)`` in train mode
    and returns the row ``[momentum | buffers | loss]`` (``float32``, on the CPU), with
    worker momentum ``m <- beta m + (1 - beta) g`` (``beta = 0``: the plain gradient).

    Randomness inside ``loss_fn`` (dropout) is seeded per ``(seed, worker, step)`` in a forked
    RNG, so a step's row depends on the step, not on what ran before in the process. A worker
    re-created after a crash or from a checkpoint is given its last momentum and skips the
    ``batches_done`` minibatches it already drew: ``data_fn`` must yield the same batches
    every time it is called with the same arguments.

    Args:
        index: Worker index ``i`` (its data shard).
        n_workers: ``n``.
        model_fn: Builds the module.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        data_fn: ``data_fn(index, n_workers) -> iterable of minibatches``.
        momentum: ``beta`` in ``[0, 1)``.
        seed: Run seed.
        momentum_init: The momentum to continue from (``(P,)``), default zeros.
        batches_done: Minibatches to skip before the first step.
        threads: Torch threads to use (``None``: leave as is).

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> w = ModelWorker(0, 1, lambda: nn.Linear(2, 1),
        ...                 lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
        ...                 lambda i, n: [(torch.ones(4, 2), torch.zeros(4, 1))], momentum=0.0)
        >>> row = w.compute(w.layout.state(w.model), step=0)
        >>> tuple(row.shape), w.batches_done
        ((4,), 1)
    """

    def __init__(
        self,
        index: int,
        n_workers: int,
        model_fn: Callable[[], nn.Module],
        loss_fn: Callable[[nn.Module, Any], Tensor],
        data_fn: Callable[[int, int], Any],
        *,
        momentum: float = 0.9,
        seed: int = 0,
        momentum_init: Tensor | None = None,
        batches_done: int = 0,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.index = index
        self.n_workers = n_workers
        self.loss_fn = loss_fn
        self.data_fn = data_fn
        self.beta = float(momentum)
        self.seed = seed
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, index, 11))
            self.model = model_fn().to(self.device)
        self.layout = Layout(self.model)
        p = self.layout.num_params
        self.buffer = (
            torch.zeros(p) if momentum_init is None else momentum_init.to(torch.float32).clone()
        )
        if self.buffer.shape != (p,):
            raise ConfigError(f"momentum_init has shape {tuple(self.buffer.shape)}, need ({p},)")
        self.batches_done = 0
        self.passes = 0
        self._batches = self._start_pass()
        for _ in range(batches_done):
            self._next_batch()

    def _start_pass(self) -> Iterator[Any]:
        return iter(self.data_fn(self.index, self.n_workers))

    def _next_batch(self) -> Any:
        for _ in range(2):
            try:
                batch = next(self._batches)
            except StopIteration:
                self.passes += 1
                self._batches = self._start_pass()
                continue
            self.batches_done += 1
            return batch
        raise ConfigError(f"data_fn({self.index}, {self.n_workers}) yielded no minibatch")

    def compute(self, state: Tensor, step: int) -> Tensor:
        """The row this worker sends at server step ``step`` for the broadcast ``state``."""
        model = self.model
        self.layout.load(model, state)
        model.train()
        batch = _to_device(self._next_batch(), self.device)
        model.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.index, 12, step))
            loss = self.loss_fn(model, batch)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ConfigError("loss_fn(model, batch) must return a scalar tensor")
            loss.backward()
        g = self.layout.grads(model)
        self.buffer = g if self.beta == 0.0 else self.beta * self.buffer + (1 - self.beta) * g
        buffers = self.layout.state(model)[self.layout.num_params :]
        return torch.cat([self.buffer, buffers, loss.detach().to("cpu", torch.float32).reshape(1)])


def aggregate_rows(
    rows: Sequence[Tensor],
    blocks: Sequence[tuple[int, int]],
    num_params: int,
    rule: str,
    f: int,
    states: Sequence[dict[str, Any] | None] | None,
) -> tuple[Tensor, Tensor, float, list[dict[str, Any]]]:
    """The server's aggregation of one step, pure and deterministic.

    Each block of the ``P`` momentum coordinates is aggregated by its own instance of
    ``rule`` (its own state), built from the rows one block at a time, so besides the rows
    only one ``(n, block)`` matrix exists at once. Buffers (coordinates ``P`` up to the last)
    take the coordinate-wise median, the loss the median of the finite reports. Missing
    workers are NaN rows; every rule drops up to ``f`` of them (the mean refuses them).

    Args:
        rows: ``n`` rows ``[momentum | buffers | loss]``.
        blocks: ``(start, stop)`` blocks covering ``0..P``.
        num_params: ``P``.
        rule: Rule specification for :func:`~bft_ray.robust.make_aggregator`.
        f: Byzantine workers tolerated.
        states: Each block's rule state from the previous step (``None`` at the first).

    Returns:
        ``(update (P,), buffers (B,), loss, new states)``.

    Raises:
        NonFiniteInputError: The rule refused the step (too many missing or non-finite rows).

    Example:
        >>> rows = [torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 4.0, 0.7]),
        ...         torch.tensor([2.0, 9.0, 0.6])]
        >>> update, buffers, loss, _ = aggregate_rows(rows, [(0, 1)], 1, "median", 1, None)
        >>> update.tolist(), buffers.tolist(), round(loss, 2)
        ([2.0], [4.0], 0.6)
    """
    n = len(rows)
    states = list(states) if states else [None] * len(blocks)
    update = torch.empty(num_params)
    new_states = []
    for (start, stop), state in zip(blocks, states, strict=True):
        aggregator = make_aggregator(rule, f)
        aggregator.load_state_dict(state or {})
        block = torch.stack([r[start:stop] for r in rows])
        update[start:stop] = aggregator.aggregate_matrix(block).to(torch.float32)
        new_states.append(aggregator.state_dict())
        del block
    extra = torch.stack([r[num_params:] for r in rows])
    losses = extra[:, -1]
    finite = losses[torch.isfinite(losses)]
    loss = float(finite.median()) if len(finite) else float("nan")
    if extra.shape[1] > 1:
        # Buffers are statistics, not gradients: the median of the workers' values, robust to
        # f of them whatever the rule (and not subject to the rule's thresholds).
        buffers = CoordinateWiseMedian(min(f, (n - 1) // 2)).aggregate_matrix(extra[:, :-1])
    else:
        buffers = torch.empty(0)
    return update, buffers.to(torch.float32), loss, new_states
