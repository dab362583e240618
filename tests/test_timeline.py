"""The timeline on synthetic traces with known answers, and its agreement
with the exit breakdown (on synthetic and on the real QEMU samples)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.analyses.partition import exit_breakdown
from vmtrace.analyses.timeline import STATES, display_state, state_durations, timeline
from vmtrace.errors import MissingEventsError
from vmtrace.trace import Trace, empty_events, read_trace

from .strategies import exit_scripts as exit_scripts_of
from .synthetic import BQL_WORD, OTHER_WORD, ExitScript, SyntheticTrace

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "sample_traces").glob("*.vmtrace"))


def _spans(s: SyntheticTrace, **kw) -> pd.DataFrame:
    return timeline(s.trace(**kw))


def _rows(sp: pd.DataFrame, tid: int) -> list[tuple]:
    """(state, sched, duration) per span of one thread, times relative."""
    t = sp[sp["tid"] == tid]
    return [(r.state, r.sched, r.end_ns - r.start_ns) for r in t.itertuples()]


def expected_from_breakdown(ex: pd.DataFrame) -> pd.DataFrame:
    """The breakdown's columns renamed to the timeline's states."""
    return pd.DataFrame(
        {
            "guest": ex["guest_ns"],
            "vmexit": ex["vmexit_ns"],
            "emulator": ex["emulator_ns"],
            "dispatch": ex["dispatch_ns"],
            "device": ex["device_ns"],
            "bql_wait": ex["bql_wait_ns"],
            "lock_wait": ex["lock_wait_ns"] - ex["bql_wait_ns"],
            "sched_runnable": ex["offcpu_runnable_ns"],
            "sched_blocked": ex["offcpu_lock_ns"] + ex["offcpu_other_ns"],
        }
    ).astype("int64")


def assert_agrees(trace: Trace) -> None:
    ex = exit_breakdown(trace)
    got = state_durations(timeline(trace, ex)).reindex(range(len(ex)), fill_value=0)
    want = expected_from_breakdown(ex)
    # The breakdown carves waiting for a CPU out of the component it fell in
    # (runnable_ns); the timeline keeps the component's state and marks the
    # time on its sched layer.  Each state holds its component and at most
    # that; together they hold runnable_ns more.
    assert_carved(got, want, ex["runnable_ns"])


def assert_carved(got: pd.DataFrame, want: pd.DataFrame, runnable: pd.Series) -> None:
    """Timeline state durations ``got`` against the breakdown's ``want``."""
    comps = [str(c) for c in want if not str(c).startswith("sched_")]
    extra = got[comps].to_numpy() - want[comps].to_numpy()
    assert (extra >= 0).all()
    np.testing.assert_array_equal(extra.sum(axis=1), runnable.to_numpy())
    for col in map(str, want):
        if col.startswith("sched_"):
            np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=col)
    assert (got[["running", "unattributed"]] == 0).all().all()


def assert_well_formed(sp: pd.DataFrame) -> None:
    assert (sp["end_ns"] > sp["start_ns"]).all()
    for _tid, t in sp.groupby("tid"):
        s, e = t["start_ns"].to_numpy(), t["end_ns"].to_numpy()
        # Disjoint, sorted and without holes: one state at any time.
        np.testing.assert_array_equal(s[1:], e[:-1])


def test_plain_exit_is_laid_out_in_order() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(kernel_ns=1000, emulator_ns=200, pre_lock_ns=100, post_ns=300)], start_ns=5000)
    sp = _spans(s)
    assert _rows(sp, 101) == [("vmexit", "on", 1000), ("emulator", "on", 200), ("dispatch", "on", 400)]
    assert list(sp["start_ns"]) == [5000, 6000, 6200]
    assert set(sp["exit"]) == {0}
    assert set(sp["detail"]) == {"pio 0x608 read"}


def test_bql_futex_wait_blocked_off_cpu() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(pre_lock_ns=100, bql_futex_ns=5000, post_ns=300)])
    sp = _spans(s)
    assert _rows(sp, 101)[2:] == [
        ("dispatch", "on", 100),
        ("bql_wait", "on", 1),
        ("bql_wait", "blocked", 4998),
        ("bql_wait", "on", 1),
        ("dispatch", "on", 300),
    ]
    waits = sp[sp["state"] == "bql_wait"]
    assert set(waits["detail"]) == {f"BQL (futex {BQL_WORD:#x})"}


def test_lock_span_names_the_wait_once() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(bql_futex_ns=4000, lock_span=True)])
    sp = _spans(s)
    waits = sp[sp["state"] == "bql_wait"]
    assert (waits["end_ns"] - waits["start_ns"]).sum() == 4000
    # Inside the reported lock span the span's name wins over the futex word.
    assert set(waits["detail"]) == {"BQL"}


