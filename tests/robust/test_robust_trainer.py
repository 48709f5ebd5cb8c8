"""RobustTrainer on the local (in-process) backend: user models, resume, crashes, config.

The Ray backend runs the same ModelWorker code; its tests (Ray run equals this backend bit for
bit, crash re-creation on a real executor) are in test_robust_ray.py, which has the cluster.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bft_ray
from bft_ray.errors import ConfigError
from bft_ray.robust.model_worker import Layout, ModelWorker, aggregate_rows, blocks_for
from bft_ray.robust.tasks import digits_task, image_task, lm_task
from bft_ray.robust.trainer import RobustTrainer, TrainerConfig, byzantine_faults

IPM10 = "ipm(epsilon=10)"  # 3 of 12 attackers at -10 x mean: the mean ascends the loss


def _fit(task, rule, steps, faults, **kw):
    trainer = RobustTrainer(
        **task.kwargs(),
        aggregator=rule,
        f=3,
        workers=12,
        steps=steps,
        steps_per_epoch=steps,
        backend="local",
        faults=faults,
        **kw,
    )
    return trainer.fit()


def test_small_cnn_trains_under_attack_and_the_mean_diverges() -> None:
    """A CNN with batch norm, 3 Byzantine of 12: seed 0 measured robust test loss 0.006
    (accuracy 1.0), the mean 2.8e11 (seeds 0-2: <= 0.012 and >= 2.7e11)."""
    task = image_task(n_train=384, lr=0.5)
    faults = byzantine_faults(IPM10, 12, 3)
    robust = _fit(task, "nnm+trimmed_mean", 20, faults)
    mean = _fit(task, "mean", 20, faults)
    assert robust.history[-1]["test_loss"] <= 0.1 and robust.history[-1]["accuracy"] >= 0.95
    assert mean.diverged or mean.history[-1]["test_loss"] >= 100.0
    assert mean.history[-1]["accuracy"] <= 0.5
    # Batch-norm running statistics were aggregated (they moved away from their init).
    assert not torch.allclose(robust.model.bn.running_var, torch.ones(6))


def test_tiny_transformer_lm_trains_under_attack_and_the_mean_diverges() -> None:
    """ln(16) = 2.77 knows nothing, the stream's entropy floor is 0.565. Seed 0 measured: robust held-out
    loss 0.68, the mean 17.6 (seeds 0-2: <= 0.76 and >= 17.6)."""
    task = lm_task(lr=1e-2, length=1024)
    faults = byzantine_faults(IPM10, 12, 3)
    robust = _fit(task, "nnm+trimmed_mean", 25, faults)
    mean = _fit(task, "mean", 25, faults)
    assert robust.history[-1]["test_loss"] <= 1.2
    assert mean.diverged or mean.history[-1]["test_loss"] >= 5.0


def _small_trainer(**kw):
    task = image_task(n_train=96, batch_size=8, lr=0.2)
    base = dict(
        aggregator="nnm+cc(tau=0.1)",  # stateful: the CC centre must be checkpointed
        f=1,
        workers=5,
        steps=6,
        steps_per_epoch=2,
        backend="local",
        faults=byzantine_faults("gaussian(sigma=1)", 5, 1),  # consumes the attack's stream
    )
    return RobustTrainer(**task.kwargs(), **{**base, **kw})


def test_resume_from_a_checkpoint_continues_the_same_trajectory(tmp_path) -> None:
    straight = _small_trainer()
    expected = straight.fit()
    first = _small_trainer()
    first.fit(until=3)  # mid-epoch on purpose
    first.save(tmp_path / "ckpt.pt")
    resumed = RobustTrainer.load(tmp_path / "ckpt.pt")
    assert resumed.step_count == 3
    got = resumed.fit()
    assert got.steps == 6
    for a, b in zip(expected.model.state_dict().values(), got.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["loss"] for h in got.history] == [h["loss"] for h in expected.history]
    assert [h["accuracy"] for h in got.history] == [h["accuracy"] for h in expected.history]
    # And the checkpoint did matter: a fresh run from step 0 with 3 steps is elsewhere.
    assert not torch.equal(
        _small_trainer(steps=3).fit().model.head.weight, expected.model.head.weight
    )


def test_a_crashed_worker_is_recreated_from_the_current_parameters() -> None:
    """Slot 2 crashes answering its 4th call (create + 3 steps): its row is missing at step 2
    and a fresh worker (its last momentum, its batch stream advanced) is back from step 3. The
    fault stays armed on the new worker (as on a respawned executor): it crashes again at
    step 5, is re-created again, and its third crash (step 8) exceeds max_recreations=2."""
    faults = {**byzantine_faults("gaussian(sigma=1)", 5, 1), 2: bft_ray.faults.crash(after=3)}
    trainer = _small_trainer(faults=faults)
    result = trainer.fit()
    assert result.missing == {2: [2], 5: [2]} and result.recreated == [(2, 2), (5, 2)]
    worker = trainer.backend.workers[2]
    assert worker.batches_done == trainer.asked[2] == 6  # the crashed steps' batches skipped
    assert torch.equal(trainer.momenta[2], worker.buffer)
    longer = _small_trainer(faults=faults, steps=10)
    res = longer.fit()
    assert res.recreated == [(2, 2), (5, 2)] and sorted(res.missing) == [2, 5, 8, 9]
    assert 2 not in longer.backend.workers and not res.diverged


def test_coordinate_wise_rules_do_not_depend_on_the_blocks() -> None:
    """trimmed_mean is separable: whole model, per tensor and chunks of 7 give the same run;
    Krum is not (it picks per block), so per-tensor Krum is a different trajectory."""
    models = {}
    for by in ("model", "tensor", 7):
        t = _small_trainer(aggregator="trimmed_mean", aggregate_by=by, steps=3)
        models[by] = t.fit().model.head.weight
    assert torch.equal(models["model"], models["tensor"]) and torch.equal(
        models["model"], models[7]
    )
    krum = {
        by: _small_trainer(aggregator="krum", workers=5, f=1, aggregate_by=by, steps=3)
        .fit()
        .model.head.weight
        for by in ("model", "tensor")
    }
    assert not torch.equal(krum["model"], krum["tensor"])


def test_bfloat16_model_trains() -> None:
    task = digits_task(dtype=torch.bfloat16)
    trainer = RobustTrainer(
        **task.kwargs(), aggregator="trimmed_mean", f=1, workers=5, steps=20, backend="local"
    )
    result = trainer.fit()
    assert next(result.model.parameters()).dtype is torch.bfloat16
    assert result.history[-1]["accuracy"] >= 0.7  # from ~0.1; measured 0.784 (fp32: 0.780)


def test_buffers_take_the_median_of_the_workers() -> None:
    layout = Layout(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)))
    p = layout.num_params
    assert layout.num_buffers == 7  # running mean (3), var (3), num_batches_tracked (1)
    rows = [
        torch.cat([torch.zeros(p), torch.full((7,), float(v)), torch.tensor([v])])
        for v in (1, 5, 2)
    ]
    rows[1][p] = 1000.0  # one worker lies about a running mean
    update, buffers, loss, _ = aggregate_rows(rows, blocks_for(layout, "model"), p, "mean", 1, None)
    assert buffers.tolist() == [2.0] * 7 and loss == 2.0 and update.abs().sum() == 0


def test_worker_rows_are_reproducible_and_skip_batches_on_recreation() -> None:
    task = image_task(n_train=64, batch_size=4)
    fns = (task.model_fn, task.loss_fn, task.data_fn)
    a = ModelWorker(1, 4, *fns)
    state = a.layout.state(a.model)
    rows = [a.compute(state, s) for s in range(3)]
    # Re-created at step 2 with the momentum it had sent at step 1: the same row as before.
    b = ModelWorker(1, 4, *fns, batches_done=2, momentum_init=rows[1][: a.layout.num_params])
    assert torch.equal(b.compute(state, 2), rows[2])
    assert not torch.equal(ModelWorker(1, 4, *fns).compute(state, 2), rows[2])


def test_config_errors_say_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="at least one worker must be honest"):
        TrainerConfig(f=4, workers=4, steps=1)
    with pytest.raises(ConfigError, match="Krum needs n > 2f"):
        TrainerConfig(aggregator="krum", f=2, workers=6, steps=1)
    with pytest.raises(ConfigError, match="unknown"):
        TrainerConfig(aggregator="nope", f=1, workers=4, steps=1)
    with pytest.raises(ConfigError, match="backend='ray'"):
        TrainerConfig(f=1, workers=4, steps=1, backend="local", verify_aggregation=True)
    with pytest.raises(ConfigError, match="steps"):
        TrainerConfig(f=1, workers=4, steps=0)
    task = image_task(n_train=32)
    kw = dict(f=1, workers=4, steps=1, backend="local")
    with pytest.raises(ConfigError, match=r"torch\.optim\.Optimizer"):
        RobustTrainer(task.model_fn, task.loss_fn, task.data_fn, optimizer_fn=lambda p: None, **kw)
    with pytest.raises(ConfigError, match="float32"):
        RobustTrainer(
            lambda: nn.Linear(2, 1).double(),
            task.loss_fn,
            task.data_fn,
            optimizer_fn=task.optimizer_fn,
            **kw,
        )
    with pytest.raises(ConfigError, match="poison that worker's data"):
        RobustTrainer(**task.kwargs(), faults={3: bft_ray.robust.robust_attack("label_flip")}, **kw)
    try:
        bft_ray.current_cluster()
    except Exception:  # no cluster in this process: the Ray backend says how to get one
        with pytest.raises(ConfigError, match=r"bft_ray\.init"):
            RobustTrainer(**task.kwargs(), f=1, workers=4, steps=1)


def test_progress_bar_and_epoch_callback() -> None:
    seen = []
    result = _small_trainer(progress=True, on_epoch=seen.append).fit()
    assert [m["epoch"] for m in seen] == [0, 1, 2] and [m["step"] for m in seen] == [2, 4, 6]
    assert seen == result.history and all(math.isfinite(m["loss"]) for m in seen)
