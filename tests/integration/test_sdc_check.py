"""The SDC check on a real Ray: a clean pool of 4 CPU executors is healthy, an injected fault is
found and its slot named (nobody else's), and the job script exits non-zero with ``--inject``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bft_ray
from bft_ray import faults, sdc

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(ray_module):
    c = bft_ray.init(executors=4)
    yield c
    c.shutdown()


@pytest.fixture
def healed(cluster):
    yield cluster
    cluster.inject_fault(2, "honest")


def test_clean_pool_is_healthy(cluster, tmp_path):
    report = sdc.run_check(cluster, level="quick", repeat=2, out_dir=tmp_path, progress=False)
    assert report.verdicts() == {f"slot{i}": "healthy" for i in range(4)}, report.to_json()
    assert report.healthy and len(report.devices) == 4
    assert len({dev.model for dev in report.devices}) == 1  # one model: judged together
    for dev in report.devices:
        assert dev.device == "cpu" and dev.node_ip and dev.quarantine == "none"
        for c in dev.cases:
            assert c.runs == 2 and c.ok_runs == 2 and c.reproduced == "0/2"
            assert c.references == (["known"] if c.exact else ["majority"])
            assert c.expected_digest == c.actual_digest
    assert (tmp_path / sdc.JSON_NAME).exists() and (tmp_path / sdc.PNG_NAME).exists()
    back = sdc.SdcReport.from_json((tmp_path / sdc.JSON_NAME).read_text())
    assert back.verdicts() == report.verdicts()


def test_intermittent_bit_flips_name_slot_2_and_nobody_else(healed):
    healed.inject_fault(2, faults.intermittent(0.5, faults.bitflip()))
    report = sdc.run_check(healed, level="quick", repeat=2, progress=False)
    verdicts = report.verdicts()
    assert verdicts["slot2"] in ("faulty", "suspect"), report.to_json()
    assert {s: v for s, v in verdicts.items() if s != "slot2"} == {
        "slot0": "healthy",
        "slot1": "healthy",
        "slot3": "healthy",
    }
    bad = report.device(2)
    assert "intermittent" in bad.injected_fault
    hit = [c for c in bad.cases if c.mismatched_runs]
    assert hit and all(sum(c.bit_histogram) >= c.mismatching_elements for c in hit)
    assert all(c.expected_digest != c.actual_digest for c in hit)
    # the fault library's default flip is the top exponent bit: 30 (32-bit) or 14 (16-bit)
    assert {k for c in hit for k, n in enumerate(c.bit_histogram) if n} <= {14, 30, 62}
    assert "quarantine slot2" in bad.quarantine or "watch slot2" in bad.quarantine


def test_gemm_targeted_low_bit_flip_is_found_exactly_where_injected(healed):
    # Bit 3 of an fp32 element: a change of 8 ulps, found only by exact (homogeneous) judging.
    healed.inject_fault(2, sdc.KernelFault(faults.bitflip(3), ["gemm/float32"]))
    report = sdc.run_check(healed, level="quick", repeat=2, progress=False, slots=[0, 1, 2, 3])
    bad = report.device(2)
    assert bad.verdict == "faulty", report.to_json()
    assert [c.id for c in bad.cases if c.status != "ok"] == ["gemm/float32"]
    gemm = next(c for c in bad.cases if c.id == "gemm/float32")
    assert gemm.reproduced == "2/2" and gemm.mismatch_repeats == [0, 1]
    assert gemm.bit_histogram[3] == 2 and sum(gemm.bit_histogram) == 2
    assert all(d.verdict == "healthy" for d in report.devices if d.index != 2)


# A second Ray started in a subprocess (about 20 s): full suite only. The in-process tests above
# find the same injected faults; this one checks the script's exit code and files.
@pytest.mark.slow
def test_job_script_exits_non_zero_with_an_injected_fault(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/sdc_check.py",
            "--level",
            "quick",
            "--repeat",
            "1",
            "--executors",
            "4",
            "--inject",
            "2:bitflip",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert any("slot2" in line and "faulty" in line for line in proc.stdout.splitlines()), text
    data = json.loads((out / sdc.JSON_NAME).read_text())
    assert {d["slot"]: d["verdict"] for d in data["devices"]} == {
        "slot0": "healthy",
        "slot1": "healthy",
        "slot2": "faulty",
        "slot3": "healthy",
    }
    assert (out / sdc.PNG_NAME).stat().st_size > 2000


def test_job_script_refuses_a_bad_inject_flag_as_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "jobs/sdc_check.py", "--inject", "2:lies"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "unknown fault 'lies'" in proc.stderr
