"""Runnable but not running: the spans a thread waited for a CPU.

A vCPU thread that is preempted (sched_out with prev_state 0), or that was
woken and has not yet been scheduled, is waiting for a CPU, not for a lock
and not in the VMM's code.  On a host with fewer CPUs than vCPU threads this
time lands in whichever breakdown component it happened to fall in: a
preemption inside KVM_RUN looks like vmexit, one after a futex wakeup looks
like lock wait.  The breakdown carves these spans out of every component
into one of their own (``runnable``), so oversubscription is drawn as what
it is.

The spans come from the cached off-CPU spans (``cache.offcpu_spans``):
the whole of a preempted span, and the wakeup -> sched_in part of a blocked
one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .arithmetic import rank_in

__all__ = ["cpu_wait_spans", "intersect_by_thread"]


def cpu_wait_spans(offcpu: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(``tid``, ``start_ns``, ``end_ns``) int64 arrays of the time each
    thread was runnable without a CPU, from ``pairing.offcpu_spans`` rows:
    a preempted span whole, a blocked span from its wakeup on.  One thread's
    spans are disjoint (off-CPU spans are), sorted by thread then start."""
    tid = offcpu["tid"].to_numpy(dtype=np.int64)
    start = offcpu["start_ns"].to_numpy(dtype=np.int64)
    end = offcpu["end_ns"].to_numpy(dtype=np.int64)
    runnable = offcpu["runnable"].to_numpy(dtype=bool)
    wake = offcpu["wakeup_ns"].to_numpy(dtype=np.float64, na_value=np.nan)
    woken = ~runnable & ~np.isnan(wake)
    s = np.where(runnable, start, np.where(woken, np.nan_to_num(wake).astype(np.int64), end))
    keep = (runnable | woken) & (end > s)
    tid, s, e = tid[keep], s[keep], end[keep]
    order = np.lexsort((s, tid))
    return tid[order], s[order], e[order]


def _union(key: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per key, the union of the spans, sorted: nested or overlapping spans
    (a lock span and a futex wait inside it) merge into one."""
    if len(s) == 0:
        return key, s, e
    order = np.lexsort((s, key))
    key, s, e = key[order], s[order], e[order]
    new_key = np.ones(len(s), dtype=bool)
    new_key[1:] = key[1:] != key[:-1]
    # The running maximum of ends within one key: each key's ends are lifted
    # above every earlier key's, so one accumulate serves all keys.
    group = np.cumsum(new_key) - 1
    base = int(s.min())
    lift = group * (int(e.max()) - base + 1)
    run_end = np.maximum.accumulate(e - base + lift) - lift + base
    starts = new_key.copy()
    starts[1:] |= s[1:] > run_end[:-1]
    first = np.flatnonzero(starts)
    last = np.concatenate((first[1:], [len(s)])) - 1
    return key[first], s[first], run_end[last]


def intersect_by_thread(
    a_tid: np.ndarray,
    a_s: np.ndarray,
    a_e: np.ndarray,
    b_tid: np.ndarray,
    b_s: np.ndarray,
    b_e: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The intersection of two sets of per-thread spans, as (``tid``,
    ``start_ns``, ``end_ns``) int64 arrays of disjoint, non-empty spans.
    ``a`` must be disjoint within a thread (it is the small set: the waits
    for a CPU); ``b`` may nest or overlap, and need not be sorted."""
    a_tid, a_s, a_e, b_tid, b_s, b_e = (np.asarray(x, dtype=np.int64) for x in (a_tid, a_s, a_e, b_tid, b_s, b_e))
    empty = np.zeros(0, dtype=np.int64)
    if len(a_s) == 0 or len(b_s) == 0:
        return empty, empty, empty
    keys = np.unique(a_tid)
    ka = rank_in(keys, a_tid)
    kb = rank_in(keys, b_tid)
    lo = min(int(a_s.min()), int(b_s.min()))
    extent = max(int(a_e.max()), int(b_e.max())) - lo + 1
    if extent * (len(keys) + 1) >= 1 << 62:
        raise OverflowError("trace too long to shift threads apart in int64")
    # Each thread on a range of its own of one line: ``a`` is then one
    # sorted, disjoint list, and a searchsorted finds what ``b`` touches.
    order = np.lexsort((a_s, ka))
    a_tid, ka = a_tid[order], ka[order]
    sa = a_s[order] - lo + ka * extent
    ea = a_e[order] - lo + ka * extent
    # Only the spans of ``b`` that touch ``a`` are merged and paired: ``b``
    # is every lock wait or device call of the trace, ``a`` a few preemptions.
    ok = kb >= 0
    sb = b_s[ok] - lo + kb[ok] * extent
    eb = b_e[ok] - lo + kb[ok] * extent
    at = np.searchsorted(ea, sb, side="right")
    touch = at < len(sa)
    touch[touch] = sa[at[touch]] < eb[touch]
    kb_t, sb, eb = kb[ok][touch], sb[touch], eb[touch]
    if len(sb) == 0:
        return empty, empty, empty
    kb_t, sb, eb = _union(kb_t, sb, eb)
    first = np.searchsorted(eb, sa, side="right")
    stop = np.searchsorted(sb, ea, side="left")
    n = np.maximum(stop - first, 0)
    ia = np.repeat(np.arange(len(sa)), n)
    ib = np.repeat(first, n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    s = np.maximum(sa[ia], sb[ib])
    e = np.minimum(ea[ia], eb[ib])
    keep = e > s
    shift = ka[ia][keep] * extent - lo
    return a_tid[ia][keep], s[keep] - shift, e[keep] - shift
