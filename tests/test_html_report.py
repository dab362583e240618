"""The HTML pages without a browser: self-contained, escaped, downsampled,
and the sweep and compare figures built from made-up summaries."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from vmtrace.render.figures import compare_figure, sweep_figure
from vmtrace.render.html import Html, Section, page_html, write_html, write_html_report
from vmtrace.render.palette import COMPONENT_LABELS
from vmtrace.trace import Trace, read_trace

from .conftest import REPO
from .synthetic import ExitScript, SyntheticTrace

SAMPLE = REPO / "sample_traces" / "qemu-pmtimer-2vcpu-precise.vmtrace"
PLOTLY_JS = get_plotlyjs()


def _without_plotly(text: str) -> str:
    assert text.count(PLOTLY_JS) == 1, "plotly.js must be inlined exactly once"
    return text.replace(PLOTLY_JS, "")


def test_sample_report_is_one_offline_file(tmp_path) -> None:
    path = write_html_report(read_trace(SAMPLE), tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    rest = _without_plotly(text)
    # Nothing outside plotly.js may point at the network: no external
    # script, stylesheet, font, image or import.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", rest, re.I)
    assert not re.search(r"@import|@font-face|url\(\s*['\"]?(https?:)?//", rest, re.I)
    assert "mathjax" not in rest.lower()
    for title in ("Breakdown", "Exits", "Locks", "Off-CPU", "Timeline"):
        assert f">{title}</h2>" in rest
    assert rest.count("Plotly.newPlot(") >= 6
    assert "no events lost" in rest
    # Under 1.5 MB of its own besides plotly.js (4.8 MB).
    assert len(rest.encode()) < 1_500_000
    assert path.stat().st_size < 7_000_000


def test_timeline_is_downsampled_and_says_so(tmp_path) -> None:
    path = write_html_report(read_trace(SAMPLE), tmp_path / "r.html", max_spans=500, bins=50)
    rest = _without_plotly(path.read_text(encoding="utf-8"))
    m = re.search(r"shows every one of the ([\d,]+) spans in a ([\d.]+) ms window", rest)
    assert m, "the page must say which window the Gantt chart shows"
    assert int(m.group(1).replace(",", "")) <= 500 + 10  # plus spans crossing the window's edges
    assert "in 50 equal time bins" in rest


def test_lost_events_and_escaping(tmp_path) -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript()] * 5)
    s.threads[0]["name"] = "<script>alert(1)</script>"
    tr = s.trace(lost_events={"total": 7, "per_cpu": {"1": 7}}, notes=["a <b>note</b>"])
    rest = _without_plotly(write_html_report(tr, tmp_path / "r.html").read_text(encoding="utf-8"))
    assert "7 events lost (cpu1: 7)" in rest
    assert "<script>alert(1)</script>" not in rest
    assert "a &lt;b&gt;note&lt;/b&gt;" in rest


def _summary() -> pd.DataFrame:
    rows = []
    for cfg, lock in (("qemu bql", 1.0), ("reference unlocked", 0.0)):
        for n in (1, 2, 4):
            rows.append(
                {
                    "config": cfg,
                    "vcpus": n,
                    "guest": 0.0,
                    "vmexit": 10_000.0,
                    "emulator": 1_000.0,
                    "dispatch": 3_000.0,
                    "device": 500.0,
                    "lock_wait": lock * 5_000.0 * n,
                    "bql_wait": lock * 4_000.0 * n,
                    "guest_cycles_per_op": 15_000.0 + lock * 5_000 * n,
                    "observer_effect": 1.1 if n != 4 else np.nan,
                }
            )
    return pd.DataFrame(rows)


def test_sweep_figure_stacks_groups_marks_and_annotates() -> None:
    fig = sweep_figure(_summary().sample(frac=1, random_state=1))  # row order must not matter
    bars = [t for t in fig.data if t.type == "bar"]
    assert fig.layout.barmode == "stack"
    names = [b.name for b in bars]
    assert names == [
        COMPONENT_LABELS[c] for c in ("vmexit", "emulator", "dispatch", "device", "bql_wait", "other_lock_wait")
    ]
    # Two-level x: vCPU count outside, configuration inside, side by side.
    outer, inner = (list(a) for a in bars[0].x)
    assert outer == ["1 vCPU", "1 vCPU", "2 vCPUs", "2 vCPUs", "4 vCPUs", "4 vCPUs"]
    assert inner == ["qemu bql", "reference unlocked"] * 3
    bql = dict(zip(zip(outer, inner, strict=True), bars[names.index("BQL wait")].y, strict=True))
    assert bql[("4 vCPUs", "qemu bql")] == 16_000 and bql[("4 vCPUs", "reference unlocked")] == 0
    other = dict(
        zip(zip(outer, inner, strict=True), bars[names.index(COMPONENT_LABELS["other_lock_wait"])].y, strict=True)
    )
    assert other[("2 vCPUs", "qemu bql")] == 2_000
    marks = next(t for t in fig.data if t.name == "guest-measured cycles/op")
    assert dict(zip(zip(*marks.x, strict=True), marks.y, strict=True))[("2 vCPUs", "qemu bql")] == 25_000
    effect = next(t for t in fig.data if t.type == "scatter" and t.mode == "text")
    assert list(effect.text) == ["×1.10"] * 4  # the 4-vCPU rows have no observer effect
    assert ("4 vCPUs", "qemu bql") not in set(zip(*effect.x, strict=True))


def test_sweep_figure_draws_the_range_of_repeated_runs() -> None:
    df = _summary()
    df["guest_min"] = df["guest_cycles_per_op"] - 1_000.0
    df["guest_max"] = df["guest_cycles_per_op"] + 3_000.0
    marks = next(t for t in sweep_figure(df).data if t.name.startswith("guest-measured"))
    assert "range" in marks.name
    assert list(marks.error_y.array) == [3_000.0] * len(df) and list(marks.error_y.arrayminus) == [1_000.0] * len(df)
    # One run each: no range to draw.
    df["guest_min"] = df["guest_max"] = df["guest_cycles_per_op"]
    marks = next(t for t in sweep_figure(df).data if t.name.startswith("guest-measured"))
    assert marks.name == "guest-measured cycles/op" and marks.error_y.array is None


def test_sweep_figure_without_optional_columns() -> None:
    df = _summary().drop(columns=["bql_wait", "guest_cycles_per_op", "observer_effect"])
    fig = sweep_figure(df)
    assert [t.name for t in fig.data] == [
        COMPONENT_LABELS[c] for c in ("vmexit", "emulator", "dispatch", "device", "lock_wait")
    ]
    with pytest.raises(ValueError, match="vcpus"):
        sweep_figure(df.drop(columns=["vcpus"]))


def test_compare_figure_and_write_html_forms(tmp_path) -> None:
    rows = [
        "guest",
        "vmexit",
        "emulator",
        "dispatch",
        "lock_wait",
        "device",
        "bql_wait",
        "total",
        "guest_cycles_per_op",
        "exits",
    ]
    table = pd.DataFrame(
        {"a": [0, 10, 1, 3, 6, 1, 5, 21, 20, 100], "b": [0, 10, 1, 3, 0, 1, 0, 15, None, 90]},
        index=pd.Index(rows, name="component"),
        dtype="float64",
    )
    table["b Δ"] = table["b"] - table["a"]
    table["b Δ%"] = 100 * table["b Δ"] / table["a"]
    fig = compare_figure(table)
    bars = [t for t in fig.data if t.type == "bar"]
    assert all(list(b.x) == ["a", "b"] for b in bars)
    assert next(t for t in fig.data if t.type == "scatter" and t.mode == "text").text == ("-29%",)
    path = write_html(
        [("Compare", fig), Section("Notes", ["plain <text>", Html("<b>bold</b>")], intro="why"), go.Figure()],
        tmp_path / "p.html",
        title="t & t",
        tables=[("Table", table.reset_index())],
    )
    rest = _without_plotly(path.read_text(encoding="utf-8"))
    assert "<title>t &amp; t</title>" in rest and "plain &lt;text&gt;" in rest and "<b>bold</b>" in rest
    assert ">Table</h2>" in rest and "<td>guest_cycles_per_op</td>" in rest
    assert rest.count("Plotly.newPlot(") == 2
    assert "<h2" not in page_html([go.Figure()])


def test_a_view_the_trace_cannot_feed_says_why(tmp_path) -> None:
    # Exits, locks and off-CPU come from their analyses; a trace without
    # futex or sched events still gets every section, saying what is missing.
    t = read_trace(SAMPLE)
    ev = t.events[~t.events["event"].isin(["futex_enter", "futex_exit", "sched_out", "sched_in", "wakeup"])]
    trace = Trace(events=ev.reset_index(drop=True), meta=t.meta)
    rest = _without_plotly(write_html_report(trace, tmp_path / "r.html").read_text(encoding="utf-8"))
    for title in ("Exits", "Locks", "Off-CPU", "Timeline"):
        assert f">{title}</h2>" in rest
    assert rest.count("Not available for this trace") == 2
    assert "the lock analysis needs" in rest and "the off-CPU analysis needs" in rest
