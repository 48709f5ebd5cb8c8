"""Robust data-parallel training on Ray: workers on bft-ray executors, attacks as fault behaviours.

One Ray and one 7-executor cluster for the module. Slots 5 and 6 start as ALIE attackers
(``robust_attack("alie(z=50)")``); later tests swap executor behaviours at run time with
``cluster.inject_fault`` and tell the trainer with ``faults=...``. Tests that leave executors
flagged, quarantined or dead run last.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import ray
import torch

import bft_ray
from bft_ray.errors import ConfigError
from bft_ray.faults import FaultContext
from bft_ray.robust import (
    InProcessTrainer,
    TrainConfig,
    Worker,
    assemble,
    attack_generator,
    byzantine_rows,
    initial_params,
    make_attack,
    make_model,
    make_shards,
    server_step,
)
from bft_ray.robust.ray_training import (
    AttackBehaviour,
    RayTrainer,
    attack_faults,
    robust_attack,
    train_on_ray,
)
from bft_ray.robust.tasks import image_task
from bft_ray.robust.trainer import RobustTrainer

pytestmark = pytest.mark.ray

N, F = 7, 2
ALIE = "alie(z=50)"  # far outside the honest spread: the mean follows it, robust rules do not


@pytest.fixture(scope="module")
def cluster():
    bft_ray.shutdown()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=8,
        num_gpus=16,
        include_dashboard=False,
        object_store_memory=300 * 1024**2,
        log_to_driver=False,
    )
    # Quarantine off: tests count flags per executor across the module, and a quarantined
    # executor would stop receiving the verified-aggregation replicas they expect.
    c = bft_ray.init(
        executors=N,
        faults=attack_faults(TrainConfig(attack=ALIE, n_workers=N, f=F)),
        quarantine_below=0.0,
    )
    yield c
    bft_ray.shutdown()
    ray.shutdown()


def config(**kw) -> TrainConfig:
    base = {"aggregator": "trimmed_mean", "attack": ALIE, "n_workers": N, "f": F, "seed": 0}
    return TrainConfig(**{**base, **kw})


# -- behaviours (no Ray needed) ----------------------------------------------------------------


def test_attack_behaviour_is_an_identity_marker() -> None:
    b = robust_attack("ipm(epsilon=10)")
    out = np.arange(3.0)
    assert b.corrupt(out, FaultContext(1, "t", 0)) is out  # the harness applies the attack
    assert not b.is_honest and b.attack.kind == "vector"
    assert robust_attack("label_flip").attack.kind == "data"
    assert attack_faults(config()) == {5: robust_attack(ALIE), 6: robust_attack(ALIE)}
    assert attack_faults(config(attack="none")) == {}
    with pytest.raises(ConfigError, match="unknown attack"):
        AttackBehaviour("nope")


# -- the Ray runs ----------------------------------------------------------------------------------


def test_config_must_agree_with_the_cluster_attackers(cluster, digits) -> None:
    with pytest.raises(ConfigError, match="attack_faults"):
        RayTrainer(config(attack="ipm"), cluster, dataset=digits)
    with pytest.raises(ConfigError, match="attack_faults"):  # right attack, wrong slots
        RayTrainer(config(n_byzantine=1), cluster, dataset=digits)
    with pytest.raises(ConfigError, match="needs n > 2f"):
        RayTrainer(config(aggregator="median", f=4), cluster, dataset=digits)
    with pytest.raises(ConfigError, match="executors"):
        RayTrainer(config(n_workers=9, attack="none"), cluster, dataset=digits)


def _reference_params(cfg: TrainConfig, digits, steps: int) -> torch.Tensor:
    """What the Ray layer computes, in-process with one single ``Worker`` per worker."""
    model, shards = make_model(cfg, digits), make_shards(cfg, digits)
    attack, gen = make_attack(cfg.attack), attack_generator(cfg)
    vector = attack.kind == "vector"
    computing = [i for i in range(cfg.n_workers) if not (vector and i in cfg.byzantine_ids)]
    workers = {
        i: Worker(i, *shards[i], model, batch_size=cfg.batch_size, momentum=cfg.momentum, seed=0)
        for i in computing
    }
    params, state = initial_params(cfg, model), None
    for _ in range(steps):
        rows = torch.stack([workers[i].compute(params) for i in computing])
        if vector:
            byz = byzantine_rows(attack, rows, len(cfg.byzantine_ids), generator=gen)
            rows = assemble(rows, computing, byz, cfg.byzantine_ids)
        params, state = server_step(params, rows, cfg.aggregator, cfg.f, cfg.lr, state)
    return params


@pytest.mark.parametrize(
    ("rule", "attack"), [("nnm+cc(tau=0.1)", ALIE), ("trimmed_mean", "label_flip")]
)
def test_ray_run_reproduces_the_in_process_run(cluster, digits, rule, attack) -> None:
    """Same seed, same batches, same attack draws: the Ray run is the in-process run.

    Against the same loop written with single in-process Workers it is bit for bit equal
    (same code, one thread); against the vectorised trainer, equal to float rounding.
    """
    cfg = config(aggregator=rule, attack=attack, epochs=3)
    with RayTrainer(cfg, cluster, dataset=digits, faults=attack_faults(cfg)) as trainer:
        result = trainer.run()
        ray_params = trainer.params
        steps = trainer.steps_done
    assert result.attack_slots == [5, 6] and result.lost_slots == [] and not result.diverged
    assert torch.equal(ray_params, _reference_params(cfg, digits, steps))
    in_process = InProcessTrainer(cfg, digits)
    expected = in_process.run()
    torch.testing.assert_close(ray_params, in_process.params, rtol=1e-4, atol=1e-5)
    assert np.allclose(result.accuracy, expected.accuracy, atol=2 / 450)  # <= 2 test digits


def test_alie_on_ray_robust_rule_stays_high_and_the_mean_drops(cluster, digits) -> None:
    robust = train_on_ray(config(epochs=5), cluster, dataset=digits)
    mean = train_on_ray(config(aggregator="mean", epochs=5), cluster, dataset=digits)
    # Seed 0 measured: trimmed mean 0.907, mean 0.111 (in-process seeds 0-2: 0.90-0.92 / <0.12).
    assert robust.final_accuracy >= 0.85
    assert mean.final_accuracy <= 0.30
    assert robust.final_accuracy - mean.final_accuracy >= 0.5
    assert robust.attack == "ALIE(z=50.0)" and robust.attack_slots == [5, 6]


def test_verified_aggregation_equals_the_trusted_server_and_certifies(cluster, digits) -> None:
    cfg = config(aggregator="nnm+cc(tau=0.1)", epochs=1)  # stateful: the CC centre must travel
    with RayTrainer(cfg, cluster, dataset=digits) as trusted_run:
        trusted = trusted_run.run()
        trusted_params, trusted_state = trusted_run.params, trusted_run.rule_state
    with RayTrainer(cfg, cluster, dataset=digits, verify_aggregation=True) as verified_run:
        verified = verified_run.run()
        params, state = verified_run.params, verified_run.rule_state
        cert = verified_run.certificate()
    assert verified.verified_aggregation and len(verified.aggregation_tasks) == 7
    torch.testing.assert_close(params, trusted_params, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        state["stages"][1]["center"], trusted_state["stages"][1]["center"], rtol=1e-6, atol=1e-7
    )
    assert verified.accuracy == trusted.accuracy
    # The last step's certificate: signed, >= quorum agreeing executors, binds the value.
    assert cert.task_id == verified.aggregation_tasks[-1] and len(cert.signers) >= 2
    keys = cluster.executor_keys().values()
    assert bft_ray.verify_certificate(
        cert, cluster.verifier_keys(), executor_keys=keys, value=(params, state)
    )
    assert not bft_ray.verify_certificate(
        cert, cluster.verifier_keys(), value=(params + 1e-3, state)
    )
    trusted_step = np.mean(trusted.aggregate_seconds)
    verified_step = np.mean(verified.aggregate_seconds)
    print(
        f"server step: trusted {trusted_step * 1e3:.2f} ms, verified {verified_step * 1e3:.1f} ms"
    )


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_robust_trainer_on_ray_equals_local_and_recreates_a_crashed_worker(cluster) -> None:
    """A user CNN (batch norm buffers travel too) through RobustTrainer on the executors: the
    ALIE slots 5 and 6 are simulated, slot 2's executor dies answering its 4th call; the
    verifier confirms the death, the pool respawns the slot and the worker is re-created from
    the current parameters and its last momentum. The in-process backend, emulating the same
    crash, gives the same run bit for bit."""
    task = image_task(n_train=140, batch_size=8, lr=0.2)
    crash = bft_ray.faults.crash(after=3)
    faults = {**attack_faults(config()), 2: crash}
    kw = {"aggregator": "trimmed_mean", "f": F, "workers": N, "steps": 4, "steps_per_epoch": 2}
    cluster.inject_fault(2, crash)
    try:
        with RobustTrainer(**task.kwargs(), **kw, cluster=cluster, faults=faults) as trainer:
            on_ray = trainer.fit()
            entry = trainer.backend.entries[2]
    finally:
        cluster.inject_fault(2, "honest")
    local = RobustTrainer(**task.kwargs(), **kw, backend="local", faults=faults).fit()
    assert on_ray.recreated == [(2, 2)] == local.recreated
    assert on_ray.missing == {2: [2]} == local.missing
    assert entry["executor_id"] != "ex2"  # a new incarnation of slot 2
    assert _state_equal(on_ray.model, local.model)
    assert [h["loss"] for h in on_ray.history] == [h["loss"] for h in local.history]


def test_robust_trainer_verified_aggregation_certifies(cluster) -> None:
    task = image_task(n_train=140, batch_size=8, lr=0.2)
    kw = {"aggregator": "nnm+cc(tau=0.1)", "f": F, "workers": N, "steps": 2}
    with RobustTrainer(**task.kwargs(), **kw, cluster=cluster, verify_aggregation=True) as t:
        verified = t.fit()
        cert = t.certificate()
    local = RobustTrainer(**task.kwargs(), **kw, backend="local", faults=cluster.spec.faults).fit()
    for a, b in zip(verified.model.state_dict().values(), local.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert bft_ray.verify_certificate(cert, cluster.verifier_keys())


GENERIC = {5: bft_ray.faults.zeros(), 6: bft_ray.faults.gaussian_noise(100.0)}


def test_generic_executor_faults_are_byzantine_workers(cluster, digits) -> None:
    """Faults applied inside the executors (no attack simulation): a robust rule survives them,
    the mean does not, which also shows the corruption really reached the rule."""
    for index, fault in GENERIC.items():
        cluster.inject_fault(index, fault)
    cfg = config(attack="none", epochs=5)
    robust = train_on_ray(cfg, cluster, dataset=digits, faults=GENERIC)
    mean = train_on_ray(
        config(attack="none", aggregator="mean", epochs=2), cluster, dataset=digits, faults=GENERIC
    )
    assert robust.faulty_slots == [5, 6] and robust.attack is None and robust.attack_slots == []
    assert robust.final_accuracy >= 0.85  # measured 0.911
    assert mean.final_accuracy <= 0.5  # noise of scale 100 in one of 7 rows
    assert robust.final_accuracy - mean.final_accuracy >= 0.4


def test_verified_aggregation_outvotes_lying_replicas(cluster, digits) -> None:
    """Replicas of the server step also land on the lying executors 5 and 6: they are outvoted
    (escalating when two of three lie) and flagged; the result equals the trusted server's."""
    cfg = config(attack="none", epochs=2)
    with RayTrainer(cfg, cluster, dataset=digits, faults=GENERIC) as trusted_run:
        trusted_run.run()
        expected = trusted_run.params
    with RayTrainer(
        cfg, cluster, dataset=digits, faults=GENERIC, verify_aggregation=True
    ) as verified_run:
        verified = verified_run.run()
        params = verified_run.params
    # Worker faults are seeded by deterministic task ids, so both runs saw the same rows.
    torch.testing.assert_close(params, expected, rtol=1e-6, atol=1e-7)
    assert len(verified.aggregation_tasks) == 14
    report = cluster.report()
    assert report.row("ex5")["disagreed"] + report.row("ex6")["disagreed"] >= 1
    assert all(report.row(f"ex{i}")["disagreed"] == 0 for i in range(5))


