"""Exit statistics on synthetic traces whose exits are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.analyses.exits import exit_events, exit_stats, exit_table
from vmtrace.errors import MissingEventsError

from .synthetic import ExitScript, SyntheticTrace, expected_total


def _userspace_time(x: ExitScript) -> int:
    # Without kvm_exit an exit is timed from its decode to the next KVM_RUN.
    return expected_total(x) - x.kernel_ns


def test_userspace_and_kernel_exits_without_kvm_exit() -> None:
    s = SyntheticTrace()
    xs = [
        ExitScript(port=0x608, kernel_exits=(0x70,)),
        ExitScript(port=0x3F8, write=True, post_ns=900),
        ExitScript(port=0x608, bql_futex_ns=4000, kernel_exits=(0x70, 0x71)),
    ]
    s.vcpu(101, 0, xs)
    x = exit_stats(s.trace())
    assert x.source == "KVM_RUN"
    ev = x.exits
    assert int(ev["userspace"].sum()) == 3
    assert int((~ev["userspace"]).sum()) == 3
    user = ev[ev["userspace"]].sort_values("start_ns")
    assert list(user["dur_ns"]) == [_userspace_time(v) for v in xs]
    assert list(user["addr"]) == [0x608, 0x3F8, 0x608]
    assert ev.loc[~ev["userspace"], "dur_ns"].isna().all()

    r = x.by_reason.set_index(["reason", "handled"])
    assert r.loc[("IO", "userspace"), "count"] == 3
    assert r.loc[("IO", "kernel"), "count"] == 3
    assert r.loc[("IO", "kernel"), "timed"] == 0
    assert r.loc[("IO", "userspace"), "share"] == pytest.approx(0.5)
    assert r.loc[("IO", "userspace"), "time_share"] == pytest.approx(1.0)

    a = x.by_access.set_index(["kind", "addr", "dir"])
    pm = a.loc[("pio", 0x608, "in")]
    times = [_userspace_time(xs[0]), _userspace_time(xs[2])]
    assert pm["count"] == 2
    assert pm["min_ns"] == min(times) and pm["max_ns"] == max(times)
    assert pm["mean_ns"] == pytest.approx(np.mean(times))
    assert pm["time_share"] == pytest.approx(sum(times) / sum(_userspace_time(v) for v in xs))
    assert a.loc[("pio", 0x3F8, "out"), "count"] == 1
    # The kernel's own PIO writes are counted per port too.
    assert a.loc[("pio", 0x70, "out"), "count"] == 2
    assert a.loc[("pio", 0x71, "out"), "count"] == 1


def test_kvm_exit_pairs_with_the_next_kvm_entry() -> None:
    s = SyntheticTrace()
    xs = [
        ExitScript(guest_ns=300, kernel_exits=(0x70,)),
        ExitScript(guest_ns=100, post_ns=700),
        ExitScript(guest_ns=50),
    ]
    end = s.vcpu(101, 0, xs)
    s.add(end + 1, 101, "kvm_entry")  # the final run_enter re-enters the guest
    x = exit_stats(s.trace(kvm_flavour="vmx"))
    assert x.source == "kvm_exit"
    ev = x.exits.sort_values("start_ns")
    user = ev[ev["userspace"]]
    # kvm_exit is 1 ns before the decode; the next kvm_entry is at the next
    # exit's (kernel_ns - 1 - guest_ns - 3 * kernel exits) after its run_enter.
    nxt = xs[1:] + [None]
    want = []
    for v, n in zip(xs, nxt, strict=True):
        reenter = 1 if n is None else n.kernel_ns - 1 - n.guest_ns - 3 * len(n.kernel_exits)
        want.append(1 + (expected_total(v) - v.kernel_ns) + reenter)
    assert list(user["dur_ns"]) == want
    assert set(ev["reason"]) == {"IO_INSTRUCTION"}
    kernel = ev[~ev["userspace"]]
    assert list(kernel["dur_ns"]) == [2]
    assert list(kernel["addr"]) == [0x70]


def test_svm_reasons_are_named_from_the_svm_table() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(guest_ns=10), ExitScript(guest_ns=10)])
    t = s.trace(kvm_flavour="svm")
    ev = t.events
    ev.loc[ev["event"] == "kvm_exit", "value"] = 0x7B
    assert set(exit_events(t)["reason"]) == {"IOIO"}


def test_port_filter_keeps_only_that_port() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(port=0x608)] * 3 + [ExitScript(port=0x3F8, write=True)])
    x = exit_stats(s.trace(), port=0x3F8)
    assert len(x.exits) == 1 and int(x.exits["addr"].iloc[0]) == 0x3F8


def test_by_vcpu_counts_each_thread() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript()] * 4)
    s.vcpu(102, 1, [ExitScript(kernel_exits=(0x61,))] * 2, start_ns=1_000_003)
    s.shuffle_by_cpu(seed=3)
    v = exit_stats(s.trace()).by_vcpu.set_index("vcpu")
    assert v.loc[0, "count"] == 4 and v.loc[1, "count"] == 4
    assert v.loc[1, "userspace"] == 2


def test_no_kvm_run_events_is_an_error_naming_what_is_there() -> None:
    s = SyntheticTrace()
    s.futex(100, 7, 0x1000, 50)
    with pytest.raises(MissingEventsError, match="run_enter and run_exit, or kvm_exit and kvm_entry.*futex_enter"):
        exit_stats(s.trace())


def test_exit_table_of_nothing_has_the_columns() -> None:
    t = exit_table(
        pd.DataFrame({"reason": [], "dur_ns": pd.array([], dtype="Int64"), "userspace": np.zeros(0, bool)}), ["reason"]
    )
    assert {"count", "share", "time_share", "min_ns", "max_ns"} <= set(t.columns)


scripts = st.builds(
    ExitScript,
    port=st.sampled_from([0x608, 0x3F8, 0xCF8]),
    kernel_ns=st.integers(20, 5_000),
    emulator_ns=st.integers(2, 3_000),
    post_ns=st.integers(2, 3_000),
    bql_futex_ns=st.sampled_from([0, 0, 5_000]),
    kernel_exits=st.sampled_from([(), (), (0x70,), (0x70, 0x71)]),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(scripts, min_size=1, max_size=30), st.lists(scripts, min_size=1, max_size=30))
def test_counts_and_times_match_the_script(a: list[ExitScript], b: list[ExitScript]) -> None:
    s = SyntheticTrace()
    s.vcpu(201, 0, a, start_ns=10_000)
    s.vcpu(202, 1, b, start_ns=10_001)
    s.shuffle_by_cpu(seed=len(a) * 31 + len(b))
    x = exit_stats(s.trace())
    both = a + b
    assert int(x.exits["userspace"].sum()) == len(both)
    assert int((~x.exits["userspace"]).sum()) == sum(len(v.kernel_exits) for v in both)
    acc = x.by_access.set_index(["kind", "addr", "dir"])
    for port in {v.port for v in both}:
        mine = [v for v in both if v.port == port]
        row = acc.loc[("pio", port, "in")]
        assert row["count"] == len(mine)
        assert row["time_ns"] == sum(_userspace_time(v) for v in mine)
        assert row["max_ns"] == max(_userspace_time(v) for v in mine)
    assert x.by_reason["count"].sum() == len(x.exits)
    assert x.by_reason["share"].sum() == pytest.approx(1.0)
