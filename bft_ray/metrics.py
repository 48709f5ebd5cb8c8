"""Prometheus metrics of the verifiers, through :mod:`ray.util.metrics`.

Every metric is defined here, once. The verifier actors record into a :class:`Recorder` (one
per process), which only adds to plain dicts on the verdict path and hands the totals to Ray's
metric objects about once a second, from the actor's event loop; the Ray objects are created
lazily, at that first hand-over, in the process that records them (as Ray requires). Ray's own
recording costs a few microseconds per point, several times per call; adding to a dict costs
a fraction of one. Ray exports what it was handed with its next metrics report (every
``metrics_report_interval_ms``, 10 s by default) on the node's metrics export port, in the
Prometheus text format: start Ray with ``ray.init(_metrics_export_port=PORT)`` (or
``bft_ray.init(_metrics_export_port=PORT)``) and read ``http://<node>:PORT/metrics``.
``BFT_RAY_METRICS=0`` in the actors' environment turns recording off.

Ray prefixes every name with ``ray_`` and counters also get ``_total``:
``bft_ray_calls_verified`` is ``ray_bft_ray_calls_verified_total`` in the Prometheus text, and a
histogram ``h`` is exported as ``ray_h_bucket``, ``ray_h_count`` and ``ray_h_sum``. Ray's
agent rebuilds a histogram's ``_sum`` from its bucket midpoints, so sums are approximate
(exact for the replication factor up to 8).

Metrics of the trusted verifier (in BFT mode: the dispatcher). ``cluster`` is the bft-ray
cluster's name (``bft_ray.init(name=...)``), ``function`` the verified function or
``Class.method`` name, ``executor`` an executor id (``ex2``, ``ex2.1`` after a respawn):

    bft_ray_calls_verified (counter; cluster, function): Calls whose replicas were dispatched,
        functions and instance methods (``report()["counters"]["calls"]``).
    bft_ray_calls_accepted (counter; cluster, function): Calls a quorum agreed on, user
        errors included.
    bft_ray_calls_failed (counter; cluster, function): Calls without a verdict (no quorum,
        too few answers).
    bft_ray_user_errors (counter; cluster, function): Accepted calls whose agreed answer is
        an exception raised by user code.
    bft_ray_escalations (counter; cluster, function): Times replicas were added because no
        group of agreeing outputs reached the quorum.
    bft_ray_replacements (counter; cluster, function): Replicas dispatched to replace ones
        that crashed, stalled or answered invalidly.
    bft_ray_judgements (counter; cluster, executor, label): Judgements of applied verdict
        records, one per replica; ``label`` is ``agreed``, ``unaligned``, ``disagreed``,
        ``disputed``, ``crashed``, ``timeout`` or ``invalid``. ``label="disagreed"`` counts
        the disagreements by executor. Constructor answers of replicated instances count too.
    bft_ray_flags (counter; cluster, executor): Judgements that flag the executor
        (disagreed, crashed, timeout, invalid): the ``flagged`` column of ``cluster.report()``.
    bft_ray_verdict_latency_seconds (histogram; cluster, function, outcome): From the
        dispatch of a call's replicas (its arguments ready) to its verdict, certification by
        the BFT group included; ``outcome`` is ``accepted`` or ``failed``. Buckets from 1 ms
        to 60 s (:data:`LATENCY_BUCKETS`).
    bft_ray_replication_factor (histogram; cluster, function): Replicas dispatched per
        decided call (escalations and replacements included): executions per call. Bucket
        bounds halfway between counts, so ``le="3.5"`` counts calls with at most 3
        executions (:data:`REPLICATION_BUCKETS`).

Metrics of each verifier of a BFT group (``verifier`` is its index in the group):

    bft_ray_bft_claims (counter; cluster, verifier): Claims received from the dispatcher.
    bft_ray_bft_claims_refused (counter; cluster, verifier): Claims whose recheck failed
        here (this verifier does not vote for them).
    bft_ray_bft_committed (counter; cluster, verifier, outcome): Verdicts committed and
        applied at this verifier; ``outcome`` is ``accepted`` or ``failed``.
    bft_ray_bft_commit_latency_seconds (histogram; cluster, verifier): From a claim's
        arrival at this verifier to its commit there (claims it committed without receiving
        them are not observed). Buckets as the verdict latency's.
    bft_ray_bft_round_timeouts (counter; cluster, verifier): Rounds this verifier gave up on
        (it broadcast a timeout: no progress within the round's time limit).
    bft_ray_bft_view_changes (counter; cluster, verifier): Timeout certificates this verifier
        formed: rounds left by a view change rather than by a certified block.

Example:
    >>> r = Recorder(enabled=False)
    >>> r.inc(CALLS_VERIFIED, ("default", "f"))  # a no-op when disabled
    >>> sorted(DEFINITIONS)[:2]
    ['bft_ray_bft_claims', 'bft_ray_bft_claims_refused']
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEFINITIONS",
    "LATENCY_BUCKETS",
    "REPLICATION_BUCKETS",
    "GroupMetrics",
    "Recorder",
    "VerifierMetrics",
    "recorder",
]

logger = logging.getLogger(__name__)

CALLS_VERIFIED = "bft_ray_calls_verified"
CALLS_ACCEPTED = "bft_ray_calls_accepted"
CALLS_FAILED = "bft_ray_calls_failed"
USER_ERRORS = "bft_ray_user_errors"
ESCALATIONS = "bft_ray_escalations"
REPLACEMENTS = "bft_ray_replacements"
JUDGEMENTS = "bft_ray_judgements"
FLAGS = "bft_ray_flags"
VERDICT_LATENCY = "bft_ray_verdict_latency_seconds"
REPLICATION = "bft_ray_replication_factor"
BFT_CLAIMS = "bft_ray_bft_claims"
BFT_REFUSED = "bft_ray_bft_claims_refused"
BFT_COMMITTED = "bft_ray_bft_committed"
BFT_COMMIT_LATENCY = "bft_ray_bft_commit_latency_seconds"
BFT_ROUND_TIMEOUTS = "bft_ray_bft_round_timeouts"
BFT_VIEW_CHANGES = "bft_ray_bft_view_changes"

#: Seconds; covers 1 ms to 60 s.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)
#: Replicas per call. Half-integer bounds: Ray's agent rebuilds a histogram's sum from bucket
#: midpoints, which are then the exact counts 1..8.
REPLICATION_BUCKETS = (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 10.5, 12.5, 16.5, 24.5, 32.5)

_FN = ("cluster", "function")
_VER = ("cluster", "verifier")

#: name -> (kind, tag keys, histogram boundaries or None, description).
DEFINITIONS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...] | None, str]] = {
    CALLS_VERIFIED: ("counter", _FN, None, "Verified calls whose replicas were dispatched."),
    CALLS_ACCEPTED: ("counter", _FN, None, "Verified calls a quorum agreed on."),
    CALLS_FAILED: ("counter", _FN, None, "Verified calls that reached no verdict."),
    USER_ERRORS: ("counter", _FN, None, "Accepted calls whose agreed answer is a user error."),
    ESCALATIONS: ("counter", _FN, None, "Escalations: replicas added for lack of a quorum."),
    REPLACEMENTS: ("counter", _FN, None, "Replicas replacing crashed, stalled or invalid ones."),
    JUDGEMENTS: (
        "counter",
        ("cluster", "executor", "label"),
        None,
        "Judgements of applied verdict records, by executor and label.",
    ),
    FLAGS: ("counter", ("cluster", "executor"), None, "Flags raised against each executor."),
    VERDICT_LATENCY: (
        "histogram",
        ("cluster", "function", "outcome"),
        LATENCY_BUCKETS,
        "Seconds from dispatching a call's replicas to its verdict.",
    ),
    REPLICATION: (
        "histogram",
        _FN,
        REPLICATION_BUCKETS,
        "Replicas dispatched per decided call (executions per call).",
    ),
    BFT_CLAIMS: ("counter", _VER, None, "Claims received by this BFT verifier."),
    BFT_REFUSED: ("counter", _VER, None, "Claims this BFT verifier refused after its recheck."),
    BFT_COMMITTED: (
        "counter",
        ("cluster", "verifier", "outcome"),
        None,
        "Verdicts committed and applied at this BFT verifier.",
    ),
    BFT_COMMIT_LATENCY: (
        "histogram",
        _VER,
        LATENCY_BUCKETS,
        "Seconds from a claim's arrival at this BFT verifier to its commit there.",
    ),
    BFT_ROUND_TIMEOUTS: ("counter", _VER, None, "Consensus rounds this BFT verifier timed out."),
    BFT_VIEW_CHANGES: (
        "counter",
        _VER,
        None,
        "Timeout certificates formed by this BFT verifier (view changes).",
    ),
}

#: Seconds between hand-overs to Ray's metric objects.
FLUSH_S = 1.0


class Recorder:
    """Per-process buffer of metric points, handed to ``ray.util.metrics`` once per ``flush_s``.

    ``inc`` and ``observe`` take a metric name of :data:`DEFINITIONS` and its tag values as a
    tuple in the order of its tag keys; they only add to dicts and, the first time after a
    flush, schedule the next flush on the running event loop (outside one, they flush at
    once). Any failure of Ray's metrics turns the recorder off; it never raises into the
    verdict path.

    Args:
        flush_s: Seconds between flushes.
        enabled: ``False`` makes recording a no-op (default: unless ``BFT_RAY_METRICS=0``).
    """

    def __init__(self, flush_s: float = FLUSH_S, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = os.environ.get("BFT_RAY_METRICS", "1") not in ("0", "false", "no", "")
        self.enabled = enabled
        self.flush_s = flush_s
        self._counts: dict[tuple[str, tuple[str, ...]], float] = {}
        self._points: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self._scheduled = False
        self._metrics: dict[str, Any] | None = None
        self._tags: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}

    def inc(self, name: str, tags: tuple[str, ...], value: float = 1) -> None:
        """Add ``value`` to counter ``name`` with tag values ``tags``."""
        if not self.enabled:
            return
        key = (name, tags)
        counts = self._counts
        counts[key] = counts.get(key, 0) + value
        if not self._scheduled:
            self._schedule()

    def observe(self, name: str, tags: tuple[str, ...], value: float) -> None:
        """Observe ``value`` in histogram ``name`` with tag values ``tags``."""
        if not self.enabled:
            return
        key = (name, tags)
        points = self._points.get(key)
        if points is None:
            self._points[key] = [value]
        else:
            points.append(value)
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        loop.call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        """Hand everything recorded since the last flush to Ray's metric objects."""
        self._scheduled = False
        counts, points = self._counts, self._points
        if not counts and not points:
            return
        self._counts, self._points = {}, {}
        metrics = self._ray_metrics()
        if metrics is None:
            return
        try:
            for key, value in counts.items():
                metrics[key[0]].inc(value, tags=self._tag_dict(key))
            for key, values in points.items():
                hist, tags = metrics[key[0]], self._tag_dict(key)
                for v in values:
                    hist.observe(v, tags=tags)
        except Exception as exc:  # never let metrics break verification
            logger.warning("bft-ray metrics disabled: recording failed: %s", exc)
            self.enabled = False

    def _tag_dict(self, key: tuple[str, tuple[str, ...]]) -> dict[str, str]:
        d = self._tags.get(key)
        if d is None:
            keys = DEFINITIONS[key[0]][1]
            d = self._tags[key] = {k: str(v) for k, v in zip(keys, key[1])}
        return d

    def _ray_metrics(self) -> dict[str, Any] | None:
        if self._metrics is None:
            try:
                from ray.util.metrics import Counter, Histogram

                made: dict[str, Any] = {}
                for name, (kind, keys, buckets, doc) in DEFINITIONS.items():
                    if kind == "counter":
                        made[name] = Counter(name, description=doc, tag_keys=keys)
                    else:
                        assert buckets is not None
                        made[name] = Histogram(
                            name, description=doc, boundaries=list(buckets), tag_keys=keys
                        )
            except Exception as exc:
                logger.warning("bft-ray metrics disabled: cannot create Ray metrics: %s", exc)
                self.enabled = False
                return None
            self._metrics = made
        return self._metrics


