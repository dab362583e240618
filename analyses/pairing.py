"""Per-thread pairing of begin/end events into spans, vectorised.

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

from vmtrace.schema import EVENT_CODE, FUTEX_CMD_MASK, FUTEX_WAIT_OPS, FUTEX_WAKE_OPS

from .arithmetic import dense_codes, last_match

__all__ = [
    "i64",
    "pair_spans",
    "futex_calls",
    "futex_waits",
    "offcpu_spans",
    "exits_of_thread",
    "thread_lifetimes",
]

# sched_switch prev_state bits that name a task state (TASK_REPORT); the bit
# above them, TASK_REPORT_MAX (0x100), marks a preemption.  bcc records the
# raw value, ftrace the masked one: both read as runnable through the mask.
_TASK_REPORT_MASK = 0xFF


def i64(df: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` of ``df`` as int64 numpy (thread ids, times)."""
    return df[col].to_numpy(dtype=np.int64)


def pair_spans(
    events: pd.DataFrame,
    begin: str,
    end: str,
    keys: tuple[str, ...] = ("tid",),
    end_cols: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Pair ``begin``/``end`` events per ``keys`` into spans.

    Returns one row per matched pair: the ``keys`` columns, ``start_ns``
    int64, ``end_ns`` int64, ``dur_ns`` int64, and the begin event's ``addr``
    UInt64, ``value`` Int64, ``size`` UInt8, ``write`` boolean and ``name``;
    then, for each column ``c`` in ``end_cols``, the end event's value as
    ``end_c`` (a futex call's return value is on its exit event).
    """
    carried = [c for c in ("addr", "value", "size", "write", "name") if c not in keys]
    cols = list(keys) + ["start_ns", "end_ns", "dur_ns"] + carried + [f"end_{c}" for c in end_cols]
    codes = events["event"].cat.codes.to_numpy()
    b_code, e_code = EVENT_CODE[begin], EVENT_CODE[end]
    sel = np.flatnonzero((codes == b_code) | (codes == e_code))
    if len(sel) == 0:
        empty = pd.DataFrame({c: pd.Series([], dtype="int64") for c in cols})
        for c in carried + list(end_cols):
            src = events[c] if c in events else pd.Series([], dtype="Int64")
            empty[c if c in carried else f"end_{c}"] = src.iloc[0:0].reset_index(drop=True)
        return empty
    # Group by the keys, keeping trace order (time, then collector order)
    # inside each group: one stable sort on a combined integer key.
    key_codes = [_key_codes(events[k], sel) for k in keys]
    combined = np.zeros(len(sel), dtype=np.int64)
    for kc in key_codes:
        combined = combined * (int(kc.max()) + 1) + kc
    order = np.argsort(_narrow(combined), kind="stable")
    sel = sel[order]
    combined = combined[order]
    is_begin = codes[sel] == b_code
    same_key = np.zeros(len(sel), dtype=bool)
    same_key[:-1] = combined[:-1] == combined[1:]
    # A begin pairs with the row right after it when that row is an end of
    # the same thread; everything else is an unmatched event.
    nxt_is_end = np.zeros(len(sel), dtype=bool)
    nxt_is_end[:-1] = ~is_begin[1:]
    starts = sel[np.flatnonzero(is_begin & nxt_is_end & same_key)]
    ends = sel[np.flatnonzero(is_begin & nxt_is_end & same_key) + 1]
    ts = events["ts_ns"].to_numpy()
    out = {k: events[k].array.take(starts) for k in keys}
    out["start_ns"] = ts[starts]
    out["end_ns"] = ts[ends]
    out["dur_ns"] = out["end_ns"] - out["start_ns"]
    for c in carried:
        out[c] = events[c].array.take(starts)
    for c in end_cols:
        out[f"end_{c}"] = events[c].array.take(ends)
    return pd.DataFrame(out, copy=False)[cols]


def _key_codes(col: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Dense non-negative integer codes of ``col`` at ``rows``, in sort order
    of the values, missing values last (as ``sort_values`` puts them)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        c = col.cat.codes.to_numpy()[rows].astype(np.int64)
        return np.where(c < 0, len(col.cat.categories), c)
    return dense_codes(col.to_numpy()[rows])


def _narrow(codes: np.ndarray) -> np.ndarray:
    # numpy's stable sort is a linear-time radix sort for 16-bit integers.
    return codes.astype(np.int16) if len(codes) and codes.max() < 1 << 15 else codes


def futex_calls(events: pd.DataFrame) -> pd.DataFrame:
    """Every futex call: ``tid`` int32, ``start_ns``, ``end_ns``, ``dur_ns``
    int64, ``uaddr`` UInt64, ``op`` int64 (the command without flags),
    ``kind`` str (``wait``: an op that blocks, ``wake``: one that wakes
    waiters, else ``other``), ``ret`` Int64 (the call's return value: 0 or
    a negative errno for a wait, the number woken for a wake)."""
    spans = pair_spans(events, "futex_enter", "futex_exit", end_cols=("value",))
    spans = spans.rename(columns={"addr": "uaddr", "end_value": "ret"})
    op = spans["value"].astype("Int64").fillna(0).to_numpy(dtype=np.int64) & FUTEX_CMD_MASK
    spans["op"] = op
    kind = np.full(len(spans), 2, dtype=np.int8)
    kind[np.isin(op, list(FUTEX_WAIT_OPS))] = 0
    kind[np.isin(op, list(FUTEX_WAKE_OPS))] = 1
    spans["kind"] = pd.Categorical.from_codes(kind, categories=pd.Index(["wait", "wake", "other"]))
    spans["ret"] = spans["ret"].astype("Int64")
    spans["tid"] = spans["tid"].astype("int32")
    return spans[["tid", "start_ns", "end_ns", "dur_ns", "uaddr", "op", "kind", "ret"]]


def futex_waits(events: pd.DataFrame, calls: pd.DataFrame | None = None) -> pd.DataFrame:
    """Blocking futex calls: ``tid``, ``start_ns``, ``end_ns``, ``dur_ns``,
    ``uaddr`` UInt64, ``op`` int (the command without flags).  ``calls``:
    ``futex_calls(events)`` when the caller has it already."""
    calls = futex_calls(events) if calls is None else calls
    waits = calls[calls["kind"] == "wait"]
    return waits[["tid", "start_ns", "end_ns", "dur_ns", "uaddr", "op"]].reset_index(drop=True)


def offcpu_spans(events: pd.DataFrame) -> pd.DataFrame:
    """Off-CPU intervals per thread from sched_out -> next sched_in.

    Returns ``tid``, ``start_ns``, ``end_ns``, ``dur_ns``, ``runnable`` bool
    (switched out while runnable: preempted, waiting for a CPU), then the
    split of the span at the thread's wakeup: ``wakeup_ns`` Int64 (the last
    sched_wakeup of the thread inside a blocked span; NA when none was seen
    or the span is runnable), ``blocked_ns`` int64 (off CPU and not yet
    woken: sched_out -> wakeup, the whole span when no wakeup was seen) and
    ``wait_cpu_ns`` int64 (runnable but not running: the whole of a
    preempted span, wakeup -> sched_in of a blocked one).  A thread woken
    from a lock that then waits for a CPU is oversubscribed, not contended.

    A sched_out whose sched_in is missing (a collector that did not know the
    thread yet, a lost event) is closed by the thread's next event of its
    own (anything but a wakeup, which fires on the waker's CPU): the thread
    was back on a CPU by then.  ``inferred`` bool marks such spans.
    """
    codes = events["event"].cat.codes.to_numpy()
    out_code, in_code = EVENT_CODE["sched_out"], EVENT_CODE["sched_in"]
    rows = np.flatnonzero((codes == out_code) | (codes == in_code))
    cols = ["tid", "start_ns", "end_ns", "dur_ns", "runnable", "wakeup_ns", "blocked_ns", "wait_cpu_ns", "inferred"]
    rows = rows[np.argsort(_narrow(dense_codes(events["tid"].to_numpy()[rows])), kind="stable")]
    tid = events["tid"].to_numpy()[rows].astype(np.int64)
    ts = events["ts_ns"].to_numpy()[rows]
    is_out = codes[rows] == out_code
    state = events["value"].array.take(rows).to_numpy(dtype=np.int64, na_value=1)
    same_next = np.zeros(len(tid), dtype=bool)
    same_next[:-1] = tid[:-1] == tid[1:]
    nxt_in = np.zeros(len(tid), dtype=bool)
    nxt_in[:-1] = ~is_out[1:]
    matched = np.flatnonzero(is_out & same_next & nxt_in)
    start = ts[matched]
    end = ts[matched + 1]
    s_tid = tid[matched]
    s_state = state[matched]
    inferred = np.zeros(len(matched), dtype=bool)
    lone = np.flatnonzero(is_out & ~(same_next & nxt_in))
    if len(lone):
        l_end = _next_own_event(events, tid[lone], ts[lone])
        ok = l_end >= 0
        lone = lone[ok]
        start = np.concatenate((start, ts[lone]))
        end = np.concatenate((end, l_end[ok]))
        s_tid = np.concatenate((s_tid, tid[lone]))
        s_state = np.concatenate((s_state, state[lone]))
        inferred = np.concatenate((inferred, np.ones(len(lone), dtype=bool)))
    runnable = (s_state & _TASK_REPORT_MASK) == 0
    wk = np.flatnonzero(codes == EVENT_CODE["wakeup"])
    wk_ts = events["ts_ns"].to_numpy()[wk]
    idx = last_match(s_tid, end, events["tid"].to_numpy()[wk], wk_ts)
    w_ts = np.where(idx >= 0, wk_ts[np.clip(idx, 0, None)] if len(wk_ts) else 0, 0)
    woken = (idx >= 0) & ~runnable & (w_ts >= start)
    blocked = np.where(runnable, 0, np.where(woken, w_ts - start, end - start))
    wakeup = pd.array(np.where(woken, w_ts, 0), dtype="Int64")
    wakeup[~woken] = pd.NA
    out = pd.DataFrame(
        {
            "tid": s_tid.astype(np.int32),
            "start_ns": start,
            "end_ns": end,
            "dur_ns": end - start,
            "runnable": runnable,
            "wakeup_ns": wakeup,
            "blocked_ns": blocked.astype(np.int64),
            "wait_cpu_ns": (end - start - blocked).astype(np.int64),
            "inferred": inferred,
        }
    )
    return out.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)[cols]


def _next_own_event(events: pd.DataFrame, tids: np.ndarray, after: np.ndarray) -> np.ndarray:
    """For each (tid, time), the time of that thread's next event that only
    a running thread can emit (not a wakeup, sched_in or lost marker); -1
    when there is none.  Loops over the few threads asked about."""
    out = np.full(len(tids), -1, dtype=np.int64)
    ev_tid = events["tid"].to_numpy()
    codes = events["event"].cat.codes.to_numpy()
    own = ~np.isin(codes, [EVENT_CODE[e] for e in ("wakeup", "sched_in", "lost")])
    ts_all = events["ts_ns"].to_numpy(dtype=np.int64)
    for t in np.unique(tids):
        ts = ts_all[own & (ev_tid == t)]
        ask = np.flatnonzero(tids == t)
        i = np.searchsorted(ts, after[ask], side="right")
        ok = i < len(ts)
        out[ask[ok]] = ts[i[ok]]
    return out


def exits_of_thread(ev: pd.DataFrame) -> np.ndarray:
    """Cycle index of each event of one thread: -1 before the first run_enter,
    then 0, 1, ... incrementing at each run_enter (ordering, not timestamps,
    decides, so equal timestamps cannot move an event across a boundary)."""
    return np.cumsum((ev["event"] == "run_enter").to_numpy()) - 1


def thread_lifetimes(events: pd.DataFrame) -> pd.DataFrame:
    """Per thread seen in ``events``: ``tid`` int32, ``first_ns``, ``last_ns``
    and ``time_ns`` int64 (its observed lifetime: first to last event).
    Collector markers that belong to no thread (tid < 0) are left out."""
    ev = events[events["tid"].to_numpy() >= 0]
    g = ev.groupby("tid", sort=True)["ts_ns"]
    out = pd.DataFrame({"first_ns": g.min(), "last_ns": g.max()}).reset_index()
    out["tid"] = out["tid"].astype("int32")
    out["first_ns"] = out["first_ns"].astype("int64")
    out["last_ns"] = out["last_ns"].astype("int64")
    out["time_ns"] = out["last_ns"] - out["first_ns"]
    return out
