"""The breakdown beyond its partition: lost events, guest time, distributions,
and the bulk generator the benchmark relies on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.analyses.exits import exit_stats
from vmtrace.analyses.partition import COMPONENTS, exit_breakdown
from vmtrace.errors import MissingEventsError
from vmtrace.trace import Trace

from .synthetic import ExitScript, SyntheticTrace, expected_total, replicate

PARTS = [f"{c}_ns" for c in COMPONENTS]
LOSABLE = ("pio", "userspace_exit", "run_exit", "futex_exit", "lock_acquired", "dispatch_end")


@st.composite
def exit_with_loss(draw: st.DrawFn) -> ExitScript:
    x = ExitScript(
        kernel_ns=draw(st.integers(5, 20_000)),
        emulator_ns=draw(st.integers(2, 3_000)),
        bql_futex_ns=draw(st.sampled_from([0, 0, 6_000])),
        other_futex_ns=draw(st.sampled_from([0, 0, 900])),
        device_ns=draw(st.sampled_from([0, 0, 1_500])),
        lock_span=draw(st.booleans()),
        post_ns=draw(st.integers(2, 3_000)),
    )
    if draw(st.integers(0, 3)) == 0:
        x = replace(x, lose=(draw(st.sampled_from(LOSABLE)),))
    return x


def _emitted(x: ExitScript) -> bool:
    # A loss only matters when the script emits that event at all.
    return any(
        {
            "futex_exit": x.bql_futex_ns or x.other_futex_ns,
            "lock_acquired": x.lock_span,
            "dispatch_end": x.device_ns,
        }.get(e, True)
        for e in x.lose
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(exit_with_loss(), min_size=1, max_size=25), st.lists(exit_with_loss(), min_size=1, max_size=25))
def test_exits_across_lost_events_are_left_out_and_the_rest_exact(a: list[ExitScript], b: list[ExitScript]) -> None:
    s = SyntheticTrace()
    # One vCPU per CPU: a marker's window then stays inside the exit it hit.
    s.vcpu(201, 0, a, start_ns=10_000)
    s.vcpu(202, 1, b, start_ns=10_001)
    s.shuffle_by_cpu(seed=len(a) * 7 + len(b))
    t = s.trace()
    ex = exit_breakdown(t)
    kept = {tid: [x for x in xs if not _emitted(x)] for tid, xs in ((201, a), (202, b))}
    assert len(ex) == sum(len(v) for v in kept.values())
    np.testing.assert_array_equal(ex[PARTS].to_numpy().sum(axis=1), ex["total_ns"].to_numpy())
    for tid, xs in kept.items():
        got = ex[ex["tid"] == tid].sort_values("start_ns")
        assert list(got["total_ns"]) == [expected_total(x) for x in xs]
        assert list(got["lock_wait_ns"]) == [x.bql_futex_ns + x.other_futex_ns for x in xs]
        assert list(got["device_ns"]) == [x.device_ns for x in xs]
    n_lost = sum(_emitted(x) for x in a + b)
    x = exit_stats(t)
    assert int(x.exits["userspace"].sum()) == len(ex)
    # Exits whose run_exit was lost never closed: only the others are
    # counted as left out for the loss.
    closed_lost = sum(_emitted(v) and "run_exit" not in v.lose for v in a + b)
    assert x.excluded_lost == closed_lost
    b_ = bql_breakdown(t, timed_loop=False)
    assert b_.excluded_lost == closed_lost
    assert (n_lost == 0) == (not any("lost" in n for n in b_.notes))


def test_every_run_exit_lost_leaves_every_exit_out_instead_of_refusing() -> None:
    # Found by the property above: with each exit's run_exit in a loss, the
    # trace has no run_exit at all, yet it is a lossy trace, not one that
    # cannot be analysed.
    s = SyntheticTrace()
    s.vcpu(201, 0, [ExitScript(lose=("run_exit",))] * 3, start_ns=10_000)
    t = s.trace()
    assert "run_exit" not in set(t.events["event"].astype(str))
    assert exit_breakdown(t).empty
    assert int(exit_stats(t).exits["userspace"].sum()) == 0
    # With no loss to explain it, a missing type is still refused.
    clean = SyntheticTrace()
    clean.vcpu(201, 0, [ExitScript()] * 3, start_ns=10_000)
    ev = clean.trace().events
    with pytest.raises(MissingEventsError, match="run_exit"):
        exit_breakdown(Trace(events=ev[ev["event"] != "run_exit"].reset_index(drop=True), meta=clean.trace().meta))


def test_guest_time_where_kvm_entry_and_exit_fire() -> None:
    s = SyntheticTrace()
    xs = [ExitScript(guest_ns=300, kernel_ns=1000), ExitScript(guest_ns=50, kernel_ns=400, kernel_exits=(0x70,))]
    s.vcpu(101, 0, xs)
    ex = exit_breakdown(s.trace())
    assert list(ex["guest_ns"]) == [300, 50]
    assert list(ex["vmexit_ns"]) == [700, 350]
    assert list(ex["kind"]) == ["pio", "pio"] and list(ex["addr"]) == [0x608, 0x608]


def test_a_signal_after_an_in_kernel_pio_is_not_that_pio() -> None:
    # KVM_RUN returns -EINTR after the kernel handled a PIO itself: the exit
    # is the signal, not the port.
    s = SyntheticTrace()
    s.thread(7, "CPU 0/KVM", "vcpu", 0)
    s.add(0, 7, "run_enter")
    s.add(500, 7, "pio", addr=0x70, size=1, write=True, value=0)
    s.add(900, 7, "userspace_exit", value=-4)
    s.add(950, 7, "run_exit", value=-4)
    s.add(1500, 7, "run_enter")
    row = exit_breakdown(s.trace()).iloc[0]
    assert row["kind"] == "EINTR" and pd.isna(row["addr"]) and row["reason"] == -4
    assert row["vmexit_ns"] == 900  # up to the userspace_exit, not the PIO
    stats = exit_stats(s.trace()).by_reason.set_index(["reason", "handled"])
    assert stats.loc[("EINTR", "userspace"), "count"] == 1 and stats.loc[("IO", "kernel"), "count"] == 1


def test_histograms_and_percentiles() -> None:
    s = SyntheticTrace()
    xs = [ExitScript(post_ns=p) for p in (300, 300, 300, 5_300, 50_300)]
    s.vcpu(101, 0, xs)
    b = bql_breakdown(s.trace(), timed_loop=False)
    h = b.histograms["total"]
    cycles = [2 * expected_total(x) for x in xs]  # 2 cycles per ns
    assert sum(h["counts"]) == len(xs)
    edges = np.array(h["edges"])
    for c in cycles:
        i = np.searchsorted(edges, c, side="right") - 1
        assert h["counts"][i] >= 1
    assert edges[-1] >= max(cycles) and np.all(np.diff(edges) > 0)
    assert b.percentiles["total"]["p50"] == pytest.approx(np.quantile(cycles, 0.5))
    assert b.percentiles["total"]["p90"] == pytest.approx(np.quantile(cycles, 0.9))
    v = b.by_vcpu.iloc[0]
    assert v["p90"] == pytest.approx(np.quantile(cycles, 0.9)) and v["p99"] == pytest.approx(np.quantile(cycles, 0.99))
    assert "histograms" in b.to_json()


def test_bulk_generator_emits_what_the_row_generator_does() -> None:
    templates = [
        ExitScript(),
        ExitScript(bql_futex_ns=5000, waker=1, wake_latency_ns=300),
        ExitScript(lock_span=True, bql_futex_ns=2000, device_ns=700, other_futex_ns=100),
        ExitScript(preempted_ns=100, post_ns=500),
        ExitScript(sleep_ns=1000, post_ns=2000, port=0x3F8),
        ExitScript(kernel_exits=(0x70,)),
    ]
    rng = np.random.default_rng(5)
    seqs = {101: rng.integers(0, len(templates), 30), 102: rng.integers(0, len(templates), 25)}
    bulk = replicate(templates, seqs, waker_offset=10_000).trace().events
    rows = SyntheticTrace()
    for i, (tid, seq) in enumerate(seqs.items()):
        rows.vcpu(
            tid, i, [replace(templates[k], waker=tid + 10_000) if templates[k].waker else templates[k] for k in seq]
        )
    pd.testing.assert_frame_equal(bulk, rows.trace().events, check_categorical=False)
