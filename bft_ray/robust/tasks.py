"""Ready-made tasks for :class:`~bft_ray.robust.RobustTrainer`: models, data and losses.

Every task is a :class:`Task` of picklable callables (module-level classes, so Ray can ship
them to executors) and needs no download:

* :func:`digits_task` - the MLP 64-32-10 on scikit-learn's bundled digits (IID or Dirichlet
  shards, the split of :mod:`bft_ray.robust.data`), scored by test accuracy;
* :func:`image_task` - a small CNN with batch norm on synthetic 8x8 images (class-dependent
  patterns plus noise), scored by held-out accuracy;
* :func:`lm_task` - a one-block causal transformer language model on a synthetic token
  stream (a seeded permutation of the vocabulary: ``next = perm[token]``, with a fraction of
  random tokens), scored by held-out next-token loss.

Example:
    >>> task = image_task(n_train=64)
    >>> model = task.model_fn()
    >>> batch = next(iter(task.data_fn(0, 4)))
    >>> float(task.loss_fn(model, batch)) > 0
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bft_ray.robust.training import derive_seed

__all__ = [
    "TASKS",
    "DigitsMLP",
    "SmallCNN",
    "Task",
    "TinyTransformerLM",
    "digits_task",
    "image_task",
    "lm_task",
    "make_task",
]


@dataclass
class Task:
    """``model_fn``, ``loss_fn``, ``data_fn``, ``eval_fn`` and a default ``optimizer_fn``."""

    name: str
    model_fn: Callable[[], nn.Module]
    loss_fn: Callable[[nn.Module, Any], Tensor]
    data_fn: Callable[[int, int], Any]
    eval_fn: Callable[[nn.Module], Any]
    optimizer_fn: Callable[[Any], torch.optim.Optimizer]

    def kwargs(self) -> dict[str, Any]:
        """The four functions and the optimiser, as keyword arguments of ``RobustTrainer``."""
        return {
            "model_fn": self.model_fn,
            "loss_fn": self.loss_fn,
            "data_fn": self.data_fn,
            "eval_fn": self.eval_fn,
            "optimizer_fn": self.optimizer_fn,
        }


class SGD:
    """``optimizer_fn``: plain SGD (picklable)."""

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        self.lr, self.momentum = lr, momentum

    def __call__(self, params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)


class Adam:
    """``optimizer_fn``: Adam (picklable)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def __call__(self, params: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr)


def cross_entropy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """``loss_fn`` for ``(x, y)`` classification batches."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def _shard(count: int, index: int, n_workers: int, seed: int) -> Tensor:
    perm = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return perm[index::n_workers]


class _Minibatches:
    """Iterable of seeded with-replacement minibatches from one worker's shard (one pass)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, steps: int, seed: int) -> None:
        self.x, self.y, self.batch_size, self.steps, self.seed = x, y, batch_size, steps, seed
        self.passes = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A new stream per pass, the same for the same pass number: resumable by skipping.
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.passes))
        self.passes += 1
        for _ in range(self.steps):
            pos = torch.randint(len(self.y), (self.batch_size,), generator=g)
            yield self.x[pos], self.y[pos]


# -- digits ----------------------------------------------------------------------------------


class DigitsMLP:
    """``model_fn``: ``Linear(64, 32) -> ReLU -> Linear(32, 10)`` (optionally in bfloat16)."""

    def __init__(self, hidden: int = 32, dtype: torch.dtype = torch.float32) -> None:
        self.hidden, self.dtype = hidden, dtype

    def __call__(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 10)).to(
            self.dtype
        )


class _DigitsData:
    def __init__(self, split: str, alpha: float, batch_size: int, seed: int) -> None:
        self.split, self.alpha, self.batch_size, self.seed = split, alpha, batch_size, seed

    def __call__(self, index: int, n_workers: int) -> _Minibatches:
        from bft_ray.robust.data import partition

        ds = _digits()
        shards = partition(
            ds.y_train,
            n_workers,
            split=self.split,
            alpha=self.alpha,
            seed=derive_seed(self.seed, 0),
        )
        idx = torch.as_tensor(shards[index])
        steps = max(1, math.ceil(len(idx) / self.batch_size))
        return _Minibatches(
            ds.x_train[idx], ds.y_train[idx], self.batch_size, steps, derive_seed(self.seed, index)
        )


