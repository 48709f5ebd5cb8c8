"""Data splits, the functional MLP, the worker/server pieces, and short seeded training runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bft_ray.errors import ConfigError
from bft_ray.robust import (
    InProcessTrainer,
    Server,
    TrainConfig,
    Worker,
    WorkerGroup,
    assemble,
    attack_generator,
    byzantine_rows,
    initial_params,
    make_aggregator,
    make_attack,
    make_model,
    make_shards,
    server_step,
    train,
)
from bft_ray.robust.data import dirichlet_partition, iid_partition, load_digits_dataset
from bft_ray.robust.model import MLP

# -- data ------------------------------------------------------------------------------------


def test_digits_split_is_fixed_and_standardised(digits) -> None:
    assert digits.x_train.shape == (1347, 64) and digits.x_test.shape == (450, 64)
    assert torch.equal(load_digits_dataset().y_test, digits.y_test)
    assert float(digits.x_train.mean()) == pytest.approx(0.0, abs=1e-5)


def test_iid_partition_covers_everything_once() -> None:
    shards = iid_partition(100, 7, seed=1)
    assert sorted(np.concatenate(shards).tolist()) == list(range(100))
    assert {len(s) for s in shards} <= {14, 15}


def test_dirichlet_partition_is_a_skewed_partition(digits) -> None:
    y = digits.y_train.numpy()
    shards = dirichlet_partition(y, 15, alpha=0.3, seed=0)
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(y)))
    assert min(len(s) for s in shards) >= 4

    def top_class_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts]))

    iid = iid_partition(len(y), 15, seed=0)
    assert top_class_share(shards) > top_class_share(iid) + 0.2
    assert dirichlet_partition(y, 15, alpha=0.3, seed=0)[3].tolist() == shards[3].tolist()
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_partition(y, 15, alpha=0.0)


# -- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(64, 32, 10), (64, 10), (8, 5, 4, 3)])
def test_manual_gradients_match_autograd(sizes: tuple[int, ...]) -> None:
    mlp = MLP(sizes)
    g = torch.Generator().manual_seed(0)
    params = mlp.init(g)
    x = torch.randn(5, 7, sizes[0], generator=g)
    y = torch.randint(sizes[-1], (5, 7), generator=g)
    grads, losses = mlp.per_worker_gradients(params, x, y)
    ref_grads, ref_losses = mlp.per_worker_gradients_autograd(params, x, y)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses, ref_losses)
    # Worker k's gradient does not depend on the other workers' batches.
    solo, _ = mlp.per_worker_gradients(params, x[2:3], y[2:3])
    torch.testing.assert_close(solo[0], grads[2], rtol=1e-5, atol=1e-7)


def test_to_module_matches_functional_forward() -> None:
    mlp = MLP()
    params = mlp.init(torch.Generator().manual_seed(3))
    x = torch.randn(4, 64)
    torch.testing.assert_close(mlp.to_module(params)(x), mlp.forward(params, x))


# -- worker / server pieces --------------------------------------------------------------------


def test_worker_group_equals_individual_workers(digits) -> None:
    mlp = MLP()
    shards = [(digits.x_train[i::4][:40], digits.y_train[i::4][:40]) for i in range(4)]
    group = WorkerGroup(shards, mlp, batch_size=8, momentum=0.9, seed=5)
    workers = [
        Worker(i, x, y, mlp, batch_size=8, momentum=0.9, seed=5) for i, (x, y) in enumerate(shards)
    ]
    params = mlp.init(torch.Generator().manual_seed(0))
    for step in range(3):
        ids = [0, 1, 2, 3] if step != 1 else [0, 2]  # idle workers keep their stream
        together = group.compute(params, ids)
        alone = torch.stack([workers[i].compute(params) for i in ids])
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-7)
        params = params - 0.5 * together.mean(dim=0)


def test_remote_style_loop_reproduces_in_process_run(digits) -> None:
    """What a Ray layer does per step, written with single Workers and the pure server step,
    follows the vectorised in-process trainer (same batches, attack draws, shuffles, state)."""
    cfg = TrainConfig(
        aggregator="bucketing(s=2)+cc(tau=0.1)", attack="gaussian", n_workers=9, f=2, seed=3
    )
    trainer = InProcessTrainer(cfg, digits)
    model = make_model(cfg, digits)
    shards = make_shards(cfg, digits)
    honest_ids = [i for i in range(cfg.n_workers) if i not in cfg.byzantine_ids]
    workers = {
        i: Worker(i, *shards[i], model, batch_size=cfg.batch_size, momentum=cfg.momentum, seed=3)
        for i in honest_ids
    }
    attack, gen = make_attack(cfg.attack), attack_generator(cfg)
    params, state = initial_params(cfg, model), None
    for _ in range(4):
        trainer.step()
        honest = torch.stack([workers[i].compute(params) for i in honest_ids])  # remote calls
        byz = byzantine_rows(attack, honest, len(cfg.byzantine_ids), generator=gen)
        vectors = assemble(honest, honest_ids, byz, cfg.byzantine_ids)
        params, state = server_step(params, vectors, cfg.aggregator, cfg.f, cfg.lr, state)
    torch.testing.assert_close(params, trainer.params, rtol=1e-5, atol=1e-6)
    assert state["stages"][0] == {"calls": 4}


def test_assemble_places_rows_by_worker_id() -> None:
    honest = torch.tensor([[1.0], [2.0]])
    byz = torch.tensor([[9.0]])
    assert assemble(honest, [0, 2], byz, [1]).tolist() == [[1.0], [9.0], [2.0]]


def test_server_step_is_pure_and_threads_rule_state() -> None:
    g = torch.Generator().manual_seed(0)
    vectors = [torch.randn(7, 5, generator=g) for _ in range(3)]
    params0 = torch.zeros(5)
    # Stateful server vs the pure function with the state passed explicitly.
    rule = "nnm+cc(tau=0.3)"
    server = Server(params0.clone(), make_aggregator(rule, f=2), lr=0.1)
    params, state = params0.clone(), None
    for v in vectors:
        server.step(v)
        new_params, new_state = server_step(params, v, rule, f=2, lr=0.1, rule_state=state)
        # A second replica given the same inputs computes the same outputs.
        replica_params, replica_state = server_step(params, v, rule, f=2, lr=0.1, rule_state=state)
        assert torch.equal(new_params, replica_params)
        center = new_state["stages"][1]["center"]
        assert torch.equal(center, replica_state["stages"][1]["center"])
        params, state = new_params, new_state
    assert torch.equal(params, server.params)
    assert torch.equal(state["stages"][1]["center"], server.aggregator.aggregator.center)


def test_config_validation_and_breakdown_at_construction(digits) -> None:
    with pytest.raises(ConfigError, match="Krum needs n > 2f \\+ 2"):
        InProcessTrainer(TrainConfig(aggregator="krum", n_workers=6, f=2), digits)
    with pytest.raises(ConfigError, match="at least one"):
        TrainConfig(n_workers=3, f=1, n_byzantine=3).validate()
    with pytest.raises(ConfigError, match="momentum"):
        TrainConfig(momentum=1.0).validate()
    with pytest.raises(ConfigError, match="unknown split"):
        InProcessTrainer(TrainConfig(split="zipf"), digits)


def test_label_flip_poisons_only_byzantine_shards(digits) -> None:
    cfg = TrainConfig(attack="label_flip", n_workers=5, f=1, epochs=0)
    trainer = InProcessTrainer(cfg, digits)
    clean = InProcessTrainer(TrainConfig(n_workers=5, f=1, epochs=0), digits)
    sizes = trainer.workers.sizes
    cut = sum(sizes[:4])
    assert torch.equal(trainer.workers.y[:cut], clean.workers.y[:cut])
    assert torch.equal(trainer.workers.y[cut:], 9 - clean.workers.y[cut:])


# -- training runs --------------------------------------------------------------------------------


def test_training_is_seeded(digits) -> None:
    cfg = TrainConfig(aggregator="trimmed_mean", attack="gaussian", epochs=2, seed=4)
    a, b = train(cfg, dataset=digits), train(cfg, dataset=digits)
    assert a.accuracy == b.accuracy and a.loss == b.loss
    c = train(
        TrainConfig(aggregator="trimmed_mean", attack="gaussian", epochs=2, seed=5), dataset=digits
    )
    assert c.accuracy != a.accuracy
    assert a.to_dict()["config"]["aggregator"] == "trimmed_mean"


def test_alie_keeps_robust_rule_high_and_drags_the_mean_down(digits) -> None:
    """ALIE with a large z: the Byzantine vectors sit far below the honest ones in every
    coordinate. The mean follows them; trimmed mean discards them.

    With the z of Baruch et al. (0.43 for n=15, f=3) the shift is a fraction of the honest
    spread and, with worker momentum, moves neither rule measurably on this task (0.94-0.96 for
    both, see the benchmark); that z is built to slip past robust rules, not to break the mean.
    """
    common = {"attack": "alie(z=50)", "epochs": 10, "seed": 0}
    robust = train(TrainConfig(aggregator="trimmed_mean", **common), dataset=digits)
    mixed = train(TrainConfig(aggregator="nnm+trimmed_mean", **common), dataset=digits)
    mean = train(TrainConfig(aggregator="mean", **common), dataset=digits)
    assert robust.final_accuracy >= 0.85
    assert mixed.final_accuracy >= 0.85
    assert mean.final_accuracy <= 0.40
    assert robust.final_accuracy - mean.final_accuracy >= 0.45


def test_alie_with_paper_z_does_not_break_a_robust_rule(digits) -> None:
    cfg = TrainConfig(aggregator="nnm+cc(tau=0.1)", attack="alie", epochs=20)
    assert train(cfg, dataset=digits).final_accuracy >= 0.9  # measured 0.947


def test_nonfinite_attack_halts_the_mean_and_not_robust_rules(digits) -> None:
    mean = train(TrainConfig(aggregator="mean", attack="nonfinite", epochs=3), dataset=digits)
    assert mean.diverged and mean.halted is not None and "NaN" in mean.halted
    assert mean.final_accuracy < 0.3  # stopped at the first step
    robust = train(TrainConfig(aggregator="median", attack="nonfinite", epochs=3), dataset=digits)
    assert robust.halted is None and not robust.diverged and robust.final_accuracy > 0.6


@pytest.mark.slow
def test_best_robust_rule_keeps_95_percent_on_iid_under_every_attack(digits) -> None:
    """The benchmark's claim for one rule, at the benchmark's settings (60 epochs)."""
    attacks = [
        "none",
        "sign_flip",
        "ipm(epsilon=0.1)",
        "ipm(epsilon=10)",
        "alie",
        "gaussian(sigma=1)",
        "mimic",
        "label_flip",
        "nonfinite",
    ]
    for attack in attacks:
        accs = [
            train(
                TrainConfig(aggregator="nnm+cc(tau=0.1)", attack=attack, epochs=60, seed=seed),
                dataset=digits,
            ).final_accuracy
            for seed in (0, 1)
        ]
        assert np.mean(accs) >= 0.95, (attack, accs)
