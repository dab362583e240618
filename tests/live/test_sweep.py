"""vmtrace sweep end to end on the reference VMM: traces, summary, HTML."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.trace import read_trace

from .test_record_qemu import live  # noqa: F401  (fixture: root, KVM, bcc)


def test_sweep_writes_traces_summary_and_report(live: None, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmtrace.cli",
            "sweep",
            "-o",
            str(out),
            "--vmm",
            "reference",
            "--locking",
            "bql,unlocked",
            "--vcpus",
            "1,2",
            "--iterations",
            "1500",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert list(zip(summary["config"], summary["vcpus"], strict=True)) == [
        ("reference bql", 1),
        ("reference bql", 2),
        ("reference unlocked", 1),
        ("reference unlocked", 2),
    ]
    assert json.loads((out / "summary.json").read_text())[3]["config"] == "reference unlocked"
    row: Any  # a row of cells: pandas-stubs type each as any scalar
    for row in summary.itertuples():
        # Every number in the summary is the trace's own breakdown.
        b = bql_breakdown(read_trace(row.trace))
        assert row.total == pytest.approx(b.components["total"])
        assert row.bql_wait == pytest.approx(b.components["bql_wait"])
        assert row.observer_effect == pytest.approx(row.traced_guest_cycles_per_op / row.guest_cycles_per_op)
        assert row.guest_cycles_per_op > 0 and row.exits >= row.vcpus * 1500
    unlocked = summary[summary["config"] == "reference unlocked"]
    assert (unlocked["bql_wait"] <= 0.01 * unlocked["total"]).all()
    html = (out / "report.html").read_text()
    assert "Cycles per exit by component" in html
    assert not re.search(r"<script[^>]*\bsrc=|<link[^>]*\bhref=\"http", html)
    assert "reference unlocked" in proc.stdout


def test_repeat_keeps_the_trace_of_the_median_recorded_run(live: None, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmtrace.cli",
            "sweep",
            "-o",
            str(out),
            "--vmm",
            "reference",
            "--locking",
            "unlocked",
            "--vcpus",
            "1",
            "--iterations",
            "500",
            "--repeat",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["runs"] == 3 and row["guest_min"] <= row["guest_cycles_per_op"] <= row["guest_max"]
    # The kept trace is the recorded run whose guest number is the median.
    assert read_trace(row["trace"]).meta["bench"]["cycles_per_op"] == row["traced_guest_cycles_per_op"]
    assert sorted(p.name for p in out.iterdir()) == [
        "reference-unlocked-1vcpu.vmtrace",
        "report.html",
        "summary.csv",
        "summary.json",
    ]
    assert "guest range" in proc.stdout and "medians of 3 runs" in proc.stdout


def test_python_ft_gil_puts_the_gil_curves_beside(live: None, tmp_path: Path) -> None:
    from vmtrace.interpreter import free_threaded_path

    from ..conftest import need

    need(
        os.access(free_threaded_path(), os.X_OK),
        f"needs the free-threaded CPython at {free_threaded_path()} (bash scripts/setup.sh builds it)",
    )
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmtrace.cli",
            "sweep",
            "-o",
            str(out),
            "--vmm",
            "reference",
            "--locking",
            "unlocked",
            "--vcpus",
            "2",
            "--iterations",
            "500",
            "--python",
            "ft,gil",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["config"]) == ["reference unlocked", "reference unlocked (GIL)"]
    assert list(summary["free_threaded"]) == [True, False] and list(summary["gil_enabled"]) == [False, True]
    assert Path(summary["trace"][1]).name == "reference-unlocked-gil-2vcpu.vmtrace"
    row: Any  # a row of cells: pandas-stubs type each as any scalar
    for row in summary.itertuples():
        meta = read_trace(row.trace).meta
        assert meta["target"]["interpreter"]["free_threaded"] == row.free_threaded
    assert "reference unlocked (GIL)" in (out / "report.html").read_text()
