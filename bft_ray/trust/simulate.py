"""A pure simulation of adaptive replication over a pool with cheaters.

It drives the same rules the trusted verifier acts on: :class:`~bft_ray.trust.standing.Standing`
(earned trust, proven wrong results, taint), the plan's audit rate and
:class:`~bft_ray.trust.draw.AuditDraw`, and the same dispatch order (rendezvous hashing of the
task id, :func:`bft_ray.executor.placement.rendezvous_order`). What it leaves out is Ray and
real outputs: an executor's answer is "right" or "wrong", and a wrong answer disagrees with
every other answer (the strongest case for a cheater: it never agrees with an honest output).

Per task: the first executor in the task's order is the *primary*. If it has earned trust for
the function it runs alone; once it has committed, the draw decides whether an independent
executor re-executes it (an audit). An audit that disagrees escalates by one more replica, and
the strict majority decides. A primary without earned trust gets full replication (``r``
executors). This is what ``make bench-trust`` measures and what the policy tests check.

Example:
    >>> from bft_ray.trust.plans import adaptive
    >>> r = simulate(SimConfig(honest=6, epsilon=0.5, tasks=600, plan=adaptive(0.5, 0.9, 20), seed=1))
    >>> r.honest_flagged, r.caught_after is not None
    (0, True)
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from bft_ray.executor.placement import Candidate, rendezvous_order
from bft_ray.trust.draw import AuditDraw
from bft_ray.trust.plans import SpotCheck
from bft_ray.trust.standing import Standing

__all__ = ["SimConfig", "SimResult", "simulate"]

CHEATER = "cheater"


@dataclasses.dataclass
class SimConfig:
    """One simulated run.

    Args:
        honest: Honest executors.
        epsilon: Rate at which the cheater returns a wrong result once it cheats.
        tasks: Tasks submitted.
        plan: The spot-check or adaptive plan.
        replicas: Executors per task under full replication (quorum: strict majority).
        seed: Seeds the cheater's coin and the audit secret.
        cheat_after: The cheater is honest for its first this-many executions (a patient
            cheater earns trust first).
        predicts_audit: A cheater that tries to cheat only when unobserved: called with the
            task id (all an executor learns of a call), True means "I expect this task to be
            checked" (then it behaves, whether it runs alone, audits or is one replica of many).
        draw: The audit draw (default: a secret key from ``seed``).
    """

    honest: int = 20
    epsilon: float = 0.1
    tasks: int = 20_000
    plan: SpotCheck | None = None
    replicas: int = 3
    seed: int = 0
    cheat_after: int = 0
    predicts_audit: Callable[[str], bool] | None = None
    draw: AuditDraw | None = None


@dataclasses.dataclass
class SimResult:
    tasks: int
    executions: int
    executions_after_warmup: float  # per task, over tasks after every honest one earned trust
    warmup_tasks: int  # tasks until every honest executor may run alone
    caught_after: int | None  # cheater executions since it began cheating, at its first proof
    cheater_wrong: int  # wrong results it returned before it was caught
    wrong_accepted: int  # of those, accepted alone without an audit (tainted afterwards)
    tainted_reported: int  # results Standing listed as tainted when it was caught
    honest_flagged: int
    audits: int
    lone: int


def simulate(cfg: SimConfig) -> SimResult:
    """Run one simulation (see the module docstring)."""
    assert cfg.plan is not None, "SimConfig.plan is required"
    rng = random.Random(cfg.seed)
    draw = cfg.draw or AuditDraw(random.Random(cfg.seed ^ 0x5EED).randbytes(32))
    plan, fn = cfg.plan, "f"
    ids = [f"h{i}" for i in range(cfg.honest)] + [CHEATER]
    cands = [Candidate(e, e) for e in ids]
    standing = Standing(keep_unverified=100_000)
    for e in ids:
        standing.register(e)
    cheater_runs = 0
    cheating_runs = 0
    wrong = wrong_accepted = 0
    caught_after: int | None = None
    tainted_reported = 0
    executions = audits = lone = 0
    per_task: list[int] = []
    warmup_tasks = -1

    def answer(e: str, task_id: str, alone: bool) -> bool:
        """True when ``e`` returns the right result."""
        nonlocal cheater_runs, cheating_runs, wrong
        if e != CHEATER:
            return True
        cheater_runs += 1
        if cheater_runs <= cfg.cheat_after or caught_after is not None:
            return True
        cheating_runs += 1
        if cfg.predicts_audit is not None and cfg.predicts_audit(task_id):
            return True  # it expects to be watched, so it behaves
        if rng.random() < cfg.epsilon:
            wrong += 1
            return False
        return True

    def settle(task_id: str, outs: list[tuple[str, bool]], order: list[str]) -> None:
        """Escalate one replica at a time until a strict majority agrees; apply the labels."""
        nonlocal executions, caught_after, tainted_reported
        used = {e for e, _ in outs}
        while True:
            right = [e for e, ok in outs if ok]
            wrong_ = [e for e, ok in outs if not ok]
            # An audit pair needs both; a larger set a strict majority (q for r replicas).
            need = max(2, len(outs) // 2 + 1)
            if len(right) >= need:
                # Wrong answers agree with nothing, so each is proven wrong.
                labels = [(e, "agreed") for e in right] + [(e, "disagreed") for e in wrong_]
                break
            spare = [e for e in order if e not in used]
            e = spare[0]
            used.add(e)
            outs.append((e, answer(e, task_id, alone=False)))
            executions += 1
        tainted = standing.apply_labels(task_id, fn, labels, cooldown=plan.cooldown)
        if any(e == CHEATER and lab == "disagreed" for e, lab in labels) and caught_after is None:
            caught_after = cheating_runs
            tainted_reported = len(tainted)

    for i in range(cfg.tasks):
        before = executions
        task_id = f"s{cfg.seed}-t{i}"
        order = [c.executor_id for c in rendezvous_order(task_id, cands)]
        order = [e for e in order if standing.receives_work(e)]
        primary = order[0]
        if standing.may_run_alone(primary, fn, plan):
            lone += 1
            ok = answer(primary, task_id, alone=True)
            executions += 1
            digest = b"right" if ok else b"wrong"
            if draw.audited(task_id, primary, digest, plan.rate):
                audits += 1
                standing.audited(primary, fn)
                auditor = order[1]
                outs = [(primary, ok), (auditor, answer(auditor, task_id, alone=False))]
                executions += 1
                settle(task_id, outs, order)
            else:
                if not ok:
                    wrong_accepted += 1
                standing.apply_labels(task_id, fn, [(primary, "agreed")], alone=True, digest=digest)
        else:
            chosen = order[: cfg.replicas]
            outs = [(e, answer(e, task_id, alone=False)) for e in chosen]
            executions += len(chosen)
            settle(task_id, outs, order)
        per_task.append(executions - before)
        if warmup_tasks < 0 and all(
            standing.may_run_alone(f"h{j}", fn, plan) for j in range(cfg.honest)
        ):
            warmup_tasks = i + 1
    after = per_task[warmup_tasks:] if warmup_tasks >= 0 else []
    honest_flagged = sum(1 for e in ids if e != CHEATER and standing.get(e).proven_wrong)
    return SimResult(
        tasks=cfg.tasks,
        executions=executions,
        executions_after_warmup=sum(after) / len(after) if after else float("nan"),
        warmup_tasks=warmup_tasks,
        caught_after=caught_after,
        cheater_wrong=wrong,
        wrong_accepted=wrong_accepted,
        tainted_reported=tainted_reported,
        honest_flagged=honest_flagged,
        audits=audits,
        lone=lone,
    )
