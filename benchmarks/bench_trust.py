"""Trust and cost: adaptive replication against a patient cheater, and drift detection (issue 11).

Everything here runs the pure simulator :func:`bft_ray.trust.simulate.simulate` (the same
``Standing``, audit-rate formula, keyed ``AuditDraw`` and rendezvous dispatch the trusted
verifier uses; no Ray) and :class:`bft_ray.trust.drift.DriftDetector`. Parts:

1. **Detection at the stated minimum cost.** A pool of 20 honest executors and one cheater,
   ``adaptive(epsilon, confidence=0.99, within=1000)``, once with a cheater at
   ``epsilon = 0.1`` and once at ``epsilon = 0.01``, many seeds each. The cheater is *patient*:
   it is honest for its first ``--cheat-after`` (300) executions, so it earns trust and runs
   alone first; the run is long enough that it would get about ``--cheat-execs`` (1,500)
   executions after it starts cheating (tasks = (cheat_after + cheat_execs) x 21 / (1 + p),
   since it is the primary of 1/21 of the tasks and each costs 1 + p executions). Reported per
   epsilon: executions per task after warm-up (mean, min, max over seeds) against the formula's
   minimum ``1 + p``; the cheater's executions from its first cheat to its first proven wrong
   result (``caught_after``: median, p90, p99, max) and the fraction caught within ``N`` against
   the target ``P`` (exact Clopper-Pearson 95% interval); honest executors flagged; wrong results
   accepted before the catch; results reported tainted at the catch.
2. **Cost against detection probability.** ``epsilon = 0.1`` with targets ``P`` in 0.5 ... 0.999
   at a smaller ``N`` (``--curve-within``, 200, to keep it fast; cheater patient for 100
   executions): the measured executions per task after warm-up and the measured fraction of
   seeds caught within ``N``, beside the formula's curve ``cost = 1 + p*(P)``,
   ``p*(P) = (1 - (1 - P) ** (1 / N)) / epsilon``.
3. **Targets** of the issue: for (0.1, 0.99, 1000) at most 1.06 executions per task; measured cost
   within 10% of the formula's minimum for every target; zero honest flags (the process exits
   non-zero otherwise; ``--strict`` also exits non-zero on any other FAIL).
4. **Drift detection.** False alarms per observation of ``DriftDetector()`` (defaults) on stable
   honest pools of 20 executors (half-normal and exponential tolerance ratios; at least 10^6
   observations in the default run; after an alarm the executor's CUSUM is cleared and the count
   goes on, so the rate is alarms per observation), and the delay, in the drifting executor's
   own results, until an executor whose noise scale grows linearly to 3x over 3,000 of its
   results is marked suspect.

Why the measured detection beats the formula: the formula counts only audits of the cheater's
lone results (probability ``p`` each), but the cheater also *audits others* (it is the second
executor of about ``p / 21`` of the tasks), and a wrong answer there always meets an honest one.
So a fraction ``p / (1 + p)`` of its executions are always checked, and its wrong answers are
caught at about ``2 p epsilon / (1 + p)`` per execution instead of ``p epsilon``. The plot draws
that derived model too (dashed, not a target); the policy's cost is the formula's ``1 + p``.

Writes ``benchmarks/results/trust.json`` and ``trust.png``.

Run: ``make bench-trust`` (``.venv/bin/python benchmarks/bench_trust.py``; ``--quick`` for a smoke
run under ~40 s; ``--procs`` worker processes, 2 by default).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bft_ray
from bft_ray.executor.placement import Candidate, rendezvous_order
from bft_ray.progress import progress_bar
from bft_ray.trust.draw import AuditDraw
from bft_ray.trust.drift import DriftDetector
from bft_ray.trust.plans import adaptive, detection_probability
from bft_ray.trust.simulate import CHEATER, SimConfig, simulate

RESULTS = Path(__file__).parent / "results"
HONEST = 20
CONFIDENCE = 0.99
WITHIN = 1000
MAIN_EPS = (0.1, 0.01)
COST_TARGET = 1.06  # executions per task for (0.1, 0.99, 1000)
COST_TOLERANCE = 0.10  # measured cost within 10% of 1 + p
CURVE_EPS = 0.1
CURVE_TARGETS = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
CURVE_CHEAT_AFTER = 100
DRIFT_BASE = {"half-normal": 0.1, "exponential": 0.05}  # stable pools (as the unit tests)
DRIFT_GROWTH_BASE = 0.05  # base scale of the drift-delay pools (as the unit test)
DRIFT_RAMP = 3000  # results over which the drifting executor's scale grows to 3x
DRIFT_GIVE_UP = 6000  # its results after the drift started before we stop looking
DRIFT_STABLE_ROUNDS = 300  # rounds (one result from each executor) before the drift starts


# -- one simulated run ------------------------------------------------------------------------


class CountingDraw(AuditDraw):
    """The simulator's default draw (same secret, same coins) that also counts the cheater's
    executions: its lone results (every lone result is drawn exactly once) and its audits of
    others' lone results (the auditor is the second executor of the task's rendezvous order,
    as in the simulator; nothing there changes an executor's status, so the order is whole).
    Its replicas in full replication and escalations are not counted: a lower bound."""

    def __init__(self, seed: int) -> None:
        super().__init__(random.Random(seed ^ 0x5EED).randbytes(32))  # = simulate()'s default
        ids = [f"h{i}" for i in range(HONEST)] + [CHEATER]
        self._cands = [Candidate(e, e) for e in ids]
        self.cheater_lone = 0
        self.cheater_audits = 0

    def audited(self, task_id: str, executor_id: str, digest: bytes, rate: float) -> bool:
        hit = super().audited(task_id, executor_id, digest, rate)
        if executor_id == CHEATER:
            self.cheater_lone += 1
        elif hit and rendezvous_order(task_id, self._cands)[1].executor_id == CHEATER:
            self.cheater_audits += 1
        return hit


def tasks_for(cheat_after: int, cheat_execs: int, rate: float) -> int:
    """Tasks that give the cheater about ``cheat_after + cheat_execs`` executions: it is the
    primary of 1/(HONEST + 1) of the tasks and runs 1 + p executions' worth of them."""
    return math.ceil((cheat_after + cheat_execs) * (HONEST + 1) / (1 + rate))


