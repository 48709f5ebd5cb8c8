"""Helpers shared by test modules."""

from __future__ import annotations

import bft_ray


def row_for_slot(report: bft_ray.Report, index: int) -> dict:
    """Summed counters over every incarnation of pool slot ``index``."""
    rows = report.by_index(index)
    assert rows, f"no executor with index {index}"
    keys = ("tasks", "agreed", "disagreed", "invalid", "crashed", "timeouts", "flagged", "disputed")
    return {k: sum(r[k] for r in rows) for k in keys}


# Verifier backends the shared verdict suite runs against (init keyword arguments). The BFT
# verifier group adds itself here, so every verdict test runs against it too.
VERIFIER_BACKENDS: dict[str, dict] = {"trusted": {"verifiers": 1}}
