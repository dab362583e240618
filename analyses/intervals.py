"""Per-thread pairing of begin/end events into intervals, vectorised.

Every analysis that needs "how long was thread T inside X" goes through
here, so pairing rules (what an unmatched begin or end means) live in one
place:

- Events are taken per thread in trace order (time, then collector order).
- A begin is closed by the next end of the same thread; a begin followed by
  another begin (the end was lost) is dropped, and so is an end with no
  begin.  Dropped events are counted, never guessed into an interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vmtrace.schema import FUTEX_CMD_MASK, FUTEX_WAIT_OPS

__all__ = ["pair_spans", "futex_waits", "offcpu_spans", "overlap_sum", "exits_of_thread"]


def pair_spans(events: pd.DataFrame, begin: str, end: str, keys: tuple[str, ...] = ("tid",)) -> pd.DataFrame:
    """Pair ``begin``/``end`` events per ``keys`` into spans.

    Returns one row per matched pair: the ``keys`` columns, ``start_ns``
    int64, ``end_ns`` int64, ``dur_ns`` int64, and the begin event's ``addr``
    UInt64, ``value`` Int64, ``size`` UInt8, ``write`` boolean and ``name``.
    """
    sel = events[events["event"].isin([begin, end])]
    carried = [c for c in ("addr", "value", "size", "write", "name") if c not in keys]
    cols = list(keys) + ["start_ns", "end_ns", "dur_ns"] + carried
    if sel.empty:
        return pd.DataFrame({c: pd.Series([], dtype="int64") for c in cols})
    sel = sel.sort_values(list(keys) + ["ts_ns"], kind="stable")
    is_begin = (sel["event"] == begin).to_numpy()
    same_key = np.ones(len(sel), dtype=bool)
    for k in keys:
        v = sel[k].to_numpy()
        same_key[:-1] &= v[:-1] == v[1:]
    same_key[-1] = False
    # A begin pairs with the row right after it when that row is an end of
    # the same thread; everything else is an unmatched event.
    nxt_is_end = np.zeros(len(sel), dtype=bool)
    nxt_is_end[:-1] = ~is_begin[1:]
    starts = np.flatnonzero(is_begin & nxt_is_end & same_key)
    ends = starts + 1
    ts = sel["ts_ns"].to_numpy()
    out = sel.iloc[starts][list(keys) + carried].reset_index(drop=True)
    out["start_ns"] = ts[starts]
    out["end_ns"] = ts[ends]
    out["dur_ns"] = out["end_ns"] - out["start_ns"]
    return out[cols]


def futex_waits(events: pd.DataFrame) -> pd.DataFrame:
    """Blocking futex calls: ``tid``, ``start_ns``, ``end_ns``, ``dur_ns``,
    ``uaddr`` UInt64, ``op`` int (the command without flags)."""
    spans = pair_spans(events, "futex_enter", "futex_exit")
    # The exit row carries the return value; fetch it by position.
    spans = spans.rename(columns={"addr": "uaddr", "value": "op_raw"})
    spans["op"] = spans["op_raw"].astype("Int64").fillna(0).astype("int64") & FUTEX_CMD_MASK
    waits = spans[spans["op"].isin(list(FUTEX_WAIT_OPS))]
    return waits[["tid", "start_ns", "end_ns", "dur_ns", "uaddr", "op"]].reset_index(drop=True)


def offcpu_spans(events: pd.DataFrame) -> pd.DataFrame:
    """Off-CPU intervals per thread from sched_out -> next sched_in.

    Returns ``tid``, ``start_ns``, ``end_ns``, ``dur_ns``, ``runnable`` bool
    (switched out while runnable: preempted, waiting for a CPU).
    """
    spans = pair_spans(events, "sched_out", "sched_in")
    spans["runnable"] = spans["value"].astype("Int64").fillna(1).to_numpy() == 0
    return spans[["tid", "start_ns", "end_ns", "dur_ns", "runnable"]]


def overlap_sum(win_start: np.ndarray, win_end: np.ndarray, s_start: np.ndarray, s_end: np.ndarray) -> np.ndarray:
    """For each window, the total time covered by the (sorted, disjoint) spans.

    Uses prefix sums over the spans and clips the two partial spans at the
    window edges, so it is O((windows + spans) log spans).
    """
    if len(s_start) == 0 or len(win_start) == 0:
        return np.zeros(len(win_start), dtype=np.int64)
    order = np.argsort(s_start, kind="stable")
    s_start, s_end = s_start[order], s_end[order]
    dur = s_end - s_start
    csum = np.concatenate(([0], np.cumsum(dur)))
    # Spans fully inside [ws, we): start >= ws and end <= we.
    lo = np.searchsorted(s_start, win_start, side="left")
    hi = np.searchsorted(s_start, win_end, side="left")
    total = csum[hi] - csum[lo]
    # The last span starting inside may run past the window end.
    has = hi > lo
    last = np.clip(hi - 1, 0, len(s_start) - 1)
    over = np.where(has, np.maximum(s_end[last] - win_end, 0), 0)
    total = total - over
    # A span starting before the window may reach into it.
    prev = np.clip(lo - 1, 0, len(s_start) - 1)
    reach = np.where(lo > 0, np.clip(np.minimum(s_end[prev], win_end) - win_start, 0, None), 0)
    return (total + reach).astype(np.int64)


def exits_of_thread(ev: pd.DataFrame) -> np.ndarray:
    """Cycle index of each event of one thread: -1 before the first run_enter,
    then 0, 1, ... incrementing at each run_enter (ordering, not timestamps,
    decides, so equal timestamps cannot move an event across a boundary)."""
    return np.cumsum((ev["event"] == "run_enter").to_numpy()) - 1
