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

from vmtrace.errors import MissingEventsError
from vmtrace.schema import EVENT_TYPES, FUTEX_CMD_MASK, FUTEX_WAIT_OPS, FUTEX_WAKE_OPS

__all__ = [
    "pair_spans",
    "futex_calls",
    "futex_waits",
    "offcpu_spans",
    "overlap_sum",
    "exits_of_thread",
    "last_match",
    "lost_windows",
    "overlaps_loss",
    "thread_lifetimes",
    "overlap_by_thread",
    "inside_by_thread",
    "ThreadWindows",
    "rank_in",
    "present_events",
    "missing_events",
    "thread_spans_lost",
]

# sched_switch prev_state bits that name a task state (TASK_REPORT); the bit
# above them, TASK_REPORT_MAX (0x100), marks a preemption.  bcc records the
# raw value, ftrace the masked one: both read as runnable through the mask.
_TASK_REPORT_MASK = 0xFF
_EVENT_CODE = {name: i for i, name in enumerate(EVENT_TYPES)}


def present_events(events: pd.DataFrame) -> list[str]:
    """Names of the event types that occur in ``events``, sorted."""
    codes = events["event"].cat.codes.to_numpy()
    # One byte-wide comparison per type: no 8-byte-per-event temporary.
    return sorted(name for i, name in enumerate(EVENT_TYPES) if (codes == i).any())


def missing_events(events: pd.DataFrame, need: list[str]) -> list[str]:
    """The events of ``need`` that ``events`` lacks."""
    codes = events["event"].cat.codes.to_numpy()
    return [e for e in need if not (codes == _EVENT_CODE[e]).any()]


def events_usable(events: pd.DataFrame, need: list[str]) -> bool:
    """Whether an analysis can go on: ``events`` has every type of ``need``,
    or some of them and lost-event markers (every event of one type can have
    gone in the losses, each exit's run_exit say, and the analysis then
    leaves out what spans them instead of refusing)."""
    missing = missing_events(events, need)
    if not missing:
        return True
    return len(missing) < len(need) and bool((events["event"] == "lost").any())


def require_events(events: pd.DataFrame, need: list[str], what: str) -> None:
    """Raise ``MissingEventsError`` naming what ``what`` needs and what the
    trace has, unless ``events_usable``."""
    if not events_usable(events, need):
        raise MissingEventsError(what, missing_events(events, need), present_events(events))


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
    b_code, e_code = _EVENT_CODE[begin], _EVENT_CODE[end]
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


def dense_codes(keys: np.ndarray) -> np.ndarray:
    """Ranks 0..k-1 of integer ``keys`` in sorted order, O(n) for the small
    non-negative values thread ids and cpus are (a lookup table), else by
    sorting."""
    keys = np.asarray(keys)
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(keys.min()), int(keys.max())
    if lo >= 0 and hi < 1 << 24:
        present = np.zeros(hi + 1, dtype=bool)
        present[keys] = True
        rank = np.cumsum(present, dtype=np.int64) - 1
        return rank[keys]
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


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
    spans["kind"] = pd.Categorical.from_codes(kind, categories=["wait", "wake", "other"])
    spans["ret"] = spans["ret"].astype("Int64")
    spans["tid"] = spans["tid"].astype("int32")
    return spans[["tid", "start_ns", "end_ns", "dur_ns", "uaddr", "op", "kind", "ret"]]


def futex_waits(events: pd.DataFrame) -> pd.DataFrame:
    """Blocking futex calls: ``tid``, ``start_ns``, ``end_ns``, ``dur_ns``,
    ``uaddr`` UInt64, ``op`` int (the command without flags)."""
    calls = futex_calls(events)
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
    out_code, in_code = _EVENT_CODE["sched_out"], _EVENT_CODE["sched_in"]
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
    wk = np.flatnonzero(codes == _EVENT_CODE["wakeup"])
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
    own = ~np.isin(codes, [_EVENT_CODE[e] for e in ("wakeup", "sched_in", "lost")])
    ts_all = events["ts_ns"].to_numpy(dtype=np.int64)
    for t in np.unique(tids):
        ts = ts_all[own & (ev_tid == t)]
        ask = np.flatnonzero(tids == t)
        i = np.searchsorted(ts, after[ask], side="right")
        ok = i < len(ts)
        out[ask[ok]] = ts[i[ok]]
    return out


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


