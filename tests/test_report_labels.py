"""Every report says which interpreter ran beside the locking mode, and draws
the runnable component (issue 11).  The live twins are in
tests/live/test_free_threaded.py and tests/live/test_runnable.py."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from rich.console import Console

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.render.breakdown import breakdown_figure, render_breakdown
from vmtrace.render.figures import sweep_figure
from vmtrace.render.html import write_compare_html, write_html_report
from vmtrace.render.labels import interpreter_label, interpreter_short, locking_of, run_label
from vmtrace.render.palette import COMPONENT_LABELS
from vmtrace.render.text import render_comparison, render_sweep

from .synthetic import ExitScript, SyntheticTrace

FT = {"version": "3.13.5", "free_threaded": True, "gil_enabled": False, "path": "/c/python3.13t"}
GIL = {"version": "3.11.2", "free_threaded": False, "gil_enabled": True, "path": "/usr/bin/python3"}


def _trace(interp: dict | None, locking: str = "unlocked"):
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(kernel_ns=5000, kernel_preempted_ns=2000)] * 3)
    cmd = ["/c/python3.13t", "run_reference_vmm.py", "run", "--vcpus", "1", "--locking", locking]
    return s.trace(target={"vmm": "reference", "command": cmd, "pid": 1, "interpreter": interp})


def _text(b) -> str:
    buf = io.StringIO()
    render_breakdown(b, Console(file=buf, width=160, color_system=None))
    return buf.getvalue()


def test_labels_of_each_interpreter() -> None:
    assert interpreter_label(FT) == "CPython 3.13.5 free-threaded"
    assert interpreter_label(GIL) == "CPython 3.11.2 with the GIL"
    assert interpreter_label({**FT, "gil_enabled": True}) == "CPython 3.13.5 free-threaded, GIL re-enabled at run time"
    assert interpreter_label(None) is None
    assert (interpreter_short(FT), interpreter_short(GIL)) == ("3.13.5t", "3.11.2 GIL")


def test_locking_from_the_bench_record_or_the_command_line() -> None:
    assert locking_of({"bench": {"locking": "bql"}, "target": {"command": ["x", "--locking", "unlocked"]}}) == "bql"
    assert locking_of({"target": {"command": ["x", "--locking=unlocked"]}}) == "unlocked"
    assert locking_of({"target": {"command": "qemu-system-x86_64 -smp 2"}}) is None
    assert run_label({"target": {"command": ["qemu-system-x86_64"]}}) is None


def test_text_report_says_which_interpreter_ran_beside_the_locking_mode() -> None:
    ft = _text(bql_breakdown(_trace(FT), timed_loop=False))
    assert "locking=unlocked  python=CPython 3.13.5 free-threaded" in ft
    # No GIL anywhere in a free-threaded run's report.
    assert "GIL" not in ft
    gil = _text(bql_breakdown(_trace(GIL, "bql"), timed_loop=False))
    assert "locking=bql  python=CPython 3.11.2 with the GIL" in gil


def test_text_report_shows_the_runnable_component() -> None:
    b = bql_breakdown(_trace(FT), timed_loop=False)
    assert b.components["runnable"] == 2000 * 2  # 2 cycles per ns
    text = _text(b)
    row = next(line for line in text.splitlines() if "runnable (waiting for a CPU)" in line)
    assert "4,000" in row
    assert "runq" in text  # the by-kind and by-vCPU tables


def test_html_report_header_and_runnable(tmp_path) -> None:
    page = write_html_report(_trace(FT), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "locking=unlocked  python=CPython 3.13.5 free-threaded" in page
    assert "runnable (waiting for a CPU)" in page
    assert "with the GIL" not in page
    fig = breakdown_figure(bql_breakdown(_trace(FT), timed_loop=False))
    bar = next(t for t in fig.data if t.name == COMPONENT_LABELS["runnable"])
    assert bar.y[0] == 4000


def test_breakdown_json_carries_the_interpreter() -> None:
    js = bql_breakdown(_trace(FT), timed_loop=False).to_json()
    assert js["interpreter"] == FT
    assert js["components"]["runnable"] == 4000


def _summary() -> pd.DataFrame:
    rows = []
    for cfg, interp in (("reference unlocked", FT), ("reference unlocked (GIL)", GIL)):
        for n in (1, 4):
            rows.append(
                {
                    "config": cfg,
                    "vmm": "reference",
                    "locking": "unlocked",
                    "bench": "inl_pmtimer",
                    "vcpus": n,
                    "iterations": 100,
                    "guest_cycles_per_op": 40_000.0,
                    "traced_guest_cycles_per_op": 44_000.0,
                    "observer_effect": 1.1,
                    "runs": 1,
                    "guest_min": 40_000.0,
                    "guest_max": 40_000.0,
                    "guest": 0.0,
                    "vmexit": 20_000.0,
                    "emulator": 1_000.0,
                    "dispatch": 9_000.0,
                    "lock_wait": 100.0,
                    "device": 500.0,
                    "runnable": 3_000.0 * (n - 1),
                    "bql_wait": 0.0,
                    "total": 0.0,
                    "exits": 100,
                    "lost_events": 0,
                    "python_version": interp["version"],
                    "free_threaded": interp["free_threaded"],
                    "gil_enabled": interp["gil_enabled"],
                    "trace": "x",
                }
            )
    return pd.DataFrame(rows)


def test_sweep_chart_labels_name_the_interpreter_and_stack_runnable() -> None:
    fig = sweep_figure(_summary())
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    runnable = bars[COMPONENT_LABELS["runnable"]]
    inner = list(runnable.x[1])
    assert inner == ["reference unlocked · 3.13.5t", "reference unlocked (GIL) · 3.11.2"] * 2
    np.testing.assert_array_equal(runnable.y, [0, 0, 9_000, 9_000])


def test_sweep_table_has_the_interpreter_and_runnable() -> None:
    buf = io.StringIO()
    render_sweep(_summary(), Console(file=buf, width=250, color_system=None))
    text = buf.getvalue()
    assert "python" in text and "runnable" in text
    four = [line for line in text.splitlines() if "│ 4 " in line or " 4 │" in line]
    assert any("3.13.5t" in line and "9,000" in line for line in four)
    assert any("3.11.2 GIL" in line for line in four)


def test_compare_says_what_ran_in_text_and_html(tmp_path) -> None:
    table = pd.DataFrame({"a": [1.0], "b": [2.0]}, index=pd.Index(["total"], name="component"))
    ran = {"a": run_label(_trace(FT).meta), "b": run_label(_trace(GIL, "bql").meta)}
    buf = io.StringIO()
    render_comparison(table, Console(file=buf, width=160, color_system=None), ran)
    text = buf.getvalue()
    assert "a: locking=unlocked  python=CPython 3.13.5 free-threaded" in text
    assert "b: locking=bql  python=CPython 3.11.2 with the GIL" in text
    page = write_compare_html(table, tmp_path / "c.html", ran).read_text(encoding="utf-8")
    assert "a: locking=unlocked  python=CPython 3.13.5 free-threaded" in page
    # QEMU traces say nothing of either: no lines at all.
    buf = io.StringIO()
    render_comparison(table, Console(file=buf, width=160, color_system=None), {"a": None, "b": None})
    assert "a:" not in buf.getvalue()
