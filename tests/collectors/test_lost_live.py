"""Lost events on the real kernel: both collectors, buffers made tiny on
purpose, a target that makes far more events than they hold.

The storm is a Python loop of futex(FUTEX_WAKE) calls on a private word (two
records per call: sys_enter_futex and sys_exit_futex; nobody waits, so each
call returns at once).  Everything the collector sees of the target is then
those records, so what was recorded plus what the markers say was lost must
account for every call.  Each test also checks that tracefs is left as it was
found, as far as this process could have changed it (other tracers may be
at work on a shared host); the bcc tests need bcc and kernel headers and
skip (fail under CI) without them.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.collectors.targets import T, Target, qemu_cmd, target_factory  # noqa: F401 (fixture)
from tests.conftest import need
from vmtrace.collectors.base import Collected, RecordOptions
from vmtrace.collectors.ftrace import FtraceCollector

CALLS = 300_000
# Python's start-up makes a few futex calls of its own, and an ioctl or two
# (sys_exit_ioctl is not filtered by command).
STARTUP_SLACK = 2_000
STORM = """
import ctypes, sys
word = ctypes.c_int(0)
syscall, ref = ctypes.CDLL(None, use_errno=True).syscall, ctypes.byref(word)
for _ in range(int(sys.argv[1])):
    syscall(202, ref, 1, 1, None, None, 0)  # futex(&word, FUTEX_WAKE, 1)
