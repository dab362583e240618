"""Call sites: the analysis on made-up traces with known answers, the
collectors' site assignment, QSP parsing and --qemu resolution (the live
twins are in tests/live/test_callsites_qsp.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import BQL_WORD
from vmtrace.analyses.callsites import callsite_acquisitions, callsite_table
from vmtrace.collectors.callsites import SamplingWindows, assign_sites, check_callsites, site_label
from vmtrace.collectors.qsp import parse_sync_profile
from vmtrace.errors import VmtraceError
from vmtrace.qemu_versions import firmware_dir, resolve_qemu
from vmtrace.schema import EVENT_TYPES
from vmtrace.trace import Trace, normalize_events

SITES = ["softmmu/physmem.c:2748", "util/main-loop.c:318"]


def _trace(rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Trace:
    df = pd.DataFrame(rows)
    df["event"] = pd.Categorical(df["event"], categories=list(EVENT_TYPES))
    base = {
        "callsites": SITES,
        "locks": [{"name": "BQL", "futex_uaddr": BQL_WORD, "identified": True}],
        "target": {"vmm": "qemu", "vmm_version": "10.0.2"},
        "start_ns": 0,
        "end_ns": 10_000,
    }
    return Trace(events=normalize_events(df), meta={**base, **(meta or {})})


def _acq(tid: int, t: int, site: int, wait: int, hold: int, blocked: bool = False) -> list[dict[str, Any]]:
    rows = [{"ts_ns": t, "tid": tid, "cpu": 0, "event": "lock_begin", "addr": BQL_WORD, "value": site, "name": "BQL"}]
    if blocked:
        rows.append({"ts_ns": t + 1, "tid": tid, "cpu": 0, "event": "futex_enter", "addr": BQL_WORD, "value": 128})
        rows.append({"ts_ns": t + wait - 1, "tid": tid, "cpu": 0, "event": "futex_exit", "value": 0})
    rows.append({"ts_ns": t + wait, "tid": tid, "cpu": 0, "event": "lock_acquired", "addr": BQL_WORD, "name": "BQL"})
    rows.append(
        {"ts_ns": t + wait + hold, "tid": tid, "cpu": 0, "event": "lock_release", "addr": BQL_WORD, "name": "BQL"}
    )
    return rows


def test_known_waits_holds_and_contention() -> None:
    # vCPU 11 holds for 500 ns from site 0; vCPU 12 queues 400 ns behind it (blocked in futex).
    rows = _acq(11, 100, 0, 10, 500) + _acq(12, 200, 0, 410, 50, blocked=True) + _acq(13, 2000, 1, 20, 30)
    table = callsite_table(_trace(rows))
    s = table.sites.set_index("site")
    assert s.loc[SITES[0], "acquisitions"] == 2 and s.loc[SITES[1], "acquisitions"] == 1
    assert s.loc[SITES[0], "wait_ns"] == 420 and s.loc[SITES[0], "contended"] == 1
    assert s.loc[SITES[0], "contended_wait_ns"] == 410
    assert s.loc[SITES[0], "hold_ns"] == 550 and s.loc[SITES[0], "hold_mean_ns"] == 275
    assert s.loc[SITES[1], "file"] == "util/main-loop.c" and s.loc[SITES[1], "line"] == 318
    assert abs(s["share"].sum() - 1) < 1e-9
    assert table.sites.iloc[0]["site"] == SITES[0]  # most wait first
    assert table.vmm == "qemu 10.0.2" and not table.sampled


def test_window_and_unpaired_begins() -> None:
    # A begin with no acquired (the window closed) counts nothing; until_ns cuts.
    rows = _acq(11, 100, 0, 10, 20) + _acq(11, 5000, 0, 10, 20)
    rows.append(
        {"ts_ns": 9000, "tid": 12, "cpu": 0, "event": "lock_begin", "addr": BQL_WORD, "value": 1, "name": "BQL"}
    )
    t = _trace(rows)
    assert len(callsite_acquisitions(t)) == 2
    assert len(callsite_acquisitions(t, until_ns=1000)) == 1
    # A hold with no unlock after it is an acquisition without a hold.
    t2 = _trace(_acq(11, 100, 0, 10, 20)[:2])
    s = callsite_table(t2).sites.iloc[0]
    assert s["acquisitions"] == 1 and s["holds"] == 0


def test_sampled_counts_extrapolate_from_windows() -> None:
    rows = _acq(11, 100, 0, 10, 20) + _acq(11, 300, 0, 10, 20)
    sampling = {"mode": "sampled", "duty": 0.1, "windows": [[0, 1000]]}
    table = callsite_table(_trace(rows, {"callsite_sampling": sampling}))
    assert table.sampled and table.coverage == pytest.approx(0.1)
    assert table.sites.iloc[0]["est_acquisitions"] == pytest.approx(20)
    assert "sampled" in table.notes[0]


def test_trace_without_callsites_says_how() -> None:
    rows = [{"ts_ns": 1, "tid": 1, "cpu": 0, "event": "run_enter"}]
    table = callsite_table(_trace(rows, {"callsites": []}))
    assert table.sites.empty and "--callsites" in table.notes[0]


def test_assign_sites_indexes_file_and_line() -> None:
    df = normalize_events(
        pd.DataFrame(
            {
                "ts_ns": [1, 2, 3, 4],
                "tid": [1, 1, 2, 2],
                "cpu": [0, 0, 0, 0],
                "event": pd.Categorical(
                    ["lock_begin", "lock_acquired", "lock_begin", "lock_begin"], categories=list(EVENT_TYPES)
                ),
                "addr": pd.array([0x1000, 0, 0x2000, 0x3000], dtype="UInt64"),
                "value": pd.array([2748, pd.NA, 318, 5], dtype="Int64"),
            }
        )
    )
    files = {0x1000: "../softmmu/physmem.c", 0x2000: "../util/main-loop.c"}
    out, sites = assign_sites(df, files.get)
    assert sites == ["softmmu/physmem.c:2748", "util/main-loop.c:318"]
    assert list(out["value"].iloc[[0, 2]]) == [0, 1]
    assert pd.isna(out["value"].iloc[3])  # a pointer nobody could read


def test_site_label_and_mode_checks() -> None:
    assert site_label("../../system/physmem.c", 7) == "system/physmem.c:7"
    assert check_callsites(None, 0.1) is None and check_callsites("sampled", 0.5) == "sampled"
    assert check_callsites("sampled", 0.04, 5.0) == "sampled"
    for bad in (
        ("sometimes", 0.1),
        ("sampled", 0.0),
        ("sampled", 1.5),
        ("sampled", 0.1, 0.0),
        ("sampled", 0.1, float("nan")),
    ):
        with pytest.raises(VmtraceError):
            check_callsites(*bad)


def test_sampling_windows_follow_duty() -> None:
    w = SamplingWindows(0.25, period_s=1.0)
    on = [w.want_on(int(t * 1e9)) for t in np.arange(0, 2, 0.05)]
    assert sum(on) == pytest.approx(len(on) * 0.25, abs=1)
    assert w.until_change_s(int(0.1e9)) == pytest.approx(0.15)


QSP_TEXT = """\
info sync-profile -n 100\r
Type               Object  Call site                     Wait Time (s)         Count  Average (us)\r
--------------------------------------------------------------------------------------------------\r
condvar    0x55fb59f45cc0  softmmu/cpus.c:423                  0.12155             7      17364.51\r
BQL mutex  0x55fb4ef44b40  softmmu/physmem.c:2748              0.00119         14877          0.08\r
mutex      0x55fb4ef767e0  ude/qemu/thread.h:118               0.00000             7          0.56\r
"""


def test_parse_sync_profile() -> None:
    df = parse_sync_profile(QSP_TEXT)
    assert list(df["type"]) == ["condvar", "BQL mutex", "mutex"]
    bql = df[df["type"] == "BQL mutex"].iloc[0]
    assert bql["site"] == "softmmu/physmem.c:2748" and bql["count"] == 14877
    assert bql["wait_ns"] == 1_190_000 and bql["object"] == 0x55FB4EF44B40


def test_resolve_qemu_errors_and_firmware(tmp_path: Path) -> None:
    with pytest.raises(VmtraceError, match="knows QEMU"):
        resolve_qemu("9.1")
    with pytest.raises(VmtraceError, match="not an executable"):
        resolve_qemu(str(tmp_path / "nothing"))
    fake = tmp_path / "prefix" / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 10.0.2'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert firmware_dir(str(fake)) is None
    (tmp_path / "prefix" / "share").mkdir()
    (tmp_path / "prefix" / "share" / "bios-256k.bin").write_bytes(b"\0")
    assert firmware_dir(str(fake)) == str(tmp_path / "prefix" / "share")
    q = resolve_qemu(str(fake))
    assert q.version == "10.0.2" and q.args() == ["-L", str(tmp_path / "prefix" / "share")]
    os.environ["VMTRACE_QEMU10_PREFIX"] = str(tmp_path / "prefix")
    try:
        assert resolve_qemu("10.0").path == str(fake)
    finally:
        del os.environ["VMTRACE_QEMU10_PREFIX"]
