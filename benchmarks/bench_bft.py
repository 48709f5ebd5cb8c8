"""The BFT verifier group on Ray: consensus alone, committed verdicts, end to end (issue 9).

Everything runs in ONE local Ray session (started here with ``address="local"``), so both
sides of each comparison are measured on the same machine state, interleaved:

1. **Consensus alone.** A group of ``n`` :class:`~bft_ray.verifier.group.BftVerifier` actors
   started directly with ``GroupSetup(..., continuous=True)`` (leaders propose empty blocks back
   to back; real Ed25519, real SQLite ledgers in a temporary directory) against the *raw Ray
   message ceiling*: ``n`` bare async actors doing one leader broadcast and ``2f + 1`` votes per
   round (the leader sends a proposal to the ``n - 1`` others with fire-and-forget actor calls,
   every replica sends its vote to the next round's leader, who starts the next round once it
   holds ``2f + 1`` votes; rotating leader; no logic, no crypto, no storage). Both send the same
   ``2 (n - 1)`` messages per round. Rounds per second are the growth of ``status()["round"]``
   (median over the group) over a fixed window, after a warm-up. A fresh group is started for
   every window, the two sides alternating. Reported: the ratio BFT / raw (target >= 0.6).
   ``n = 4``; ``--full`` adds ``n = 7``.

2. **Committed verdicts per second** (``n = 4`` and ``n = 7``): ``bft_ray.init(executors=4,
   verifiers=n)`` and a trivial verified function (``replicas=3, num_gpus=0``); a burst of
   ``--burst`` calls submitted at once; verdicts/s, per-call latency (submit to ready, with
   ``ray.wait``) p50 / p99, claims per committed block (batching), and CPU seconds per verdict
   per verifier (CPU time of the verifier actors' processes, found through Ray's actor table,
   over the burst).

3. **End to end.** 50 ms tasks (``time.sleep(0.05)``), 3 replicas: the BFT mode
   (``verifiers=4``) against plain Ray running the same 3 replicas on 3 plain actors (and, for
   reference, on 3 of 4 plain actors in rotation: the executor pool's capacity); one call at a
   time (median latency ratio, target <= 1.25) and 12 logical calls in flight (closed loop:
   throughput ratio plain / BFT and median latency ratio BFT / plain, target <= 1.10 each);
   both sides alternate within one cluster session. Trivial tasks: the BFT burst throughput
   against the trusted mode's (``verifiers=1``), target >= 0.4; the cluster sessions
   (trusted, BFT n=4, BFT n=7) alternate, a fresh ``bft_ray.init`` each time (only one cluster
   per process at a time; ``bft_ray.shutdown()`` leaves the Ray session started here running).

4. **Release at the verdict** (``bft4v``): the same sessions as BFT n=4 with
   ``bft_ray.init(verifiers=4, release="verdict")``, where a value returns at the dispatcher's
   verdict and its certificate follows. The same one-at-a-time and 12-in-flight comparisons;
   its bursts report both when the values were back and when the last certificate was in
   (the dispatcher's ``settle``), and the verifiers' CPU up to the latter. Reported beside the
   default mode, never instead of it.

Prints a table of every number, ratio and target; writes ``benchmarks/results/bft.json`` and
``bft.png``.

Run: ``make bench-bft`` (``.venv/bin/python benchmarks/bench_bft.py``; ``--quick`` for a smoke
run under two minutes, ``--full`` for more rounds and ``n = 7`` in part 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import ray
from rich.console import Console

import bft_ray
from bft_ray.actor_facade import public_actor
from bft_ray.crypto import SigningKey
from bft_ray.progress import Bar, progress_bar
from bft_ray.verifier.group import NAMESPACE, BftVerifier, GroupSetup, actor_name

RESULTS = Path(__file__).parent / "results"
EXECUTORS = 4
REPLICAS = 3
TASK_S = 0.05
INFLIGHT = 12
PLAIN_ACTORS = 4  # 3 for the brief's comparison, all 4 (rotating) for the same-capacity one

CONSENSUS_TARGET = 0.6  # BFT rounds/s over the raw Ray ceiling, >=
LATENCY_TARGET = 1.25  # BFT / plain median latency, one call at a time, <=
INFLIGHT_TARGET = 1.10  # plain / BFT throughput and BFT / plain latency, 12 in flight, <=
TRUSTED_TARGET = 0.4  # BFT / trusted throughput of trivial calls, >=
# Progress as plain lines on stderr, also on a terminal: a live bar redraws from a thread of
# the driver, which in the cluster sessions is also the dispatcher of the calls measured.
PROGRESS = Console(stderr=True, force_terminal=False)


def inc(x):
    return x + 1


def nap(x):
    time.sleep(TASK_S)
    return x + 1


verified_inc = bft_ray.verified_remote(replicas=REPLICAS, num_gpus=0)(inc)
verified_nap = bft_ray.verified_remote(replicas=REPLICAS, num_gpus=0)(nap)


@ray.remote(num_cpus=1, num_gpus=0, max_restarts=0, max_task_retries=0, max_concurrency=1)
class PlainExecutor:
    """A plain Ray actor with the resources and options of one executor."""

    def nap(self, x):
        return nap(x)


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class RawNode:
    """One replica of the raw message ceiling: rotating leader, broadcast, 2f + 1 votes.

    No signatures, no validation, no storage: the least Ray work a round of a leader-based
    protocol can take (``n - 1`` proposals and ``n - 1`` votes, all fire-and-forget).
    """

    def __init__(self, index: int, n: int) -> None:
        self.index, self.n = index, n
        self.quorum = 2 * ((n - 1) // 3) + 1
        self.round = 0
        self.peers: list[Any] = []
        self.votes: dict[int, int] = {}
        self.running = False
        self.sent = 0
        self.proposal = b"p" * 200  # about an empty block's encoded size
        self.vote_blob = b"v" * 120

    async def pid(self) -> int:
        return os.getpid()

    async def set_peers(self, peers: list) -> None:
        self.peers = peers

    async def go(self) -> None:
        self.running = True
        if self.index == 1 % self.n:  # leader of round 1
            self._enter(1)

    async def stop(self) -> None:
        self.running = False

    async def status(self) -> dict:
        return {"index": self.index, "round": self.round, "sent": self.sent}

    def _enter(self, r: int) -> None:
        self.round = max(self.round, r)
        if not self.running:
            return
        for i, p in enumerate(self.peers):
            if i != self.index:
                p.on_proposal.remote(r, self.proposal)
                self.sent += 1
        self._vote(r)  # the leader votes for its own proposal

    def _vote(self, r: int) -> None:
        nxt = (r + 1) % self.n
        if nxt == self.index:
            self._count(r)
        else:
            self.peers[nxt].on_vote.remote(r, self.vote_blob)
            self.sent += 1

    def _count(self, r: int) -> None:
        c = self.votes.get(r, 0) + 1
        self.votes[r] = c
        if c == self.quorum:
            self.votes = {k: v for k, v in self.votes.items() if k >= r}
            self._enter(r + 1)

    async def on_proposal(self, r: int, data: bytes) -> None:
        self.round = max(self.round, r)
        if self.running:
            self._vote(r)

    async def on_vote(self, r: int, data: bytes) -> None:
        self._count(r)


# -- CPU of actor processes ---------------------------------------------------------------


def actor_pids(handles: list) -> dict[str, int]:
    """Actor id (hex) -> worker pid, from Ray's actor table (a private API; {} if it fails)."""
    try:
        from ray._private import state

        table = state.actors()
    except Exception:
        return {}
    ids = {h._actor_id.hex() for h in handles}
    return {
        aid: int(info["Pid"])
        for aid, info in table.items()
        if aid in ids and info.get("State") == "ALIVE" and info.get("Pid")
    }


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def machine_busy_s() -> float:
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def my_tree_cpu_s() -> float:
    me = psutil.Process()
    try:
        procs = [me, *me.children(recursive=True)]
    except psutil.Error:
        procs = [me]
    return cpu_of([p.pid for p in procs])


