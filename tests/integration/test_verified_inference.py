"""VerifiedLM end to end on Ray: one executor serves an int8 copy; the accepted generation is
the honest one and only the cheater is flagged (the job's own check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# ~20 s (a Ray start and three executors): full suite only, `make test-full`.
pytestmark = [pytest.mark.ray, pytest.mark.slow]

JOB = Path(__file__).resolve().parents[2] / "jobs" / "verified_inference.py"


def test_job_flags_the_int8_cheater(ray_module, capsys):
    spec = importlib.util.spec_from_file_location("verified_inference_job", JOB)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    rc = job.main(["--prompts", "3", "--tokens", "16", "--calls", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "cheater (int8)" in out and "flagged 1" in out
    assert "equals the honest generation: True" in out
