"""Where the CPU of one verified call goes, per process: driver, verifier, executors.

Re-runnable before and after a change to the verified path; prints tables (and writes JSON with
``--out``). Two parts:

1. **pure** (no Ray, one process): the per-call pieces of the path timed in a loop, best of
   ``--repeats``: what ``VerifiedFunction.remote`` computes in the driver (``_prepare_args``,
   the task id, ``_args_digest``, ``CallMeta``/``CallSpec``, pickling them as Ray does), what
   the verifier computes (unpickling the call, ``CallState``, executor choice, per replica the
   capability and the pickled ``TaskSpec``, ``admit`` split into envelope parse, digest,
   Ed25519 verify and strict wire decode, the decisions, reputation, the returned
   ``WireValue``), and what each executor computes (``_authorise``, ``encode``,
   ``envelope.build`` with its Ed25519 signature, ``ExecutorActor.run`` called in process). It
   builds on internals: a piece that no longer exists is reported as ``n/a`` with the reason
   (or, if the setup itself fails, the part is skipped with the error), never a crash.

2. **live** (a fresh local Ray; ``bft_ray.init(executors=4, gpus_per_executor=0)`` and 4 plain
   actors with the same resources): a burst of ``--calls`` verified calls and the same calls on
   plain actors (3 actor calls per logical call), with the CPU each process used (user +
   system, all threads, from ``/proc``) divided by the calls, so Ray's C++ threads count too.
   For scale, the same for *relays*: a plain async actor doing only the verifier's Ray work
   (1 call in, 3 out, await, return one value), and a batched one (50 calls per driver call,
   one call per actor per batch); the 50 ms latency of plain x3, the relay and a verified call;
   and the CPU of one actor call by argument shape (the driver's call to the verifier, the
   verifier's call to an executor, variants without the nested ref, pydantic or dataclasses,
   and a real executor called directly). Then, unless ``--no-pyspy``, one more verified burst sampled with ``py-spy record`` (by
   default ``--nonblocking``: sampling that pauses the processes slowed the burst about 4x on
   the 2-core machine) on the driver, the verifier and one executor. Each non-idle sample goes
   to the first component (in priority order) that any frame of its stack matches. On this
   machine the sample counts are not CPU time (several threads are sampled at once and sampling
   perturbs the run), so each component is reported as its share of the samples and as that
   share of the process's CPU per call from the unsampled burst. Ray's C++ threads are not
   sampled; their CPU is spread over the components in proportion.

Run: ``.venv/bin/python benchmarks/profile_verified_path.py`` (``--pure-only``, ``--live-only``,
``--calls N``, ``--rate HZ``, ``--no-pyspy``, ``--out profile.json``). Runs about 90 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle
from rich.console import Console

import bft_ray
from bft_ray.progress import Bar, progress_bar

EXECUTORS = 4
REPLICAS = 3
# Progress as plain lines on stderr, also on a terminal: a live bar redraws from a thread of
# the driver, and the driver's CPU (all threads, from /proc) is part of what is measured.
PROGRESS = Console(stderr=True, force_terminal=False)
BATCH = 44  # replicas per executor batch in `make bench-throughput` (batched_replicas / batches)
PURE_ROWS = 32  # rows pure_profile times: the bar's total (corrected at the end if it drifts)


def inc(x):
    return x + 1


def nap(x):
    time.sleep(0.05)
    return x + 1


verified_inc = bft_ray.verified_remote(replicas=REPLICAS, quorum=2, num_gpus=0)(inc)
verified_nap = bft_ray.verified_remote(replicas=REPLICAS, quorum=2, num_gpus=0)(nap)


# -- part 1: pure pieces, in process ------------------------------------------------------


def _time_us(fn: Callable[[], Any], n: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t) / n / 1e3)
    return best


class _Rows:
    """Timed rows of one process; a piece that cannot be built or timed becomes ``n/a``."""

    def __init__(self, n: int, repeats: int, progress: Bar | None = None) -> None:
        self.n, self.repeats = n, repeats
        self.rows: list[dict[str, Any]] = []
        self.progress = progress

    def add(self, name: str, fn: Callable[[], Any], times: float = 1, n: int | None = None) -> None:
        try:
            us = times * _time_us(fn, n or self.n, self.repeats)
            self.rows.append({"name": name, "us": us})
        except Exception as exc:
            self.rows.append({"name": name, "us": None, "error": f"{type(exc).__name__}: {exc}"})
        if self.progress is not None:
            self.progress.advance(status=name.strip())  # after the row's timed loops


def _fresh_roots(atts: list) -> list:
    """``atts`` after emptying the cache of checked batch roots (each timed loop pays one check)."""
    from bft_ray.executor import attestation

    attestation._root_signed.cache_clear()
    return atts


def pure_profile(
    n: int, repeats: int, progress: Bar | None = None
) -> dict[str, list[dict[str, Any]]]:
    from bft_ray import api
    from bft_ray.compare.digest import digest_wire
    from bft_ray.compare.wire import decode_canonical, encode
    from bft_ray.config import Policy
    from bft_ray.executor import envelope
    from bft_ray.executor.actor import (
        ExecutorActor,
        TaskSpec,
        capability_commitment,
        slot_capability,
    )
    from bft_ray.executor.placement import Candidate, assign
    from bft_ray.executor.pool import slot_name
    from bft_ray.trust.reputation import Reputation
    from bft_ray.verifier.admission import Expected, admit
    from bft_ray.verifier.certificate import Certificate
    from bft_ray.verifier.decision import CallState, Step
    from bft_ray.verifier.records import CallMeta, accepted_result, certificate_fields
    from bft_ray.verifier.trusted import CallSpec

    master = os.urandom(32)
    executors = [
        ExecutorActor(
            i, f"ex{i}", slot_name(i), capability_commitment(slot_capability(master, slot_name(i)))
        )
        for i in range(EXECUTORS)
    ]
    keys = {e.executor_id: e._key.public_bytes for e in executors}
    caps = [slot_capability(master, slot_name(i)) for i in range(EXECUTORS)]
    cands = [Candidate(e.executor_id, "node0", e.slot) for e in executors]
    policy = Policy(replicas=REPLICAS, quorum=2)
    fn_id = api._function_id(inc)
    fn_key = "f" * 56

    # driver: the body of VerifiedFunction.remote (as of this writing), step by step
    d = _Rows(n, repeats, progress)
    a, kw = api._prepare_args((7,), {})
    tid = api._new_task_id("inc")
    digest = api._args_digest(a, kw)
    meta = CallMeta(tid, "inc", fn_id, digest)
    call = CallSpec(tid, "inc", policy, {}, meta)
    call_bytes = cloudpickle.dumps(call, protocol=5)
    policy_bytes = cloudpickle.dumps(policy, protocol=5)
    d.add("_prepare_args((7,), {})", lambda: api._prepare_args((7,), {}))
    d.add("task id (uuid4)", lambda: api._new_task_id("inc"))
    d.add("_args_digest (encode + blake3)", lambda: api._args_digest(a, kw))
    d.add(
        "CallMeta + CallSpec construction",
        lambda: CallSpec(tid, "inc", policy, {}, CallMeta(tid, "inc", fn_id, digest)),
    )
    d.add(
        f"pickle CallSpec (cloudpickle protocol 5, as Ray; {len(call_bytes)} bytes)",
        lambda: cloudpickle.dumps(call, protocol=5),
    )
    d.add(
        f"  of which: pickle the pydantic Policy alone ({len(policy_bytes)} bytes)",
        lambda: cloudpickle.dumps(policy, protocol=5),
    )
    d.add("VerifiedRef construction", lambda: api.VerifiedRef(None, tid, "inc", None))

    # executors: one replica each, in process (no Ray)
    e = _Rows(n, repeats, progress)
    specs = [TaskSpec(tid, 0, "inc") for _ in range(REPLICAS)]
    raws = [executors[i].run(caps[i], specs[i], fn_key, inc, 7) for i in range(REPLICAS)]
    ex, cap0, spec0 = executors[0], caps[0], specs[0]
    spec_bytes = cloudpickle.dumps(spec0, protocol=5)
    payload = encode(8)
    e.add("unpickle TaskSpec", lambda: pickle.loads(spec_bytes))
    e.add("_authorise (blake3 commitment)", lambda: ex._authorise(cap0))
    e.add("encode(output)", lambda: encode(8))
    e.add("digest_wire(payload)", lambda: digest_wire(payload))
    e.add("Ed25519 sign (200-byte message)", lambda: ex._key.sign(b"x" * 200))
    e.add(
        "envelope.build (digest + Attestation.create + sign + pack)",
        lambda: envelope.build(ex._key, "value", tid, 0, "ex0", "slot0", payload),
    )
    e.add("ExecutorActor.run total (in process)", lambda: ex.run(cap0, spec0, fn_key, None, 7))
    batch_answers = [("value", f"{tid}-{j}", 0, "ex0", "slot0", payload, "") for j in range(BATCH)]
    e.add(
        f"envelope.build_batch, per answer of {BATCH} (one signature)",
        lambda: envelope.build_batch(ex._key, batch_answers),
        1 / BATCH,
    )

    # verifier
    v = _Rows(n, repeats, progress)
    v.add("unpickle CallSpec", lambda: pickle.loads(call_bytes))
    v.add("  of which: unpickle the pydantic Policy alone", lambda: pickle.loads(policy_bytes))
    v.add("CallState(...) incl. os.urandom(32)", lambda: CallState(tid, policy, os.urandom(32)))
    load: collections.Counter = collections.Counter()
    v.add(
        "pick 3 executors (rendezvous assign)",
        lambda: assign(tid, cands, REPLICAS, set(), set(), load),
    )
    v.add("3x slot capability (blake3 keyed)", lambda: slot_capability(master, "slot1"), REPLICAS)
    v.add(
        f"3x TaskSpec + pickle ({len(spec_bytes)} bytes each)",
        lambda: cloudpickle.dumps(TaskSpec(tid, 0, "inc"), protocol=5),
        REPLICAS,
    )
    exps = [
        Expected(tid, 0, executors[i].executor_id, executors[i].slot, keys[f"ex{i}"])
        for i in range(REPLICAS)
    ]
    env = envelope.parse(raws[0])
    att = env.attestation()
    v.add("3x envelope.parse", lambda: envelope.parse(raws[0]), REPLICAS)
    v.add("3x attestation() (digest_wire of payload)", env.attestation, REPLICAS)
    v.add(
        "3x Attestation.verify (Ed25519 verify)",
        lambda: att.verify(expected_key=keys["ex0"]),
        REPLICAS,
    )
    batched = [
        envelope.parse(r).attestation()
        for r in envelope.build_batch(executors[0]._key, batch_answers)
    ]
    v.add(
        f"3x Attestation.verify, batched ({BATCH} per signature, root checked once)",
        lambda: [a.verify(expected_key=keys["ex0"]) for a in _fresh_roots(batched)],
        REPLICAS / BATCH,
    )
    v.add("3x decode_canonical(payload)", lambda: decode_canonical(env.payload), REPLICAS)
    v.add("3x admit total", lambda: admit(raws[0], exps[0]), REPLICAS)
    outs = [admit(raws[i], exps[i]) for i in range(REPLICAS)]
    rep = Reputation()
    for i in range(EXECUTORS):
        rep.register(f"ex{i}", i, "node0")

    def verdict() -> Any:
        st = CallState(tid, policy, b"k" * 32)
        st.start(REPLICAS)
        st.decide(spare=1)
        st.feed(outs[0])
        st.decide(spare=1)
        st.feed(outs[1])
        dec = st.decide(spare=1)
        assert dec.step is Step.ACCEPT
        st.judge_late(outs[2])
        return dec.record, st.final_record()

    record, final = verdict()
    v.add("CallState start/feed/decide x3 + judge_late + final_record", verdict)
    v.add("Reputation.apply(final record)", lambda: rep.apply(final))
    v.add(
        "accepted_result -> WireValue + pickle (return value)",
        lambda: cloudpickle.dumps(accepted_result(record), protocol=5),
    )
    v.add(
        "(off the hot path) certificate fields + sign, on first request",
        lambda: Certificate.issue(
            executors[3]._key,
            "verifier0",
            **certificate_fields(record, meta, policy.tolerance.describe(), keys),
        ),
        n=max(1, n // 10),
    )
    wv_bytes = cloudpickle.dumps(accepted_result(record), protocol=5)
    d.add("(collect) unpickle WireValue -> decode", lambda: pickle.loads(wv_bytes))
    if progress is not None:
        progress.update(total=progress.completed)
    return {"driver": d.rows, "verifier": v.rows, "executor": e.rows}


# -- part 2: live Ray ---------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds the whole machine spent busy (all processes, ours and others)."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _named_descendants(pattern: str) -> list[int]:
    """Processes started (transitively) by this one whose command line contains ``pattern``."""
    import psutil

    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if pattern in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


@ray.remote(num_cpus=1, num_gpus=0, max_restarts=0, max_task_retries=0, max_concurrency=1)
class PlainExecutor:
    def inc(self, x):
        return inc(x)

    def inc_batch(self, xs):
        return [inc(x) for x in xs]

    def nap(self, x):
        return nap(x)

    def run(self, capability, spec, fn_key, fn, /, *args):
        # The argument shape of the verifier's call to an executor (ExecutorActor.run).
        return inc(*args)

    def submit(self, call, fn_box, args, kwargs):
        # The argument shape of the driver's call to the verifier (TrustedVerifier.submit).
        return inc(*args)

    def pid(self):
        return os.getpid()


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Relay:
    """An async actor that does what the verifier does with Ray, and nothing else.

    ``submit``: one call in, 3 calls out to plain actors, await them, return one value (the
    Ray floor of the verifier's architecture). ``submit_batch``: a batch of logical calls in,
    one call out per actor carrying every item it replicates (what batching could reach).
    """

    def __init__(self, actors):
        self.actors = actors

    async def submit(self, i):
        n = len(self.actors)
        refs = [self.actors[(i + k) % n].inc.remote(i) for k in range(REPLICAS)]
        values = await asyncio.gather(*refs)
        return values[0]

    async def submit_nap(self, i):
        n = len(self.actors)
        refs = [self.actors[(i + k) % n].nap.remote(i) for k in range(REPLICAS)]
        values = await asyncio.gather(*refs)
        return values[0]

    async def submit_batch(self, xs):
        n = len(self.actors)
        per: dict[int, list] = collections.defaultdict(list)
        for i in xs:
            for k in range(REPLICAS):
                per[(i + k) % n].append(i)
        refs = [self.actors[a].inc_batch.remote(items) for a, items in per.items()]
        answers = await asyncio.gather(*refs)
        first = {}
        for items, values in zip(per.values(), answers):
            for i, v in zip(items, values):
                first.setdefault(i, v)
        return [first[i] for i in xs]

    def pid(self):
        return os.getpid()


def _verified_burst(n: int) -> None:
    refs = [verified_inc.remote(i) for i in range(n)]
    assert bft_ray.get(refs, timeout=600) == [i + 1 for i in range(n)]


def _plain_burst(actors: list, n: int) -> None:
    refs = [actors[(i + k) % len(actors)].inc.remote(i) for i in range(n) for k in range(REPLICAS)]
    assert ray.get(refs, timeout=600) == [i + 1 for i in range(n) for _ in range(REPLICAS)]


def _cpu_table(procs: dict[str, list[int]], burst: Callable[[], None], n: int) -> dict[str, Any]:
    before = {name: sum(_cpu_s(p) for p in pids) for name, pids in procs.items()}
    busy0, wall0 = _busy_s(), time.perf_counter()
    burst()
    wall = time.perf_counter() - wall0
    busy = _busy_s() - busy0
    per_call = {
        name: (sum(_cpu_s(p) for p in pids) - before[name]) / n * 1e6
        for name, pids in procs.items()
    }
    ours = sum(per_call.values()) * n / 1e6
    return {
        "wall_s": wall,
        "calls_per_s": n / wall,
        "cpu_us_per_call": per_call,
        "total_cpu_us_per_call": sum(per_call.values()),
        "machine_busy_s": busy,
        "other_processes_cpu_s": max(0.0, busy - ours),  # CPU not used by our processes
    }


# Components by priority: a sample goes to the first rule that any frame of its stack matches
# (function name contains the first string, path contains the second; "" matches anything).
Rule = tuple[str, str, str]
# The driver's samples are split first by phase: under bft_ray.get or under a .remote().
DRIVER_PHASES: list[Rule] = [
    ("collect", "get", "bft_ray/api.py"),
    ("submit", "remote", "bft_ray/api.py"),
]
DRIVER_RULES: list[Rule] = [
    ("_args_digest (encode + blake3)", "_args_digest", "bft_ray/api.py"),
    ("_prepare_args", "_prepare_args", "bft_ray/api.py"),
    ("task id (uuid4)", "_new_task_id", "bft_ray/api.py"),
    ("cluster._put (cached function ref)", "._put", "bft_ray/api.py"),
    ("cluster._remember (Ray task id -> task id)", "._remember", "bft_ray/api.py"),
    ("_check_fits / current_cluster", "_check_fits", "bft_ray/api.py"),
    ("_check_fits / current_cluster", "current_cluster", "bft_ray/api.py"),
    ("pydantic (pickling the Policy)", "", "pydantic"),
    ("decode WireValue (wire format)", "", "bft_ray/compare/wire.py"),
    ("deserialisation guard", "", "bft_ray/executor/guard.py"),
    ("Ray (de)serialisation", "", "ray/_private/serialization.py"),
    ("Ray (de)serialisation", "", "cloudpickle"),
    ("Ray actor-call submission (verifier.submit.remote)", "", "ray/actor.py"),
    ("ray.get (Ray)", "", "ray/_private/worker.py"),
    ("CallMeta/CallSpec/VerifiedRef __init__", "__init__", "<string>"),
    ("bft_ray, rest", "", "bft_ray/"),
    ("bench loop", "", "profile_verified_path.py"),
    ("Ray, other", "", "/ray/"),
]
VERIFIER_RULES: list[Rule] = [
    ("admit: Ed25519 verify", "verify_signature", "bft_ray/crypto.py"),
    ("pydantic (Policy unpickle, validation)", "", "pydantic"),
    ("admit: blake3 digest of payload", "", "bft_ray/compare/digest.py"),
    ("return: WireValue pickle", "__reduce_ex__", "bft_ray/compare/wire.py"),
    ("admit: strict wire decode", "", "bft_ray/compare/wire.py"),
    ("admit: strict wire decode", "", "bft_ray/compare/canonical.py"),
    ("admit: envelope parse", "", "bft_ray/executor/envelope.py"),
    ("admit: attestation checks (well_formed, message)", "", "bft_ray/executor/attestation.py"),
    ("admit: rest", "", "bft_ray/verifier/admission.py"),
    ("verdict: CallState (decide, cliques, tie-break)", "", "bft_ray/verifier/decision.py"),
    ("verdict: CallState (decide, cliques, tie-break)", "", "bft_ray/compare/"),
    ("verdict: reputation / records", "", "bft_ray/trust/"),
    ("verdict: reputation / records", "", "bft_ray/verifier/records.py"),
    ("dispatch: pick executors", "", "bft_ray/executor/placement.py"),
    ("dispatch: slot capability (blake3)", "slot_capability", ""),
    ("dispatch: pool bookkeeping", "", "bft_ray/executor/pool.py"),
    ("dispatch: lanes (replica time-limit clocks)", "", "bft_ray/executor/lanes.py"),
    (
        "Ray serialisation (TaskSpec + args out, value back)",
        "serialize",
        "ray/_private/serialization.py",
    ),
    ("Ray serialisation (TaskSpec + args out, value back)", "", "cloudpickle"),
    ("Ray deserialisation (CallSpec in, answers) + guard", "", "ray/_private/serialization.py"),
    ("Ray deserialisation (CallSpec in, answers) + guard", "", "bft_ray/executor/guard.py"),
    ("dispatch: Ray actor-call submission (3x run.remote)", "", "ray/actor.py"),
    ("await: futures (ref.future, wrap_future, wait_for)", "", "concurrent/futures"),
    ("await: futures (ref.future, wrap_future, wait_for)", "", "async_compat"),
    ("verifier glue (trusted.py and the rest of bft_ray)", "", "bft_ray/"),
    ("asyncio event loop and tasks", "", "asyncio/"),
    ("Ray, other (task execution, tracing wrappers)", "", "/ray/"),
]
EXECUTOR_RULES: list[Rule] = [
    ("Ed25519 sign", "sign", "bft_ray/crypto.py"),
    ("blake3 digest", "", "bft_ray/compare/digest.py"),
    ("_authorise (capability commitment)", "_authorise", ""),
    ("encode output (wire format)", "", "bft_ray/compare/"),
    ("envelope build + attestation", "", "bft_ray/executor/envelope.py"),
    ("envelope build + attestation", "", "bft_ray/executor/attestation.py"),
    ("user function", "inc", "profile_verified_path.py"),
    ("fault behaviour (honest)", "", "bft_ray/faults.py"),
    ("run/_answer, rest of bft_ray", "", "bft_ray/"),
    ("Ray deserialisation of args", "", "ray/_private/serialization.py"),
    ("Ray serialisation", "", "cloudpickle"),
    ("Ray task execution, other", "", "/ray/"),
]


# Leaf frames of threads that wait (in C, without Python frames of their own) rather than work.
IDLE_LEAVES = {
    "",
    "Worker.main_loop",
    "Condition.wait",
    "Event.wait",
    "EpollSelector.select",
    "select",
    "sleep",
}


def _frames(stack: str) -> list[tuple[str, str]]:
    """``func (path)`` frames of one py-spy raw stack, root first."""
    out = []
    for raw in stack.split(";"):
        func, sep, path = raw.rpartition(" (")
        out.append((func, path[:-1]) if sep and path.endswith(")") else (raw, ""))
    return out


def _first(rules: list[Rule], frames: list[tuple[str, str]], exact: bool = False) -> str:
    for name, func, file in rules:
        for f, p in frames:
            hit = (f == func or f.endswith("." + func)) if exact else func in f
            if hit and file in p:
                return name
    return ""


def _classify(
    path: Path, rules: list[Rule], phases: list[Rule] | None = None
) -> tuple[collections.Counter, collections.Counter]:
    """Samples per component (``phase: component`` with phases), and per leaf frame."""
    comps: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    if not path.exists():
        return comps, leaves
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = _frames(stack)
        if not frames or frames[-1][0] in IDLE_LEAVES:
            comps["idle"] += int(n)
            continue
        label = _first(rules, frames) or "other"
        if phases is not None:
            label = f"{_first(phases, frames, exact=True) or 'outside both'}: {label}"
        comps[label] += int(n)
        if frames:
            f, p = frames[-1]
            leaves[f"{f} ({'/'.join(p.split('/')[-2:])})"] += int(n)
    return comps, leaves


def _pyspy(pid: int, out: Path, rate: int, flags: list[str]) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("py-spy")
    cmd = [str(exe), "record", "-p", str(pid), "-o", str(out), "--format", "raw"]
    cmd += ["--rate", str(rate), "--nolineno", "--full-filenames", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _executor_tasks(cluster: Any) -> dict[str, int]:
    return {r["executor"]: r["tasks"] for r in cluster.report().executors}


def floors(
    actors: list, procs: dict[str, list[int]], calls: int, batch: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Plain-Ray relays shaped like the verifier: the throughput (and latency) it allows."""
    relay = Relay.remote(actors)
    procs = {**procs, "relay": [ray.get(relay.pid.remote())]}

    def one() -> None:
        assert ray.get([relay.submit.remote(i) for i in range(calls)]) == [
            i + 1 for i in range(calls)
        ]

    def batched() -> None:
        refs = [
            relay.submit_batch.remote(list(range(j, min(calls, j + batch))))
            for j in range(0, calls, batch)
        ]
        assert [v for part in ray.get(refs) for v in part] == [i + 1 for i in range(calls)]

    one()
    batched()
    lat: dict[str, list[float]] = collections.defaultdict(list)
    sides = {
        "plain, 3 actors from the driver": lambda i: ray.get(
            [actors[(i + k) % len(actors)].nap.remote(i) for k in range(REPLICAS)]
        )[0],
        "relay (driver -> async actor -> 3 actors)": lambda i: ray.get(relay.submit_nap.remote(i)),
        "verified": lambda i: bft_ray.get(verified_nap.remote(i), timeout=60),
    }
    for i in range(16):
        for name, side in sides.items():
            t = time.perf_counter()
            assert side(i) == i + 1
            if i:  # the first round warms up
                lat[name].append(time.perf_counter() - t)
    latency = {name: statistics.median(v) * 1e3 for name, v in lat.items()}
    out = {
        "relay: 1 call in, 3 out (verifier's Ray shape, no bft_ray code)": _cpu_table(
            procs, one, calls
        ),
        f"relay, batched: {batch} calls per driver call, 1 call per actor per batch": (
            _cpu_table(procs, batched, calls)
        ),
    }
    ray.kill(relay)
    return out, latency


def call_shapes(
    actor: Any, pid: int, calls: int, executor: dict[str, Any] | None, rounds: int = 3
) -> dict[str, Any]:
    """Driver and receiver CPU of one Ray actor call, by argument shape (median of rounds).

    The receiver is a sync plain actor with the shapes of the verifier's calls, and (when
    ``executor`` is given) a real executor called directly from the driver, as the verifier
    calls it.
    """
    from bft_ray.config import Policy
    from bft_ray.executor.actor import TaskSpec
    from bft_ray.verifier.records import CallMeta
    from bft_ray.verifier.trusted import CallSpec

    policy = Policy(replicas=REPLICAS, quorum=2)
    fn_ref = ray.put(inc)
    meta = CallMeta("inc-0123456789abcdef", "inc", None, b"\x00" * 32)
    call = CallSpec("inc-0123456789abcdef", "inc", policy, {}, meta)
    call_tuple = ("inc-0123456789abcdef", "inc", (3, 2, 5, 300.0), {}, None)
    spec = TaskSpec("inc-0123456789abcdef", 0, "inc")
    cap, key = os.urandom(32), "f" * 56
    shapes: dict[str, tuple[int, Callable[[int], Any]]] = {
        "inc.remote(i)": (pid, lambda i: actor.inc.remote(i)),
        "run.remote(cap, TaskSpec, fn_key, None, i)  [verifier -> executor]": (
            pid,
            lambda i: actor.run.remote(cap, spec, key, None, i),
        ),
        "run.options().remote(...)  [as the verifier sends it]": (
            pid,
            lambda i: actor.run.options().remote(cap, spec, key, None, i),
        ),
        "run.remote(cap, (id, attempt, name), fn_key, None, i)  [tuple, no dataclass]": (
            pid,
            lambda i: actor.run.remote(cap, (spec.task_id, 0, "inc"), key, None, i),
        ),
        "submit.remote(CallSpec, [fn_ref], [i], {})  [driver -> verifier]": (
            pid,
            lambda i: actor.submit.remote(call, [fn_ref], [i], {}),
        ),
        "submit.remote(CallSpec, [], [i], {})  [no ref nested in the args]": (
            pid,
            lambda i: actor.submit.remote(call, [], [i], {}),
        ),
        "submit.remote(tuple, [], [i], {})  [no pydantic, no dataclass, no ref]": (
            pid,
            lambda i: actor.submit.remote(call_tuple, [], [i], {}),
        ),
    }
    if executor is not None:
        handle, ecap, epid = executor["handle"], executor["capability"], executor["pid"]
        ray.get(handle.run.remote(ecap, spec, "bench-inc", fn_ref, 0))  # ships the function
        shapes["real executor: run.remote(cap, TaskSpec, fn_key, None, i), answer envelope"] = (
            epid,
            lambda i: handle.run.remote(ecap, spec, "bench-inc", None, i),
        )
    samples: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    for r in range(rounds):
        for name, (target, submit) in shapes.items():
            if r == 0:
                ray.get([submit(i) for i in range(50)])  # warm
            c0, a0, w0 = time.process_time(), _cpu_s(target), time.perf_counter()
            refs = [submit(i) for i in range(calls)]
            c1 = time.process_time()
            ray.get(refs)
            c2, a1, wall = time.process_time(), _cpu_s(target), time.perf_counter() - w0
            samples[name].append(
                {
                    "driver_submit_us": (c1 - c0) / calls * 1e6,
                    "driver_total_us": (c2 - c0) / calls * 1e6,
                    "actor_us": (a1 - a0) / calls * 1e6,
                    "calls_per_s": calls / wall,
                }
            )
    return {
        name: {k: statistics.median(x[k] for x in rows) for k in rows[0]}
        for name, rows in samples.items()
    }


def live_profile(calls: int, rate: int, pyspy_flags: list[str] | None) -> dict[str, Any]:
    ray.init(
        address="local",  # always a fresh local Ray, never one found on the machine
        num_cpus=2 * EXECUTORS + 2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
    )
    steps = 6 if pyspy_flags is None else 7
    try:
        with progress_bar("live profile steps", steps, console=PROGRESS) as bar:
            cluster = bft_ray.init(executors=EXECUTORS, gpus_per_executor=0, cpus_per_executor=1)
            actors = [PlainExecutor.remote() for _ in range(EXECUTORS)]
            plain_pids = ray.get([a.pid.remote() for a in actors])
            executor_pids = [s.info.pid for s in cluster._setup.slots]
            info = ray._private.state.actors(cluster._verifier._actor_id.hex())
            verifier_pid = int(info.get("Pid") or 0) if isinstance(info, dict) else 0
            verifier_pid = verifier_pid or _named_descendants("TrustedVerifier")[0]
            control = _named_descendants("raylet/raylet") + _named_descendants("gcs/gcs_server")
            desk_pid = ray.get(cluster._desk.__ray_call__.remote(lambda _self: os.getpid()))
            procs_v = {
                "driver": [os.getpid()],
                "verifier": [verifier_pid],
                "result desk": [desk_pid],
                "executors (4, sum)": executor_pids,
                "raylet + gcs": control,
            }
            procs_p = {
                "driver": [os.getpid()],
                "plain actors (4, sum)": plain_pids,
                "raylet + gcs": control,
            }
            _plain_burst(actors, 100)
            _verified_burst(100)  # warm-up: function shipped, code paths warm
            bar.advance(status="cluster started, warm-up")
            out: dict[str, Any] = {"calls": calls, "pids": procs_v | {"plain actors": plain_pids}}
            tasks0 = _executor_tasks(cluster)
            out["verified_cpu"] = _cpu_table(procs_v, lambda: _verified_burst(calls), calls)
            bar.advance(status="verified burst")
            out["plain_cpu"] = _cpu_table(procs_p, lambda: _plain_burst(actors, calls), calls)
            bar.advance(status="plain burst")
            tasks1 = _executor_tasks(cluster)
            out["replicas_run_per_call"] = (sum(tasks1.values()) - sum(tasks0.values())) / calls
            t0 = time.process_time()
            refs = [verified_inc.remote(i) for i in range(calls)]
            out["driver_submit_cpu_us_per_call"] = (time.process_time() - t0) / calls * 1e6
            bft_ray.get(refs, timeout=600)
            t0 = time.process_time()
            refs = [
                actors[(i + k) % EXECUTORS].inc.remote(i) for i in range(calls) for k in range(3)
            ]
            out["plain_driver_submit_cpu_us_per_call"] = (time.process_time() - t0) / calls * 1e6
            ray.get(refs, timeout=600)
            bar.advance(status="driver submit cost")
            out["floors"], out["latency_50ms_median_ms"] = floors(actors, procs_p, calls, batch=50)
            bar.advance(status="relays and 50 ms latency")
            try:
                h = next(e for e in cluster.executor_handles() if e["index"] == EXECUTORS - 1)
                direct = {**h, "pid": executor_pids[EXECUTORS - 1]}
            except Exception:  # steering API changed: measure the plain shapes only
                direct = None
            out["call_shapes"] = call_shapes(actors[0], plain_pids[0], calls, direct)
            bar.advance(status="call shapes")

            if pyspy_flags is not None:
                tmp = Path(tempfile.mkdtemp(prefix="bft-profile-"))
                ex0 = cluster._setup.slots[0].info.executor_id
                targets = {
                    "driver": (os.getpid(), DRIVER_RULES, DRIVER_PHASES),
                    "verifier": (verifier_pid, VERIFIER_RULES, None),
                    f"executor {ex0}": (executor_pids[0], EXECUTOR_RULES, None),
                }
                files = {name: tmp / f"{name.split()[0]}.txt" for name in targets}
                spies = {
                    name: _pyspy(t[0], files[name], rate, pyspy_flags)
                    for name, t in targets.items()
                }
                time.sleep(2.0)  # let py-spy attach
                before = _executor_tasks(cluster)
                t = time.perf_counter()
                _verified_burst(calls)
                wall = time.perf_counter() - t
                for p in spies.values():
                    p.send_signal(signal.SIGINT)
                for p in spies.values():
                    try:
                        p.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        p.kill()
                after = _executor_tasks(cluster)
                served = {
                    "driver": calls,
                    "verifier": calls,
                    f"executor {ex0}": max(1, after[ex0] - before[ex0]),
                }
                cpu = out["verified_cpu"]["cpu_us_per_call"]
                measured = {
                    "driver": cpu["driver"],
                    "verifier": cpu["verifier"],
                    f"executor {ex0}": cpu["executors (4, sum)"]
                    / max(out["replicas_run_per_call"], 1),
                }
                procs = {}
                for name, (_, rules, phases) in targets.items():
                    comps, leaves = _classify(files[name], rules, phases)
                    idle = comps.pop("idle", 0)
                    total = max(1, sum(comps.values()))
                    procs[name] = {
                        "served_calls": served[name],
                        "samples": total,
                        "idle_samples_dropped": idle,
                        "measured_cpu_us_per_call": measured[name],
                        "components": {
                            c: {"share": k / total, "est_us_per_call": k / total * measured[name]}
                            for c, k in comps.most_common()
                        },
                        "top_leaf_frames_share": {c: k / total for c, k in leaves.most_common(12)},
                    }
                out["pyspy"] = {
                    "rate_hz": rate,
                    "wall_s": wall,
                    "dir": str(tmp),
                    "processes": procs,
                }
                bar.advance(status="py-spy burst")
            cluster.shutdown()
    finally:
        ray.shutdown()
    return out


# -- report -------------------------------------------------------------------------------


def print_pure(pure: dict[str, list[dict[str, Any]]]) -> None:
    print("\n== pure pieces, in process (microseconds per verified call; best of repeats) ==")
    for proc, rows in pure.items():
        print(f"\n{proc}:")
        for row in rows:
            us = "      n/a" if row["us"] is None else f"{row['us']:9.1f}"
            print(f"  {us}  {row['name']}" + (f"  [{row['error']}]" if "error" in row else ""))


def print_live(live: dict[str, Any]) -> None:
    n = live["calls"]
    v, p = live["verified_cpu"], live["plain_cpu"]
    print(f"\n== live: CPU per logical call, burst of {n} calls (all threads, from /proc) ==")
    print(
        f"verified: {v['calls_per_s']:.1f} calls/s; plain (3 actor calls each): "
        f"{p['calls_per_s']:.1f} calls/s"
    )
    for side, t in (("verified", v), ("plain", p)):
        for name, us in t["cpu_us_per_call"].items():
            print(f"  {side:<9} {us:8.0f} us  {name}")
        print(f"  {side:<9} {t['total_cpu_us_per_call']:8.0f} us  total")
    print(
        f"other processes on the machine: {v['other_processes_cpu_s']:.1f} CPU-s during the "
        f"verified burst ({v['wall_s']:.1f} s), {p['other_processes_cpu_s']:.1f} CPU-s during "
        f"the plain one ({p['wall_s']:.1f} s)"
    )
    print(
        f"driver CPU to submit only: verified {live['driver_submit_cpu_us_per_call']:.0f} us per "
        f"call, plain {live['plain_driver_submit_cpu_us_per_call']:.0f} us per logical call "
        f"(3 actor calls); replicas run per verified call: {live['replicas_run_per_call']:.2f}"
    )
    print("\n== live: plain-Ray relays shaped like the verifier (CPU us per logical call) ==")
    print(f"(plain baseline above: {p['calls_per_s']:.1f} calls/s)")
    for name, t in live.get("floors", {}).items():
        per = ", ".join(f"{k} {us:.0f}" for k, us in t["cpu_us_per_call"].items())
        print(
            f"  {t['calls_per_s']:7.1f} calls/s ({t['calls_per_s'] / p['calls_per_s']:.2f}x plain)"
            f"  total {t['total_cpu_us_per_call']:.0f} us: {per}  <- {name}"
        )
    print("\n== live: 50 ms task, one call at a time (median latency, ms) ==")
    for name, ms in live.get("latency_50ms_median_ms", {}).items():
        print(f"  {ms:7.1f}  {name}")
    print("\n== live: one Ray actor call by argument shape (CPU us per call, median of rounds) ==")
    print("  driver submit / driver incl. get / receiving actor / calls per s")
    for name, r in live.get("call_shapes", {}).items():
        print(
            f"  {r['driver_submit_us']:6.0f} {r['driver_total_us']:6.0f} {r['actor_us']:6.0f} "
            f"{r['calls_per_s']:7.0f}   {name}"
        )
    spy = live.get("pyspy")
    if spy:
        print(
            f"\n== live: py-spy at {spy['rate_hz']} Hz: share of non-idle samples, and that share "
            f"of the process's measured CPU per call (burst took {spy['wall_s']:.1f} s sampled) =="
        )
        for name, s in spy["processes"].items():
            print(
                f"\n{name}: {s['served_calls']} calls served, {s['samples']} samples "
                f"({s['idle_samples_dropped']} idle dropped), measured "
                f"{s['measured_cpu_us_per_call']:.0f} us CPU per call served"
            )
            for comp, c in s["components"].items():
                print(f"  {100 * c['share']:5.1f}%  {c['est_us_per_call']:7.0f} us  {comp}")
            print("  top leaf frames:")
            for leaf, share in list(s["top_leaf_frames_share"].items())[:8]:
                print(f"  {100 * share:5.1f}%    {leaf}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--loops", type=int, default=2000, help="iterations per pure timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pure-only", action="store_true")
    parser.add_argument("--live-only", action="store_true")
    parser.add_argument("--no-pyspy", action="store_true")
    parser.add_argument(
        "--pyspy-flags",
        default="--nonblocking",
        help="extra py-spy record flags, space separated ('' for blocking sampling)",
    )
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "bft_ray": str(Path(bft_ray.__file__).parent),
        "loadavg_before": os.getloadavg(),
    }
    print(f"bft_ray from {result['bft_ray']}")
    if not args.live_only:
        try:
            with progress_bar("pure pieces", PURE_ROWS, console=PROGRESS) as bar:
                result["pure"] = pure_profile(args.loops, args.repeats, progress=bar)
            print_pure(result["pure"])
        except Exception as exc:  # internals this part builds on changed: say so, go on
            import traceback

            traceback.print_exc()
            result["pure_error"] = f"{type(exc).__name__}: {exc}"
            print(f"\npure part skipped: {result['pure_error']} (update pure_profile)")
    if not args.pure_only:
        result["live"] = live_profile(
            args.calls, args.rate, None if args.no_pyspy else args.pyspy_flags.split()
        )
        print_live(result["live"])
    result["loadavg_after"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