class Noise:
    """CPU other processes used on the machine while a measurement ran (the machine is shared)."""

    def __enter__(self) -> Noise:
        self.start = (machine_busy_s(), my_tree_cpu_s())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, ours = machine_busy_s() - self.start[0], my_tree_cpu_s() - self.start[1]
        self.other_cpu_s = max(0.0, busy - ours)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# -- 1. consensus alone ---------------------------------------------------------------------


def start_bft_group(n: int, name: str, ledger_root: str) -> list:
    dispatcher_key = SigningKey.generate().public_bytes  # no claims are ever sent
    handles = []
    for i in range(n):
        ledger_dir = os.path.join(ledger_root, name, f"v{i}")
        setup = GroupSetup(name, i, n, dispatcher_key, ledger_dir, continuous=True)
        handles.append(
            ray.remote(public_actor(BftVerifier))
            .options(
                num_cpus=0,
                name=actor_name(name, i),
                namespace=NAMESPACE,
                max_restarts=0,
                max_task_retries=0,
            )
            .remote(setup)
        )
    keys = ray.get([h.public_key.remote() for h in handles], timeout=120)
    ray.get([h.start.remote(keys) for h in handles], timeout=120)
    ray.get([h.kick.remote() for h in handles], timeout=60)
    return handles


def start_raw_group(n: int) -> list:
    handles = [RawNode.remote(i, n) for i in range(n)]
    ray.get([h.set_peers.remote(handles) for h in handles], timeout=120)
    ray.get([h.go.remote() for h in handles], timeout=60)
    return handles


def window(handles: list, warm_s: float, window_s: float) -> dict:
    """Rounds/s of a running group over ``window_s`` (after ``warm_s``), with its CPU."""
    time.sleep(warm_s)
    pids = list(actor_pids(handles).values())

    def snap() -> tuple[float, list[dict]]:
        t = time.perf_counter()
        st = ray.get([h.status.remote() for h in handles], timeout=60)
        return (t + time.perf_counter()) / 2, st

    with Noise() as noise:
        c0 = cpu_of(pids)
        t0, s0 = snap()
        time.sleep(window_s)
        t1, s1 = snap()
        c1 = cpu_of(pids)
    dt = t1 - t0
    r0 = [s["round"] for s in s0]
    r1 = [s["round"] for s in s1]
    grow = [b - a for a, b in zip(r0, r1)]
    rounds = statistics.median(r1) - statistics.median(r0)
    row = {
        "window_s": dt,
        "rounds": rounds,
        "rounds_per_s": rounds / dt,
        "round_growth_per_node": grow,
        "round_end_per_node": r1,
        "cpu_s": c1 - c0 if len(pids) == len(handles) else None,
        "cpu_ms_per_round": (c1 - c0) / rounds * 1e3
        if len(pids) == len(handles) and rounds
        else None,
        "other_processes_cpu_s": noise.other_cpu_s,
    }
    if "counters" in s1[0]:  # the BFT group
        sent = sum(s["counters"]["sent"] for s in s1) - sum(s["counters"]["sent"] for s in s0)
        row["messages_per_round"] = sent / rounds if rounds else None
        row["committed_round_end_per_node"] = [s["committed_round"] for s in s1]
        row["ledger_height_end_per_node"] = [s["ledger_height"] for s in s1]
        row["commits_per_s"] = (
            statistics.median(s["committed_round"] for s in s1)
            - statistics.median(s["committed_round"] for s in s0)
        ) / dt
        row["rejected"] = [s["rejected"] for s in s1]
        row["pending_end"] = [s["pending"] for s in s1]
    else:
        sent = sum(s["sent"] for s in s1) - sum(s["sent"] for s in s0)
        row["messages_per_round"] = sent / rounds if rounds else None
    row["stalled_nodes"] = [i for i, g in enumerate(grow) if g <= 0]
    return row


