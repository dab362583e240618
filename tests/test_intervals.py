"""The vectorised interval primitives against plain-Python definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.analyses.intervals import (
    ThreadWindows,
    last_match,
    lost_windows,
    overlap_by_thread,
    overlaps_loss,
    pair_spans,
)
from vmtrace.trace import normalize_events


def _disjoint(draw: st.DrawFn, tids: list[int], max_n: int, gaps: bool) -> tuple[list[int], list[int], list[int]]:
    tid, start, end = [], [], []
    for t in tids:
        cuts = sorted(draw(st.sets(st.integers(0, 2_000), min_size=2, max_size=2 * max_n)))
        pairs = list(zip(cuts[::2], cuts[1::2], strict=False)) if gaps else list(zip(cuts[:-1], cuts[1:], strict=True))
        for a, b in pairs:
            tid.append(t)
            start.append(a)
            end.append(b)
    return tid, start, end


@st.composite
def windows_and_spans(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    tids = draw(st.lists(st.sampled_from([3, 7, 11, 4_000_000]), min_size=1, max_size=3, unique=True))
    w = _disjoint(draw, tids, 15, gaps=draw(st.booleans()))
    s = _disjoint(draw, draw(st.lists(st.sampled_from(tids + [5]), max_size=3, unique=True)), 10, gaps=True)
    return tuple(np.array(v, dtype=np.int64) for v in w + s)


def _brute(wt, ws, we, st_, ss, se) -> np.ndarray:
    return np.array(
        [
            sum(max(0, min(e, b) - max(s, a)) for t2, s, e in zip(st_, ss, se, strict=True) if t2 == t)
            for t, a, b in zip(wt, ws, we, strict=True)
        ],
        dtype=np.int64,
    )


@settings(max_examples=150, deadline=None)
@given(windows_and_spans())
def test_overlap_by_thread_is_the_sum_of_clipped_spans(data: tuple[np.ndarray, ...]) -> None:
    wt, ws, we, st_, ss, se = data
    want = _brute(wt, ws, we, st_, ss, se)
    np.testing.assert_array_equal(overlap_by_thread(wt, ws, we, st_, ss, se), want)
    np.testing.assert_array_equal(ThreadWindows(wt, ws, we).overlap(st_, ss, se), want)
    # Windows out of order take the general path and agree.
    rev = slice(None, None, -1)
    np.testing.assert_array_equal(overlap_by_thread(wt[rev], ws[rev], we[rev], st_, ss, se), want[rev])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), max_size=40),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), max_size=40),
    st.booleans(),
)
def test_last_match_is_the_last_item_of_the_key_not_after(
    items: list[tuple[int, int]], queries: list[tuple[int, int]], strict: bool
) -> None:
    ik = np.array([k for k, _ in items], dtype=np.int64)
    it = np.array([t for _, t in items], dtype=np.int64)
    qk = np.array([k for k, _ in queries], dtype=np.int64)
    qt = np.array([t for _, t in queries], dtype=np.int64)
    got = last_match(qk, qt, ik, it, strict=strict)
    for (k, t), g in zip(queries, got, strict=True):
        ok = [i for i, (k2, t2) in enumerate(items) if k2 == k and (t2 < t if strict else t2 <= t)]
        # The latest time wins; among equal times, the last item given.
        want = max(ok, key=lambda i: (items[i][1], i)) if ok else -1
        assert g == want


def test_pair_spans_pairs_within_each_key_and_drops_orphans() -> None:
    rows = [
        (10, 1, "lock_begin", "A"),
        (11, 2, "lock_begin", "A"),
        (12, 1, "lock_acquired", "A"),
        (13, 1, "lock_begin", "B"),
        (14, 1, "lock_begin", "A"),
        (15, 1, "lock_acquired", "B"),
        (16, 2, "lock_acquired", "A"),
        (17, 1, "lock_acquired", "C"),  # C: an end with no begin
        (18, 1, "lock_acquired", "A"),
    ]
    ev = normalize_events(pd.DataFrame(rows, columns=["ts_ns", "tid", "event", "name"]).assign(cpu=0))
    spans = pair_spans(ev, "lock_begin", "lock_acquired", keys=("tid", "name"))
    got = sorted(zip(spans["tid"], spans["name"].astype(str), spans["start_ns"], spans["end_ns"], strict=True))
    assert got == [(1, "A", 10, 12), (1, "A", 14, 18), (1, "B", 13, 15), (2, "A", 11, 16)]


def test_lost_window_runs_from_the_previous_event_of_that_cpu() -> None:
    rows = [
        (100, 5, 0, "run_enter", None),
        (150, 6, 1, "run_enter", None),
        (180, 5, 0, "pio", None),
        (300, -1, 0, "lost", 4),
        (310, -1, 1, "lost", 2),
        (320, 5, 0, "run_exit", None),
    ]
    ev = normalize_events(pd.DataFrame(rows, columns=["ts_ns", "tid", "cpu", "event", "value"]))
    w = lost_windows(ev).sort_values("cpu")
    assert list(w["start_ns"]) == [180, 150] and list(w["end_ns"]) == [300, 310] and list(w["count"]) == [4, 2]
    # Spans touching a window at its open start do not overlap it.
    mask = overlaps_loss(np.array([0, 100, 181, 305, 311]), np.array([100, 150, 200, 306, 400]), w)
    assert list(mask) == [False, False, True, True, False]
