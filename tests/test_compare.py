"""vmtrace compare on the real QEMU sample traces: CLI, JSON and API agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.compare import compare_traces
from vmtrace.trace import read_trace

REPO = Path(__file__).resolve().parent.parent
ONE = REPO / "sample_traces" / "qemu-pmtimer-1vcpu.vmtrace"
TWO = REPO / "sample_traces" / "qemu-pmtimer-2vcpu.vmtrace"
CLI = [sys.executable, "-m", "vmtrace.cli"]


def test_columns_and_deltas_come_from_each_trace() -> None:
    table, bds = compare_traces([ONE, TWO])
    a, b = bql_breakdown(read_trace(ONE)), bql_breakdown(read_trace(TWO))
    la, lb = list(bds)
    for comp in ("vmexit", "dispatch", "lock_wait", "bql_wait", "total"):
        assert table.at[comp, la] == pytest.approx(a.components[comp])
        assert table.at[comp, lb] == pytest.approx(b.components[comp])
        assert table.at[comp, f"{lb} Δ"] == pytest.approx(b.components[comp] - a.components[comp])
    assert table.at["total", f"{lb} Δ%"] == pytest.approx(
        100 * (b.components["total"] - a.components["total"]) / a.components["total"]
    )
    assert table.at["exits", la] == len(a.exits)


def test_cli_json_matches_the_api(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "compare", str(ONE), str(TWO), "--format", "json", "--html", str(tmp_path / "c.html")],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(out.stdout)
    table, bds = compare_traces([ONE, TWO])
    rows = {r["component"]: r for r in doc["rows"]}
    for comp in ("vmexit", "emulator", "dispatch", "total"):
        for label in bds:
            assert rows[comp][label] == pytest.approx(table.at[comp, label])
    assert doc["baseline"] == list(bds)[0]
    html = (tmp_path / "c.html").read_text()
    # plotly.js inline (the bundle mentions its CDN in code paths for maps,
    # never taken here; the headless-Chromium test watches the network).
    assert "Plotly.newPlot" in html or "Plotly.react" in html
    assert not re.search(r"<script[^>]*\bsrc=|<link[^>]*\bhref=\"http", html)


def test_one_trace_is_a_clear_error() -> None:
    out = subprocess.run([*CLI, "compare", str(ONE)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "at least two traces" in out.stderr and "Traceback" not in out.stderr


def test_same_trace_twice_has_zero_deltas() -> None:
    table, bds = compare_traces([ONE, ONE])
    second = list(bds)[1]
    assert second != list(bds)[0]  # labels are made unique
    assert (table[f"{second} Δ"].fillna(0) == 0).all()