def kill_all(handles: list) -> None:
    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:
            pass


def measure_consensus(
    ns: list[int], rounds: int, warm_s: float, window_s: float, progress: Bar | None = None
) -> dict:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-bft-consensus-") as ledger_root:
        for n in ns:
            rows: dict[str, list[dict]] = {"bft": [], "raw": []}
            for r in range(rounds):
                order = ("bft", "raw") if r % 2 == 0 else ("raw", "bft")
                for side in order:
                    t = time.perf_counter()
                    if side == "bft":
                        handles = start_bft_group(n, f"bench-consensus-n{n}-r{r}", ledger_root)
                    else:
                        handles = start_raw_group(n)
                    start_s = time.perf_counter() - t
                    try:
                        row = window(handles, warm_s, window_s)
                    finally:
                        if side == "raw":
                            ray.get([h.stop.remote() for h in handles], timeout=30)
                        kill_all(handles)
                    row["start_s"] = start_s
                    rows[side].append(row)
                    print(
                        f"  n={n} round {r} {side:>3}: {row['rounds_per_s']:7.1f} rounds/s "
                        f"({row['messages_per_round'] or 0:.1f} msgs/round, "
                        f"{row['cpu_ms_per_round'] or float('nan'):.2f} CPU-ms/round; "
                        f"group start {start_s:.1f} s; other processes "
                        f"{row['other_processes_cpu_s']:.1f} CPU-s"
                        + (
                            f"; STALLED nodes {row['stalled_nodes']}"
                            if row["stalled_nodes"]
                            else ""
                        )
                        + ")",
                        flush=True,
                    )
                    if progress is not None:
                        progress.advance(status=f"n={n} round {r} {side}")  # between windows
                    time.sleep(0.5)  # let the killed workers exit before the next window
            b = statistics.median(x["rounds_per_s"] for x in rows["bft"])
            w = statistics.median(x["rounds_per_s"] for x in rows["raw"])
            out[f"n{n}"] = {
                "n": n,
                "bft_rounds_per_s": b,
                "raw_rounds_per_s": w,
                "ratio_bft_over_raw": b / w if w else None,
                "target_ratio": CONSENSUS_TARGET,
                "bft_windows": rows["bft"],
                "raw_windows": rows["raw"],
            }
    return out


# -- 2./3. cluster sessions ---------------------------------------------------------------


def burst(
    n_calls: int, group: list, dispatcher: Any, executors: list, certified_later: bool = False
) -> dict:
    """``n_calls`` trivial verified calls submitted at once; per-call latency to ready.

    ``certified_later`` (release="verdict"): also wait until the dispatcher holds every
    certificate, and measure the CPU up to then."""
    vpids = list(actor_pids(group).values()) if group else []
    dpids = list(actor_pids([dispatcher]).values())
    epids = list(actor_pids(executors).values())
    before = ray.get([h.status.remote() for h in group], timeout=60) if group else []
    with Noise() as noise:
        cv0, cd0, ce0 = cpu_of(vpids), cpu_of(dpids), cpu_of(epids)
        t0 = time.perf_counter()
        submitted: dict[Any, float] = {}
        refs = []
        for i in range(n_calls):
            ref = verified_inc.remote(i)
            submitted[ref] = time.perf_counter()
            refs.append(ref)
        t_sub = time.perf_counter()
        pending = list(refs)
        latency = []
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=300)
            if not ready:
                raise RuntimeError(f"{len(pending)} verified calls not ready after 300 s")
            if pending:
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            now = time.perf_counter()
            latency += [now - submitted[r] for r in ready]
        wall = time.perf_counter() - t0
        certified_wall = None
        if certified_later:
            ray.get(dispatcher.settle.remote(), timeout=300)
            certified_wall = time.perf_counter() - t0
        cv1, cd1, ce1 = cpu_of(vpids), cpu_of(dpids), cpu_of(epids)
    values = bft_ray.get(refs, timeout=60)
    assert values == [i + 1 for i in range(n_calls)], "wrong verified values"
    row: dict[str, Any] = {
        "calls": n_calls,
        "wall_s": wall,
        "verdicts_per_s": n_calls / wall,
        "certified_wall_s": certified_wall,
        "certified_per_s": n_calls / certified_wall if certified_wall else None,
        "submit_s": t_sub - t0,
        "latency_p50_ms": pct(latency, 0.5) * 1e3,
        "latency_p99_ms": pct(latency, 0.99) * 1e3,
        "latency_max_ms": max(latency) * 1e3,
        "dispatcher_cpu_ms_per_verdict": (cd1 - cd0) / n_calls * 1e3 if dpids else None,
        "executors_cpu_ms_per_verdict": (ce1 - ce0) / n_calls * 1e3
        if len(epids) == len(executors)
        else None,
        "other_processes_cpu_s": noise.other_cpu_s,
    }
    if group:
        after = ray.get([h.status.remote() for h in group], timeout=60)
        delta = group_delta(before, after)
        blocks, committed = delta["blocks"], delta["claims_committed"]
        row.update(
            {
                "verifier_cpu_ms_per_verdict_per_verifier": (cv1 - cv0) / n_calls / len(group) * 1e3
                if len(vpids) == len(group)
                else None,
                "verifier_cpu_ms_per_verdict_all_verifiers": (cv1 - cv0) / n_calls * 1e3
                if len(vpids) == len(group)
                else None,
                "verifier_pids_found": len(vpids),
                "committed_blocks": blocks,
                "claims_committed": committed,
                "claims_per_block_incl_empty": committed / blocks if blocks else None,
                "group": delta,
            }
        )
    return row