def last_match(q_key: np.ndarray, q_t: np.ndarray, i_key: np.ndarray, i_t: np.ndarray,
               strict: bool = False) -> np.ndarray:
    """For each query, the index (into the items as given) of the last item
    with the same key at or before the query's time (before it with
    ``strict``); -1 when there is none.  Among items of equal key and time,
    the last one given wins.

    Keys become disjoint time ranges (key rank times the time span), so one
    stable sort of the items and one binary search per query do it.
    """
    n_i, n_q = len(i_t), len(q_t)
    out = np.full(n_q, -1, dtype=np.int64)
    if n_i == 0 or n_q == 0:
        return out
    i_t = np.asarray(i_t, dtype=np.int64)
    q_t = np.asarray(q_t, dtype=np.int64)
    ranks = dense_codes(np.concatenate((np.asarray(i_key, dtype=np.int64), np.asarray(q_key, dtype=np.int64))))
    i_rank, q_rank = ranks[:n_i], ranks[n_i:]
    lo = min(int(i_t.min()), int(q_t.min()))
    span = max(int(i_t.max()), int(q_t.max())) - lo + 1
    if span * (int(ranks.max()) + 1) >= 1 << 62:
        raise OverflowError("trace too long to shift keys apart in int64")
    i_pos = i_rank * span + (i_t - lo)
    q_pos = q_rank * span + (q_t - lo)
    order = np.argsort(i_pos, kind="stable")
    found = np.searchsorted(i_pos[order], q_pos, side="left" if strict else "right") - 1
    ok = found >= 0
    idx = order[np.clip(found, 0, None)]
    ok &= i_rank[idx] == q_rank
    out[ok] = idx[ok]
    return out


def lost_windows(events: pd.DataFrame) -> pd.DataFrame:
    """Where a collector lost events, from the ``lost`` markers in the stream.

    A marker on ``cpu`` at ``ts_ns`` says ``value`` events of that CPU went
    missing after the previous event recorded on it.  Returns one row per
    marker: ``cpu`` int16, ``start_ns`` int64 (the previous event on that CPU,
    or the int64 minimum when there is none), ``end_ns`` int64 (the marker)
    and ``count`` int64.  Anything that spans such a window may have lost
    its inner events and is not to be trusted.
    """
    is_lost = events["event"].cat.codes.to_numpy() == _EVENT_CODE["lost"]
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


def thread_spans_lost(events: pd.DataFrame, s_tid: np.ndarray, s_start: np.ndarray, s_end: np.ndarray,
                      windows: pd.DataFrame | None = None) -> np.ndarray:
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
    own = ~np.isin(codes, [_EVENT_CODE["wakeup"], _EVENT_CODE["lost"]])
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


def overlap_by_thread(win_tid: np.ndarray, win_start: np.ndarray, win_end: np.ndarray,
                      s_tid: np.ndarray, s_start: np.ndarray, s_end: np.ndarray) -> np.ndarray:
    """``overlap_sum`` for windows and spans of many threads at once: each
    window counts only the spans of its own thread.  The spans of one thread
    must be disjoint (they are: a thread is in one futex call, or off CPU
    once, at a time).

    Each thread's times are moved to a range of their own (thread rank times
    the trace's length), so one sorted pass serves every thread.
    """
    win_start = np.asarray(win_start, dtype=np.int64)
    win_end = np.asarray(win_end, dtype=np.int64)
    s_start = np.asarray(s_start, dtype=np.int64)
    s_end = np.asarray(s_end, dtype=np.int64)
    if len(win_start) == 0 or len(s_start) == 0:
        return np.zeros(len(win_start), dtype=np.int64)
    lo = min(win_start.min(), s_start.min())
    span = max(win_end.max(), s_end.max()) - lo + 1
    inv = dense_codes(np.concatenate((np.asarray(win_tid), np.asarray(s_tid))).astype(np.int64))
    if span * (int(inv.max()) + 1) >= 1 << 62:
        raise OverflowError("trace too long to shift threads apart in int64")
    shift = inv * span - lo
    w_shift, s_shift = shift[: len(win_start)], shift[len(win_start):]
    ws, we = win_start + w_shift, win_end + w_shift
    ss, se = s_start + s_shift, s_end + s_shift
    if len(ws) > 1 and not (bool((ws[1:] >= we[:-1]).all()) and bool((we >= ws).all())):
        return overlap_sum(ws, we, ss, se)
    return _overlap_sorted_windows(ws, we, ss, se)


