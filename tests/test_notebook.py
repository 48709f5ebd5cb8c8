"""The exploration notebook runs end to end (every cell, in a fresh kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.ray

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "explore.ipynb"


def test_exploration_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "valid: True" in outputs and "valid for a tampered value: False" in outputs
    assert "attestation signature valid: True" in outputs
    assert "exact: refused" in outputs and "atol=0.1: accepted" in outputs
    assert "median verdict latency" in outputs
    images = [
        o
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert images, "the pictures cell drew nothing"
    assert "bft valid: True" in outputs and "certificate with 3 verifier signatures" in outputs