_recorder: Recorder | None = None


def recorder() -> Recorder:
    """This process's recorder (created on first use)."""
    global _recorder
    if _recorder is None:
        _recorder = Recorder()
    return _recorder


def cluster_of_actor(prefix: str = "verifier:", default: str = "default") -> str:
    """The bft-ray cluster name from the calling actor's Ray name (``verifier:<name>``)."""
    try:
        import ray

        name = ray.get_runtime_context().get_actor_name() or ""
    except Exception:
        return default
    return name[len(prefix) :] if name.startswith(prefix) else default


class VerifierMetrics:
    """What the trusted verifier (or the BFT dispatcher) records, under its cluster's name.

    Args:
        cluster: The bft-ray cluster's name (the ``cluster`` tag).
        rec: The recorder (default: this process's).
    """

    __slots__ = ("_judged", "cluster", "rec")

    def __init__(self, cluster: str, rec: Recorder | None = None) -> None:
        self.cluster = cluster
        self.rec = rec or recorder()
        # (executor id, label value) -> its judgement tags and, if the label flags, flag tags
        self._judged: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...] | None]] = {}

    def count(self, name: str, function: str, value: int = 1) -> None:
        """Counter ``name`` of the per-function ones (calls, accepted, failed, ...)."""
        self.rec.inc(name, (self.cluster, function), value)

    def verdict(self, function: str, outcome: str, seconds: float, executions: int) -> None:
        """A decided call: its latency and how many replicas it dispatched."""
        rec = self.rec
        if rec.enabled:
            rec.observe(VERDICT_LATENCY, (self.cluster, function, outcome), seconds)
            rec.observe(REPLICATION, (self.cluster, function), executions)

    def judged(self, judgements: Iterable[Any]) -> None:
        """The judgements of an applied verdict record (``Judgement`` objects)."""
        rec = self.rec
        if not rec.enabled:
            return
        cache = self._judged
        for j in judgements:
            label = j.label
            key = (j.executor_id, label._value_)  # Enum.value and hashing are slow
            tags = cache.get(key)
            if tags is None:
                flag = (self.cluster, j.executor_id) if label.flags else None
                tags = cache[key] = ((self.cluster, j.executor_id, label._value_), flag)
            rec.inc(JUDGEMENTS, tags[0])
            if tags[1] is not None:
                rec.inc(FLAGS, tags[1])