def sim_job(spec: dict) -> dict:
    plan = adaptive(spec["epsilon"], confidence=spec["confidence"], within=spec["within"])
    cheating = [0]

    def counts_cheating(task_id: str) -> bool:
        # Called once per execution in which the cheater would cheat (until it is caught);
        # returning False leaves its behaviour unchanged: it is a counter, not a predictor.
        cheating[0] += 1
        return False

    draw = CountingDraw(spec["seed"])
    t = time.perf_counter()
    r = simulate(
        SimConfig(
            honest=HONEST,
            epsilon=spec["epsilon"],
            tasks=spec["tasks"],
            plan=plan,
            seed=spec["seed"],
            cheat_after=spec["cheat_after"],
            predicts_audit=counts_cheating,
            draw=draw,
        )
    )
    wall = time.perf_counter() - t
    return {
        "part": spec["part"],
        "key": spec["key"],
        "seed": spec["seed"],
        "cheat_after": spec["cheat_after"],
        "tasks": r.tasks,
        "executions": r.executions,
        "executions_after_warmup": r.executions_after_warmup,
        "warmup_tasks": r.warmup_tasks,
        "caught_after": r.caught_after,
        "cheating_executions_seen": cheating[0],  # = caught_after when caught; else all of them
        "cheater_lone_executions": draw.cheater_lone,
        "cheater_audit_executions": draw.cheater_audits,
        "cheater_wrong": r.cheater_wrong,
        "wrong_accepted": r.wrong_accepted,
        "tainted_reported": r.tainted_reported,
        "honest_flagged": r.honest_flagged,
        "audits": r.audits,
        "lone": r.lone,
        "wall_s": wall,
    }


# -- drift --------------------------------------------------------------------------------------


def noise(rng: random.Random, kind: str, scale: float) -> float:
    """An honest tolerance ratio (0 = identical, 1 = edge of agreement)."""
    if kind == "half-normal":
        return min(1.0, abs(rng.gauss(0.0, scale)))
    return min(1.0, rng.expovariate(1.0 / scale))


def drift_false_alarm_job(spec: dict) -> dict:
    rng = random.Random(spec["seed"])
    d = DriftDetector()
    ids = [f"e{i}" for i in range(HONEST)]
    alarms: list[tuple[int, str]] = []
    scale = DRIFT_BASE[spec["kind"]]
    t = time.perf_counter()
    for i in range(spec["observations"]):
        e = ids[rng.randrange(HONEST)]
        if d.observe(e, noise(rng, spec["kind"], scale)):
            alarms.append((i, e))
            d.clear(e)  # count on: alarms per observation, not time to the first alarm
    return {
        "part": "drift_fa",
        "kind": spec["kind"],
        "seed": spec["seed"],
        "scale": scale,
        "observations": spec["observations"],
        "alarms": len(alarms),
        "alarm_at": alarms[:20],
        "exceedances": sum(s.exceed for s in d.states.values()),
        "max_cusum": max(s.peak for s in d.states.values()),
        "wall_s": time.perf_counter() - t,
    }


def drift_delay_job(spec: dict) -> dict:
    rng = random.Random(spec["seed"])
    d = DriftDetector()
    ids = [f"e{i}" for i in range(HONEST)]
    drifting = ids[0]
    base = DRIFT_GROWTH_BASE
    other_alarms = 0
    delay = None
    scale_at = None
    t = time.perf_counter()
    for rnd in range(DRIFT_STABLE_ROUNDS + DRIFT_GIVE_UP):
        k = rnd - DRIFT_STABLE_ROUNDS + 1  # the drifting executor's k-th result since the start
        order = ids[:]
        rng.shuffle(order)
        for e in order:
            grow = 1.0 + 2.0 * min(k, DRIFT_RAMP) / DRIFT_RAMP if e == drifting and k > 0 else 1.0
            if d.observe(e, noise(rng, spec["kind"], base * grow)):
                if e == drifting and k > 0:
                    delay, scale_at = k, grow
                else:
                    other_alarms += 1
                    d.clear(e)
        if delay is not None:
            break
    return {
        "part": "drift_delay",
        "kind": spec["kind"],
        "seed": spec["seed"],
        "delay": delay,  # drifting executor's results since its drift began, at the alarm
        "scale_at_alarm": scale_at,  # its noise scale then, as a multiple of the pool's
        "other_alarms": other_alarms,  # alarms of the stable executors (and of it before)
        "wall_s": time.perf_counter() - t,
    }


