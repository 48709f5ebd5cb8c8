"""Byzantine-robust aggregation, attacks and data-parallel training with untrusted workers.

Aggregators (``n`` vectors, up to ``f`` Byzantine, in; one vector out), pre-aggregators that
compose with them, the attacks of the literature, and a seeded in-process data-parallel trainer
whose pieces (worker step, Byzantine vectors, server step) a Ray layer can run remotely;
:mod:`bft_ray.robust.ray_training` is that layer (workers on bft-ray executors, attacks as
fault behaviours, optionally verified server steps). :class:`RobustTrainer` trains *your*
torch module and data the same way (:mod:`bft_ray.robust.trainer`; ready-made models and data
in :mod:`bft_ray.robust.tasks`), and :mod:`bft_ray.robust.kappa` measures each rule's
empirical (f, kappa)-robustness.

Example:
    >>> import numpy as np
    >>> from bft_ray.robust import make_aggregator, make_attack
    >>> honest = np.array([[1.0, 1.0], [1.2, 0.8], [0.9, 1.1], [1.1, 1.0]])
    >>> byz = make_attack("sign_flip")(honest, n_byzantine=1)
    >>> rule = make_aggregator("nnm+trimmed_mean", f=1)
    >>> rule(np.vstack([honest, byz])).round(3).tolist()
    [1.05, 0.975]
"""

from bft_ray.robust.aggregators import (
    Bulyan,
    CenteredClipping,
    CoordinateWiseMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    TrimmedMean,
)
from bft_ray.robust.attacks import (
    ALIE,
    ATTACKS,
    IPM,
    Attack,
    DataAttack,
    GaussianNoise,
    LabelFlip,
    Mimic,
    MinMax,
    MinSum,
    NoAttack,
    NonFinite,
    SignFlip,
    VectorAttack,
    alie_z,
    make_attack,
)
from bft_ray.robust.base import (
    Aggregator,
    NonFiniteInputError,
    Pipeline,
    PreAggregator,
    RobustRule,
)
from bft_ray.robust.kappa import empirical_kappa, kappa_ratio, theoretical_kappa
from bft_ray.robust.model_worker import Layout, ModelWorker, aggregate_rows
from bft_ray.robust.preaggregators import ARC, NNM, Bucketing, StaticClipping
from bft_ray.robust.ray_training import (
    AttackBehaviour,
    RayTrainer,
    RayTrainResult,
    attack_faults,
    robust_attack,
    train_on_ray,
    verified_server_step,
)
from bft_ray.robust.registry import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    available_rules,
    compose,
    make_aggregator,
)
from bft_ray.robust.trainer import (
    FitResult,
    RobustTrainer,
    TrainerConfig,
    byzantine_faults,
    verified_aggregate_rows,
)
from bft_ray.robust.training import (
    InProcessTrainer,
    Server,
    TrainConfig,
    TrainResult,
    Worker,
    WorkerGroup,
    assemble,
    attack_generator,
    byzantine_rows,
    derive_seed,
    initial_params,
    make_model,
    make_shards,
    server_step,
    train,
)

__all__ = [
    "FitResult",
    "Layout",
    "ModelWorker",
    "RobustTrainer",
    "TrainerConfig",
    "aggregate_rows",
    "byzantine_faults",
    "empirical_kappa",
    "kappa_ratio",
    "theoretical_kappa",
    "verified_aggregate_rows",
    "AGGREGATORS",
    "ALIE",
    "MinMax",
    "MinSum",
    "ARC",
    "ATTACKS",
    "IPM",
    "NNM",
    "PRE_AGGREGATORS",
    "Aggregator",
    "Attack",
    "AttackBehaviour",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "CoordinateWiseMedian",
    "DataAttack",
    "GaussianNoise",
    "GeometricMedian",
    "InProcessTrainer",
    "Krum",
    "LabelFlip",
    "Mean",
    "Mimic",
    "MultiKrum",
    "NoAttack",
    "NonFinite",
    "NonFiniteInputError",
    "Pipeline",
    "PreAggregator",
    "RayTrainResult",
    "RayTrainer",
    "RobustRule",
    "Server",
    "SignFlip",
    "StaticClipping",
    "TrainConfig",
    "TrainResult",
    "TrimmedMean",
    "VectorAttack",
    "Worker",
    "WorkerGroup",
    "alie_z",
    "assemble",
    "attack_faults",
    "attack_generator",
    "available_rules",
    "byzantine_rows",
    "compose",
    "derive_seed",
    "initial_params",
    "make_aggregator",
    "make_attack",
    "make_model",
    "make_shards",
    "robust_attack",
    "server_step",
    "train",
    "train_on_ray",
    "verified_server_step",
]
