"""The exit breakdown on synthetic traces with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.analyses.partition import COMPONENTS, exit_breakdown
from vmtrace.errors import MissingEventsError
from vmtrace.trace import Trace, empty_events

from .strategies import exit_scripts as exit_scripts_of
from .strategies import woken_exit_scripts
from .synthetic import ExitScript, SyntheticTrace, expected_total

PARTS = [f"{c}_ns" for c in COMPONENTS]


def _one(x: ExitScript, **kw) -> object:
    s = SyntheticTrace()
    s.vcpu(101, 0, [x])
    return exit_breakdown(s.trace(**kw)).iloc[0]


def test_components_of_a_plain_exit() -> None:
    row = _one(ExitScript(kernel_ns=1000, emulator_ns=200, pre_lock_ns=100, post_ns=300))
    assert row["vmexit_ns"] == 1000
    assert row["emulator_ns"] == 200
    assert row["dispatch_ns"] == 400
    assert row["lock_wait_ns"] == 0
    assert row["total_ns"] == 1600
    assert row["kind"] == "pio" and row["addr"] == 0x608


def test_bql_futex_wait_is_bql_lock_wait() -> None:
    row = _one(ExitScript(bql_futex_ns=5000))
    assert row["lock_wait_ns"] == 5000
    assert row["bql_wait_ns"] == 5000
    # Off CPU while blocked in the futex: counted as blocked on a lock.
    assert row["offcpu_lock_ns"] == 4998
    assert row["offcpu_runnable_ns"] == 0


def test_unidentified_bql_is_other_lock_wait() -> None:
    row = _one(ExitScript(bql_futex_ns=5000), bql_identified=False)
    assert row["lock_wait_ns"] == 5000
    assert row["bql_wait_ns"] == 0


def test_other_lock_is_not_bql() -> None:
    row = _one(ExitScript(other_futex_ns=700, bql_futex_ns=300))
    assert row["lock_wait_ns"] == 1000
    assert row["bql_wait_ns"] == 300


def test_lock_span_covers_its_futex_wait_once() -> None:
    # With lock_begin/lock_acquired around the futex wait, the wait must not
    # be counted twice.
    row = _one(ExitScript(bql_futex_ns=4000, lock_span=True))
    assert row["lock_wait_ns"] == 4000
    assert row["bql_wait_ns"] == 4000


def test_device_span_is_split_from_dispatch() -> None:
    row = _one(ExitScript(device_ns=900, post_ns=300, pre_lock_ns=100))
    assert row["device_ns"] == 900
    assert row["dispatch_ns"] == 400


def test_preemption_is_runnable_not_lock() -> None:
    row = _one(ExitScript(preempted_ns=250, post_ns=1000))
    assert row["offcpu_runnable_ns"] == 250
    assert row["offcpu_lock_ns"] == 0
    assert row["lock_wait_ns"] == 0
    # Carved out of dispatch, where it fell.
    assert row["runnable_ns"] == 250
    assert row["dispatch_ns"] == 100 + 1000 - 250


def test_preemption_inside_kvm_run_is_runnable_not_vmexit() -> None:
    row = _one(ExitScript(kernel_ns=5000, kernel_preempted_ns=3000))
    assert row["runnable_ns"] == 3000
    assert row["vmexit_ns"] == 2000
    assert row["total_ns"] == expected_total(ExitScript(kernel_ns=5000))


def test_woken_lock_wait_then_waiting_for_a_cpu_is_runnable_not_bql() -> None:
    x = ExitScript(bql_futex_ns=5000, waker=1, wake_latency_ns=300, lock_span=True)
    row = _one(x)
    # Woken at 5000 - 1 - 300 into the wait; on a CPU again 1 ns before it ends.
    assert row["runnable_ns"] == 300
    assert row["bql_wait_ns"] == row["lock_wait_ns"] == 5000 - 300
    assert row["total_ns"] == expected_total(x)


def test_every_kind_of_runnable_in_one_exit() -> None:
    x = ExitScript(
        kernel_ns=9000,
        kernel_preempted_ns=4000,
        bql_futex_ns=6000,
        waker=1,
        wake_latency_ns=1000,
        other_futex_ns=500,
        device_ns=700,
        preempted_ns=200,
        post_ns=1500,
    )
    row = _one(x)
    assert row["runnable_ns"] == 4000 + 1000 + 200
    assert row["vmexit_ns"] == 5000
    assert row["lock_wait_ns"] == 5000 + 500 and row["bql_wait_ns"] == 5000
    assert row["device_ns"] == 700
    assert row["dispatch_ns"] == x.pre_lock_ns + 1500 - 200
    assert sum(row[p] for p in PARTS) == row["total_ns"] == expected_total(x)


def test_runnable_in_cycles_in_the_summary() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(kernel_ns=5000, kernel_preempted_ns=1000)] * 4)
    b = bql_breakdown(s.trace(), timed_loop=False)
    assert b.components["runnable"] == pytest.approx(1000 * 2)  # 2 cycles per ns
    assert b.to_json()["components"]["runnable"] == b.components["runnable"]
    assert list(b.by_vcpu["runnable"]) == [pytest.approx(2000)]


def test_interleaved_vcpus_and_out_of_order_input() -> None:
    s = SyntheticTrace()
    xs = [ExitScript(bql_futex_ns=100 * i) for i in range(20)]
    s.vcpu(101, 0, xs, start_ns=1_000_000)
    s.vcpu(102, 1, xs[::-1], start_ns=1_000_050)
    s.rows.reverse()  # collectors deliver per-CPU chunks out of order
    ex = exit_breakdown(s.trace())
    assert len(ex) == 40
    for tid, scripts in ((101, xs), (102, xs[::-1])):
        got = ex[ex["tid"] == tid].sort_values("start_ns")
        assert list(got["bql_wait_ns"]) == [x.bql_futex_ns for x in scripts]
        assert list(got["total_ns"]) == [expected_total(x) for x in scripts]


def test_missing_run_events_say_what_is_missing() -> None:
    with pytest.raises(MissingEventsError, match="run_enter"):
        exit_breakdown(Trace(events=empty_events(), meta={"tsc_hz": 1}))


def test_summary_in_cycles_and_port_filter() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(port=0x608)] * 3 + [ExitScript(port=0x3F8, write=True, post_ns=10_300)])
    b = bql_breakdown(s.trace(), port=0x608)
    assert len(b.exits) == 3
    assert b.components["total"] == pytest.approx(1600 * 2)  # 2 cycles per ns
    everything = bql_breakdown(s.trace())
    assert len(everything.exits) == 4
    assert set(everything.by_kind["addr"]) == {0x608, 0x3F8}


exit_scripts = exit_scripts_of()


@settings(max_examples=60, deadline=None)
@given(st.lists(exit_scripts, min_size=1, max_size=25), st.lists(exit_scripts, min_size=1, max_size=25))
def test_partition_and_lock_accounting_property(a: list[ExitScript], b: list[ExitScript]) -> None:
    s = SyntheticTrace()
    s.vcpu(201, 0, a, start_ns=10_000)
    s.vcpu(202, 1, b, start_ns=10_001)
    ex = exit_breakdown(s.trace())
    assert len(ex) == len(a) + len(b)
    parts = ex[PARTS].to_numpy()
    assert (parts >= 0).all()
    np.testing.assert_array_equal(parts.sum(axis=1), ex["total_ns"].to_numpy())
    for tid, scripts in ((201, a), (202, b)):
        got = ex[ex["tid"] == tid].sort_values("start_ns")
        assert list(got["total_ns"]) == [expected_total(x) for x in scripts]
        assert list(got["bql_wait_ns"]) == [x.bql_futex_ns for x in scripts]
        assert list(got["lock_wait_ns"]) == [x.bql_futex_ns + x.other_futex_ns for x in scripts]
        assert list(got["device_ns"]) == [x.device_ns for x in scripts]


@settings(max_examples=60, deadline=None)
@given(st.lists(woken_exit_scripts(), min_size=1, max_size=20), st.lists(woken_exit_scripts(), min_size=1, max_size=20))
def test_partition_with_runnable_property(a: list[ExitScript], b: list[ExitScript]) -> None:
    s = SyntheticTrace()
    s.vcpu(201, 0, a, start_ns=10_000)
    s.vcpu(202, 1, b, start_ns=10_001)
    ex = exit_breakdown(s.trace())
    parts = ex[PARTS].to_numpy()
    assert (parts >= 0).all()
    np.testing.assert_array_equal(parts.sum(axis=1), ex["total_ns"].to_numpy())
    assert (ex["bql_wait_ns"] <= ex["lock_wait_ns"]).all()
    for tid, scripts in ((201, a), (202, b)):
        got = ex[ex["tid"] == tid].sort_values("start_ns")
        assert list(got["total_ns"]) == [expected_total(x) for x in scripts]
        assert list(got["runnable_ns"]) == [x.kernel_preempted_ns + x.preempted_ns + x.wake_latency_ns for x in scripts]
        assert list(got["vmexit_ns"]) == [x.kernel_ns - x.kernel_preempted_ns for x in scripts]
        assert list(got["bql_wait_ns"]) == [x.bql_futex_ns - x.wake_latency_ns for x in scripts]
        assert list(got["lock_wait_ns"]) == [x.bql_futex_ns - x.wake_latency_ns + x.other_futex_ns for x in scripts]
        assert list(got["device_ns"]) == [x.device_ns for x in scripts]
        assert list(got["dispatch_ns"]) == [x.pre_lock_ns + x.post_ns - x.preempted_ns for x in scripts]
        # The same time the off-CPU overlay counts, found another way.
        assert list(got["runnable_ns"]) == list(got["offcpu_runnable_ns"] + got["offcpu_woken_ns"])


GIL_WORD = 0x7777_0000_0040


def _bql_span_with_gil_reacquire(name_gil: bool) -> object:
    # The reference VMM's BQL acquire: futex wait on the BQL word, then the
    # interpreter blocks again to re-take the GIL before lock_acquired.
    s = SyntheticTrace()
    s.threads.append({"tid": 7, "name": "CPU 0/KVM", "role": "vcpu", "vcpu": 0})
    s.add(0, 7, "run_enter")
    s.add(1000, 7, "pio", addr=0x608, size=4, write=False, value=0)
    s.add(1200, 7, "run_exit", value=0)
    s.add(1300, 7, "lock_begin", addr=0x5555_0000_1000, name="BQL")
    s.add(1300, 7, "futex_enter", addr=0x5555_0000_1000, value=128)
    s.add(4300, 7, "futex_exit", value=0)  # 3000 on the BQL
    s.add(4300, 7, "futex_enter", addr=GIL_WORD, value=128)
    s.add(6300, 7, "futex_exit", value=0)  # 2000 on the GIL
    s.add(6300, 7, "lock_acquired", addr=0x5555_0000_1000, name="BQL")
    s.add(6800, 7, "run_enter")
    trace = s.trace(futex_names={hex(GIL_WORD): "GIL"}) if name_gil else s.trace()
    return exit_breakdown(trace).iloc[0]


def test_named_lock_waited_inside_a_bql_span_is_not_the_bql() -> None:
    row = _bql_span_with_gil_reacquire(name_gil=True)
    assert row["lock_wait_ns"] == 5000
    assert row["bql_wait_ns"] == 3000
    # Without the name the trace cannot tell, and the span is the BQL's.
    assert _bql_span_with_gil_reacquire(name_gil=False)["bql_wait_ns"] == 5000


def test_grouping_by_a_plain_numpy_vcpu_column() -> None:
    # Regression: a trace whose exits carry vcpu as numpy int16 (reference
    # VMM, 1 vCPU) broke pandas.factorize inside the per-vCPU grouping.
    from vmtrace.analyses.breakdown import _grouped

    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(), ExitScript(post_ns=500)])
    ex = exit_breakdown(s.trace())
    ex["vcpu"] = ex["vcpu"].to_numpy().astype(np.int16)
    g = _grouped(ex, ["vcpu"], 2_000_000_000, None)
    assert list(g["vcpu"]) == [0] and int(g["exits"].iloc[0]) == 2
