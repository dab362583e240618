"""Holder attribution (analyses.holders) on synthetic traces with known
holders: one waker, a vCPU holder, queued waiters, a preempted holder, a
lost wake; and the property that it partitions bql_wait."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.analyses.holders import bql_holder_segments, exit_split, holder_summary
from vmtrace.analyses.locks import lock_report
from vmtrace.analyses.partition import exit_breakdown

from .strategies import exit_scripts
from .synthetic import BQL_WORD, FUTEX_WAKE_PRIVATE, ExitScript, SyntheticTrace

MAIN = 200


def _by_activity(trace) -> dict[str, int]:
    rows = holder_summary(trace).rows
    return dict(zip(rows["activity"], rows["wait_ns"].astype(int), strict=True))


def _wait_start(x: ExitScript, start: int) -> int:
    return start + x.kernel_ns + x.emulator_ns + x.pre_lock_ns


def test_main_loop_wakes_one_vcpu():
    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    x = ExitScript(bql_futex_ns=10_000, waker=MAIN)
    sy.vcpu(100, 0, [ExitScript(), x, ExitScript()])
    t = sy.trace()
    assert _by_activity(t) == {"main loop": x.bql_futex_ns}
    seg = bql_holder_segments(t)
    assert set(seg["holder"]) == {MAIN}
    b = bql_breakdown(t)
    parts = b.by_holder
    assert list(parts["activity"]) == ["main loop"]
    assert parts["cycles"].sum() == pytest.approx(b.components["bql_wait"], rel=1e-12)
    assert int(parts["wait_ns"].sum()) == int(b.exits["bql_wait_ns"].sum())


def test_vcpu_holder_names_its_exit():
    sy = SyntheticTrace()
    # vCPU 1 handles a serial-port write for 20 us of userspace; vCPU 0's
    # BQL wait ends with vCPU 1's wake call inside that exit.
    sy.vcpu(101, 1, [ExitScript(port=0x3F8, write=True, post_ns=20_000)])
    x = ExitScript(bql_futex_ns=10_000, waker=101)
    sy.vcpu(100, 0, [x])
    t = sy.trace()
    assert _by_activity(t) == {"vCPU pio 0x3f8": x.bql_futex_ns}
    b = bql_breakdown(t)
    row = b.by_holder.iloc[0]
    assert row["role"] == "vcpu" and row["kind"] == "pio" and int(row["addr"]) == 0x3F8
    assert b.to_json()["bql_wait_by_holder"][0]["addr"] == "0x3f8"


def test_queued_waiters_charge_each_holder_its_part():
    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    # A (vCPU 0) and B (vCPU 1) queue behind the main loop; the main loop's
    # release hands the lock to A, whose release later wakes B.
    a = ExitScript(bql_futex_ns=10_000, waker=MAIN, post_ns=20_000)
    b = ExitScript(bql_futex_ns=15_000, waker=100)
    sy.vcpu(100, 0, [a], start_ns=1_000_000)
    sy.vcpu(101, 1, [b], start_ns=1_000_500)
    t = sy.trace()
    a_wait = _wait_start(a, 1_000_000)
    b_wait = _wait_start(b, 1_000_500)
    main_release = a_wait + a.bql_futex_ns - 2  # the wake call starts 2 ns before the wakeup's successor
    assert b_wait < main_release < b_wait + b.bql_futex_ns
    got = _by_activity(t)
    assert got == {
        "main loop": a.bql_futex_ns + (main_release - b_wait),
        "vCPU pio 0x608": b.bql_futex_ns - (main_release - b_wait),
    }
    # Each waiter's wait is charged once: the parts add up to all BQL wait.
    assert sum(got.values()) == a.bql_futex_ns + b.bql_futex_ns
    seg = bql_holder_segments(t)
    assert set(seg.loc[seg["tid"] == 101, "holder"]) == {MAIN, 100}


def test_preempted_holder_is_reported_apart():
    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    x = ExitScript(bql_futex_ns=10_000, waker=MAIN)
    sy.vcpu(100, 0, [x])
    w0 = _wait_start(x, 1_000_000)
    # The main loop, holding the BQL, is switched out runnable for 3 us.
    sy.add(w0 + 1_000, MAIN, "sched_out", value=0, peer_tid=300)
    sy.add(w0 + 4_000, MAIN, "sched_in", peer_tid=300)
    t = sy.trace()
    got = _by_activity(t)
    assert got == {"main loop": x.bql_futex_ns - 3_000, "main loop, preempted": 3_000}
    b = bql_breakdown(t)
    pre = b.by_holder[b.by_holder["preempted"]]
    assert int(pre["wait_ns"].sum()) == 3_000


def test_lost_wake_goes_to_unknown_never_dropped():
    sy = SyntheticTrace()
    x = ExitScript(bql_futex_ns=10_000)  # blocked, and nobody seen waking it
    sy.vcpu(100, 0, [x, ExitScript()])
    t = sy.trace()
    assert _by_activity(t) == {"unknown (no release seen)": x.bql_futex_ns}
    b = bql_breakdown(t)
    assert int(b.by_holder["wait_ns"].sum()) == x.bql_futex_ns


def test_sched_wakeup_names_the_waker_when_no_wake_call_is_seen():
    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    x = ExitScript(bql_futex_ns=10_000)
    sy.vcpu(100, 0, [x])
    w0 = _wait_start(x, 1_000_000)
    sy.add(w0 + 5_000, 100, "wakeup", peer_tid=MAIN, cpu=0)
    t = sy.trace()
    assert _by_activity(t) == {"main loop": x.bql_futex_ns}


def test_reported_lock_spans_use_lock_release():
    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    x = ExitScript(bql_futex_ns=8_000, lock_span=True)
    sy.vcpu(100, 0, [x])
    w0 = _wait_start(x, 1_000_000)
    sy.add(w0 + 2_000, MAIN, "lock_acquired", addr=BQL_WORD, name="BQL")
    sy.add(w0 + 6_000, MAIN, "lock_release", addr=BQL_WORD, name="BQL")
    t = sy.trace()
    assert _by_activity(t) == {"main loop": x.bql_futex_ns}


def test_rcu_and_iothread_roles():
    for name, role, label in (("call_rcu", "other", "RCU thread"), ("IO iothread0", "iothread", "IOThread")):
        sy = SyntheticTrace()
        sy.thread(300, name, role)
        x = ExitScript(bql_futex_ns=9_000, waker=300)
        sy.vcpu(100, 0, [x])
        assert _by_activity(sy.trace()) == {label: x.bql_futex_ns}


def test_locks_view_has_who_held_and_json():
    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    sy.vcpu(100, 0, [ExitScript(bql_futex_ns=10_000, waker=MAIN), ExitScript(bql_futex_ns=4_000, waker=MAIN)])
    t = sy.trace()
    lk = lock_report(t)
    doc = lk.to_json()["who_held"]
    assert doc["waits"] == 2 and doc["wait_ns"] == 14_000
    (row,) = doc["rows"]
    assert row["activity"] == "main loop" and row["waits"] == 2 and row["mean_ns"] == 7_000
    assert "[200]" in row["holders"]


wakers = st.sampled_from([None, MAIN, "other-vcpu"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(exit_scripts(post_min_ns=4, preemptions_ns=(0, 0, 1, 2)), wakers), min_size=1, max_size=6),
    st.lists(st.tuples(exit_scripts(post_min_ns=4), wakers), min_size=1, max_size=6),
    st.integers(0, 60_000),
    st.booleans(),
)
def test_property_partitions_bql_wait(first, second, offset, main_preempted):
    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    sy.thread(101, "CPU 1/KVM", "vcpu", 1)
    sy.thread(100, "CPU 0/KVM", "vcpu", 0)

    def scripts(pairs, other):
        out = []
        for x, w in pairs:
            w = other if w == "other-vcpu" else w
            out.append(replace(x, waker=w) if w is not None and x.bql_futex_ns >= 4 else x)
        return out

    end0 = sy.vcpu(100, 0, scripts(first, 101))
    sy.vcpu(101, 1, scripts(second, 100), start_ns=1_000_000 + offset)
    if main_preempted:
        sy.add(1_000_000 + offset, MAIN, "sched_out", value=0, peer_tid=5)
        sy.add(end0, MAIN, "sched_in", peer_tid=5)
    # A stray wake call by the main loop inside everything: a release no one
    # was necessarily waiting for still cuts waits, never adds to them.
    sy.add(1_000_000 + offset // 2, MAIN, "futex_enter", addr=BQL_WORD, value=FUTEX_WAKE_PRIVATE)
    sy.add(1_000_000 + offset // 2 + 1, MAIN, "futex_exit", value=0)
    t = sy.trace()

    seg = bql_holder_segments(t)
    # Per wait, the segments partition it: disjoint, inside it, summing to it.
    for _, w in seg.groupby("wait"):
        assert (w["start_ns"] >= w["wait_start_ns"]).all() and (w["end_ns"] <= w["wait_end_ns"]).all()
        assert int((w["end_ns"] - w["start_ns"]).sum()) == int(w["wait_end_ns"].iloc[0] - w["wait_start_ns"].iloc[0])
        assert (w["wait_ns"] >= 0).all()
    exits = exit_breakdown(t)
    parts = exit_split(t, exits)
    assert (parts["wait_ns"] > 0).all()
    per_exit = np.bincount(
        parts["exit"].to_numpy(dtype=np.int64), weights=parts["wait_ns"].to_numpy(), minlength=len(exits)
    ).astype(np.int64)
    # Never more than was waited, and all of it: exactly bql_wait per exit.
    assert (per_exit == exits["bql_wait_ns"].to_numpy()).all()
    b = bql_breakdown(t, timed_loop=False)
    assert int(b.by_holder["wait_ns"].sum()) == int(b.exits["bql_wait_ns"].sum())
    assert b.by_holder["cycles"].sum() == pytest.approx(b.components["bql_wait"], rel=1e-9, abs=1e-9)
    summary = holder_summary(t)
    assert summary.wait_ns == int(seg["wait_ns"].sum())


def test_uncontended_reported_span_is_not_unknown():
    sy = SyntheticTrace()
    x = ExitScript(lock_span=True, device_ns=500)  # lock_begin -> lock_acquired with no futex wait
    y = ExitScript(lock_span=True, bql_futex_ns=6_000)  # blocked, no release seen: a lost wake
    sy.vcpu(100, 0, [x, y])
    t = sy.trace()
    assert _by_activity(t) == {"unknown (no release seen)": y.bql_futex_ns}
    # A span with time in it but no wait: shift lock_acquired 700 ns later.
    sy2 = SyntheticTrace()
    sy2.vcpu(100, 0, [ExitScript(lock_span=True)])
    ev = sy2.rows
    acq = next(r for r in ev if r["event"] == "lock_acquired")
    acq["ts_ns"] += 700
    for r in ev:
        if r["event"] == "lock_release":
            r["ts_ns"] += 700
    assert _by_activity(sy2.trace()) == {"no holder (uncontended acquire)": 700}


def test_timeline_cuts_bql_waits_where_the_holder_changes():
    from vmtrace.analyses.timeline import timeline

    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    a = ExitScript(bql_futex_ns=10_000, waker=MAIN, post_ns=20_000)
    b = ExitScript(bql_futex_ns=15_000, waker=100)
    sy.vcpu(100, 0, [a], start_ns=1_000_000)
    sy.vcpu(101, 1, [b], start_ns=1_000_500)
    t = sy.trace()
    spans = timeline(t)
    w = spans[(spans["tid"] == 101) & (spans["state"] == "bql_wait")]
    dur = (w["end_ns"] - w["start_ns"]).groupby(w["holder"].astype(str)).sum()
    assert dur.to_dict() == {
        f"main loop [{MAIN}]": _by_activity(t)["main loop"] - a.bql_futex_ns,
        "vCPU pio 0x608 [100]": _by_activity(t)["vCPU pio 0x608"],
    }
    assert (spans.loc[spans["state"] != "bql_wait", "holder"].astype(str) == "").all()


def test_html_report_shows_both_tables_and_cli_json_equals_the_library(tmp_path):
    import json

    from typer.testing import CliRunner

    from vmtrace.cli import app
    from vmtrace.render.html import write_report_html
    from vmtrace.report import Report
    from vmtrace.trace import read_trace, write_trace

    sy = SyntheticTrace()
    sy.thread(MAIN, "qemu-system-x86", "main")
    sy.vcpu(100, 0, [ExitScript(), ExitScript(bql_futex_ns=10_000, waker=MAIN), ExitScript()])
    t = sy.trace()
    path = tmp_path / "t.vmtrace"
    write_trace(path, t.events, t.meta)
    page = write_report_html(Report(read_trace(path)), tmp_path / "r.html").read_text()
    assert "BQL wait by holder activity" in page and "who held the BQL (holder activity)" in page
    assert "held by main loop [200]" in page  # the timeline's hover
    doc = json.loads(CliRunner().invoke(app, ["report", str(path), "--bql-breakdown", "-f", "json"]).output)
    lib = bql_breakdown(read_trace(path)).to_json()["bql_wait_by_holder"]
    assert doc["bql_wait_by_holder"] == lib and lib[0]["activity"] == "main loop"
    locks = json.loads(CliRunner().invoke(app, ["report", str(path), "--locks", "-f", "json"]).output)
    assert locks["who_held"]["rows"][0]["wait_ns"] == 10_000