def group_delta(before: list[dict], after: list[dict]) -> dict:
    """What the group did between two ``status()`` snapshots (medians over the verifiers)."""
    rejected: dict[str, int] = {}
    for a, b in zip(after, before):
        for reason, count in a["rejected"].items():
            d = count - b["rejected"].get(reason, 0)
            if d:
                rejected[reason] = rejected.get(reason, 0) + d
    return {
        "rounds": statistics.median(a["round"] - b["round"] for a, b in zip(after, before)),
        "blocks": statistics.median(
            a["ledger_height"] - b["ledger_height"] for a, b in zip(after, before)
        ),
        "claims_committed": statistics.median(
            a["counters"]["committed"] - b["counters"]["committed"] for a, b in zip(after, before)
        ),
        "messages_sent_all": sum(
            a["counters"]["sent"] - b["counters"]["sent"] for a, b in zip(after, before)
        ),
        # a "stale_timeout" is a Timeout message for a round its receiver had left: some
        # verifier's round timer fired (no QC within base_timeout_ticks * tick_s)
        "rejected_all_verifiers": rejected,
    }


def submit_plain(actors: list, k: int, i: int) -> list:
    """One logical call as plain Ray: 3 replicas on 3 distinct actors of ``actors[:k]``."""
    return [actors[(i + j) % k].nap.remote(i) for j in range(REPLICAS)]


def one_at_a_time(actors: list, samples: int) -> dict:
    lat: dict[str, list[float]] = {"verified": [], "plain3": []}
    for r in range(samples):
        for side in ("verified", "plain3") if r % 2 == 0 else ("plain3", "verified"):
            t = time.perf_counter()
            if side == "verified":
                value = bft_ray.get(verified_nap.remote(r), timeout=60)
            else:
                value = ray.get(submit_plain(actors, 3, r), timeout=60)[0]
            lat[side].append(time.perf_counter() - t)
            assert value == r + 1
    return lat


def closed_loop(side: str, actors: list, total: int, inflight: int) -> dict:
    """``total`` logical 50 ms calls, ``inflight`` outstanding at any time."""
    owner: dict[Any, int] = {}
    left: dict[int, int] = {}
    started: dict[int, float] = {}
    latency: list[float] = []
    nxt = 0

    def submit() -> None:
        nonlocal nxt
        i = nxt
        nxt += 1
        started[i] = time.perf_counter()
        if side == "bft":
            refs = [verified_nap.remote(i)]
        else:
            refs = submit_plain(actors, 3 if side == "plain3" else len(actors), i)
        left[i] = len(refs)
        for ref in refs:
            owner[ref] = i

    t0 = time.perf_counter()
    while nxt < min(inflight, total):
        submit()
    while owner:
        ready, _ = ray.wait(list(owner), num_returns=1, timeout=120)
        if not ready:
            raise RuntimeError(f"{side}: no call finished in 120 s")
        now = time.perf_counter()
        for ref in ready:
            i = owner.pop(ref)
            value = bft_ray.get(ref) if side == "bft" else ray.get(ref)
            assert value == i + 1
            left[i] -= 1
            if left[i] == 0:
                latency.append(now - started.pop(i))
                if nxt < total:
                    submit()
    wall = time.perf_counter() - t0
    return {
        "calls": total,
        "inflight": inflight,
        "wall_s": wall,
        "calls_per_s": total / wall,
        "latency_p50_ms": pct(latency, 0.5) * 1e3,
        "latency_p99_ms": pct(latency, 0.99) * 1e3,
    }


def group_check(cluster: Any) -> dict:
    """Consistency of the group after a session, and whether it goes quiet when idle."""
    st1 = cluster.verifier_status()
    time.sleep(1.0)
    st2 = cluster.verifier_status()
    errors = [s for s in st2 if "error" in s]
    ok = [s for s in st2 if "error" not in s]
    return {
        "errors": errors,
        "rounds": [s.get("round") for s in st2],
        "committed_rounds": [s.get("committed_round") for s in st2],
        "ledger_heights": [s.get("ledger_height") for s in st2],
        "pending": [s.get("pending") for s in st2],
        "rejected": [s.get("rejected") for s in st2],
        "counters": [s.get("counters") for s in st2],
        "reputation_digests_equal": len({s["reputation_digest"] for s in ok}) <= 1,
        "rounds_advanced_while_idle_1s": [
            b.get("round", 0) - a.get("round", 0) for a, b in zip(st1, st2)
        ],
    }


