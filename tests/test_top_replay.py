"""top's aggregation, run through the kernel's boundary logic in Python
(``vmtrace.top.replay``), equals the analysis on the same events: counts and
sums exactly, histograms bucket for bucket, p99 inside its bucket.  The live
twin (tests/live/test_top_live.py) holds the BPF program to the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.analyses.partition import COMPONENTS as ANALYSIS_COMPONENTS
from vmtrace.analyses.partition import exit_breakdown
from vmtrace.analyses.runs import run_cycles
from vmtrace.top import boundaries
from vmtrace.top.aggregate import Snapshot, delta, empty_counters, kind_label, merge, quantile_bounds
from vmtrace.top.replay import replay
from vmtrace.trace import Trace, read_trace

from .strategies import exit_scripts
from .synthetic import BQL_WORD, OTHER_WORD, ExitScript, SyntheticTrace

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
_C = {n: i for i, n in enumerate(boundaries.COMPONENTS)}


def analysis_by_key(trace: Trace) -> pd.DataFrame:
    """exit_breakdown grouped as top groups: (tid, kind, port)."""
    ex = exit_breakdown(trace)
    # top sees no scheduler events: its components are the partition before
    # the analysis carves runnable time out of them (the runnable_*_ns columns
    # say how much came from each).
    back = {c: ex[f"{c}_ns"] + ex[f"runnable_{c}_ns"] for c in ("guest", "vmexit", "emulator", "lock_wait", "bql_wait")}
    ex = ex.assign(
        addr0=ex["addr"].astype("Float64").fillna(0).astype("uint64"),
        kind=ex["kind"].astype(str),
        dispatch_dev_ns=ex["dispatch_ns"] + ex["device_ns"] + ex["runnable_dispatch_ns"],
        **{f"{c}_ns": v for c, v in back.items()},
    )
    return ex


def assert_agrees(trace: Trace) -> None:
    counters = replay(trace, completions=run_cycles(trace).completions_traced)
    ex = analysis_by_key(trace)
    assert int(counters.count.sum()) == len(ex)
    # top folds device into dispatch (it places no uprobes on callbacks).
    cols = {
        "guest": "guest_ns",
        "vmexit": "vmexit_ns",
        "emulator": "emulator_ns",
        "dispatch": "dispatch_dev_ns",
        "lock_wait": "lock_wait_ns",
        "bql_wait": "bql_wait_ns",
        "total": "total_ns",
    }
    groups = ex.groupby(["tid", "kind", "addr0"]).indices
    assert len(groups) == len(counters.count)
    for i in range(len(counters.count)):
        key = (int(counters.tid[i]), kind_label(int(counters.kind[i])), int(counters.addr[i]))
        rows = ex.iloc[groups[key]]
        assert int(counters.count[i]) == len(rows), key
        for comp, col in cols.items():
            values = rows[col].to_numpy(dtype=np.int64)
            assert int(counters.sums[i, _C[comp]]) == int(values.sum()), (key, comp)
            buckets = np.bincount([boundaries.log2_bucket(int(v)) for v in values], minlength=boundaries.HBUCKETS)
            assert (counters.hist[i, _C[comp]] == buckets).all(), (key, comp)
            p99 = float(np.sort(values)[max(int(np.ceil(0.99 * len(values))), 1) - 1])
            lo, hi = quantile_bounds(counters.hist[i, _C[comp]], 0.99)
            assert lo <= p99 < hi, (key, comp, p99, lo, hi)


def test_components_are_the_analysis_partition() -> None:
    # device folds into dispatch; bql_wait is a part of lock_wait; total the sum
    # runnable needs the scheduler: top adds it back where it was carved from.
    assert set(ANALYSIS_COMPONENTS) - {"device", "runnable"} <= set(boundaries.COMPONENTS)
    assert set(boundaries.COMPONENTS) - set(ANALYSIS_COMPONENTS) == {"bql_wait", "total"}


@pytest.mark.parametrize("name", ["qemu-pmtimer-1vcpu", "qemu-pmtimer-2vcpu"])
def test_replay_equals_analysis_on_sample_traces(name: str) -> None:
    assert_agrees(read_trace(SAMPLES / f"{name}.vmtrace"))


unlocked_scripts = exit_scripts().map(lambda x: x.__class__(**{**vars(x), "lock_span": False}))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(unlocked_scripts, min_size=1, max_size=20),
    st.lists(unlocked_scripts, min_size=1, max_size=20),
    st.booleans(),
)
def test_replay_equals_analysis_on_synthetic_streams(a: list, b: list, shuffled: bool) -> None:
    s = SyntheticTrace()
    s.vcpu(11, 0, a)
    s.vcpu(12, 1, b, start_ns=1_000_003)
    if shuffled:
        s.shuffle_by_cpu(seed=len(a) * 31 + len(b))
    trace = s.trace()
    assert_agrees(trace)
    counters = replay(trace)
    words = dict(zip(counters.word.tolist(), counters.wait_ns.tolist(), strict=False))
    assert words.get(BQL_WORD, 0) == sum(x.bql_futex_ns for x in a + b)
    assert words.get(OTHER_WORD, 0) == sum(x.other_futex_ns for x in a + b)


def test_snapshot_delta_merge_and_json_round_trip() -> None:
    s = SyntheticTrace()
    xs = [ExitScript(kernel_ns=1000 + 10 * i, bql_futex_ns=500 * (i % 2), other_futex_ns=7) for i in range(5)]
    s.vcpu(11, 0, xs)
    # the synthetic reads carry no data: their host does not trace completions
    c = replay(s.trace(), completions=False)
    d = delta(empty_counters(), c)
    assert (d.count == c.count).all() and (d.sums == c.sums).all()
    assert int(delta(c, c).count.sum()) == 0
    twice = merge([c, c])
    assert int(twice.count.sum()) == 2 * int(c.count.sum())
    snap = Snapshot(0, 10**9, c, {11: 0}, {11: "CPU 0/KVM"}, {BQL_WORD: "BQL"}, {"tsc_hz": 2_000_000_000})
    back = Snapshot.from_json(snap.to_json())
    assert (back.counters.hist == c.hist).all() and (back.counters.sums == c.sums).all()
    pd.testing.assert_frame_equal(back.rows(), snap.rows())
    rows = snap.rows(by="vcpu")
    assert int(rows["exits"].sum()) == len(xs)
    assert rows["exits_s"].iloc[0] == pytest.approx(len(xs))
    share = sum(rows[f"{n}_share"].iloc[0] for n in ("vmexit", "emulator", "dispatch", "lock_wait"))
    assert share == pytest.approx(100.0)
