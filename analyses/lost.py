"""Lost-event windows: where a collector lost events, and which spans may
have lost some of theirs.

A ``lost`` marker (``vmtrace.schema``) says how many events of one CPU went
missing after the previous event recorded there.  No exit, lock wait or
request is built across such a window: the events inside may be gone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vmtrace.schema import EVENT_CODE

from .arithmetic import last_match, rank_in

__all__ = [
    "lost_windows",
    "overlaps_loss",
    "thread_spans_lost",
]


def lost_windows(events: pd.DataFrame) -> pd.DataFrame:
    """Where a collector lost events, from the ``lost`` markers in the stream.

    A marker on ``cpu`` at ``ts_ns`` says ``value`` events of that CPU went
    missing after the previous event recorded on it.  Returns one row per
    marker: ``cpu`` int16, ``start_ns`` int64 (the previous event on that CPU,
    or the int64 minimum when there is none), ``end_ns`` int64 (the marker)
    and ``count`` int64.  Anything that spans such a window may have lost
    its inner events and is not to be trusted.
    """
    is_lost = events["event"].cat.codes.to_numpy() == EVENT_CODE["lost"]
    cols = {"cpu": "int16", "start_ns": "int64", "end_ns": "int64", "count": "int64"}
    if not is_lost.any():
        return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in cols.items()})
    marks = events[is_lost]
    cpu = marks["cpu"].to_numpy(dtype=np.int64)
    end = marks["ts_ns"].to_numpy(dtype=np.int64)
    others = events[~is_lost & events["cpu"].isin(np.unique(cpu)).to_numpy()]
    o_ts = others["ts_ns"].to_numpy(dtype=np.int64)
    idx = last_match(cpu, end, others["cpu"].to_numpy(dtype=np.int64), o_ts, strict=True)
    start = np.where(idx >= 0, o_ts[np.clip(idx, 0, None)] if len(o_ts) else 0, np.iinfo(np.int64).min)
    return pd.DataFrame(
        {
            "cpu": cpu.astype(np.int16),
            "start_ns": start.astype(np.int64),
            "end_ns": end,
            "count": marks["value"].astype("Int64").fillna(1).to_numpy(dtype=np.int64),
        }
    )


def overlaps_loss(start: np.ndarray, end: np.ndarray, windows: pd.DataFrame) -> np.ndarray:
    """Whether each span [start, end] overlaps a lost-event window
    (start_ns, end_ns] of ``lost_windows``, on any CPU: a thread may have run
    on the CPU that lost events, so no span across a loss is trusted."""
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if len(windows) == 0 or len(start) == 0:
        return np.zeros(len(start), dtype=bool)
    order = np.argsort(windows["end_ns"].to_numpy(dtype=np.int64), kind="stable")
    w_end = windows["end_ns"].to_numpy(dtype=np.int64)[order]
    w_start = windows["start_ns"].to_numpy(dtype=np.int64)[order]
    # Windows ending at or after the span's start, the earliest-starting of them.
    suffix_min = np.minimum.accumulate(w_start[::-1])[::-1]
    first = np.searchsorted(w_end, start, side="left")
    has = first < len(w_end)
    res = np.zeros(len(start), dtype=bool)
    res[has] = suffix_min[first[has]] < end[has]
    return res


def thread_spans_lost(
    events: pd.DataFrame, s_tid: np.ndarray, s_start: np.ndarray, s_end: np.ndarray, windows: pd.DataFrame | None = None
) -> np.ndarray:
    """Whether each span of a thread may have lost events: it overlaps a
    lost-event window of a CPU the thread could have been on then.

    A thread was possibly on CPU C during a window when its last own event
    before the window, its first after it, or any of its own events inside
    it, was recorded on C (own: not a wakeup, which fires on the waker's
    CPU).  A thread seen only on other CPUs around and during the window lost
    nothing there: with one lossy CPU among eight, the other seven vCPUs'
    exits stay.  (A thread that migrated to C and back with every event on
    C lost goes unnoticed; that takes two migrations inside one gap.)
    """
    windows = lost_windows(events) if windows is None else windows
    s_tid = np.asarray(s_tid, dtype=np.int64)
    s_start = np.asarray(s_start, dtype=np.int64)
    s_end = np.asarray(s_end, dtype=np.int64)
    out = np.zeros(len(s_tid), dtype=bool)
    if len(windows) == 0 or len(s_tid) == 0:
        return out
    threads = np.unique(s_tid)
    codes = events["event"].cat.codes.to_numpy()
    ev_tid = events["tid"].to_numpy()
    own = ~np.isin(codes, [EVENT_CODE["wakeup"], EVENT_CODE["lost"]])
    rows = np.flatnonzero(own & np.isin(ev_tid, threads))
    e_tid = ev_tid[rows].astype(np.int64)
    e_ts = events["ts_ns"].to_numpy()[rows]
    e_cpu = events["cpu"].to_numpy()[rows].astype(np.int64)
    n_w, n_t = len(windows), len(threads)
    pw = np.repeat(np.arange(n_w), n_t)
    pt = np.tile(threads, n_w)
    we = windows["end_ns"].to_numpy(dtype=np.int64)[pw]
    # A window with no event before it starts at int64's minimum; just before
    # every span and event means the same here and keeps the key shifts of
    # last_match and the per-thread ranges below inside int64.
    floor = int(min(s_start.min(), we.min(), e_ts.min() if len(e_ts) else we.min())) - 1
    ws = np.maximum(windows["start_ns"].to_numpy(dtype=np.int64)[pw], floor)
    wc = windows["cpu"].to_numpy(dtype=np.int64)[pw]
    prev = last_match(pt, ws, e_tid, e_ts)
    # The first event after the window: the last one "before" in negated time.
    nxt = last_match(pt, -we, e_tid, -e_ts, strict=True)
    cpu_key = e_tid * 4096 + e_cpu
    inside = last_match(pt * 4096 + wc, we, cpu_key, e_ts)
    on_c = (prev >= 0) & (e_cpu[np.maximum(prev, 0)] == wc) if len(rows) else np.zeros(len(pw), bool)
    on_c |= (nxt >= 0) & (e_cpu[np.maximum(nxt, 0)] == wc) if len(rows) else False
    on_c |= (inside >= 0) & (e_ts[np.maximum(inside, 0)] > ws) if len(rows) else False
    if not on_c.any():
        return out
    # Per thread, its own windows against its own spans: shift each thread
    # to a range of its own and test all at once.
    lo = int(min(s_start.min(), ws[on_c].min(initial=0), 0))
    hi = int(max(s_end.max(), we[on_c].max()))
    extent = hi - lo + 1
    if extent * (n_t + 1) >= 1 << 62:
        raise OverflowError("trace too long to shift threads apart in int64")
    w_rank = rank_in(threads, pt[on_c])
    s_rank = rank_in(threads, s_tid)
    w_start = np.maximum(ws[on_c], lo)
    shifted = pd.DataFrame({"start_ns": w_start + w_rank * extent - lo, "end_ns": we[on_c] + w_rank * extent - lo})
    return overlaps_loss(s_start + s_rank * extent - lo, s_end + s_rank * extent - lo, shifted)
