"""Data for robust-training experiments: scikit-learn's bundled digits and worker splits.

Nothing is downloaded: ``sklearn.datasets.load_digits`` ships with scikit-learn (8x8 images,
1797 samples, 10 classes). scikit-learn is imported lazily so the aggregators do not need it.

Example:
    >>> shards = iid_partition(10, 3, seed=0)
    >>> sorted(len(s) for s in shards)
    [3, 3, 4]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bft_ray.errors import ConfigError

__all__ = ["Dataset", "dirichlet_partition", "iid_partition", "load_digits_dataset", "partition"]


@dataclass(frozen=True)
class Dataset:
    """A standardised train/test split held as torch tensors."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def load_digits_dataset(*, test_size: float = 0.25, split_seed: int = 0) -> Dataset:
    """Load scikit-learn's digits, split (stratified) and standardise with train statistics.

    The split seed is separate from training seeds so every run is scored on the same test set.

    Example:
        >>> ds = load_digits_dataset()
        >>> ds.num_features, ds.num_classes, len(ds.y_train) + len(ds.y_test)
        (64, 10, 1797)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=split_seed, stratify=y
    )
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0  # border pixels are always 0
    return Dataset(
        x_train=torch.tensor((x_tr - mean) / std, dtype=torch.float32),
        y_train=torch.tensor(y_tr, dtype=torch.int64),
        x_test=torch.tensor((x_te - mean) / std, dtype=torch.float32),
        y_test=torch.tensor(y_te, dtype=torch.int64),
        num_classes=10,
    )


def iid_partition(num_samples: int, n_workers: int, *, seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(num_samples)`` and cut it into ``n_workers`` near-equal shards."""
    if n_workers < 1 or num_samples < n_workers:
        raise ConfigError(
            f"cannot split {num_samples} samples over {n_workers} workers: need "
            "1 <= n_workers <= samples"
        )
    perm = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(s) for s in np.array_split(perm, n_workers)]


def dirichlet_partition(
    labels: np.ndarray | Tensor,
    n_workers: int,
    *,
    alpha: float = 0.3,
    seed: int = 0,
    min_size: int = 4,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Non-IID split: for each class, worker shares drawn from ``Dirichlet(alpha)``.

    Small ``alpha`` (0.3) gives each worker a few dominant classes. Draws are repeated until every
    worker holds at least ``min_size`` samples (a worker with no data has no gradient).

    Raises:
        ConfigError: Bad arguments, or no valid draw within ``max_tries``.
    """
    y = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if not alpha > 0:
        raise ConfigError(f"the Dirichlet concentration alpha must be > 0 (got {alpha})")
    if n_workers < 1 or len(y) < n_workers * min_size:
        raise ConfigError(
            f"cannot give {n_workers} workers >= {min_size} samples each from {len(y)} samples"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(n_workers)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(n_workers, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for worker, part in enumerate(np.split(idx, cuts)):
                shards[worker].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ConfigError(
        f"no Dirichlet(alpha={alpha}) split gave every worker >= {min_size} samples in "
        f"{max_tries} tries: raise alpha or lower min_size"
    )


def partition(
    labels: np.ndarray | Tensor,
    n_workers: int,
    *,
    split: str = "iid",
    alpha: float = 0.3,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices over workers: ``split`` is ``"iid"`` or ``"dirichlet"``."""
    if split == "iid":
        return iid_partition(len(labels), n_workers, seed=seed)
    if split == "dirichlet":
        return dirichlet_partition(labels, n_workers, alpha=alpha, seed=seed)
    raise ConfigError(f"unknown split {split!r}: use 'iid' or 'dirichlet'")
