"""notebooks/fleet.ipynb runs clean (nbclient), as tests/test_notebook.py
runs the breakdown notebook."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_fleet_notebook_runs_clean() -> None:
    path = REPO / "notebooks" / "fleet.ipynb"
    nb = nbformat.read(path, as_version=4)
    # Executed in a scratch copy: the committed notebook stays output-free.
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    n_samples = len(list((REPO / "sample_traces").glob("*.vmtrace")))
    assert f"{n_samples} traces summarised, 0 failed" in text
    assert "precise" in text and "bql_share" in text
    # The fleet figures rendered as plotly JSON, not as an error or nothing.
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) >= 3