def run_job(spec: dict) -> dict:
    if spec["part"] in ("main", "curve"):
        return sim_job(spec)
    if spec["part"] == "drift_fa":
        return drift_false_alarm_job(spec)
    return drift_delay_job(spec)


# -- statistics ---------------------------------------------------------------------------------


def _binom_cdf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(
        1.0,
        sum(
            math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp)
            * math.exp((n - i) * lq)
            for i in range(k + 1)
        ),
    )


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``k`` successes in ``n`` trials."""
    if n == 0:
        return (0.0, 1.0)
    a = (1 - level) / 2

    def solve(f, want: float) -> float:  # f increasing in p
        lo, hi = 0.0, 1.0
        for _ in range(80):
            mid = (lo + hi) / 2
            if f(mid) < want:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    # lower: P(X >= k | p) = a; upper: P(X <= k | p) = a
    lower = 0.0 if k == 0 else solve(lambda p: 1 - _binom_cdf(k - 1, n, p), a)
    upper = 1.0 if k == n else solve(lambda p: -_binom_cdf(k, n, p), -a)
    return lower, upper


def quantile(xs: list[float], q: float) -> float:
    """Nearest-rank quantile (an observed value; inf stands for "not caught in the run")."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def model_detection(p: float, eps: float, n: int) -> float:
    """Derived model (not the policy's formula): the cheater's executions are lone (1/(1+p),
    audited at p) or audits of others (p/(1+p), always compared)."""
    return detection_probability(2 * p / (1 + p), eps, n)


def summarise_sims(rows: list[dict], eps: float, confidence: float, within: int) -> dict:
    plan = adaptive(eps, confidence=confidence, within=within)
    p = plan.rate
    minimum = 1 + p
    costs = [r["executions_after_warmup"] for r in rows]
    caught = [r["caught_after"] if r["caught_after"] is not None else math.inf for r in rows]
    conclusive = [
        r for r in rows if r["caught_after"] is not None or r["cheating_executions_seen"] >= within
    ]
    k = sum(1 for r in conclusive if r["caught_after"] is not None and r["caught_after"] <= within)
    n = len(conclusive)
    lo, hi = clopper_pearson(k, n)
    finite = [c for c in caught if math.isfinite(c)]
    mean_cost = statistics.fmean(costs)

    def q(v: float) -> float | None:
        return v if math.isfinite(v) else None

    return {
        "epsilon": eps,
        "confidence": confidence,
        "within": within,
        "plan": plan.describe(),
        "audit_rate": p,
        "seeds": len(rows),
        "tasks": rows[0]["tasks"],
        "cost_min_formula": minimum,
        "cost_mean": mean_cost,
        "cost_min": min(costs),
        "cost_max": max(costs),
        "cost_stdev": statistics.stdev(costs) if len(costs) > 1 else 0.0,
        "cost_ratio": mean_cost / minimum,
        "warmup_tasks_median": statistics.median(r["warmup_tasks"] for r in rows),
        "warmup_tasks_max": max(r["warmup_tasks"] for r in rows),
        "caught": len(finite),
        "caught_after_median": q(quantile(caught, 0.5)),
        "caught_after_p90": q(quantile(caught, 0.9)),
        "caught_after_p99": q(quantile(caught, 0.99)),
        "caught_after_max": q(max(caught)),
        "caught_after_mean": statistics.fmean(finite) if finite else None,
        "caught_within": k,
        "caught_within_of": n,
        "inconclusive": len(rows) - n,  # not caught and fewer than N cheating executions
        "caught_within_fraction": k / n if n else float("nan"),
        "caught_within_ci95": [lo, hi],
        "formula_detection": detection_probability(p, eps, within),
        "model_detection": model_detection(p, eps, within),
        "formula_median_caught_after": math.log(2) / -math.log1p(-p * eps),
        "honest_flagged": sum(r["honest_flagged"] for r in rows),
        "wrong_accepted_mean": statistics.fmean(r["wrong_accepted"] for r in rows),
        "wrong_accepted_max": max(r["wrong_accepted"] for r in rows),
        "cheater_wrong_mean": statistics.fmean(r["cheater_wrong"] for r in rows),
        "tainted_reported_mean": statistics.fmean(r["tainted_reported"] for r in rows),
        "tainted_reported_min": min(r["tainted_reported"] for r in rows),
        # Every wrong result accepted alone is among the cheater's lone unaudited results,
        # which the taint list holds: it must cover them.
        "taint_covers_wrong_accepted": all(
            r["tainted_reported"] >= r["wrong_accepted"] for r in rows
        ),
        "cheater_execs_after_cheat_start_min": min(
            r["cheater_lone_executions"] + r["cheater_audit_executions"] - r["cheat_after"]
            for r in rows
        ),
        "cheater_audit_share_mean": statistics.fmean(
            r["cheater_audit_executions"]
            / (r["cheater_lone_executions"] + r["cheater_audit_executions"])
            for r in rows
        ),
        "cheater_audit_share_model": p / (1 + p),
        "audits_per_task_mean": statistics.fmean(r["audits"] / r["tasks"] for r in rows),
        "sim_us_per_task": 1e6 * sum(r["wall_s"] for r in rows) / sum(r["tasks"] for r in rows),
    }