class GroupMetrics:
    """What one BFT verifier records.

    Args:
        cluster: The bft-ray cluster's name.
        verifier: This verifier's index in the group.
        rec: The recorder (default: this process's).
    """

    __slots__ = ("_arrived", "_tcs", "_timeouts", "rec", "tags")

    def __init__(self, cluster: str, verifier: int, rec: Recorder | None = None) -> None:
        self.tags = (cluster, str(verifier))
        self.rec = rec or recorder()
        self._arrived: dict[str, float] = {}
        self._timeouts = 0
        self._tcs = 0

    def claim(self, task_id: str) -> None:
        """A claim arrived (its commit latency counts from now)."""
        self.rec.inc(BFT_CLAIMS, self.tags)
        arrived = self._arrived
        if task_id not in arrived:
            arrived[task_id] = time.monotonic()
            if len(arrived) > 50_000:  # refused claims that never commit
                del arrived[next(iter(arrived))]

    def refused(self) -> None:
        self.rec.inc(BFT_REFUSED, self.tags)

    def committed(self, task_id: str, accepted: bool) -> None:
        """A claim was committed and applied here."""
        rec, tags = self.rec, self.tags
        rec.inc(BFT_COMMITTED, (*tags, "accepted" if accepted else "failed"))
        arrived = self._arrived.pop(task_id, None)
        if arrived is not None:
            rec.observe(BFT_COMMIT_LATENCY, tags, time.monotonic() - arrived)

    def node_stats(self, stats: Any) -> None:
        """Round timeouts and view changes since the last call, from the core's ``NodeStats``."""
        timeouts, tcs = stats.timeouts, stats.tcs_formed
        if timeouts != self._timeouts:
            if timeouts > self._timeouts:
                self.rec.inc(BFT_ROUND_TIMEOUTS, self.tags, timeouts - self._timeouts)
            self._timeouts = timeouts
        if tcs != self._tcs:
            if tcs > self._tcs:
                self.rec.inc(BFT_VIEW_CHANGES, self.tags, tcs - self._tcs)
            self._tcs = tcs
