"""The jobs run through `ray job submit` (the CLI command the README documents) and Ray's job
API against a local cluster smaller than their defaults: 4 CPUs and 2 (logical) GPUs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray.job_submission import JobStatus, JobSubmissionClient

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
RAY_CLI = Path(sys.executable).with_name("ray")  # .venv/bin/ray, as in the README
# What the README passes: the checkout as the working dir, without the virtual environment.
RUNTIME_ENV = {"working_dir": ".", "excludes": [".venv", ".git"]}


@pytest.fixture(scope="module")
def dashboard_url():
    if ray.is_initialized():
        ray.shutdown()
    # Ray's job supervisor gives a job the address in the `ray_current_cluster` file of the
    # cluster's temp dir, which only `ray start` writes: in the shared default (/tmp/ray) it may
    # name another Ray on this machine, or a dead one. This cluster gets its own.
    temp_dir = tempfile.mkdtemp(prefix="bftjob-", dir="/tmp")
    ctx = ray.init(
        address="local",
        num_cpus=4,
        num_gpus=2,
        include_dashboard=True,  # the job server lives in the dashboard
        dashboard_host="127.0.0.1",
        object_store_memory=300 * 1024**2,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    ray._private.utils.write_ray_address(ctx.address_info["gcs_address"], temp_dir)
    try:
        yield f"http://{ctx.dashboard_url}"
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_job(url: str, args: list[str], timeout_s: float = 240) -> tuple[JobStatus, str]:
    """Submit ``python <args>`` through the job API; returns (final status, logs)."""
    client = JobSubmissionClient(url)
    job = client.submit_job(
        entrypoint=shlex.join([sys.executable, *args]),
        runtime_env={**RUNTIME_ENV, "working_dir": str(REPO)},
    )
    deadline = time.monotonic() + timeout_s
    final = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while (status := client.get_job_status(job)) not in final:
        assert time.monotonic() < deadline, "job did not finish in time"
        time.sleep(1)
    return status, client.get_job_logs(job)


def test_readme_ray_job_submit_command_runs_the_demo(dashboard_url):
    # The README's command, from a shell without the virtual environment on PATH.
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "VIRTUAL_ENV"}}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env.setdefault("RAY_AUTH_MODE", "token")  # as the README exports it
    cmd = [
        str(RAY_CLI),
        "job",
        "submit",
        "--address",
        dashboard_url,
        "--runtime-env-json",
        json.dumps(RUNTIME_ENV),
        "--",
        sys.executable,  # "$PWD/.venv/bin/python" in the README
        "jobs/demo.py",
        "--gpus-per-executor",
        "0",
        "--tasks",
        "10",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Connecting to existing Ray cluster" in out  # joined through RAY_ADDRESS
    assert "0 wrong values accepted" in out and "certificate verifies offline: True" in out


def test_robust_training_refuses_a_cluster_short_of_gpus_saying_how_to_fix_it(dashboard_url):
    status, logs = run_job(dashboard_url, ["jobs/robust_training.py"], timeout_s=120)
    assert status == JobStatus.FAILED, logs[-3000:]
    text = " ".join(logs.split())  # rich wraps long lines
    assert "15 workers need 15 GPUs at one GPU per executor" in text, logs[-3000:]
    assert "the Ray cluster has 2 (2 free)" in text
    assert "--gpus-per-executor 0" in text and "fewer --workers" in text


@pytest.mark.slow  # about a minute of training: `make test-full` runs it, keeping `make test` < 10 min
def test_robust_training_sizes_its_executors_to_the_cluster(dashboard_url):
    # Default 15 workers x 1 CPU would need 15 CPUs; on 4 each executor gets a CPU share.
    status, logs = run_job(
        dashboard_url,
        [
            "jobs/robust_training.py",
            "--gpus-per-executor",
            "0",
            "--epochs",
            "3",
            "--baseline",
            "none",
            "--min-accuracy",
            "0.6",
        ],
    )
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    sized = re.search(r"executors: 15 x \((0\.\d+) CPU, 0 GPU\), sized to the cluster", logs)
    assert sized, logs[-3000:]
    assert 15 * float(sized.group(1)) <= 4
    assert "final accuracy" in logs


# About 20 s: `make test-full` runs it. In `make test` the job API path is the README demo job
# above, and verified inference on Ray is tests/integration/test_trust_e2e.py's prefill test.
@pytest.mark.slow
def test_verified_inference_job_runs_under_the_job_api(dashboard_url):
    # The inference job as the README submits it: prefill policy, the int8 cheater flagged alone.
    status, logs = run_job(
        dashboard_url,
        [
            "jobs/verified_inference.py",
            "--policy",
            "prefill",
            "--prompts",
            "2",
            "--tokens",
            "16",
            "--calls",
            "3",
        ],
    )
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "result: OK (flagged executors: " in logs, logs[-3000:]
    assert "equals the honest generation: True" in logs
    honest = re.findall(r"\[ +honest\] ex\d: tasks \d+, agreed \d+, flagged (\d+)", logs)
    assert honest == ["0", "0"], logs[-3000:]
    assert "verified generations: 3/3" in logs  # progress lines reach the job log
    assert re.search(r"policy prefill: [\d.]+ generations and [\d.]+ prefill checks", logs)