# -- main ---------------------------------------------------------------------------------------


def _git(*argv: str) -> str:
    try:
        res = subprocess.run(
            ["git", *argv],
            capture_output=True,
            text=True,
            cwd=Path(bft_ray.__file__).parent,
            check=False,
        )
        return res.stdout.strip() if res.returncode == 0 else ""
    except OSError:
        return ""


def build_jobs(args: argparse.Namespace) -> list[dict]:
    jobs: list[dict] = []
    for j, eps in enumerate(MAIN_EPS):
        p = adaptive(eps, confidence=CONFIDENCE, within=WITHIN).rate
        tasks = tasks_for(args.cheat_after, args.cheat_execs, p)
        for s in range(args.seeds):
            jobs.append(
                {
                    "part": "main",
                    "key": eps,
                    "epsilon": eps,
                    "confidence": CONFIDENCE,
                    "within": WITHIN,
                    "seed": 1000 * j + s,
                    "tasks": tasks,
                    "cheat_after": args.cheat_after,
                    "cost": tasks * (1 + p),
                }
            )
    for j, target in enumerate(CURVE_TARGETS):
        p = adaptive(CURVE_EPS, confidence=target, within=args.curve_within).rate
        # Enough for the cheater to pass N cheating executions with room to spare.
        tasks = tasks_for(CURVE_CHEAT_AFTER, args.curve_within + 100, p)
        for s in range(args.curve_seeds):
            jobs.append(
                {
                    "part": "curve",
                    "key": target,
                    "epsilon": CURVE_EPS,
                    "confidence": target,
                    "within": args.curve_within,
                    "seed": 10_000 * (j + 1) + s,
                    "tasks": tasks,
                    "cheat_after": CURVE_CHEAT_AFTER,
                    "cost": tasks * (1 + p),
                }
            )
    chunks = 4 if args.quick else 8
    for kind in DRIFT_BASE:
        for s in range(chunks // 2):
            obs = math.ceil(args.drift_obs / chunks)
            jobs.append(
                {
                    "part": "drift_fa",
                    "kind": kind,
                    "seed": 100 + s,
                    "observations": obs,
                    "cost": obs * 0.35,
                }
            )
        for s in range(args.drift_seeds):
            jobs.append({"part": "drift_delay", "kind": kind, "seed": 200 + s, "cost": 5000})
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (under ~40 s)")
    parser.add_argument("--seeds", type=int, default=100, help="seeds per epsilon (part 1)")
    parser.add_argument("--cheat-after", type=int, default=300, help="honest executions first")
    parser.add_argument(
        "--cheat-execs", type=int, default=1500, help="cheater executions planned after that"
    )
    parser.add_argument("--curve-seeds", type=int, default=40, help="seeds per target (part 2)")
    parser.add_argument("--curve-within", type=int, default=200, help="N of the curve")
    parser.add_argument(
        "--drift-obs", type=int, default=1_000_000, help="false-alarm observations in all"
    )
    parser.add_argument("--drift-seeds", type=int, default=10, help="drift seeds per noise kind")
    parser.add_argument("--procs", type=int, default=2, help="worker processes")
    parser.add_argument("--strict", action="store_true", help="exit 1 on any FAIL")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.cheat_execs, args.curve_seeds = 10, 1200, 5
        args.drift_obs, args.drift_seeds = 100_000, 3

    started = time.perf_counter()
    load_before = os.getloadavg()
    jobs = build_jobs(args)
    jobs.sort(key=lambda j: -j["cost"])  # longest first: the two workers finish together
    print(
        f"{len(jobs)} jobs on {args.procs} processes: {args.seeds} seeds x {len(MAIN_EPS)} "
        f"epsilons, {args.curve_seeds} seeds x {len(CURVE_TARGETS)} targets, drift "
        f"{args.drift_obs:,} observations + {args.drift_seeds} x {len(DRIFT_BASE)} drifts",
        flush=True,
    )
    results: list[dict] = []
    step = max(1, len(jobs) // 10)
    # The bar starts after the pool has forked its workers (a live bar runs a thread).
    with (
        mp.get_context("fork").Pool(args.procs) as pool,
        progress_bar("simulated jobs", len(jobs)) as bar,
    ):
        for i, r in enumerate(pool.imap_unordered(run_job, jobs, chunksize=1), 1):
            results.append(r)
            bar.advance(status=r["part"])
            if i % step == 0 or i == len(jobs):
                print(f"  {i}/{len(jobs)} done, {time.perf_counter() - started:.0f} s", flush=True)
    main_rows = {
        eps: sorted(
            (r for r in results if r["part"] == "main" and r["key"] == eps), key=lambda r: r["seed"]
        )
        for eps in MAIN_EPS
    }
    curve_rows = {
        t: sorted(
            (r for r in results if r["part"] == "curve" and r["key"] == t), key=lambda r: r["seed"]
        )
        for t in CURVE_TARGETS
    }
    main_sum = {eps: summarise_sims(main_rows[eps], eps, CONFIDENCE, WITHIN) for eps in MAIN_EPS}
    curve_sum = [
        summarise_sims(curve_rows[t], CURVE_EPS, t, args.curve_within) for t in CURVE_TARGETS
    ]
    fa = [r for r in results if r["part"] == "drift_fa"]
    delays = [r for r in results if r["part"] == "drift_delay"]
    drift = summarise_drift(fa, delays)
    honest_flagged = sum(r["honest_flagged"] for r in results if r["part"] in ("main", "curve"))

    print_main(main_sum)
    print_curve(curve_sum, args.curve_within)
    print_drift(drift)
    checks = build_checks(main_sum, curve_sum, drift, honest_flagged)
    print("\ntargets")
    w = max(len(c["check"]) for c in checks)
    for c in checks:
        tag = "" if c["issue_target"] else "  (extra)"
        print(f"  {c['check']:<{w}}  {c['measured']:>22}  {c['result']}{tag}")

    total_s = time.perf_counter() - started
    out = {
        "benchmark": "trust",
        "mode": "quick" if args.quick else "default",
        "args": vars(args),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "bft_ray_uncommitted_changes": bool(_git("status", "--porcelain", "--", ".")),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "setup": {
            "honest": HONEST,
            "cheaters": 1,
            "replicas": SimConfig().replicas,
            "warmup": adaptive(0.1).warmup,
            "cooldown": adaptive(0.1).cooldown,
            "main_cheat_after": args.cheat_after,
            "main_tasks_rule": "(cheat_after + cheat_execs) * 21 / (1 + p)",
            "curve_epsilon": CURVE_EPS,
            "curve_within": args.curve_within,
            "curve_cheat_after": CURVE_CHEAT_AFTER,
            "drift_stable_scales": DRIFT_BASE,
            "drift_growth_base": DRIFT_GROWTH_BASE,
            "drift_ramp": DRIFT_RAMP,
            "drift_stable_rounds": DRIFT_STABLE_ROUNDS,
            "drift_give_up": DRIFT_GIVE_UP,
            "drift_detector": {
                "quantile": DriftDetector().quantile,
                "p1": DriftDetector().p1,
                "h": DriftDetector().h,
                "warmup": DriftDetector().warmup,
                "floor": DriftDetector().floor,
            },
        },
        "notes": {
            "executions_after_warmup": "executions per task over the tasks after every honest "
            "executor may run alone (SimResult.executions_after_warmup); includes audits, "
            "escalations and the cheater's full replication after its catch",
            "caught_after": "the cheater's executions (lone, audit or replica) from its first "
            "cheating execution to the one first proven wrong",
            "caught_within": "seeds with caught_after <= N, over seeds that were caught or made "
            "at least N cheating executions (the rest are 'inconclusive'); CI: Clopper-Pearson "
            "95%",
            "model_detection": "derived approximation, not the policy's formula: "
            "1 - (1 - 2 p eps / (1 + p))^N (the cheater's audits of others are always compared)",
            "cheater_execs_after_cheat_start_min": "min over seeds of the cheater's lone "
            "executions plus its audits of others, minus cheat_after: a lower bound of its "
            "executions after it began cheating (replicas not counted; counted by a draw with "
            "the simulator's default secret, so the runs are the default ones)",
            "drift_false_alarms": "after an alarm the executor's CUSUM is cleared and counting "
            "goes on; rate = alarms / observations; Lorden's bound ARL0 >= e^h holds while an "
            "honest executor's exceedance probability is at most p0",
        },
        "main": {str(k): v for k, v in main_sum.items()},
        "curve": curve_sum,
        "drift": drift,
        "honest_flagged_total": honest_flagged,
        "checks": checks,
        "runs": {
            "main": {str(k): v for k, v in main_rows.items()},
            "curve": {str(k): v for k, v in curve_rows.items()},
            "drift_false_alarm": fa,
            "drift_delay": delays,
        },
        "total_s": total_s,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trust.json").write_text(json.dumps(out, indent=2, default=str))
    plot(main_sum, main_rows, curve_sum, args.curve_within)
    print(f"\nwrote {RESULTS / 'trust.json'} and trust.png ({total_s:.0f} s in all)")
    if honest_flagged:
        print(f"FAIL: {honest_flagged} honest executors flagged", file=sys.stderr)
        return 1
    if args.strict and any(c["result"] == "FAIL" for c in checks):
        return 1
    return 0


def summarise_drift(fa: list[dict], delays: list[dict]) -> dict:
    h = DriftDetector().h
    out: dict = {"false_alarm": {}, "delay": {}, "lorden_bound_per_observation": math.exp(-h)}
    for kind in DRIFT_BASE:
        rows = [r for r in fa if r["kind"] == kind]
        obs = sum(r["observations"] for r in rows)
        alarms = sum(r["alarms"] for r in rows)
        out["false_alarm"][kind] = {
            "observations": obs,
            "alarms": alarms,
            "alarms_per_observation": alarms / obs,
            "alarms_per_observation_ci95_upper": clopper_pearson(alarms, obs)[1],
            "exceedance_fraction": sum(r["exceedances"] for r in rows) / obs,
            "max_cusum": max(r["max_cusum"] for r in rows),
        }
        ds = [r for r in delays if r["kind"] == kind]
        found = [r["delay"] for r in ds if r["delay"] is not None]
        out["delay"][kind] = {
            "seeds": len(ds),
            "detected": len(found),
            "detected_within_ramp": sum(1 for d in found if d <= DRIFT_RAMP),
            "delay_median": statistics.median(found) if found else None,
            "delay_min": min(found) if found else None,
            "delay_max": max(found) if found else None,
            "scale_at_alarm_median": statistics.median(
                r["scale_at_alarm"] for r in ds if r["delay"] is not None
            )
            if found
            else None,
            "scale_at_alarm_max": max(
                (r["scale_at_alarm"] for r in ds if r["delay"] is not None), default=None
            ),
            "other_alarms": sum(r["other_alarms"] for r in ds),
        }
    obs = sum(v["observations"] for v in out["false_alarm"].values())
    alarms = sum(v["alarms"] for v in out["false_alarm"].values())
    out["false_alarm_total"] = {
        "observations": obs,
        "alarms": alarms,
        "alarms_per_observation": alarms / obs,
        "alarms_per_observation_ci95_upper": clopper_pearson(alarms, obs)[1],
    }
    return out


def _fmt(v, spec: str = ".0f") -> str:
    if v is None:
        return "not caught"
    return format(v, spec)


def print_main(s: dict) -> None:
    a, b = (s[e] for e in MAIN_EPS)
    print(
        f"\n1. pool of {HONEST} honest + 1 patient cheater, adaptive(epsilon, confidence="
        f"{CONFIDENCE}, within={WITHIN})"
    )
    rows = [
        ("seeds", "d"),
        ("tasks per run", "d"),
        ("audit rate p (plan.rate)", ".4f"),
        ("formula minimum 1 + p", ".4f"),
        ("executions/task after warm-up: mean", ".4f"),
        ("  min over seeds", ".4f"),
        ("  max over seeds", ".4f"),
        ("measured / minimum", ".4f"),
        ("warm-up tasks (median)", ".0f"),
        ("caught (of seeds)", "d"),
        ("caught_after: median", ".0f"),
        ("  p90", ".0f"),
        ("  p99", ".0f"),
        ("  max", ".0f"),
        ("  formula median (lone audits only)", ".0f"),
        (f"caught within N={WITHIN}", "s"),
        ("  95% CI (Clopper-Pearson)", "s"),
        ("  target P / model P", "s"),
        ("honest executors flagged", "d"),
        ("wrong accepted before catch: mean", ".2f"),
        ("  max", "d"),
        ("tainted reported at catch: mean", ".1f"),
        ("  taint list covers wrong accepted", "s"),
        ("cheater execs after cheat start (min, >=)", "d"),
        ("cheater's audits of others / its execs", "s"),
        ("simulation us/task", ".1f"),
    ]

    def vals(x: dict) -> list:
        return [
            x["seeds"],
            x["tasks"],
            x["audit_rate"],
            x["cost_min_formula"],
            x["cost_mean"],
            x["cost_min"],
            x["cost_max"],
            x["cost_ratio"],
            x["warmup_tasks_median"],
            x["caught"],
            x["caught_after_median"],
            x["caught_after_p90"],
            x["caught_after_p99"],
            x["caught_after_max"],
            x["formula_median_caught_after"],
            f"{x['caught_within']}/{x['caught_within_of']} = {x['caught_within_fraction']:.3f}",
            "[{:.3f}, {:.3f}]".format(*x["caught_within_ci95"]),
            f"{x['confidence']} / {x['model_detection']:.4f}",
            x["honest_flagged"],
            x["wrong_accepted_mean"],
            x["wrong_accepted_max"],
            x["tainted_reported_mean"],
            str(x["taint_covers_wrong_accepted"]),
            x["cheater_execs_after_cheat_start_min"],
            f"{x['cheater_audit_share_mean']:.3f} (p/(1+p) {x['cheater_audit_share_model']:.3f})",
            x["sim_us_per_task"],
        ]

    w = max(len(n) for n, _ in rows)
    print(f"  {'':<{w}}  {'eps = ' + str(MAIN_EPS[0]):>18}  {'eps = ' + str(MAIN_EPS[1]):>18}")
    for (name, spec), va, vb in zip(rows, vals(a), vals(b)):
        print(f"  {name:<{w}}  {_fmt(va, spec):>18}  {_fmt(vb, spec):>18}")


def print_curve(curve: list[dict], within: int) -> None:
    print(
        f"\n2. cost vs detection probability, eps = {CURVE_EPS}, N = {within}, "
        f"{curve[0]['seeds']} seeds per target, cheater patient for {CURVE_CHEAT_AFTER}"
    )
    print(
        f"  {'target P':>8} {'p*':>7} {'1+p*':>7} {'measured':>8} {'min..max':>15} {'ratio':>6} "
        f"| {'caught<=N':>10} {'95% CI':>15} {'model P':>8} {'median':>6} {'flagged':>7}"
    )
    for c in curve:
        print(
            f"  {c['confidence']:>8} {c['audit_rate']:>7.4f} {c['cost_min_formula']:>7.4f} "
            f"{c['cost_mean']:>8.4f} {c['cost_min']:>7.4f}..{c['cost_max']:<6.4f} "
            f"{c['cost_ratio']:>6.3f} | {c['caught_within']:>4}/{c['caught_within_of']:<5} "
            f"[{c['caught_within_ci95'][0]:.3f}, {c['caught_within_ci95'][1]:.3f}] "
            f"{c['model_detection']:>8.4f} {_fmt(c['caught_after_median']):>6} "
            f"{c['honest_flagged']:>7}"
        )


def print_drift(d: dict) -> None:
    det = DriftDetector()
    print(
        f"\n4. drift detection, DriftDetector(quantile={det.quantile}, p1={det.p1}, h={det.h}, "
        f"warmup={det.warmup}, floor={det.floor}), {HONEST} executors"
    )
    print(
        f"  {'stable pool':>12} {'scale':>6} {'observations':>12} {'alarms':>6} "
        f"{'per obs':>8} {'95% upper':>9} {'exceed':>6} {'max S/h':>7}"
    )
    for kind, v in d["false_alarm"].items():
        print(
            f"  {kind:>12} {DRIFT_BASE[kind]:>6} {v['observations']:>12,} {v['alarms']:>6} "
            f"{v['alarms_per_observation']:>8.2e} {v['alarms_per_observation_ci95_upper']:>9.2e} "
            f"{v['exceedance_fraction']:>6.3f} {v['max_cusum'] / det.h:>7.2f}"
        )
    t = d["false_alarm_total"]
    print(
        f"  {'all':>12} {'':>6} {t['observations']:>12,} {t['alarms']:>6} "
        f"{t['alarms_per_observation']:>8.2e} {t['alarms_per_observation_ci95_upper']:>9.2e}"
        f"   (Lorden bound e^-h = {d['lorden_bound_per_observation']:.2e})"
    )
    print(
        f"  drift: scale {DRIFT_GROWTH_BASE} grows linearly to 3x over {DRIFT_RAMP} of one "
        f"executor's results (after {DRIFT_STABLE_ROUNDS} stable rounds)"
    )
    print(
        f"  {'noise':>12} {'found':>7} {'delay median':>12} {'min':>5} {'max':>5} "
        f"{'scale at alarm (median, max)':>28} {'other alarms':>12}"
    )
    for kind, v in d["delay"].items():
        print(
            f"  {kind:>12} {v['detected']:>3}/{v['seeds']:<3} {_fmt(v['delay_median']):>12} "
            f"{_fmt(v['delay_min']):>5} {_fmt(v['delay_max']):>5} "
            f"{_fmt(v['scale_at_alarm_median'], '.2f') + 'x, ' + _fmt(v['scale_at_alarm_max'], '.2f') + 'x':>28} "
            f"{v['other_alarms']:>12}"
        )


def build_checks(main_sum: dict, curve: list[dict], drift: dict, honest_flagged: int) -> list:
    checks = []

    def add(name: str, measured: str, ok: bool, issue: bool = True) -> None:
        checks.append(
            {
                "check": name,
                "measured": measured,
                "result": "PASS" if ok else "FAIL",
                "issue_target": issue,
            }
        )

    a = main_sum[0.1]
    add(
        f"eps=0.1 P={CONFIDENCE} N={WITHIN}: mean executions/task <= {COST_TARGET}",
        f"{a['cost_mean']:.4f}",
        a["cost_mean"] <= COST_TARGET,
    )
    add(
        f"eps=0.1 P={CONFIDENCE} N={WITHIN}: worst seed <= {COST_TARGET}",
        f"{a['cost_max']:.4f}",
        a["cost_max"] <= COST_TARGET,
        issue=False,
    )
    for s in [*main_sum.values(), *curve]:
        add(
            f"cost within {COST_TOLERANCE:.0%} of 1+p: eps={s['epsilon']} P={s['confidence']} "
            f"N={s['within']}",
            f"{s['cost_mean']:.4f} / {s['cost_min_formula']:.4f} = {s['cost_ratio']:.3f}",
            abs(s["cost_ratio"] - 1) <= COST_TOLERANCE,
        )
    add("zero honest executors flagged (all runs)", str(honest_flagged), honest_flagged == 0)
    for s in [*main_sum.values(), *curve]:
        lo, hi = s["caught_within_ci95"]
        add(
            f"caught within N consistent with >= P: eps={s['epsilon']} P={s['confidence']} "
            f"N={s['within']}",
            f"{s['caught_within_fraction']:.3f} [{lo:.3f}, {hi:.3f}]",
            hi >= s["confidence"] and s["inconclusive"] == 0,
            issue=False,
        )
    t = drift["false_alarm_total"]
    add(
        "drift false alarms per observation <= e^-h",
        f"{t['alarms_per_observation']:.2e}",
        t["alarms_per_observation"] <= drift["lorden_bound_per_observation"],
        issue=False,
    )
    for kind, v in drift["delay"].items():
        add(
            f"drift found within the {DRIFT_RAMP}-result ramp ({kind})",
            f"{v['detected_within_ramp']}/{v['seeds']}",
            v["detected_within_ramp"] == v["seeds"] and v["other_alarms"] == 0,
            issue=False,
        )
    return checks


def plot(main_sum: dict, main_rows: dict, curve: list[dict], within: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    ps = [0.3 + i * (0.9995 - 0.3) / 400 for i in range(401)]
    rate = [adaptive(CURVE_EPS, confidence=x, within=within).rate for x in ps]
    ax.plot(ps, [1 + r for r in rate], "k-", label=f"formula minimum 1 + p*(P), N={within}")
    # Derived model: the same costs, detection with the cheater's audits of others counted.
    ax.plot(
        [model_detection(r, CURVE_EPS, within) for r in rate],
        [1 + r for r in rate],
        "k:",
        lw=1,
        label="model: cheater's audits of others always compared",
    )
    xs = [c["caught_within_fraction"] for c in curve]
    ys = [c["cost_mean"] for c in curve]
    xerr = [
        [x - c["caught_within_ci95"][0] for x, c in zip(xs, curve)],
        [c["caught_within_ci95"][1] - x for x, c in zip(xs, curve)],
    ]
    yerr = [
        [y - c["cost_min"] for y, c in zip(ys, curve)],
        [c["cost_max"] - y for y, c in zip(ys, curve)],
    ]
    ax.errorbar(
        xs,
        ys,
        xerr=xerr,
        yerr=yerr,
        fmt="o",
        color="C0",
        capsize=3,
        label="measured (x: fraction caught within N, 95% CI; y: mean cost, min..max)",
    )
    ax.scatter(
        [c["confidence"] for c in curve],
        ys,
        facecolors="none",
        edgecolors="C1",
        zorder=3,
        label="measured cost at the target P",
    )
    for c, y in zip(curve, ys):
        ax.annotate(
            f"P={c['confidence']}",
            (c["confidence"], y),
            textcoords="offset points",
            xytext=(-8, 6),
            fontsize=7,
            ha="right",
        )
    ax.set_xlabel(f"probability of catching an eps={CURVE_EPS} cheater within N={within}")
    ax.set_ylabel("executions per task after warm-up")
    ax.set_title(
        f"cost vs detection, {HONEST} honest + 1 cheater, {curve[0]['seeds']} seeds/target"
    )
    ax.set_xlim(0.28, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[1]
    grid = [1 + j * 3 for j in range(1000)]
    for i, eps in enumerate(MAIN_EPS):
        s = main_sum[eps]
        vals = sorted(r["caught_after"] for r in main_rows[eps] if r["caught_after"] is not None)
        n = len(main_rows[eps])
        ax.step(
            vals,
            [(j + 1) / n for j in range(len(vals))],
            where="post",
            color=f"C{i}",
            label=f"eps={eps} measured (median {_fmt(s['caught_after_median'])}, "
            f"max {_fmt(s['caught_after_max'])}, {n} seeds)",
        )
        ax.plot(
            grid,
            [model_detection(s["audit_rate"], eps, x) for x in grid],
            ls=":",
            color=f"C{i}",
            lw=1,
            label=f"eps={eps} model (its audits of others compared), p={s['audit_rate']:.4f}",
        )
    # p * eps is the same for both (same P and N), so the formula's curve is one line.
    p_eps = main_sum[MAIN_EPS[0]]["audit_rate"] * MAIN_EPS[0]
    ax.plot(
        grid,
        [detection_probability(p_eps, 1.0, x) for x in grid],
        "k--",
        lw=1,
        label=f"formula 1 - (1 - p eps)^n, p eps = {p_eps:.5f} (both)",
    )
    ax.axvline(WITHIN, color="k", lw=0.8)
    ax.axhline(CONFIDENCE, color="grey", lw=0.8, ls=":")
    ax.text(WITHIN, 0.05, f" N={WITHIN}", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("cheater executions from its first cheat to its catch (caught_after)")
    ax.set_ylabel("fraction of seeds caught")
    ax.set_title(f"CDF of caught_after, adaptive(eps, {CONFIDENCE}, {WITHIN})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("bft-ray trust: adaptive replication at the formula's minimum cost (simulator)")
    fig.tight_layout()
    fig.savefig(RESULTS / "trust.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