class _DigitsEval:
    def __call__(self, model: nn.Module) -> dict[str, float]:
        ds = _digits()
        dtype = next(model.parameters()).dtype
        logits = model(ds.x_test.to(dtype)).float()
        return {
            "accuracy": float((logits.argmax(1) == ds.y_test).float().mean()),
            "test_loss": float(F.cross_entropy(logits, ds.y_test)),
        }


class _CastCrossEntropy:
    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        dtype = next(model.parameters()).dtype
        return F.cross_entropy(model(x.to(dtype)).float(), y)


_DIGITS: Any = None


def _digits() -> Any:
    global _DIGITS
    if _DIGITS is None:
        from bft_ray.robust.data import load_digits_dataset

        _DIGITS = load_digits_dataset()
    return _DIGITS


def digits_task(
    *,
    split: str = "iid",
    alpha: float = 0.3,
    batch_size: int = 32,
    lr: float = 0.5,
    hidden: int = 32,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Task:
    """The digits benchmark as a :class:`Task`: MLP 64-``hidden``-10, SGD(``lr``)."""
    return Task(
        "digits",
        DigitsMLP(hidden, dtype),
        _CastCrossEntropy(),
        _DigitsData(split, alpha, batch_size, seed),
        _DigitsEval(),
        SGD(lr),
    )


# -- synthetic images + small CNN ----------------------------------------------------------------


class SmallCNN(nn.Module):
    """``conv(1->c, 3x3) -> BatchNorm -> ReLU -> maxpool 2 -> flatten -> linear`` on 8x8 inputs."""

    def __init__(self, channels: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels * 16, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.head(x.flatten(1))


def synthetic_images(
    count: int, classes: int, seed: int, noise: float = 0.8
) -> tuple[Tensor, Tensor]:
    """``count`` 1x8x8 images: a class-dependent pattern (fixed by ``seed``) plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 1, 8, 8, generator=g)
    y = torch.randint(classes, (count,), generator=g)
    x = patterns[y] + noise * torch.randn(count, 1, 8, 8, generator=g)
    return x, y


class _ImageData:
    def __init__(self, n_train: int, classes: int, batch_size: int, seed: int) -> None:
        self.n_train, self.classes, self.batch_size, self.seed = n_train, classes, batch_size, seed

    def __call__(self, index: int, n_workers: int) -> _Minibatches:
        x, y = synthetic_images(self.n_train, self.classes, self.seed)
        idx = _shard(self.n_train, index, n_workers, derive_seed(self.seed, 1))
        steps = max(1, math.ceil(len(idx) / self.batch_size))
        return _Minibatches(
            x[idx], y[idx], self.batch_size, steps, derive_seed(self.seed, index, 2)
        )


class _ImageEval:
    def __init__(self, classes: int, seed: int) -> None:
        self.classes, self.seed = classes, seed

    def __call__(self, model: nn.Module) -> dict[str, float]:
        # Held out: the same patterns (same seed), fresh noise and labels.
        x, y = synthetic_images(2000 + 256, self.classes, self.seed)
        x, y = x[2000:], y[2000:]
        logits = model(x)
        return {
            "accuracy": float((logits.argmax(1) == y).float().mean()),
            "test_loss": float(F.cross_entropy(logits, y)),
        }


class _CNN:
    def __init__(self, channels: int, classes: int) -> None:
        self.channels, self.classes = channels, classes

    def __call__(self) -> nn.Module:
        return SmallCNN(self.channels, self.classes)


def image_task(
    *,
    n_train: int = 768,
    classes: int = 4,
    channels: int = 6,
    batch_size: int = 16,
    lr: float = 0.5,
    seed: int = 0,
) -> Task:
    """A small CNN (with batch norm) on synthetic images; SGD(``lr``, momentum 0)."""
    if n_train > 2000:
        raise ValueError("n_train must be <= 2000 (images 2000.. are the held-out set)")
    return Task(
        "cnn",
        _CNN(channels, classes),
        cross_entropy,
        _ImageData(n_train, classes, batch_size, seed),
        _ImageEval(classes, seed),
        SGD(lr),
    )


# -- synthetic token stream + tiny transformer LM -----------------------------------------------


class TinyTransformerLM(nn.Module):
    """Token + position embeddings, one causal ``TransformerEncoderLayer``, a linear head."""

    def __init__(
        self, vocab: int = 16, d_model: int = 32, heads: int = 2, context: int = 16
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(context, d_model))
        self.block = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer(
            "mask", torch.triu(torch.full((context, context), float("-inf")), 1), persistent=False
        )

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:t]
        h = self.block(h, src_mask=self.mask[:t, :t], is_causal=True)
        return self.head(h)


def token_stream(
    length: int, vocab: int, seed: int, stream_seed: int, noise: float = 0.1
) -> Tensor:
    """A stream where ``next = perm[token]`` except for a ``noise`` fraction of random tokens.

    ``seed`` fixes the language (the permutation), ``stream_seed`` the stretch of text.
    """
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(derive_seed(seed, 7)))
    g = torch.Generator().manual_seed(stream_seed)
    random_tokens = torch.randint(vocab, (length,), generator=g)
    flips = torch.rand(length, generator=g) < noise
    out = torch.empty(length, dtype=torch.long)
    out[0] = random_tokens[0]
    for k in range(1, length):
        out[k] = random_tokens[k] if flips[k] else perm[out[k - 1]]
    return out


def lm_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """``loss_fn``: next-token cross-entropy on a ``(batch, context + 1)`` window batch."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


class _TokenData:
    def __init__(self, vocab: int, context: int, batch_size: int, length: int, seed: int) -> None:
        self.vocab, self.context, self.batch_size = vocab, context, batch_size
        self.length, self.seed = length, seed

    def __call__(self, index: int, n_workers: int) -> Iterator[Tensor]:
        # Each worker reads its own stretch of the stream (its own seed).
        stream = token_stream(self.length, self.vocab, self.seed, derive_seed(self.seed, index, 5))
        g = torch.Generator().manual_seed(derive_seed(self.seed, index, 6))
        for _ in range(max(1, self.length // (self.batch_size * self.context))):
            starts = torch.randint(self.length - self.context - 1, (self.batch_size,), generator=g)
            yield torch.stack([stream[s : s + self.context + 1] for s in starts.tolist()])


class _LMEval:
    def __init__(self, vocab: int, context: int, seed: int) -> None:
        self.vocab, self.context, self.seed = vocab, context, seed

    def __call__(self, model: nn.Module) -> dict[str, float]:
        stream = token_stream(
            64 * (self.context + 1), self.vocab, self.seed, derive_seed(self.seed, 10**6, 5)
        )
        windows = stream.view(64, self.context + 1)
        return {"test_loss": float(lm_loss(model, windows))}


class _LM:
    def __init__(self, vocab: int, d_model: int, context: int) -> None:
        self.vocab, self.d_model, self.context = vocab, d_model, context

    def __call__(self) -> nn.Module:
        return TinyTransformerLM(self.vocab, self.d_model, 2, self.context)


def lm_task(
    *,
    vocab: int = 16,
    d_model: int = 32,
    context: int = 16,
    batch_size: int = 8,
    length: int = 2048,
    lr: float = 3e-3,
    seed: int = 0,
) -> Task:
    """A one-block causal transformer LM on a synthetic stream; Adam(``lr``).

    The stream's entropy floor: with noise 0.1, the best next-token loss is about
    ``-(0.9 + 0.1/V) ln(0.9 + 0.1/V) - (V - 1)(0.1/V) ln(0.1/V)`` (0.565 nats for V = 16);
    a model that knows nothing scores ``ln V`` (2.77).
    """
    return Task(
        "lm",
        _LM(vocab, d_model, context),
        lm_loss,
        _TokenData(vocab, context, batch_size, length, seed),
        _LMEval(vocab, context, seed),
        Adam(lr),
    )


TASKS: dict[str, Callable[..., Task]] = {"digits": digits_task, "cnn": image_task, "lm": lm_task}


def make_task(name: str, **kwargs: Any) -> Task:
    """A task by name (``digits``, ``cnn``, ``lm``)."""
    from bft_ray.errors import ConfigError

    try:
        return TASKS[name](**kwargs)
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