def test_unidentified_bql_and_other_words_are_other_lock_waits() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(bql_futex_ns=300, other_futex_ns=700)])
    sp = _spans(s, bql_identified=False)
    waits = sp[sp["state"] == "lock_wait"]
    assert (waits["end_ns"] - waits["start_ns"]).sum() == 1000
    assert not (sp["state"] == "bql_wait").any()
    assert f"futex {OTHER_WORD:#x}" in set(waits["detail"])


def test_device_and_preemption() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(device_ns=900, preempted_ns=250, post_ns=1000)])
    rows = _rows(_spans(s), 101)
    assert ("device", "on", 900) in rows
    # Preempted inside the VMM's exit path: still dispatch, runnable.
    assert ("dispatch", "runnable", 250) in rows
    assert sum(d for st_, sc, d in rows if sc == "runnable") == 250


def test_guest_span_where_kvm_entry_and_exit_fire() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(kernel_ns=1000, emulator_ns=200, pre_lock_ns=100, post_ns=300)], start_ns=10_000)
    s.add(10_100, 101, "kvm_entry")
    s.add(10_600, 101, "kvm_exit", value=30)
    tr = s.trace()
    assert _rows(timeline(tr), 101) == [
        ("vmexit", "on", 100),
        ("guest", "on", 500),
        ("vmexit", "on", 400),
        ("emulator", "on", 200),
        ("dispatch", "on", 400),
    ]
    assert_agrees(tr)


def test_vcpu_outside_exits_is_unattributed() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript()], start_ns=10_000)
    s.add(9_000, 101, "futex_enter", addr=BQL_WORD, value=128)
    s.add(9_500, 101, "futex_exit", value=0)
    s.add(20_000, 101, "sched_out", value=0, peer_tid=0)
    sp = _spans(s)
    t = sp[sp["tid"] == 101]
    assert t.iloc[0][["state", "start_ns", "end_ns"]].tolist() == ["bql_wait", 9_000, 9_500]
    assert t.iloc[1][["state", "start_ns", "end_ns"]].tolist() == ["unattributed", 9_500, 10_000]
    # After the last run_enter the vCPU is inside KVM_RUN, in no complete exit.
    assert t.iloc[-1][["state", "exit"]].tolist() == ["unattributed", -1]
    assert_well_formed(sp)


def test_main_loop_thread_states() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript()], start_ns=1_000)
    s.threads.append({"tid": 7, "name": "qemu-system-x86", "role": "main", "vcpu": None})
    s.add(1_000, 7, "sched_in", peer_tid=0)
    s.add(2_000, 7, "futex_enter", addr=BQL_WORD, value=128)
    s.add(2_100, 7, "sched_out", value=1, peer_tid=0)
    s.add(2_900, 7, "sched_in", peer_tid=0)
    s.add(3_000, 7, "futex_exit", value=0)
    s.add(4_000, 7, "sched_out", value=0, peer_tid=101)
    s.add(4_500, 7, "sched_in", peer_tid=101)
    s.add(5_000, 7, "futex_enter", addr=OTHER_WORD, value=128)
    s.add(5_400, 7, "futex_exit", value=0)
    sp = _spans(s)
    assert _rows(sp, 7) == [
        ("running", "on", 1000),
        ("bql_wait", "on", 100),
        ("bql_wait", "blocked", 800),
        ("bql_wait", "on", 100),
        ("running", "on", 1000),
        ("running", "runnable", 500),
        ("running", "on", 500),
        ("lock_wait", "on", 400),
    ]
    assert (sp.loc[sp["tid"] == 7, "exit"] == -1).all()
    assert list(display_state(sp[sp["tid"] == 7]))[2] == "off-CPU blocked"


def test_wait_inside_a_device_callback_is_lock_wait() -> None:
    # A device callback that blocks on another lock: the wait is lock wait,
    # the callback's own time is device, and dispatch keeps its time.
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(kernel_ns=1000, emulator_ns=200, pre_lock_ns=100, post_ns=300)], start_ns=10_000)
    s.add(11_300, 101, "dispatch_begin", addr=0x608, size=4, write=False, name="acpi-pm-tmr")
    s.add(11_350, 101, "futex_enter", addr=OTHER_WORD, value=128)
    s.add(11_450, 101, "futex_exit", value=0)
    s.add(11_500, 101, "dispatch_end", addr=0x608, size=4, write=False)
    sp = _spans(s)
    assert _rows(sp, 101)[2:] == [
        ("dispatch", "on", 100),
        ("device", "on", 50),
        ("lock_wait", "on", 100),
        ("device", "on", 50),
        ("dispatch", "on", 100),
    ]
    assert set(sp.loc[sp["state"] == "device", "detail"]) == {"acpi-pm-tmr"}


