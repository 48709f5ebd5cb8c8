"""The main job runs through Ray's job API (what `ray job submit` uses) against a local cluster."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


def test_demo_job_succeeds_through_the_job_api():
    from ray.job_submission import JobStatus, JobSubmissionClient

    if ray.is_initialized():
        ray.shutdown()
    ctx = ray.init(
        address="local",
        num_cpus=8,
        num_gpus=4,
        include_dashboard=True,  # the job server lives in the dashboard
        dashboard_host="127.0.0.1",
        object_store_memory=300 * 1024**2,
        log_to_driver=False,
    )
    try:
        client = JobSubmissionClient(f"http://{ctx.dashboard_url}")
        # The job joins this cluster through RAY_ADDRESS, which the job supervisor sets.
        job = client.submit_job(
            entrypoint=f"{sys.executable} {REPO / 'jobs' / 'demo.py'} --tasks 10"
        )
        deadline = time.monotonic() + 240
        while client.get_job_status(job) not in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.STOPPED,
        }:
            assert time.monotonic() < deadline, "job did not finish in time"
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
        assert "Connecting to existing Ray cluster" in logs
        assert "0 wrong values accepted" in logs and "certificate verifies offline: True" in logs
    finally:
        ray.shutdown()