def session(mode: str, args: argparse.Namespace, actors: list, ledger_root: str, k: int) -> dict:
    verifiers = {"trusted": 1, "bft4": 4, "bft4v": 4, "bft7": 7}[mode]
    t = time.perf_counter()
    cluster = bft_ray.init(
        executors=EXECUTORS,
        verifiers=verifiers,
        gpus_per_executor=0,
        cpus_per_executor=1,
        ledger_dir=os.path.join(ledger_root, f"{mode}-{k}") if verifiers > 1 else None,
        release="verdict" if mode == "bft4v" else "certified",
    )
    out: dict[str, Any] = {"mode": mode, "verifiers": verifiers, "init_s": time.perf_counter() - t}
    try:
        group = cluster.verifier_handles() if verifiers > 1 else []
        dispatcher = cluster._verifier  # the driver-side verifier (dispatcher in BFT mode)
        executors = [e["handle"] for e in cluster.executor_handles()]
        t = time.perf_counter()
        bft_ray.get([verified_inc.remote(i) for i in range(20)], timeout=120)  # warm-up
        bft_ray.get([verified_nap.remote(i) for i in range(4)], timeout=120)
        out["warmup_s"] = time.perf_counter() - t
        out["bursts"] = []
        for _ in range(args.bursts):
            row = burst(args.burst, group, dispatcher, executors, mode == "bft4v")
            out["bursts"].append(row)
            print(
                f"  {mode:>7} burst of {row['calls']}: {row['verdicts_per_s']:6.1f} verdicts/s, "
                f"p50 {row['latency_p50_ms']:.0f} ms, p99 {row['latency_p99_ms']:.0f} ms"
                + (
                    f", all certified after {row['certified_wall_s']:.2f} s "
                    f"({row['certified_per_s']:.1f}/s)"
                    if row["certified_wall_s"]
                    else ""
                )
                + (
                    f", {row['claims_per_block_incl_empty']:.1f} claims/block, "
                    f"{row['verifier_cpu_ms_per_verdict_per_verifier'] or float('nan'):.2f} "
                    "CPU-ms/verdict/verifier"
                    if group and row["claims_per_block_incl_empty"]
                    else ""
                )
                + (
                    f", {row['group']['rounds']:.0f} rounds, rejected "
                    f"{row['group']['rejected_all_verifiers']}"
                    if group
                    else ""
                )
                + f" (other processes {row['other_processes_cpu_s']:.1f} CPU-s)",
                flush=True,
            )
        if mode in ("bft4", "bft4v", "trusted"):
            before = ray.get([h.status.remote() for h in group], timeout=60) if group else []
            with Noise() as noise:
                lat = one_at_a_time(actors, args.latency_samples)
            if group:
                after = ray.get([h.status.remote() for h in group], timeout=60)
                out["one_at_a_time_group"] = group_delta(before, after)
            out["one_at_a_time_s"] = lat
            out["one_at_a_time_other_cpu_s"] = noise.other_cpu_s
            print(
                f"  {mode:>7} 50 ms one at a time: verified "
                f"{statistics.median(lat['verified']) * 1e3:.1f} ms, plain x3 "
                f"{statistics.median(lat['plain3']) * 1e3:.1f} ms (median)",
                flush=True,
            )
        if mode in ("bft4", "bft4v"):
            out["inflight"] = {"bft": [], "plain3": [], "plain4": []}
            before = ray.get([h.status.remote() for h in group], timeout=60)
            for r in range(args.inflight_rounds):
                sides = ["bft", "plain3", "plain4"]
                sides = sides[r % 3 :] + sides[: r % 3]
                for side in sides:
                    row = closed_loop(side, actors, args.inflight_calls, INFLIGHT)
                    out["inflight"][side].append(row)
                    print(
                        f"  {mode:>7} 50 ms, {INFLIGHT} in flight, {side:>6}: "
                        f"{row['calls_per_s']:5.1f} calls/s, p50 {row['latency_p50_ms']:.0f} ms,"
                        f" p99 {row['latency_p99_ms']:.0f} ms",
                        flush=True,
                    )
            after = ray.get([h.status.remote() for h in group], timeout=60)
            out["inflight_group"] = group_delta(before, after)
        if group:
            # Certificates still being committed (release="verdict") first: the check then
            # sees whether the group goes quiet once its work is done.
            ray.get(dispatcher.settle.remote(), timeout=300)
            out["group_check"] = group_check(cluster)
        out["counters"] = cluster.report().counters
    finally:
        t = time.perf_counter()
        bft_ray.shutdown()
        out["shutdown_s"] = time.perf_counter() - t
    return out


