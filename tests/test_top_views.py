"""top's tables, logs, keys and the report of an aggregate trace, on
counters replayed from a real sample trace (no root needed).  The live
twins in tests/live/test_top_live.py drive the same code on a running VMM."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmtrace.top.aggregate import Snapshot, delta, empty_counters
from vmtrace.top.render import csv_header, csv_row, log_json, table_lines
from vmtrace.top.replay import replay
from vmtrace.top.series import aggregate_view
from vmtrace.top.tui import ViewState
from vmtrace.trace import read_trace, write_trace

SAMPLE = Path(__file__).resolve().parents[1] / "sample_traces" / "qemu-pmtimer-2vcpu.vmtrace"
VMTRACE = [sys.executable, "-m", "vmtrace.cli"]


@pytest.fixture(scope="module")
def snaps() -> list[Snapshot]:
    """The sample trace cut in two halves, as two intervals."""
    t = read_trace(SAMPLE)
    ev = t.events
    mid = int(ev["ts_ns"].iloc[len(ev) // 2])
    first = type(t)(events=ev[ev["ts_ns"] < mid].reset_index(drop=True), meta=t.meta)
    a, b = replay(first), replay(t)
    vcpus = t.vcpu_tids()
    header = {"tsc_hz": t.tsc_hz, "vmm": "qemu", "vmm_version": "7.2", "kvm_flavour": "pvm", "pid": 1}
    start = int(ev["ts_ns"].iloc[0])
    return [
        Snapshot(start, mid, delta(empty_counters(), a), vcpus, {}, {}, header),
        Snapshot(mid, int(ev["ts_ns"].iloc[-1]), delta(a, b), vcpus, {}, {}, header),
    ]


def parse_table(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """Column titles and rows of ``table_lines``' table (a script's view)."""
    titles = lines[2].split()
    rows = []
    for line in lines[3:]:
        if not line.strip():
            break
        rows.append(line.split())
    return titles, rows


def test_table_has_the_columns_and_rows_add_up(snaps: list[Snapshot]) -> None:
    lines = table_lines(snaps[1])
    assert "VMM qemu 7.2" in lines[0] and "KVM pvm" in lines[0] and "lost 0" in lines[0]
    titles, rows = parse_table(lines)
    for col in (
        "VCPU",
        "KIND",
        "ADDR",
        "EXITS/S",
        "VMEXIT",
        "VMEXITp99",
        "EMUL",
        "DISPATCH",
        "LOCKWAIT",
        "BQL",
        "BQL%",
        "TOTAL",
    ):
        assert col in titles
    assert all(len(r) == len(titles) for r in rows)
    exits = sum(float(r[titles.index("EXITS/S")]) for r in rows) * snaps[1].seconds
    assert exits == pytest.approx(int(snaps[1].counters.count.sum()), rel=0.02, abs=len(rows))
    assert any(r[1] == "pio" and r[2] == "0x608" for r in rows)


def test_sort_and_filters(snaps: list[Snapshot]) -> None:
    s = snaps[1]
    titles, rows = parse_table(table_lines(s, sort="total"))
    assert "sort total" in table_lines(s, sort="total")[1]
    by_total = s.rows(by="all").sort_values("total", ascending=False)
    assert rows[0][titles.index("ADDR")] == str(by_total["addr"].iloc[0] or "-")
    titles, rows = parse_table(table_lines(s, vcpu=1))
    assert rows and {r[0] for r in rows} == {"1"}
    titles, rows = parse_table(table_lines(s, kind="pio", by="kind"))
    assert titles[:2] == ["KIND", "ADDR"] and {r[0] for r in rows} == {"pio"}


def test_keys_cycle_sort_filter_drill_freeze_quit(snaps: list[Snapshot]) -> None:
    st = ViewState()
    st.key("s", snaps[1])
    assert st.sort == "total"
    st.key("v", snaps[1])
    assert st.vcpu == 0
    st.key("v", snaps[1])
    assert st.vcpu == 1
    st.key("v", snaps[1])
    assert st.vcpu is None
    st.key("k", snaps[1])
    assert st.kind is not None
    st.key("c", snaps[1])
    assert st.kind is None and st.vcpu is None
    st.key("d", snaps[1])
    assert st.drill and st.by == "kind" and st.vcpu == 0
    st.key("f", snaps[1])
    assert st.frozen
    st.key("q", snaps[1])
    assert st.quit


def test_logs_one_line_or_row_per_interval(snaps: list[Snapshot]) -> None:
    objs = [json.loads(log_json(s)) for s in snaps]
    assert [o["exits"] for o in objs] == [int(s.counters.count.sum()) for s in snaps]
    assert objs[1]["rows"] and "vmexit_p99" in objs[1]["rows"][0]
    text = csv_header() + "".join(csv_row(s) for s in snaps)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 and int(rows[1]["exits"]) == int(snaps[1].counters.count.sum())
    # the means are the rows' weighted means
    r = snaps[1].rows(by="vcpu")
    mean = float((r["vmexit"] * r["exits"]).sum() / r["exits"].sum())
    assert float(rows[1]["vmexit"]) == pytest.approx(mean, rel=1e-3)


def test_report_reads_an_aggregate_trace(snaps: list[Snapshot], tmp_path: Path) -> None:
    meta = dict(read_trace(SAMPLE).meta)
    meta["aggregate"] = {"interval_s": 1.0, "bql_word": None, "snapshots": [s.to_json() for s in snaps]}
    meta["mode"] = "aggregate"
    path = tmp_path / "agg.vmtrace"
    ev = read_trace(SAMPLE).events.iloc[0:0]
    write_trace(path, ev, meta)
    view = aggregate_view(read_trace(path))
    assert list(view.series["exits"]) == [int(s.counters.count.sum()) for s in snaps]
    assert int(view.rows["exits"].sum()) == sum(int(s.counters.count.sum()) for s in snaps)
    out = subprocess.run(VMTRACE + ["report", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Aggregate recording: 2 intervals" in out.stdout and "0x608" in out.stdout
    out = subprocess.run(
        VMTRACE + ["report", str(path), "-f", "json", "--html", str(tmp_path / "a.html")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["intervals"] == 2 and doc["rows"]
    assert "Aggregate (in-kernel, per interval)" in (tmp_path / "a.html").read_text()
    # an events trace has no aggregate view: one line, status 2
    out = subprocess.run(VMTRACE + ["report", str(SAMPLE), "--aggregate"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--aggregate" in out.stderr


def test_top_bad_input_is_one_line() -> None:
    for args in (
        ["top"],
        ["top", "-p", "1", "--", "true"],
        ["top", "--once", "--batch", "2", "-p", "1"],
        ["top", "--interval", "0", "-p", "1"],
    ):
        out = subprocess.run(VMTRACE + args, capture_output=True, text=True)
        assert out.returncode == 2, args
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("vmtrace: error:"), (args, out.stderr)