def _overlap_sorted_windows(ws: np.ndarray, we: np.ndarray, ss: np.ndarray, se: np.ndarray) -> np.ndarray:
    """``overlap_sum`` when the windows are sorted and disjoint (a thread's
    exits are): each span is clipped into the windows it meets, so the cost
    is a binary search per span, not two per window."""
    n = len(ws)
    first = np.searchsorted(we, ss, side="right")
    last = np.searchsorted(ws, se, side="left") - 1
    meets = first <= last
    first, last, ss, se = first[meets], last[meets], ss[meets], se[meets]
    one = first == last
    # bincount sums float64 weights: exact for totals below 2**53 ns (104 days).
    total = np.zeros(n, dtype=np.float64)
    total += np.bincount(first[one], weights=np.minimum(se[one], we[first[one]]) - np.maximum(ss[one], ws[first[one]]),
                         minlength=n)
    many = ~one
    if many.any():
        f, l_, s0, e0 = first[many], last[many], ss[many], se[many]
        total += np.bincount(f, weights=we[f] - np.maximum(s0, ws[f]), minlength=n)
        total += np.bincount(l_, weights=np.minimum(e0, we[l_]) - ws[l_], minlength=n)
        # Windows strictly between the first and the last are covered whole.
        cover = np.zeros(n + 1, dtype=np.int64)
        np.add.at(cover, f + 1, 1)
        np.add.at(cover, l_, -1)
        total += np.cumsum(cover[:n]) * (we - ws)
    return np.rint(total).astype(np.int64)


def rank_in(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in ``sorted_keys`` (-1 when absent): a lookup
    table for thread ids (small non-negative integers), else a search."""
    sorted_keys = np.asarray(sorted_keys, dtype=np.int64)
    values = np.asarray(values)
    if len(sorted_keys) == 0 or len(values) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    hi = max(int(sorted_keys.max()), int(values.max()))
    if int(sorted_keys.min()) >= 0 and int(values.min()) >= 0 and hi < 1 << 24:
        table = np.full(hi + 1, -1, dtype=np.int64)
        table[sorted_keys] = np.arange(len(sorted_keys))
        return table[values]
    i = np.clip(np.searchsorted(sorted_keys, values), 0, len(sorted_keys) - 1)
    return np.where(sorted_keys[i] == values, i, -1)


class ThreadWindows:
    """Time windows of many threads, for repeated overlap sums against sets
    of per-thread spans (the breakdown asks ten of them of one set of exits).

    The threads' windows are moved to disjoint ranges once (thread rank times
    the windows' extent); each query then shifts only its spans.
    """

    def __init__(self, tid: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        self.start = np.asarray(start, dtype=np.int64)
        self.end = np.asarray(end, dtype=np.int64)
        tid = np.asarray(tid, dtype=np.int64)
        self.keys = np.unique(tid)
        n = len(self.start)
        self.lo = int(self.start.min()) if n else 0
        self.hi = int(self.end.max()) if n else 0
        self.extent = self.hi - self.lo + 1
        if self.extent * (len(self.keys) + 1) >= 1 << 62:
            raise OverflowError("trace too long to shift threads apart in int64")
        shift = rank_in(self.keys, tid) * self.extent - self.lo
        self.ws = self.start + shift
        self.we = self.end + shift
        self.sorted = n < 2 or (bool((self.ws[1:] >= self.we[:-1]).all()) and bool((self.we >= self.ws).all()))

    def overlap(self, s_tid: np.ndarray, s_start: np.ndarray, s_end: np.ndarray) -> np.ndarray:
        """Per window, the time covered by the spans of its thread (one
        thread's spans disjoint)."""
        if len(self.ws) == 0 or len(s_start) == 0:
            return np.zeros(len(self.ws), dtype=np.int64)
        rank = rank_in(self.keys, np.asarray(s_tid, dtype=np.int64))
        ok = rank >= 0
        shift = rank[ok] * self.extent - self.lo
        # Spans reach no window outside [lo, hi]: clipping keeps them in
        # their thread's range.
        ss = np.clip(np.asarray(s_start, dtype=np.int64)[ok], self.lo, self.hi) + shift
        se = np.clip(np.asarray(s_end, dtype=np.int64)[ok], self.lo, self.hi) + shift
        if self.sorted:
            return _overlap_sorted_windows(self.ws, self.we, ss, se)
        return overlap_sum(self.ws, self.we, ss, se)


def inside_by_thread(p_tid: np.ndarray, points: np.ndarray,
                     s_tid: np.ndarray, s_start: np.ndarray, s_end: np.ndarray) -> np.ndarray:
    """For each point, the index of the span of the same thread that holds it
    (start <= point < end), else -1.  Spans of one thread must be disjoint."""
    s_start = np.asarray(s_start, dtype=np.int64)
    idx = last_match(p_tid, points, s_tid, s_start)
    ok = idx >= 0
    ok[ok] = np.asarray(points, dtype=np.int64)[ok] < np.asarray(s_end, dtype=np.int64)[idx[ok]]
    return np.where(ok, idx, -1)
