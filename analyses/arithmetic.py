"""Interval arithmetic on sorted arrays: overlaps, containment and "last
item at or before", for the spans of many threads at once.

Per-thread questions become one sorted pass by moving each thread's times
to a range of its own (thread rank times the trace's length), so no
function here loops over threads or events in Python.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "dense_codes",
    "rank_in",
    "last_match",
    "overlap_sum",
    "overlap_by_thread",
    "ThreadWindows",
    "inside_by_thread",
]


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
        ranks: np.ndarray = rank[keys]
        return ranks
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


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
        found: np.ndarray = table[values]
        return found
    i = np.clip(np.searchsorted(sorted_keys, values), 0, len(sorted_keys) - 1)
    return np.where(sorted_keys[i] == values, i, -1)


def last_match(
    q_key: np.ndarray, q_t: np.ndarray, i_key: np.ndarray, i_t: np.ndarray, strict: bool = False
) -> np.ndarray:
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


def overlap_by_thread(
    win_tid: np.ndarray,
    win_start: np.ndarray,
    win_end: np.ndarray,
    s_tid: np.ndarray,
    s_start: np.ndarray,
    s_end: np.ndarray,
) -> np.ndarray:
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
    w_shift, s_shift = shift[: len(win_start)], shift[len(win_start) :]
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
    total += np.bincount(
        first[one], weights=np.minimum(se[one], we[first[one]]) - np.maximum(ss[one], ws[first[one]]), minlength=n
    )
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


def inside_by_thread(
    p_tid: np.ndarray, points: np.ndarray, s_tid: np.ndarray, s_start: np.ndarray, s_end: np.ndarray
) -> np.ndarray:
    """For each point, the index of the span of the same thread that holds it
    (start <= point < end), else -1.  Spans of one thread must be disjoint."""
    s_start = np.asarray(s_start, dtype=np.int64)
    idx = last_match(p_tid, points, s_tid, s_start)
    ok = idx >= 0
    ok[ok] = np.asarray(points, dtype=np.int64)[ok] < np.asarray(s_end, dtype=np.int64)[idx[ok]]
    return np.where(ok, idx, -1)