def test_a_crashed_worker_is_a_missing_row(cluster, digits) -> None:
    """A worker whose executor dies mid-run sends nothing: a robust rule drops the missing
    (non-finite) row within its f budget; the mean refuses the step and halts."""
    for index in GENERIC:
        cluster.inject_fault(index, "honest")
    cluster.inject_fault(4, bft_ray.faults.crash(after=2))
    faults = {4: bft_ray.faults.crash(after=2)}
    start = time.perf_counter()
    robust = train_on_ray(config(attack="none", epochs=3), cluster, dataset=digits, faults=faults)
    assert robust.lost_slots == [4] and not robust.diverged and robust.halted is None
    assert robust.final_accuracy >= 0.8
    mean = train_on_ray(
        config(attack="none", aggregator="mean", epochs=2), cluster, dataset=digits, faults=faults
    )
    assert mean.halted is not None and mean.diverged and mean.lost_slots == [4]
    assert mean.final_accuracy < 0.3 and math.isnan(mean.loss[-1])
    assert time.perf_counter() - start < 60


def test_a_straggler_past_the_timeout_is_a_missing_row(cluster, digits) -> None:
    """Runs after the crash test: slot 4 is dead and slot 3 answers too late, so two rows
    (= f) are missing every step; trimmed mean still trains and nothing waits for slot 3."""
    # The limit leaves honest workers ample room on a loaded machine (an honest worker past it
    # would be a lost slot too); the straggler is far past it.
    cluster.inject_fault(3, bft_ray.faults.slow(3.0))
    faults = {3: bft_ray.faults.slow(3.0), 4: bft_ray.faults.crash(after=2)}
    start = time.perf_counter()
    with RayTrainer(
        config(attack="none", epochs=1),
        cluster,
        dataset=digits,
        faults=faults,
        worker_timeout_s=1.0,
    ) as trainer:
        result = trainer.run()
    assert result.lost_slots == [3, 4] and result.halted is None
    assert result.final_accuracy > 0.3  # one epoch from 0.1: it did train
    assert max(result.compute_seconds) < 2.5  # never waited the 3 s for slot 3
    assert time.perf_counter() - start < 40