def summarise(sessions: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for s in sessions:
        by.setdefault(s["mode"], []).extend(s["bursts"])

    def med(mode: str, key: str) -> float | None:
        vals = [b[key] for b in by.get(mode, []) if b.get(key) is not None]
        return statistics.median(vals) if vals else None

    verdicts = {}
    for mode in by:
        verdicts[mode] = {
            k: med(mode, k)
            for k in (
                "verdicts_per_s",
                "certified_per_s",
                "latency_p50_ms",
                "latency_p99_ms",
                "claims_per_block_incl_empty",
                "verifier_cpu_ms_per_verdict_per_verifier",
                "verifier_cpu_ms_per_verdict_all_verifiers",
                "dispatcher_cpu_ms_per_verdict",
                "executors_cpu_ms_per_verdict",
            )
        }
        verdicts[mode]["bursts"] = len(by[mode])
    e2e: dict[str, Any] = {}
    for mode, key in (
        ("bft4", "one_at_a_time"),
        ("bft4v", "one_at_a_time_verdict"),
        ("trusted", "one_at_a_time_trusted"),
    ):
        lat: dict[str, list[float]] = {"verified": [], "plain3": []}
        for s in sessions:
            if s["mode"] == mode:
                for k in lat:
                    lat[k] += s["one_at_a_time_s"][k]
        if lat["verified"]:
            mb = statistics.median(lat["verified"]) * 1e3
            mp = statistics.median(lat["plain3"]) * 1e3
            e2e[key] = {
                "mode": mode,
                "samples": len(lat["verified"]),
                "verified_median_ms": mb,
                "plain3_median_ms": mp,
                "verified_p90_ms": pct(lat["verified"], 0.9) * 1e3,
                "plain3_p90_ms": pct(lat["plain3"], 0.9) * 1e3,
                "ratio_verified_over_plain": mb / mp,
                "target_ratio_max": LATENCY_TARGET if mode != "trusted" else None,
            }
    for mode, key in (("bft4", "inflight"), ("bft4v", "inflight_verdict")):
        infl = _inflight(sessions, mode)
        if infl is not None:
            e2e[key] = infl
    tv, bv = verdicts.get("trusted", {}), verdicts.get("bft4", {})
    if tv.get("verdicts_per_s") and bv.get("verdicts_per_s"):
        e2e["trivial_bft_vs_trusted"] = {
            "bft4_verdicts_per_s": bv["verdicts_per_s"],
            "trusted_verdicts_per_s": tv["verdicts_per_s"],
            "ratio_bft_over_trusted": bv["verdicts_per_s"] / tv["verdicts_per_s"],
            "target_ratio_min": TRUSTED_TARGET,
        }
    return {"verdicts": verdicts, "end_to_end": e2e}


def _inflight(sessions: list[dict], mode: str) -> dict | None:
    """The 12-in-flight comparison of ``mode``'s sessions (medians over the closed loops)."""
    infl: dict[str, list[dict]] = {"bft": [], "plain3": [], "plain4": []}
    for s in sessions:
        if s["mode"] == mode:
            for k in infl:
                infl[k] += s["inflight"][k]
    if not infl["bft"]:
        return None

    def m(side: str, key: str) -> float:
        return statistics.median(r[key] for r in infl[side])

    out: dict[str, Any] = {"mode": mode, "inflight": INFLIGHT, "rounds": len(infl["bft"])}
    for ref in ("plain3", "plain4"):
        out[ref] = {
            "bft_calls_per_s": m("bft", "calls_per_s"),
            "plain_calls_per_s": m(ref, "calls_per_s"),
            "bft_latency_p50_ms": m("bft", "latency_p50_ms"),
            "plain_latency_p50_ms": m(ref, "latency_p50_ms"),
            "throughput_ratio_plain_over_bft": m(ref, "calls_per_s") / m("bft", "calls_per_s"),
            "latency_ratio_bft_over_plain": m("bft", "latency_p50_ms") / m(ref, "latency_p50_ms"),
            "target_ratio_max": INFLIGHT_TARGET,
        }
    return out


def table(consensus: dict, summary: dict) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for key, c in consensus.items():
        r = c["ratio_bft_over_raw"]
        rows.append(
            (
                f"consensus alone {key}: BFT {c['bft_rounds_per_s']:.1f} vs raw Ray "
                f"{c['raw_rounds_per_s']:.1f} rounds/s",
                f"{r:.3f}" if r else "-",
                f">= {CONSENSUS_TARGET}",
                met(bool(r) and r >= CONSENSUS_TARGET),
            )
        )
    for mode, v in summary["verdicts"].items():
        cpu = v.get("verifier_cpu_ms_per_verdict_per_verifier")
        rows.append(
            (
                f"{mode} trivial burst: {v['verdicts_per_s']:.1f} verdicts/s, p50 "
                f"{v['latency_p50_ms']:.0f} ms, p99 {v['latency_p99_ms']:.0f} ms"
                + (
                    f", {v['claims_per_block_incl_empty']:.1f} claims/block"
                    if v.get("claims_per_block_incl_empty")
                    else ""
                )
                + (f", {cpu:.2f} CPU-ms/verdict/verifier" if cpu is not None else ""),
                "-",
                "-",
                "-",
            )
        )
        parts = [
            ("dispatcher", v.get("dispatcher_cpu_ms_per_verdict")),
            ("all verifiers", v.get("verifier_cpu_ms_per_verdict_all_verifiers")),
            ("executors", v.get("executors_cpu_ms_per_verdict")),
        ]
        known = [(k, x) for k, x in parts if x is not None]
        if known:
            rows.append(
                (
                    f"  {mode} CPU-ms per verdict: "
                    + ", ".join(f"{k} {x:.1f}" for k, x in known)
                    + f" (sum {sum(x for _, x in known):.1f})",
                    "-",
                    "-",
                    "-",
                )
            )
    e2e = summary["end_to_end"]
    if "one_at_a_time" in e2e:
        o = e2e["one_at_a_time"]
        rows.append(
            (
                f"50 ms, one at a time: BFT n=4 {o['verified_median_ms']:.1f} vs plain x3 "
                f"{o['plain3_median_ms']:.1f} ms median",
                f"{o['ratio_verified_over_plain']:.3f}",
                f"<= {LATENCY_TARGET}",
                met(o["ratio_verified_over_plain"] <= LATENCY_TARGET),
            )
        )
    if "one_at_a_time_verdict" in e2e:
        o = e2e["one_at_a_time_verdict"]
        rows.append(
            (
                f"  release='verdict': BFT n=4 {o['verified_median_ms']:.1f} vs plain x3 "
                f"{o['plain3_median_ms']:.1f} ms median (value before its certificate)",
                f"{o['ratio_verified_over_plain']:.3f}",
                f"<= {LATENCY_TARGET}",
                met(o["ratio_verified_over_plain"] <= LATENCY_TARGET),
            )
        )
    if "one_at_a_time_trusted" in e2e:
        o = e2e["one_at_a_time_trusted"]
        rows.append(
            (
                f"  (reference) trusted mode {o['verified_median_ms']:.1f} vs plain x3 "
                f"{o['plain3_median_ms']:.1f} ms median",
                f"{o['ratio_verified_over_plain']:.3f}",
                "-",
                "-",
            )
        )
    for key, ref in [
        (k, r) for k in ("inflight", "inflight_verdict") for r in ("plain3", "plain4")
    ]:
        if key in e2e:
            i = e2e[key][ref]
            label = "3 plain actors" if ref == "plain3" else "3 of 4 plain actors (same capacity)"
            if key == "inflight_verdict":
                label += ", release='verdict'"
            rows.append(
                (
                    f"50 ms, {INFLIGHT} in flight vs {label}: throughput BFT "
                    f"{i['bft_calls_per_s']:.1f} vs {i['plain_calls_per_s']:.1f} calls/s "
                    "(plain/BFT)",
                    f"{i['throughput_ratio_plain_over_bft']:.3f}",
                    f"<= {INFLIGHT_TARGET}",
                    met(i["throughput_ratio_plain_over_bft"] <= INFLIGHT_TARGET),
                )
            )
            rows.append(
                (
                    f"50 ms, {INFLIGHT} in flight vs {label}: p50 latency BFT "
                    f"{i['bft_latency_p50_ms']:.0f} vs {i['plain_latency_p50_ms']:.0f} ms "
                    "(BFT/plain)",
                    f"{i['latency_ratio_bft_over_plain']:.3f}",
                    f"<= {INFLIGHT_TARGET}",
                    met(i["latency_ratio_bft_over_plain"] <= INFLIGHT_TARGET),
                )
            )
    if "trivial_bft_vs_trusted" in e2e:
        t = e2e["trivial_bft_vs_trusted"]
        rows.append(
            (
                f"trivial: BFT n=4 {t['bft4_verdicts_per_s']:.1f} vs trusted "
                f"{t['trusted_verdicts_per_s']:.1f} verdicts/s",
                f"{t['ratio_bft_over_trusted']:.3f}",
                f">= {TRUSTED_TARGET}",
                met(t["ratio_bft_over_trusted"] >= TRUSTED_TARGET),
            )
        )
    return rows


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smoke run (under ~2 minutes)")
    parser.add_argument("--full", action="store_true", help="more rounds, n = 7 in part 1")
    parser.add_argument("--burst", type=int, default=300, help="trivial calls per burst")
    parser.add_argument("--bursts", type=int, default=2, help="bursts per cluster session")
    parser.add_argument("--session-rounds", type=int, default=2, help="sessions per mode")
    parser.add_argument("--consensus-rounds", type=int, default=3, help="windows per side")
    parser.add_argument("--window", type=float, default=5.0, help="consensus window (s)")
    parser.add_argument("--latency-samples", type=int, default=20, help="per side per session")
    parser.add_argument("--inflight-calls", type=int, default=96, help="calls per closed loop")
    parser.add_argument("--inflight-rounds", type=int, default=2, help="loops per side/session")
    args = parser.parse_args()
    consensus_ns = [4]
    warm_s = 1.5
    if args.quick:
        args.burst, args.bursts, args.session_rounds = 100, 1, 1
        args.consensus_rounds, args.window, warm_s = 2, 3.0, 1.0
        args.latency_samples, args.inflight_calls, args.inflight_rounds = 8, 48, 1
    if args.full:
        consensus_ns = [4, 7]
        args.session_rounds = max(args.session_rounds, 3)
        args.consensus_rounds = max(args.consensus_rounds, 4)

    started = time.perf_counter()
    load_before = os.getloadavg()
    ray.init(
        address="local",  # always a fresh local Ray, never one found on the machine
        num_cpus=EXECUTORS + PLAIN_ACTORS + 2,  # executors + plain actors (1 CPU each) + slack
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
    )
    sessions: list[dict] = []
    try:
        print(f"1. consensus alone: n = {consensus_ns}, {args.window:g} s windows", flush=True)
        t = time.perf_counter()
        windows = 2 * len(consensus_ns) * args.consensus_rounds
        with progress_bar("consensus windows", windows, console=PROGRESS) as bar:
            consensus = measure_consensus(
                consensus_ns, args.consensus_rounds, warm_s, args.window, progress=bar
            )
        consensus_s = time.perf_counter() - t
        actors = [PlainExecutor.remote() for _ in range(PLAIN_ACTORS)]
        ray.get([a.nap.remote(0) for a in actors], timeout=120)
        print(
            f"2.-4. cluster sessions: trusted, BFT n=4, BFT n=4 release=verdict, BFT n=7 alternating, "
            f"{args.session_rounds} each; bursts of {args.burst}",
            flush=True,
        )
        t = time.perf_counter()
        modes = ["trusted", "bft4", "bft4v", "bft7"]
        with (
            tempfile.TemporaryDirectory(prefix="bench-bft-ledgers-") as ledger_root,
            progress_bar(
                "cluster sessions", len(modes) * args.session_rounds, console=PROGRESS
            ) as bar,
        ):
            for r in range(args.session_rounds):
                order = modes[r % len(modes) :] + modes[: r % len(modes)]
                for mode in order:
                    s = session(mode, args, actors, ledger_root, r)
                    print(
                        f"  {mode:>7} session {r}: init {s['init_s']:.1f} s, shutdown "
                        f"{s['shutdown_s']:.1f} s",
                        flush=True,
                    )
                    sessions.append(s)
                    bar.advance(status=f"{mode} session {r}")
        sessions_s = time.perf_counter() - t
    finally:
        bft_ray.shutdown()
        ray.shutdown()

    summary = summarise(sessions)
    rows = table(consensus, summary)
    w = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{w}}  {'ratio':>7}  {'target':>7}  result")
    for name, ratio, target, ok in rows:
        print(f"{name:<{w}}  {ratio:>7}  {target:>7}  {ok}")
    problems = []
    for s in sessions:
        gc = s.get("group_check")
        if gc is None:
            continue
        if gc["errors"]:
            problems.append(f"{s['mode']}: verifier errors {gc['errors']}")
        if not gc["reputation_digests_equal"]:
            problems.append(f"{s['mode']}: reputation digests differ across verifiers")
        if any(gc["pending"]):
            problems.append(f"{s['mode']}: claims still pending after the session {gc['pending']}")
        if any(x > 0 for x in gc["rounds_advanced_while_idle_1s"]):
            problems.append(
                f"{s['mode']}: rounds advanced while idle {gc['rounds_advanced_while_idle_1s']}"
            )
        phases = [("burst", b.get("group")) for b in s["bursts"]]
        phases += [("one at a time", s.get("one_at_a_time_group"))]
        phases += [("12 in flight", s.get("inflight_group"))]
        for phase, delta in phases:
            if delta and delta["rejected_all_verifiers"]:
                problems.append(
                    f"{s['mode']} {phase}: messages rejected (all verifiers) "
                    f"{delta['rejected_all_verifiers']} over {delta['rounds']:.0f} rounds"
                )
    for key, c in consensus.items():
        for side in ("bft", "raw"):
            for wdw in c[f"{side}_windows"]:
                if wdw["stalled_nodes"]:
                    problems.append(f"consensus {key} {side}: stalled {wdw['stalled_nodes']}")
                if any(wdw.get("rejected") or []):
                    problems.append(f"consensus {key} {side}: rejected {wdw['rejected']}")
    for p in problems:
        print("observed:", p)

    total_s = time.perf_counter() - started
    result = {
        "benchmark": "bft",
        "mode": "quick" if args.quick else ("full" if args.full else "default"),
        "args": vars(args),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "bft_ray_uncommitted_changes": bool(_git("status", "--porcelain", "--", ".")),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "executors": EXECUTORS,
        "replicas": REPLICAS,
        "notes": {
            "cpu": "CPU-s of each actor's worker process (psutil), pids from Ray's actor table "
            "(ray._private.state.actors()); None where a pid was not found",
            "claims_per_block_incl_empty": "claims committed / ledger blocks committed during "
            "the burst, counting the empty blocks that finish the two-chain (status() does not "
            "say which blocks are empty)",
            "inflight": "closed loop: a new logical call as soon as one finishes; plain3: 3 "
            "replicas on 3 plain actors (the brief's comparison); plain4: 3 of 4 plain actors "
            "rotating (the executor pool's capacity)",
            "interleaving": "part 1: a fresh group per window, sides alternating; part 3: "
            "cluster sessions alternate between modes, and BFT/plain alternate within a "
            "bft4 session",
        },
        "consensus_alone": consensus,
        "sessions": sessions,
        "summary": summary,
        "table": [dict(zip(("measurement", "ratio", "target", "result"), r)) for r in rows],
        "observed_problems": problems,
        "consensus_s": consensus_s,
        "sessions_s": sessions_s,
        "total_s": total_s,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bft.json").write_text(json.dumps(result, indent=2, default=str))
    plot(consensus, summary)
    print(f"wrote {RESULTS / 'bft.json'} and bft.png ({total_s:.0f} s in all)")


def plot(consensus: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    labels, vals, colors = [], [], []
    for key, c in consensus.items():
        labels += [f"BFT {key}", f"raw Ray {key}"]
        vals += [c["bft_rounds_per_s"], c["raw_rounds_per_s"]]
        colors += ["C1", "C0"]
    ax.bar(labels, vals, color=colors)
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("rounds / s")
    ratios = ", ".join(f"{k} {c['ratio_bft_over_raw']:.2f}" for k, c in consensus.items())
    ax.set_title(f"consensus alone: BFT / raw = {ratios} (target >= {CONSENSUS_TARGET})")

    ax = axes[1]
    v = summary["verdicts"]
    modes = [m for m in ("trusted", "bft4", "bft4v", "bft7") if m in v]
    ax.bar(
        modes, [v[m]["verdicts_per_s"] for m in modes], color=["C0", "C1", "C3", "C2"][: len(modes)]
    )
    for i, m in enumerate(modes):
        ax.text(
            i,
            v[m]["verdicts_per_s"],
            f"{v[m]['verdicts_per_s']:.0f}/s\np50 {v[m]['latency_p50_ms']:.0f} ms\n"
            f"p99 {v[m]['latency_p99_ms']:.0f} ms",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylim(0, max(v[m]["verdicts_per_s"] for m in modes) * 1.45)
    ax.set_ylabel("values / s (trivial burst; bft4v: released at the verdict)")
    ax.set_title("verified x + 1, replicas=3, 4 executors")

    ax = axes[2]
    e2e = summary["end_to_end"]
    labels: list[str] = []
    bars: dict[str, list[float]] = {"bft": [], "verdict": [], "plain": []}
    one, one_v = e2e.get("one_at_a_time"), e2e.get("one_at_a_time_verdict")
    infl, infl_v = e2e.get("inflight"), e2e.get("inflight_verdict")
    if one:
        labels.append("1 at a time\np50 latency")
        bars["bft"].append(one["verified_median_ms"])
        bars["verdict"].append(one_v["verified_median_ms"] if one_v else 0.0)
        bars["plain"].append(one["plain3_median_ms"])
    if infl:
        labels.append(f"{INFLIGHT} in flight\np50 latency")
        bars["bft"].append(infl["plain3"]["bft_latency_p50_ms"])
        bars["verdict"].append(infl_v["plain3"]["bft_latency_p50_ms"] if infl_v else 0.0)
        bars["plain"].append(infl["plain3"]["plain_latency_p50_ms"])
    x = range(len(labels))
    for off, key, label, color in (
        (-0.27, "bft", "BFT (verifiers=4)", "C1"),
        (0.0, "verdict", "BFT, release='verdict'", "C3"),
        (0.27, "plain", "plain Ray, 3 actors", "C0"),
    ):
        ax.bar([k + off for k in x], bars[key], width=0.27, label=label, color=color)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("ms")
    ax.set_title("50 ms task, 3 replicas")
    ax.legend(fontsize=8)
    fig.suptitle("bft-ray BFT verifier group on Ray (2-core machine, shared)")
    fig.tight_layout()
    fig.savefig(RESULTS / "bft.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
