"""Prometheus metrics (``bft_ray.metrics``) after a known workload, read from Ray's export port.

One Ray for the module, started with a metrics export port and a 1 s metrics report interval
(Ray's default is 10 s); the dashboard stays off: the per-node agent that serves the port runs
without it. Export is periodic, so every check polls the Prometheus text until the expected
values are there (or a deadline passes), then asserts them.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable

import numpy as np
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

import bft_ray

pytestmark = pytest.mark.ray

N_EXEC = 4
CALLS = 6
ZEROS = 3  # the executor slot injected with the `zeros` fault


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def port():
    port = _free_port()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=8,
        num_gpus=8,
        include_dashboard=False,
        object_store_memory=300 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    yield port
    bft_ray.shutdown()
    ray.shutdown()


Samples = list[tuple[str, dict[str, str], float]]


def scrape(port: int) -> Samples:
    """The ``ray_bft_ray_*`` samples of the node's Prometheus text."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return []
    return [
        (s.name, s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("ray_bft_ray_")
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (over workers)."""
    return sum(
        v
        for n, lab, v in samples
        if n == name and all(lab.get(k) == want for k, want in labels.items())
    )


def poll(port: int, ready: Callable[[Samples], bool], timeout: float = 40.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


@bft_ray.verified_remote(replicas=3, num_gpus=1)
def affine(x):
    return x * 2.0 + 1.0


def trusted_ready(s: Samples, c: dict[str, str]) -> bool:
    fn = {**c, "function": "affine"}
    return (
        value(s, "ray_bft_ray_calls_accepted_total", **fn) == CALLS
        and value(s, "ray_bft_ray_judgements_total", **c) == 3 * CALLS
        and value(s, "ray_bft_ray_replication_factor_count", **fn) == CALLS
    )


def test_trusted_verifier_metrics(port):
    cluster = bft_ray.init(executors=N_EXEC, name="m-trusted", quarantine_below=0.0)
    try:
        cluster.inject_fault(ZEROS, "zeros")
        refs = [affine.remote(np.arange(4.0) + i) for i in range(CALLS)]
        values = bft_ray.get(refs, timeout=120)
        for i, v in enumerate(values):
            np.testing.assert_array_equal(v, (np.arange(4.0) + i) * 2.0 + 1.0)
        report = cluster.report()  # settles: every verdict record is applied
        # Scraped while the verifier runs: its last points leave with its next flush.
        s = poll(port, lambda s: trusted_ready(s, {"cluster": "m-trusted"}))
    finally:
        cluster.shutdown()
    rows = {r["executor"]: r for r in report.executors}
    bad = f"ex{ZEROS}"
    assert rows[bad]["disagreed"] >= 1  # picked at least once (random task ids)
    c = {"cluster": "m-trusted"}
    fn = {**c, "function": "affine"}
    assert value(s, "ray_bft_ray_calls_verified_total", **fn) == CALLS
    assert value(s, "ray_bft_ray_calls_accepted_total", **fn) == CALLS
    assert value(s, "ray_bft_ray_calls_failed_total", **fn) == 0
    assert value(s, "ray_bft_ray_escalations_total", **fn) == 0
    assert value(s, "ray_bft_ray_replacements_total", **fn) == 0
    # Disagreements and flags by executor: exactly what the report says.
    assert (
        value(s, "ray_bft_ray_judgements_total", **c, executor=bad, label="disagreed")
        == (rows[bad]["disagreed"])
    )
    assert value(s, "ray_bft_ray_flags_total", **c, executor=bad) == rows[bad]["flagged"]
    assert (
        value(s, "ray_bft_ray_judgements_total", **c, label="disagreed") == rows[bad]["disagreed"]
    )
    for eid, row in rows.items():
        assert (
            value(s, "ray_bft_ray_judgements_total", **c, executor=eid, label="agreed")
            == (row["agreed"])
        )
        if eid != bad:
            assert value(s, "ray_bft_ray_flags_total", **c, executor=eid) == 0
    # Three executions per call (sums are rebuilt from bucket midpoints: exact for these
    # buckets), every call decided between 1 ms and 60 s.
    assert value(s, "ray_bft_ray_replication_factor_sum", **fn) == 3 * CALLS
    assert value(s, "ray_bft_ray_replication_factor_bucket", **fn, le="2.5") == 0
    assert value(s, "ray_bft_ray_replication_factor_bucket", **fn, le="3.5") == CALLS
    lat = {**fn, "outcome": "accepted"}
    assert value(s, "ray_bft_ray_verdict_latency_seconds_count", **lat) == CALLS
    assert value(s, "ray_bft_ray_verdict_latency_seconds_bucket", **lat, le="60.0") == CALLS
    assert value(s, "ray_bft_ray_verdict_latency_seconds_bucket", **lat, le="0.001") == 0
    assert 0 < value(s, "ray_bft_ray_verdict_latency_seconds_sum", **lat) < 60 * CALLS


HONEST = ("0", "2", "3")


def bft_ready(s: Samples) -> bool:
    c = {"cluster": "m-bft"}
    return (
        all(
            value(s, "ray_bft_ray_bft_commit_latency_seconds_count", **c, verifier=i) == CALLS
            for i in HONEST
        )
        and value(s, "ray_bft_ray_calls_accepted_total", **c) == CALLS
        # Each process exports on its own clock: wait for the dispatcher's histogram too.
        and value(s, "ray_bft_ray_replication_factor_count", **c) == CALLS
    )


@pytest.mark.slow  # about 20 s: `make test-full`; make test keeps the trusted verifier's metrics
def test_bft_group_metrics(port, tmp_path):
    cluster = bft_ray.init(
        executors=N_EXEC,
        verifiers=4,
        name="m-bft",
        quarantine_below=0.0,
        ledger_dir=str(tmp_path),
        verifier_faults={1: "silent"},  # its rounds as leader time out: view changes
    )
    try:
        for i in range(CALLS):  # one by one, so that every verifier leads some rounds
            x = np.arange(4.0) + i
            np.testing.assert_array_equal(bft_ray.get(affine.remote(x), timeout=120), x * 2 + 1)
        s = poll(port, bft_ready)
    finally:
        cluster.shutdown()
    c = {"cluster": "m-bft"}
    honest = HONEST
    assert value(s, "ray_bft_ray_calls_verified_total", **c, function="affine") == CALLS
    assert value(s, "ray_bft_ray_calls_accepted_total", **c, function="affine") == CALLS
    assert value(s, "ray_bft_ray_replication_factor_sum", **c) == 3 * CALLS
    for i in ("0", "1", "2", "3"):
        assert value(s, "ray_bft_ray_bft_claims_total", **c, verifier=i) == CALLS
    for i in honest:
        v = {**c, "verifier": i}
        assert value(s, "ray_bft_ray_bft_committed_total", **v, outcome="accepted") == CALLS
        assert value(s, "ray_bft_ray_bft_claims_refused_total", **v) == 0
        assert value(s, "ray_bft_ray_bft_commit_latency_seconds_count", **v) == CALLS
        assert value(s, "ray_bft_ray_bft_commit_latency_seconds_bucket", **v, le="60.0") == CALLS
    # The silent verifier led some rounds; the honest ones timed them out and changed view.
    assert sum(value(s, "ray_bft_ray_bft_round_timeouts_total", **c, verifier=i) for i in honest)
    assert sum(value(s, "ray_bft_ray_bft_view_changes_total", **c, verifier=i) for i in honest)
