"""The ``bft-ray`` command against a running BFT cluster: status, keys, verify (subprocesses and
click's runner), exit codes and JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import ray
from click.testing import CliRunner

import bft_ray
from bft_ray.cli import main

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def running(ray_module, tmp_path_factory):
    c = bft_ray.init(executors=4, verifiers=4, ledger_dir=str(tmp_path_factory.mktemp("led")))
    yield c, ray.get_runtime_context().gcs_address
    c.shutdown()


@bft_ray.verified_remote(replicas=3, num_gpus=1)
def double(x):
    return x * 2


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "bft_ray", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_status_attaches_and_reports_json(running):
    cluster, address = running
    bft_ray.get([double.remote(np.arange(3)) for _ in range(3)], timeout=120)
    out = cli("status", "--address", address, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert len(data["executors"]) == 4 and data["counters"]["accepted"] >= 3
    assert len(data["verifiers"]) == 4 and all(v["started"] for v in data["verifiers"])
    assert data["verifier_keys"] == [k.hex() for k in cluster.verifier_keys()]
    recent = data["recent"]
    assert len(recent) >= 3 and recent[-1]["verdict"] == "accepted"
    assert recent[-1]["function"].endswith("double") and len(recent[-1]["agreed"]) >= 2
    table = cli("status", "--address", address)
    assert table.returncode == 0 and "verifier group (n=4)" in table.stdout
    assert "recent verdicts" in table.stdout


def test_bft_group_refuses_spot_checks_with_advice(running):
    spot = bft_ray.verified_remote(replicas=3, num_gpus=1, policy=bft_ray.adaptive(0.1))(
        lambda x: x
    )
    with pytest.raises(bft_ray.ConfigError, match="trusted mode"):
        spot.remote(1)


def test_status_of_a_cluster_that_does_not_run_fails_clearly(running):
    _, address = running
    out = cli("status", "--address", address, "--name", "nope")
    assert out.returncode == 1
    assert "no bft-ray cluster named 'nope'" in out.stderr


def test_keys_then_verify_a_certificate_offline(running, tmp_path):
    _, address = running
    ref = double.remote(np.arange(4))
    bft_ray.get(ref, timeout=120)
    keys = cli("keys", "--address", address)
    assert keys.returncode == 0, keys.stderr[-2000:]
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(keys.stdout)
    cert = bft_ray.certificate(ref)
    cert_file = tmp_path / "cert.json"
    cert_file.write_text(cert.to_json())
    ok = cli("verify", str(cert_file), "--keys", str(keys_file), "--task-id", cert.task_id)
    assert ok.returncode == 0 and ok.stdout.startswith("VALID"), ok.stdout + ok.stderr
    runner = CliRunner()
    if cert.mode == "bft":  # the group's certificate proves its commit with the QCs it carries
        proven = runner.invoke(
            main, ["verify", str(cert_file), "--keys", str(keys_file), "--require-commit-proof"]
        )
        assert proven.exit_code == 0 and "commit proven by QCs" in proven.output, proven.output
    # Offline, through click's runner: another task's id, a changed digest, junk.
    runner = CliRunner()
    other = runner.invoke(
        main, ["verify", str(cert_file), "--keys", str(keys_file), "--task-id", "x"]
    )
    assert other.exit_code == 1 and "INVALID" in other.output
    data = json.loads(cert_file.read_text())
    data["digest"] = "00" * 32
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    res = runner.invoke(main, ["verify", str(bad), "--keys", str(keys_file)])
    assert res.exit_code == 1 and "INVALID" in res.output
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert runner.invoke(main, ["verify", str(junk), "--keys", str(keys_file)]).exit_code == 1
    missing = runner.invoke(main, ["verify", str(cert_file)])  # --keys is required
    assert missing.exit_code == 2


def test_every_command_has_help():
    runner = CliRunner()
    for cmd in [[], ["audit"], ["status"], ["keys"], ["verify"], ["bench"], ["demo"]]:
        res = runner.invoke(main, [*cmd, "--help"])
        assert res.exit_code == 0, (cmd, res.output)
        assert "Usage" in res.output or "usage" in res.output
