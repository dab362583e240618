"""The Perfetto / Chrome trace-event export, checked structurally.

The ``perfetto`` package's trace processor is a binary it downloads on first
use, which this project's machines cannot; so the file is checked against
the format's rules as Perfetto's JSON importer applies them: every complete
event has ts/dur/pid/tid, timestamps in microseconds that round to whole
nanoseconds, and slices of one thread nest (a child inside its parent,
siblings apart), since the importer drops slices that do not.
"""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vmtrace.analyses.partition import exit_breakdown
from vmtrace.export.perfetto import chrome_trace, write_perfetto
from vmtrace.trace import Trace, read_trace

from .conftest import REPO
from .synthetic import ExitScript, SyntheticTrace

SAMPLES = sorted((REPO / "sample_traces").glob("*.vmtrace"))


def _ns(us: float) -> int:
    # As Perfetto's importer: microseconds times 1000, rounded.
    return int(round(us * 1000))


def validate(obj: dict) -> dict[tuple[int, int], list[dict]]:
    """Check the rules; returns the complete events per (pid, tid)."""
    assert isinstance(obj["traceEvents"], list)
    names: dict[tuple[int, int], str] = {}
    process_names = set()
    per_thread: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for e in obj["traceEvents"]:
        assert e["ph"] in ("M", "X"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "thread_sort_index")
            if e["name"] == "thread_name":
                assert e["args"]["name"]
                names[(e["pid"], e["tid"])] = e["args"]["name"]
            elif e["name"] == "process_name":
                process_names.add(e["pid"])
            continue
        for k in ("name", "cat", "ts", "dur", "pid", "tid", "args"):
            assert k in e, (k, e)
        assert isinstance(e["name"], str) and e["name"]
        assert math.isfinite(e["ts"]) and math.isfinite(e["dur"]) and e["dur"] >= 0, e
        # Three decimals: the microsecond value holds a whole nanosecond.
        assert abs(e["ts"] * 1000 - _ns(e["ts"])) < 1e-3 and abs(e["dur"] * 1000 - _ns(e["dur"])) < 1e-3
        per_thread[(e["pid"], e["tid"])].append(e)
    for key, evs in per_thread.items():
        assert key in names, f"thread {key} has slices but no name"
        assert key[0] in process_names
        # Nesting: sorted by start then longest first, each slice lies in
        # the open slice above it or starts after it ended.
        evs.sort(key=lambda e: (_ns(e["ts"]), -_ns(e["dur"])))
        stack: list[tuple[int, str]] = []
        for e in evs:
            s, end = _ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"])
            while stack and stack[-1][0] <= s:
                stack.pop()
            if stack:
                assert end <= stack[-1][0], f"{e} overlaps {stack[-1][1]} on {names[key]}"
            stack.append((end, e["name"]))
    return per_thread


def _children_ns(per_thread: dict, trace: Trace) -> dict[tuple[int, int], dict[str, int]]:
    """(tid, exit start ns) -> slice name -> summed duration of the depth-1
    slices inside that exit."""
    out: dict[tuple[int, int], dict[str, int]] = {}
    for (_pid, tid), evs in per_thread.items():
        exits = [e for e in evs if e["cat"] == "exit"]
        starts = np.array([_ns(e["ts"]) for e in exits])
        ends = starts + np.array([_ns(e["dur"]) for e in exits])
        for e in evs:
            if e["cat"] != "state":
                continue
            s = _ns(e["ts"])
            i = int(np.searchsorted(starts, s, side="right")) - 1
            if i >= 0 and s < ends[i]:
                d = out.setdefault((tid, int(starts[i])), {})
                d[e["name"]] = d.get(e["name"], 0) + _ns(e["dur"])
    return out


