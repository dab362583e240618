"""Off-CPU partition per thread on synthetic traces with scripted switches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.analyses.offcpu import OFFCPU_STATES, offcpu_by_thread, offcpu_report
from vmtrace.errors import MissingEventsError

from .synthetic import ExitScript, SyntheticTrace, expected_total

MAIN = 50
PARTS = [f"{s}_ns" for s in OFFCPU_STATES]


def _expect(xs: list[ExitScript]) -> dict[str, int]:
    lock = sum(x.bql_offcpu_ns - (x.wake_latency_ns if x.waker is not None else 0) for x in xs)
    woken = sum(x.wake_latency_ns for x in xs if x.waker is not None and x.bql_futex_ns)
    time = sum(expected_total(x) for x in xs)
    off = sum(x.bql_offcpu_ns + x.preempted_ns + x.sleep_ns for x in xs)
    return {
        "time_ns": time,
        "running_ns": time - off,
        "lock_ns": lock,
        "bql_ns": lock,
        "other_blocked_ns": sum(x.sleep_ns for x in xs),
        "preempted_ns": sum(x.preempted_ns for x in xs),
        "woken_wait_ns": woken,
        "runnable_ns": woken + sum(x.preempted_ns for x in xs),
        "unknown_ns": 0,
    }


def test_known_partition_of_a_vcpu() -> None:
    xs = [
        ExitScript(bql_futex_ns=5000, waker=MAIN, wake_latency_ns=300),
        ExitScript(preempted_ns=400, post_ns=1000),
        ExitScript(sleep_ns=200, post_ns=1000),
        ExitScript(bql_futex_ns=900),
    ]
    s = SyntheticTrace()
    s.vcpu(101, 0, xs)
    rows = offcpu_by_thread(s.trace()).set_index("tid")
    got = rows.loc[101]
    for k, v in _expect(xs).items():
        assert got[k] == v, k
    assert got["switches"] == 4
    assert got["name"] == "CPU 0/KVM" and got["role"] == "vcpu"
    # The waker never left its CPU.
    assert rows.loc[MAIN, "running_ns"] == rows.loc[MAIN, "time_ns"]


def test_woken_but_no_cpu_is_runnable_not_lock() -> None:
    # Four vCPUs on two CPUs: each BQL waiter is woken early, then waits
    # 4000 ns for a CPU.  That is oversubscription, and must not read as
    # lock contention.
    s = SyntheticTrace()
    for i in range(4):
        s.vcpu(
            101 + i,
            i,
            [ExitScript(bql_futex_ns=5000, waker=MAIN, wake_latency_ns=4000)] * 3,
            start_ns=1_000_000 + 10 * i,
        )
    rep = offcpu_report(s.trace())
    v = rep.totals["vcpu"]
    assert v["woken_wait_ns"] == 12 * 4000
    assert v["lock_ns"] == 12 * (5000 - 2 - 4000)
    assert v["runnable_ns"] > v["lock_ns"]


def test_partition_adds_up_and_unknown_takes_lost_spans() -> None:
    xs = [
        ExitScript(bql_futex_ns=3000),
        ExitScript(preempted_ns=50, post_ns=400, lose=("run_exit",)),
        ExitScript(sleep_ns=70, post_ns=400),
    ]
    s = SyntheticTrace()
    s.vcpu(101, 0, xs)
    r = offcpu_by_thread(s.trace()).set_index("tid").loc[101]
    assert sum(r[p] for p in PARTS) == r["time_ns"]
    # The preemption lies in the exit whose run_exit was lost; the marker's
    # window (after the previous event on that CPU) does not reach it, so
    # only spans across the window are unknown.
    assert r["unknown_ns"] == 0
    s2 = SyntheticTrace()
    s2.vcpu(101, 0, [ExitScript(bql_futex_ns=3000, lose=("sched_in",)), ExitScript(preempted_ns=10, post_ns=20)])
    r2 = offcpu_by_thread(s2.trace()).set_index("tid").loc[101]
    assert r2["unknown_ns"] > 0 and r2["lock_ns"] == 0
    assert sum(r2[p] for p in PARTS) == r2["time_ns"]


def test_sched_out_without_sched_in_ends_at_the_threads_next_event() -> None:
    s = SyntheticTrace()
    s.thread(7, "worker", "worker")
    s.add(1000, 7, "futex_enter", addr=0x10, value=128)
    s.add(1001, 7, "sched_out", value=1, peer_tid=0)
    s.add(1500, 7, "wakeup", peer_tid=8, cpu=1)
    s.add(1700, 7, "futex_exit", value=0)  # back on a CPU: its sched_in was not traced
    s.add(1900, 7, "sched_out", value=0, peer_tid=0)
    s.add(2000, 7, "sched_in", peer_tid=0)
    r = offcpu_by_thread(s.trace()).set_index("tid").loc[7]
    assert r["lock_ns"] == 1500 - 1001 and r["woken_wait_ns"] == 1700 - 1500
    assert r["preempted_ns"] == 100 and r["switches"] == 2


def test_preemption_value_from_bcc_is_runnable() -> None:
    # bcc records prev_state raw: TASK_REPORT_MAX (0x100) is a preemption.
    s = SyntheticTrace()
    s.thread(7, "worker", "worker")
    s.add(1000, 7, "futex_exit", value=0)
    s.add(1100, 7, "sched_out", value=0x100, peer_tid=0)
    s.add(1400, 7, "sched_in", peer_tid=0)
    r = offcpu_by_thread(s.trace()).set_index("tid").loc[7]
    assert r["preempted_ns"] == 300 and r["other_blocked_ns"] == 0


def test_no_sched_events_is_an_error() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript()])
    with pytest.raises(MissingEventsError, match="sched_out, sched_in"):
        offcpu_report(s.trace())


@st.composite
def scripts(draw: st.DrawFn) -> ExitScript:
    bql = draw(st.sampled_from([0, 0, 10, 5_000, 40_000]))
    woken = bool(bql) and draw(st.booleans())
    return ExitScript(
        bql_futex_ns=bql,
        waker=MAIN if woken else None,
        wake_latency_ns=draw(st.sampled_from([0, 3, 6])) if woken else 0,
        preempted_ns=draw(st.sampled_from([0, 0, 1, 900])),
        sleep_ns=draw(st.sampled_from([0, 0, 5, 2_000])),
        post_ns=draw(st.integers(3_000, 6_000)),
    )


# Every thread is switched out at least once, so the trace has sched events.
FIRST = ExitScript(preempted_ns=1, post_ns=10)


@settings(max_examples=50, deadline=None)
@given(st.lists(scripts(), min_size=0, max_size=20), st.lists(scripts(), min_size=0, max_size=20))
def test_partition_property(a: list[ExitScript], b: list[ExitScript]) -> None:
    a, b = [FIRST] + a, [FIRST] + b
    s = SyntheticTrace()
    s.vcpu(201, 0, a, start_ns=10_000)
    s.vcpu(202, 1, b, start_ns=10_001)
    s.shuffle_by_cpu(seed=len(a) * 13 + len(b))
    rows = offcpu_by_thread(s.trace()).set_index("tid")
    for tid, xs in ((201, a), (202, b)):
        got = rows.loc[tid]
        assert sum(got[p] for p in PARTS) == got["time_ns"]
        for k, v in _expect(xs).items():
            assert got[k] == v, k