"""
VMTRACE = [sys.executable, "-m", "vmtrace.cli"]


def tracefs_state() -> tuple[str, list[str], list[str]]:
    """``set_event``, and the instances and uprobes this process made
    (``vmtrace-PID-n``, ``vmtrace_PID_n``, bcc's ``..._bcc_PID``)."""
    pid = os.getpid()
    mine = (f"vmtrace_{pid}_", f"_bcc_{pid}")
    uprobes = [line for line in (T / "uprobe_events").read_text().splitlines() if any(m in line for m in mine)]
    instances = sorted(i for i in os.listdir(T / "instances") if i.startswith(f"vmtrace-{pid}-"))
    return (T / "set_event").read_text(), instances, uprobes


def need_bcc() -> None:
    from vmtrace.collectors.bcc_backend import bcc_available

    ok, why = bcc_available()
    need(ok, why)


def storm_cmd(tmp_path: Path, calls: int = CALLS) -> list[str]:
    script = tmp_path / "storm.py"
    script.write_text(STORM)
    return [sys.executable, str(script), str(calls)]


def record_storm(collector, target: Target, limit_s: float = 60.0) -> Collected:
    collector.attach(target.pid)
    target.release()
    deadline = time.monotonic() + limit_s
    while target.alive():
        assert time.monotonic() < deadline, "storm did not finish"
        collector.poll(100)
    return collector.stop()


def check_markers(col: Collected, exact: bool) -> pd.DataFrame:
    """What every lossy recording must show; returns the markers."""
    ev = col.events
    marks = ev[ev["event"] == "lost"]
    assert len(marks) > 0, f"nothing was lost (lost_per_cpu {col.lost_per_cpu}): the buffers were not small enough"
    assert set(marks["tid"]) == {-1}
    assert marks[["addr", "size", "write", "peer_tid"]].isna().all().all()
    lossy = {cpu for cpu, n in col.lost_per_cpu.items() if n}
    assert set(marks["cpu"].astype(int)) <= lossy
    per_cpu = marks.groupby("cpu")["value"].agg(lambda v: int(v.fillna(0).sum())).to_dict()
    for cpu, n in per_cpu.items():
        if exact:
            assert n == col.lost_per_cpu[cpu], (cpu, per_cpu, col.lost_per_cpu)
        else:
            assert 0 <= n <= col.lost_per_cpu[cpu], (cpu, per_cpu, col.lost_per_cpu)
    if exact:
        assert set(per_cpu) == lossy
    # A marker is stamped with the first event its CPU recorded after the
    # gap, or with the end of recording when nothing came after.
    others = ev[ev["event"] != "lost"]
    stamps = set(zip(others["cpu"].astype(int), others["ts_ns"].astype(int), strict=True))
    last = int(others["ts_ns"].max())
    for cpu, ts in zip(marks["cpu"].astype(int), marks["ts_ns"].astype(int), strict=True):
        assert (cpu, ts) in stamps or ts >= last, (cpu, ts)
    assert ev["ts_ns"].is_monotonic_increasing
    return marks


# ftrace's own count can fall a few records short: in one CI run, 377,565
# recorded + 222,433 overrun of 600,000, and the next fourteen runs here
# (idle and with both CPUs busy) were exact.  A page holds ~100 of these records,
# so a slack of 8 still catches a page lost or mis-decoded by vmtrace.
FTRACE_SHORT_SLACK = 8


def check_accounting(col: Collected, marks: pd.DataFrame, calls: int, short_slack: int = 0) -> None:
    """Recorded futex records plus lost records = the storm's calls (x2)."""
    ev = col.events
    recorded = int(ev["event"].isin(["futex_enter", "futex_exit"]).sum())
    lost = sum(col.lost_per_cpu.values())
    got = recorded + lost
    assert 2 * calls - short_slack <= got <= 2 * calls + STARTUP_SLACK, (recorded, lost, marks["value"].sum())


def test_ftrace_tiny_buffer_emits_lost_markers(root, tmp_path, target_factory) -> None:
    before = tracefs_state()
    t = target_factory(storm_cmd(tmp_path))
    # One page per CPU: the kernel rounds it up to its minimum (a few pages).
    with FtraceCollector(RecordOptions(spool_dir=tmp_path / "spool", buffer_pages=1, sched=False)) as c:
        col = record_storm(c, t)
        stats = dict(c._stats)
    assert tracefs_state() == before
    marks = check_markers(col, exact=False)
    check_accounting(col, marks, CALLS, short_slack=FTRACE_SHORT_SLACK)
    # The page flags carry the overrun counts: where every flagged page had
    # room to store its count, the markers of that CPU add up to its overrun.
    for cpu in sorted(set(marks["cpu"].astype(int).tolist())):
        g = marks[marks["cpu"] == cpu]
        if g["value"].notna().all():
            assert int(g["value"].sum()) == stats[cpu]["overrun"]


def test_bcc_small_ring_emits_lost_markers(root, tmp_path, target_factory) -> None:
    need_bcc()
    from vmtrace.collectors.bcc_backend import BccCollector

    before = tracefs_state()
    t = target_factory(storm_cmd(tmp_path))
    # buffer_pages=1 gives the smallest ring the backend makes (64 pages).
    with BccCollector(RecordOptions(spool_dir=tmp_path, buffer_pages=1, sched=False)) as c:
        col = record_storm(c, t)
    assert tracefs_state() == before
    marks = check_markers(col, exact=True)
    assert marks["value"].notna().all()
    check_accounting(col, marks, CALLS)


WRAPPER = """
import subprocess, sys
sep = sys.argv.index("--")
vmm = subprocess.Popen(sys.argv[sep + 1:])
exec(open(sys.argv[1]).read().replace("sys.argv[1]", "sys.argv[2]"))
sys.exit(vmm.wait())
"""


@pytest.mark.parametrize("backend", ["ftrace", "bcc"])
def test_record_and_report_show_lost_events(root, qemu, tmp_path, monkeypatch, backend) -> None:
    """``vmtrace record`` of QEMU beside a storm, buffers made tiny: the
    trace holds markers, its metadata counts them, and ``vmtrace report``
    shows them."""
    if backend == "bcc":
        need_bcc()
    import vmtrace.record as rec
    from vmtrace.bench import guest_image
    from vmtrace.trace import read_trace

    guest_image()  # built when missing: without it QEMU would only run its BIOS
    storm = storm_cmd(tmp_path)
    wrapper = tmp_path / "with_storm.py"
    wrapper.write_text(WRAPPER)
    cmd = [sys.executable, str(wrapper), storm[1], storm[2], "--", *qemu_cmd(iterations=5000)]
    monkeypatch.setattr(rec, "RecordOptions", functools.partial(RecordOptions, buffer_pages=1))
    before = tracefs_state()
    out = tmp_path / f"lost-{backend}.vmtrace"
    with open(tmp_path / "guest.out", "w") as guest_out:
        result = rec.record(out, cmd=cmd, backend=backend, stdout=guest_out)
    assert tracefs_state() == before
    assert result.exit_status == 1, (tmp_path / "guest.out").read_text()[-2000:]  # isa-debug-exit
    tr = read_trace(out)
    ev = tr.events
    marks = ev[ev["event"] == "lost"]
    assert len(marks) > 0 and result.lost > 0
    meta = tr.meta["lost_events"]
    assert meta["total"] == result.lost == sum(meta["per_cpu"].values())
    per_cpu = marks.groupby("cpu")["value"].agg(lambda v: int(v.fillna(0).sum())).to_dict()
    assert set(per_cpu) <= {int(k) for k, v in meta["per_cpu"].items() if v}
    for cpu, n in per_cpu.items():
        if backend == "bcc":
            assert n == meta["per_cpu"][str(cpu)]
        else:
            assert n <= meta["per_cpu"][str(cpu)]
    # exits were recorded too: the report has something to show
    assert (ev["event"] == "run_enter").sum() > 1000

    text = subprocess.run(VMTRACE + ["report", str(out), "--exits"], capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert f"lost events: {meta['total']:,}, {len(marks):,} lost-event markers" in text.stdout
    js = subprocess.run(
        VMTRACE + ["report", str(out), "--exits", "-f", "json"], capture_output=True, text=True, timeout=300
    )
    doc = json.loads(js.stdout)
    assert doc["lost_events"] == meta["total"] and doc["lost_markers"] == len(marks)
    default = subprocess.run(VMTRACE + ["report", str(out)], capture_output=True, text=True, timeout=300)
    assert default.returncode == 0, default.stderr
    assert f"lost events: {meta['total']:,}" in default.stdout