def test_synthetic_export_matches_the_breakdown() -> None:
    s = SyntheticTrace()
    xs = [
        ExitScript(bql_futex_ns=3000, lock_span=True),
        ExitScript(device_ns=700, preempted_ns=100, post_ns=900),
        ExitScript(other_futex_ns=500),
    ]
    s.vcpu(101, 0, xs, start_ns=10_000)
    s.vcpu(102, 1, xs[::-1], start_ns=10_003)
    tr = s.trace(target={"pid": 100, "vmm": "qemu", "vmm_version": "7.2"})
    obj = chrome_trace(tr)
    per_thread = validate(obj)
    names = {e["tid"]: e["args"]["name"] for e in obj["traceEvents"] if e["name"] == "thread_name"}
    assert names == {101: "CPU 0/KVM", 102: "CPU 1/KVM"}
    assert {k[0] for k in per_thread} == {100}
    kids = _children_ns(per_thread, tr)
    ex = exit_breakdown(tr)
    assert len(kids) == len(ex) == 6
    for r in ex.itertuples():
        got = kids[(r.tid, r.start_ns)]
        assert got.get("vmexit", 0) == r.vmexit_ns and got.get("emulator", 0) == r.emulator_ns
        # The only waiting for a CPU here is a preemption in dispatch: the
        # breakdown carves it out (runnable_ns), the timeline keeps it there.
        assert got.get("user exit + dispatch", 0) == r.dispatch_ns + r.runnable_ns
        assert got.get("device", 0) == r.device_ns
        assert got.get("BQL wait", 0) == r.bql_wait_ns
        assert got.get("lock wait", 0) == r.lock_wait_ns - r.bql_wait_ns
    exit_slices = [e for evs in per_thread.values() for e in evs if e["cat"] == "exit"]
    assert {e["name"] for e in exit_slices} == {"pio 0x608 read"}
    # Exits carry their components in cycles (2 per ns here), zeros left out.
    first = min(exit_slices, key=lambda e: e["ts"])
    assert first["args"]["bql_wait_cycles"] == 6000 and "guest_cycles" not in first["args"]
    off = [e for evs in per_thread.values() for e in evs if e["cat"] == "sched"]
    assert {e["name"] for e in off} == {"off-CPU blocked", "off-CPU runnable"}
    assert sum(_ns(e["dur"]) for e in off if e["name"] == "off-CPU runnable") == 2 * 100


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_exports_are_valid(path: Path, tmp_path: Path) -> None:
    tr = read_trace(path)
    out = write_perfetto(tr, tmp_path / "t.json")
    obj = json.loads(out.read_text())
    per_thread = validate(obj)
    names = {e["tid"]: e["args"]["name"] for e in obj["traceEvents"] if e["name"] == "thread_name"}
    for tid, vcpu in tr.vcpu_tids().items():
        assert names[tid] == f"CPU {vcpu}/KVM"
    ex = exit_breakdown(tr)
    n_exits = sum(1 for evs in per_thread.values() for e in evs if e["cat"] == "exit")
    assert n_exits == len(ex)
    assert obj["otherData"]["lost_events"] == tr.lost_events
    # Every vCPU nanosecond inside an exit is in exactly one state slice.
    kids = _children_ns(per_thread, tr)
    r: Any  # a row of cells: pandas-stubs type each as any scalar
    for r in ex.sample(n=min(len(ex), 2000), random_state=0).itertuples():
        assert sum(kids[(r.tid, r.start_ns)].values()) == r.total_ns


def test_gzip_output(tmp_path: Path) -> None:
    tr = read_trace(SAMPLES[0])
    out = write_perfetto(tr, tmp_path / "t.json.gz")
    with gzip.open(out, "rt") as f:
        validate(json.load(f))


def test_cli_export(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vmtrace.cli", "export", str(SAMPLES[0]), "--perfetto", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    validate(json.loads(out.read_text()))
    assert str(out) in proc.stderr + proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "vmtrace.cli", "export", str(tmp_path / "nope.vmtrace"), "--perfetto", str(out)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such trace file" in bad.stderr
    none = subprocess.run(
        [sys.executable, "-m", "vmtrace.cli", "export", str(SAMPLES[0])], capture_output=True, text=True
    )
    assert none.returncode == 2 and "--perfetto" in none.stderr