def test_wait_inside_a_device_callback_agrees_with_breakdown() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(kernel_ns=1000, emulator_ns=200, pre_lock_ns=100, post_ns=300)], start_ns=10_000)
    s.add(11_300, 101, "dispatch_begin", addr=0x608, size=4, write=False)
    s.add(11_350, 101, "futex_enter", addr=OTHER_WORD, value=128)
    s.add(11_450, 101, "futex_exit", value=0)
    s.add(11_500, 101, "dispatch_end", addr=0x608, size=4, write=False)
    assert_agrees(s.trace())
    row = exit_breakdown(s.trace()).iloc[0]
    # The 100 ns wait is lock_wait only; the callback keeps its other 100 ns.
    assert (row["device_ns"], row["lock_wait_ns"], row["dispatch_ns"]) == (100, 100, 200)


def test_named_lock_inside_the_bql_span_is_that_lock() -> None:
    # The reference VMM: BQL span, its futex, then the GIL's futex before
    # lock_acquired.  The breakdown gives the GIL's part to lock_wait.
    gil = 0x7777_0000
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(kernel_ns=1000, emulator_ns=200, pre_lock_ns=100, post_ns=300)], start_ns=10_000)
    s.add(11_300, 101, "lock_begin", addr=BQL_WORD, name="BQL")
    s.add(11_310, 101, "futex_enter", addr=BQL_WORD, value=128)
    s.add(11_400, 101, "futex_exit", value=0)
    s.add(11_410, 101, "futex_enter", addr=gil, value=128)
    s.add(11_480, 101, "futex_exit", value=0)
    s.add(11_500, 101, "lock_acquired", addr=BQL_WORD, name="BQL")
    tr = s.trace(futex_names={hex(gil): "GIL"})
    sp = timeline(tr)
    gil_rows = sp[sp["detail"] == f"GIL (futex {gil:#x})"]
    assert gil_rows["state"].tolist() == ["lock_wait"]
    assert int((gil_rows["end_ns"] - gil_rows["start_ns"]).sum()) == 70
    assert_agrees(tr)


def test_missing_run_events_say_what_is_missing() -> None:
    with pytest.raises(MissingEventsError, match="run_enter"):
        timeline(Trace(events=empty_events(), meta={"tsc_hz": 1}))


exit_scripts = exit_scripts_of(post_min_ns=402, preemptions_ns=(0, 0, 1, 400))  # room for the longest preemption


@settings(max_examples=60, deadline=None)
@given(st.lists(exit_scripts, min_size=1, max_size=25), st.lists(exit_scripts, min_size=1, max_size=25), st.booleans())
def test_time_in_each_state_equals_the_exit_components(
    a: list[ExitScript], b: list[ExitScript], identified: bool
) -> None:
    s = SyntheticTrace()
    s.vcpu(201, 0, a, start_ns=10_000)
    s.vcpu(202, 1, b, start_ns=10_001)
    tr = s.trace(bql_identified=identified)
    assert_agrees(tr)
    sp = timeline(tr)
    assert_well_formed(sp)
    assert set(sp["state"].astype(str)) <= set(STATES)


def _nested_in_device(trace: Trace, ex: pd.DataFrame) -> np.ndarray:
    """Exits during which a futex wait started inside a device callback of
    the same thread (the one case the breakdown counts twice)."""
    from vmtrace.analyses.intervals import futex_waits, pair_spans

    ev = trace.events
    dev = pair_spans(ev, "dispatch_begin", "dispatch_end")
    w = futex_waits(ev)
    bad = np.zeros(len(ex), dtype=bool)
    for tid, d in dev.groupby("tid"):
        ws = w.loc[w["tid"] == tid, "start_ns"].to_numpy()
        ds, de = d["start_ns"].to_numpy(), d["end_ns"].to_numpy()
        i = np.searchsorted(ds, ws, side="right") - 1
        ok = i >= 0
        hit = ws[ok][ws[ok] < de[i[ok]]]
        mine = (ex["tid"] == tid).to_numpy()
        starts = ex["start_ns"].to_numpy()
        j = np.searchsorted(starts[mine], hit, side="right") - 1
        bad[np.flatnonzero(mine)[j[j >= 0]]] = True
    return bad


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_agree_with_the_breakdown(path: Path) -> None:
    tr = read_trace(path)
    ex = exit_breakdown(tr)
    sp = timeline(tr, ex)
    assert_well_formed(sp)
    got = state_durations(sp).reindex(range(len(ex)), fill_value=0)
    want = expected_from_breakdown(ex)
    nested = _nested_in_device(tr, ex)
    assert nested.sum() < 0.01 * len(ex)
    assert_carved(got.loc[~nested], want.loc[~nested], ex.loc[~nested, "runnable_ns"])
    # Where a wait nests in a device callback, the two still cover the same
    # exit time and agree on everything but device versus dispatch (and the
    # runnable time the breakdown carved out of them).
    user = ["dispatch", "device"]
    assert (got.loc[nested, user].sum(axis=1) >= want.loc[nested, user].sum(axis=1)).all()
    threads = set(tr.threads["tid"])
    assert threads & set(sp["tid"]) == threads & set(tr.events["tid"])
