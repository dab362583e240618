"""Who held the BQL: for every BQL wait, who released the lock to the waiter
and what that thread was doing while it held it.

A BQL wait is what ``analyses.waits`` counts as the BQL's: a reported BQL
lock span (``lock_begin`` -> ``lock_acquired``), or a blocking futex wait
on the BQL's word outside any lock span; less the waits on another named
lock nested in a BQL span (that lock's, not the BQL's).  So the parts below
add up to the breakdown's ``bql_wait`` exactly.

Releases.  A *release* of the BQL is a ``lock_release`` event named BQL
(the reference VMM reports them), or a futex wake call on the BQL's word
(glibc's unlock calls ``futex_wake`` only when a thread waits: a contended
release, as QEMU's ``qemu_mutex_unlock`` does).  A release counts for a
wait when another thread makes it between the wait's start and end.  A wait
in which no release is seen falls back on the ``sched_wakeup`` that ended
it, when that names a thread (``peer_tid``; 0, the idle task delivering a
queued wakeup, names none): that thread is taken to have released.

Segments.  The releases inside a wait cut it into segments, each charged
to the thread whose release ends it, as that thread held the lock then:

- ``start -> r1`` to the releaser of r1, ``r1 -> r2`` to the releaser of
  r2, ...: *queued waiters*.  Two waiters behind one holder H are both
  charged to H up to H's release; the one that got the lock next (A) then
  holds it, and the other's wait from H's release to A's is charged to A.
  Each waiter's wait is counted once, as ``bql_wait`` counts it, so a
  holder can be charged more than it held (two waiters of 1 ms behind one
  1 ms hold: 2 ms of wait caused).
- ``last release -> end`` (hand-off: the waiter woken, getting a CPU and
  taking the lock) to the last releaser: its release caused it.
- no release seen at all (a lost wake, a wait that returned EAGAIN or timed
  out, a waker outside the trace): the whole wait to ``unknown``.  It is
  reported, never dropped.
- a reported lock span with no release and no futex wait inside never
  blocked: nobody held the lock, and its time is the acquire's own (in
  QEMU's ``--precise`` mode mostly the uprobes' cost).  It goes to
  ``uncontended``, apart from ``unknown``.

Activity.  A segment ending at the release r by thread H is charged to what
H was doing at r: a vCPU handling an exit (H's KVM_RUN cycle whose
``run_exit -> next run_enter`` holds r: the exit's kind and port/address;
``outside an exit`` when none does), the main loop, an IOThread, the RCU
thread (``call_rcu``, in QEMU and the reference VMM), a worker, or other
(from the trace's thread roles).

Preempted holder.  Inside a holding segment, the time H was runnable but
not running (switched out while runnable, or woken and not yet back on a
CPU: ``offcpu_spans``) is charged to the same activity marked
``preempted``: the fix is CPUs (or pinning), not shorter critical sections.
Time H was blocked (sleeping in a write() under the lock, say) stays with
the activity: that is the code's doing.

Holder attribution never assigns more than was waited: the segments of a
wait partition it.  Per exit (``exit_split``) the parts are fitted to the
exit's ``bql_wait_ns`` (which the breakdown clips where events were lost):
any excess is scaled away, any shortfall goes to ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.schema import EVENT_CODE, ROLE_IOTHREAD, ROLE_MAIN, ROLE_OTHER, ROLE_VCPU, ROLE_WORKER, THREAD_ROLES
from vmtrace.trace import Trace

from . import cache
from .arithmetic import inside_by_thread, last_match, overlap_by_thread, rank_in
from .lost import thread_spans_lost
from .waits import BQL_NAME, trace_lock_waits

__all__ = [
    "ROLE_RCU",
    "ROLE_UNKNOWN",
    "ROLE_UNCONTENDED",
    "HOLDER_ROLES",
    "bql_holder_segments",
    "holder_summary",
    "exit_split",
    "split_summary",
    "activity_label",
]

#: QEMU's RCU thread (``call_rcu``; the reference VMM names its own the same).
ROLE_RCU = "rcu"
#: No release was seen for (part of) a wait that blocked.
ROLE_UNKNOWN = "unknown"
#: A reported lock span that never blocked: the acquire's own cost.
ROLE_UNCONTENDED = "uncontended"

#: Holder roles in the order reports list them, with their labels.
HOLDER_ROLES: dict[str, str] = {
    ROLE_VCPU: "vCPU",
    ROLE_MAIN: THREAD_ROLES[ROLE_MAIN],
    ROLE_IOTHREAD: THREAD_ROLES[ROLE_IOTHREAD],
    ROLE_RCU: "RCU thread",
    ROLE_WORKER: THREAD_ROLES[ROLE_WORKER],
    ROLE_OTHER: THREAD_ROLES[ROLE_OTHER],
    ROLE_UNKNOWN: "unknown (no release seen)",
    ROLE_UNCONTENDED: "no holder (uncontended acquire)",
}

#: The columns that name one holder activity.
ACTIVITY_KEYS = ["role", "kind", "addr", "preempted"]


def activity_label(role: str, kind: Any, addr: Any, preempted: bool) -> str:
    """What a reader sees for one activity: ``vCPU pio 0x608``, ``main loop``,
    ``main loop, preempted`` ..."""
    text = HOLDER_ROLES.get(role, role)
    if role == ROLE_VCPU:
        if kind is None or kind != kind or kind == "":
            text += " outside an exit"
        else:
            text += f" {kind}" + ("" if addr is None or pd.isna(addr) else f" {int(addr):#x}")
    return text + (", preempted" if preempted else "")


def _holder_roles(trace: Trace) -> dict[int, str]:
    t = trace.threads
    roles: dict[int, str] = {}
    for tid, name, role in zip(t["tid"], t["name"], t["role"], strict=True):
        is_rcu = "rcu" in str(name).lower() and role != ROLE_VCPU
        roles[int(tid)] = ROLE_RCU if is_rcu else str(role or ROLE_OTHER)
    return roles


def _bql_releases(trace: Trace, bql_word: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(tid, time) of every BQL release, in time order."""
    ev = trace.events
    codes = ev["event"].cat.codes.to_numpy()
    rel = codes == EVENT_CODE["lock_release"]
    if rel.any():
        rel &= (ev["name"] == BQL_NAME).to_numpy(dtype=bool, na_value=False)
    tids = [ev["tid"].to_numpy()[rel].astype(np.int64)]
    ts = [ev["ts_ns"].to_numpy()[rel].astype(np.int64)]
    if bql_word:
        calls = cache.futex_calls(trace)
        wake = (calls["kind"] == "wake").to_numpy() & (
            calls["uaddr"].to_numpy(dtype=np.uint64, na_value=0) == np.uint64(bql_word)
        )
        tids.append(calls["tid"].to_numpy()[wake].astype(np.int64))
        ts.append(calls["start_ns"].to_numpy()[wake].astype(np.int64))
    tid, t = np.concatenate(tids), np.concatenate(ts)
    order = np.argsort(t, kind="stable")
    return tid[order], t[order]


def _expand(lo: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges ``lo[i] .. lo[i] + n[i]``: (owner i, index) of every item."""
    owner = np.repeat(np.arange(len(n)), n)
    within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return owner, lo[owner] + within


def _cpu_wait_spans(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per thread, when it was runnable but not running: (tid, start, end),
    disjoint per thread."""
    off = cache.offcpu_spans(trace)
    runnable = off["runnable"].to_numpy(dtype=bool)
    wake = off["wakeup_ns"].to_numpy(dtype=np.float64, na_value=np.nan)
    start = np.where(runnable, off["start_ns"].to_numpy(dtype=np.int64), np.nan_to_num(wake, nan=0).astype(np.int64))
    keep = runnable | ~np.isnan(wake)
    end = off["end_ns"].to_numpy(dtype=np.int64)
    keep &= start < end
    return off["tid"].to_numpy(dtype=np.int64)[keep], start[keep], end[keep]


def _split_preempted(
    h_tid: np.ndarray, a: np.ndarray, b: np.ndarray, cw: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, ...]:
    """Cut segments [a, b) held by ``h_tid`` where the holder was runnable
    but not running.  Returns (segment index, start, end, preempted) of the
    pieces, which partition each segment."""
    c_tid, c_s, c_e = cw
    n_seg = len(a)
    keys = np.unique(c_tid)
    rank = rank_in(keys, h_tid) if len(keys) else np.full(n_seg, -1, dtype=np.int64)
    lo = min(int(a.min()) if n_seg else 0, int(c_s.min()) if len(c_s) else 0)
    hi = max(int(b.max()) if n_seg else 0, int(c_e.max()) if len(c_e) else 0)
    span = hi - lo + 1
    c_rank = rank_in(keys, c_tid)
    cs, ce = c_rank * span + (c_s - lo), c_rank * span + (c_e - lo)
    order = np.argsort(cs, kind="stable")
    cs, ce = cs[order], ce[order]
    has = rank >= 0
    a_k = np.where(has, rank * span + (a - lo), 0)
    b_k = np.where(has, rank * span + (b - lo), 0)
    first = np.searchsorted(ce, a_k, side="right")
    last = np.searchsorted(cs, b_k, side="left")
    n_p = np.where(has, np.maximum(last - first, 0), 0)
    seg_p, idx = _expand(first, n_p)
    shift = a - a_k  # back from the key range to time
    p_s = np.maximum(cs[idx], a_k[seg_p]) + shift[seg_p]
    p_e = np.minimum(ce[idx], b_k[seg_p]) + shift[seg_p]
    # The complement: n_p + 1 pieces per segment, between the preempted ones.
    seg_c, _ = _expand(np.zeros(n_seg, dtype=np.int64), n_p + 1)
    k = np.arange(len(seg_c)) - np.repeat(np.cumsum(n_p + 1) - (n_p + 1), n_p + 1)
    base = np.repeat(np.cumsum(n_p) - n_p, n_p + 1)  # first preempted piece of the segment
    c_start = np.where(k == 0, a[seg_c], p_e[np.clip(base + k - 1, 0, max(len(p_e) - 1, 0))] if len(p_e) else 0)
    c_end = np.where(k == n_p[seg_c], b[seg_c], p_s[np.clip(base + k, 0, max(len(p_s) - 1, 0))] if len(p_s) else 0)
    seg = np.concatenate((seg_c, seg_p))
    start = np.concatenate((c_start, p_s))
    end = np.concatenate((c_end, p_e))
    pre = np.concatenate((np.zeros(len(seg_c), dtype=bool), np.ones(len(seg_p), dtype=bool)))
    keep = end > start
    return seg[keep], start[keep], end[keep], pre[keep]


def bql_holder_segments(trace: Trace) -> pd.DataFrame:
    """Every BQL wait cut into holder segments (module docstring), once per
    trace.

    Returns one row per segment, in waiter then time order: ``tid`` int32
    (the waiter), ``wait`` int64 (the wait's number, one per BQL wait),
    ``wait_start_ns``/``wait_end_ns`` int64 (the whole wait), ``start_ns``,
    ``end_ns`` int64 (the segment), ``wait_ns`` int64 (of it, BQL wait:
    less nested waits for another named lock), ``holder`` int64 (the
    releasing thread, -1 none seen), ``role`` str (``HOLDER_ROLES``), ``kind``
    str or None and ``addr`` UInt64 (a vCPU holder's exit), ``preempted``
    bool, ``handoff`` bool (after the last release), ``activity`` str
    (``activity_label``) and ``lost`` bool (the wait spans lost events).
    """
    return cache.cached(trace, "bql_holder_segments", lambda: _segments(trace))


def _segments(trace: Trace) -> pd.DataFrame:
    rule = trace_lock_waits(trace)
    bql_word = trace.bql().get("futex_uaddr")
    lk, fr = rule.lock_bql, rule.free_bql
    w_tid = np.concatenate((rule.lock_tid[lk], rule.wait_tid[fr]))
    w_s = np.concatenate((rule.lock_start[lk], rule.wait_start[fr]))
    w_e = np.concatenate((rule.lock_end[lk], rule.wait_end[fr]))
    order = np.lexsort((w_s, w_tid))
    w_tid, w_s, w_e = w_tid[order], w_s[order], w_e[order]
    n_w = len(w_s)
    # A reported span with no futex wait inside never blocked: nobody held
    # the lock, the time is the acquire's own (in QEMU's precise mode,
    # mostly the uprobes').
    blocked = np.ones(n_w, dtype=bool)
    n_lk = int(lk.sum())
    if n_lk:
        inside_span = inside_by_thread(
            rule.wait_tid, rule.wait_start, rule.lock_tid[lk], rule.lock_start[lk], rule.lock_end[lk]
        )
        span_blocked = np.zeros(n_lk, dtype=bool)
        span_blocked[inside_span[inside_span >= 0]] = True
        blocked[:n_lk] = span_blocked
    blocked = blocked[order]

    # Releases by other threads inside each wait, in time order.
    r_tid, r_ts = _bql_releases(trace, int(bql_word) if bql_word else None)
    lo = np.searchsorted(r_ts, w_s, side="left")
    n = np.searchsorted(r_ts, w_e, side="right") - lo
    wait, idx = _expand(lo, n)
    other = r_tid[idx] != w_tid[wait]
    wait, rel_t, rel_h = wait[other], r_ts[idx][other], r_tid[idx][other]
    # No release seen: the sched_wakeup that ended the wait names its waker.
    seen = np.zeros(n_w, dtype=bool)
    seen[wait] = True
    ev = trace.events
    wu = np.flatnonzero(ev["event"].cat.codes.to_numpy() == EVENT_CODE["wakeup"])
    wu_ts = ev["ts_ns"].to_numpy()[wu].astype(np.int64)
    wu_peer = ev["peer_tid"].to_numpy(dtype=np.float64, na_value=0)[wu].astype(np.int64)
    j = last_match(w_tid, w_e, ev["tid"].to_numpy()[wu].astype(np.int64), wu_ts)
    ok = ~seen & (j >= 0)
    jj = np.clip(j, 0, None)
    if len(wu):
        ok &= (wu_ts[jj] >= w_s) & (wu_peer[jj] > 0) & (wu_peer[jj] != w_tid)
    else:
        ok[:] = False
    fb = np.flatnonzero(ok)
    wait = np.concatenate((wait, fb))
    rel_t = np.concatenate((rel_t, wu_ts[jj[fb]] if len(wu) else np.zeros(0, np.int64)))
    rel_h = np.concatenate((rel_h, wu_peer[jj[fb]] if len(wu) else np.zeros(0, np.int64)))
    o = np.lexsort((rel_t, wait))
    wait, rel_t, rel_h = wait[o], rel_t[o], rel_h[o]

    # Holding segments (previous release or the wait's start -> release),
    # hand-offs (last release -> end), and waits with no release at all.
    first = np.ones(len(wait), dtype=bool)
    first[1:] = wait[1:] != wait[:-1]
    last = np.ones(len(wait), dtype=bool)
    last[:-1] = wait[1:] != wait[:-1]
    h_start = np.where(first, w_s[wait], np.concatenate(([0], rel_t[:-1])))
    none = np.flatnonzero(~np.isin(np.arange(n_w), wait))
    seg_wait = np.concatenate((wait, wait[last], none))
    seg_s = np.concatenate((h_start, rel_t[last], w_s[none]))
    seg_e = np.concatenate((rel_t, w_e[wait[last]], w_e[none]))
    seg_h = np.concatenate((rel_h, rel_h[last], np.where(blocked[none], -1, -2).astype(np.int64)))
    seg_rel = np.concatenate((rel_t, rel_t[last], w_e[none]))
    handoff = np.concatenate((np.zeros(len(wait), bool), np.ones(int(last.sum()), bool), np.zeros(len(none), bool)))

    # What each holder was doing at its release.
    roles = _holder_roles(trace)
    uniq_h = np.unique(seg_h)
    role_of = {
        int(h): (roles.get(int(h), ROLE_OTHER) if h >= 0 else ROLE_UNKNOWN if h == -1 else ROLE_UNCONTENDED)
        for h in uniq_h
    }
    seg_role = (
        np.array([role_of[int(h)] for h in uniq_h], dtype=object)[np.searchsorted(uniq_h, seg_h)]
        if len(seg_h)
        else np.zeros(0, dtype=object)
    )
    cyc = cache.vcpu_run_cycles(trace).cycles
    c_tid = cyc["tid"].to_numpy(dtype=np.int64)
    at = (
        inside_by_thread(
            seg_h, seg_rel, c_tid, cyc["exit_ns"].to_numpy(dtype=np.int64), cyc["end_ns"].to_numpy(dtype=np.int64)
        )
        if len(cyc)
        else np.full(len(seg_h), -1)
    )
    at = np.where(seg_role == ROLE_VCPU, at, -1)
    kinds = cyc["kind"].to_numpy(dtype=object) if len(cyc) else np.zeros(0, dtype=object)
    seg_kind = np.where(at >= 0, kinds[np.clip(at, 0, None)] if len(kinds) else None, None)
    seg_addr = pd.array(
        cyc["addr"].array.take(np.clip(at, 0, None)) if len(cyc) else pd.array([pd.NA] * len(at), dtype="UInt64"),
        dtype="UInt64",
    )
    seg_addr[at < 0] = pd.NA

    # Where a holder was waiting for a CPU inside its holding segment.
    hold = ~handoff & (seg_h >= 0)
    cw = _cpu_wait_spans(trace)
    p_seg, p_s, p_e, p_pre = _split_preempted(seg_h[hold], seg_s[hold], seg_e[hold], cw)
    held_rows = np.flatnonzero(hold)[p_seg]
    rest = np.flatnonzero(~hold)
    src = np.concatenate((held_rows, rest))
    start = np.concatenate((p_s, seg_s[rest]))
    end = np.concatenate((p_e, seg_e[rest]))
    pre = np.concatenate((p_pre, np.zeros(len(rest), dtype=bool)))
    keep = end > start
    src, start, end, pre = src[keep], start[keep], end[keep], pre[keep]
    s_wait = seg_wait[src]
    s_tid = w_tid[s_wait]
    # Less the waits on another named lock nested in a BQL span.
    nw = rule.wait_nested
    nested = (
        overlap_by_thread(s_tid, start, end, rule.wait_tid[nw], rule.wait_start[nw], rule.wait_end[nw])
        if nw.any()
        else np.zeros(len(start), dtype=np.int64)
    )
    out = pd.DataFrame(
        {
            "tid": s_tid.astype(np.int32),
            "wait": s_wait.astype(np.int64),
            "wait_start_ns": w_s[s_wait],
            "wait_end_ns": w_e[s_wait],
            "start_ns": start,
            "end_ns": end,
            "wait_ns": (end - start - nested).astype(np.int64),
            "holder": np.maximum(seg_h[src], -1),
            "role": seg_role[src] if len(src) else np.zeros(0, dtype=object),
            "kind": seg_kind[src] if len(src) else np.zeros(0, dtype=object),
            "addr": seg_addr.take(src) if len(src) else pd.array([], dtype="UInt64"),
            "preempted": pre,
            "handoff": handoff[src],
        }
    )
    out = out.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)
    out["activity"] = _labels(out)
    out["lost"] = (
        thread_spans_lost(
            ev, out["tid"].to_numpy(dtype=np.int64), out["wait_start_ns"].to_numpy(), out["wait_end_ns"].to_numpy()
        )
        if len(out)
        else np.zeros(0, dtype=bool)
    )
    return out


def _labels(df: pd.DataFrame) -> np.ndarray:
    """``activity_label`` per row, formatted once per distinct activity."""
    if df.empty:
        return np.zeros(0, dtype=object)
    group = df.groupby(ACTIVITY_KEYS, dropna=False, sort=False).ngroup().to_numpy()
    first = pd.Series(np.arange(len(df))).groupby(group).first().to_numpy()
    keys = df[ACTIVITY_KEYS].astype(object).where(df[ACTIVITY_KEYS].notna(), None).iloc[first]
    labels = [activity_label(*row) for row in keys.itertuples(index=False)]
    return np.asarray(labels, dtype=object)[group]


def _holders_text(trace: Trace, tids: pd.Series) -> str:
    t = trace.threads.drop_duplicates("tid").set_index("tid")["name"]
    return ", ".join(f"{t.get(int(h), '?')} [{int(h)}]" for h in sorted(set(tids)) if int(h) >= 0)


def _by_activity(trace: Trace, parts: pd.DataFrame, unit: str) -> pd.DataFrame:
    """Per activity: how many ``unit`` (waits or exits) it caused part of,
    and the time."""
    if parts.empty:
        return pd.DataFrame(
            columns=["activity", *ACTIVITY_KEYS, "holders", unit, "wait_ns", "mean_ns", "p99_ns", "share"]
        )
    g = parts.groupby("activity", sort=False)
    out = pd.DataFrame(
        {
            "role": g["role"].first(),
            "kind": g["kind"].first(),
            "addr": g["addr"].first(),
            "preempted": g["preempted"].first(),
            "holders": g["holder"].agg(lambda h: _holders_text(trace, h)),
            unit: g.size(),
            "wait_ns": g["wait_ns"].sum(),
            "mean_ns": g["wait_ns"].mean(),
            "p99_ns": g["wait_ns"].quantile(0.99),
        }
    ).reset_index()
    total = int(out["wait_ns"].sum())
    out["share"] = out["wait_ns"] / total if total else 0.0
    out["addr"] = out["addr"].astype("UInt64")
    out["wait_ns"] = out["wait_ns"].astype(np.int64)
    return out.sort_values(["wait_ns", "activity"], ascending=[False, True], kind="stable").reset_index(drop=True)


@dataclass
class HolderTable:
    """Who held the BQL, per holder activity.  ``rows``: ``activity`` str,
    ``role`` str, ``kind`` str or None, ``addr`` UInt64, ``preempted`` bool,
    ``holders`` str (the threads: ``name [tid]``), ``waits`` int64 (waits
    it caused part of), ``wait_ns`` int64 (wait caused), ``mean_ns`` and
    ``p99_ns`` float64 (per wait caused part of), ``share`` float64 (of all
    BQL wait); most wait first.  ``wait_ns`` is the BQL wait the table
    partitions, ``waits`` the BQL waits, ``excluded_lost`` those left out
    because they span lost events."""

    rows: pd.DataFrame
    wait_ns: int
    waits: int
    excluded_lost: int


def holder_summary(trace: Trace) -> HolderTable:
    """The "who held it" table of every BQL wait of the trace (every
    waiting thread, not only vCPUs), waits across lost events left out."""
    seg = bql_holder_segments(trace)
    good = seg[~seg["lost"].to_numpy(dtype=bool)]
    per_wait = _sum_by_activity(good, "wait")
    rows = _by_activity(trace, per_wait, "waits")
    if len(rows):
        # Every releasing thread of an activity, not one per wait.
        every = good.groupby("activity", sort=False)["holder"].agg(lambda h: _holders_text(trace, h))
        rows["holders"] = rows["activity"].map(every)
    return HolderTable(
        rows=rows,
        wait_ns=int(good["wait_ns"].sum()),
        waits=int(good["wait"].nunique()),
        excluded_lost=int(seg.loc[seg["lost"].to_numpy(dtype=bool), "wait"].nunique()),
    )


def exit_split(trace: Trace, exits: pd.DataFrame) -> pd.DataFrame:
    """Each exit's ``bql_wait_ns`` split by holder activity.

    ``exits``: rows of ``exit_breakdown(trace)`` (any selection).  Returns
    one row per exit and activity with a share: ``exit`` int64 (position in
    ``exits``), ``activity``, ``role`` str, ``kind`` str or None, ``addr``
    UInt64, ``preempted`` bool, ``holder`` int64 (one releasing thread of
    that activity), ``wait_ns`` int64.  Per exit the rows sum to its
    ``bql_wait_ns`` exactly (module docstring: fitted, shortfall to
    ``unknown``).
    """
    cols = ["exit", "activity", *ACTIVITY_KEYS, "holder", "wait_ns"]
    target = exits["bql_wait_ns"].to_numpy(dtype=np.int64)
    if len(exits) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in cols})
    seg = bql_holder_segments(trace)
    x_tid = exits["tid"].to_numpy(dtype=np.int64)
    t_next = exits["end_ns"].to_numpy(dtype=np.int64)
    # run_exit itself: the userspace components no longer add up to its
    # part of the exit once waiting for a CPU is carved out (runnable_ns).
    t_exit = exits["exit_ns"].to_numpy(dtype=np.int64)
    # The breakdown's exits of one thread are disjoint; sort them so the
    # containment search sees them in time order.
    order = np.lexsort((t_exit, x_tid))
    at = (
        inside_by_thread(
            seg["tid"].to_numpy(dtype=np.int64),
            seg["start_ns"].to_numpy(dtype=np.int64),
            x_tid[order],
            t_exit[order],
            t_next[order],
        )
        if len(seg)
        else np.zeros(0, np.int64)
    )
    inside = at >= 0
    part = seg[inside].copy()
    x = order[at[inside]]
    s = np.maximum(part["start_ns"].to_numpy(dtype=np.int64), t_exit[x])
    e = np.minimum(part["end_ns"].to_numpy(dtype=np.int64), t_next[x])
    part["wait_ns"] = np.clip(np.minimum(part["wait_ns"].to_numpy(dtype=np.int64), e - s), 0, None)
    part["exit"] = x
    grouped = _sum_by_activity(part, "exit")
    # Fit to each exit's bql_wait_ns: never more than was waited.
    g_exit = grouped["exit"].to_numpy(dtype=np.int64)
    w = grouped["wait_ns"].to_numpy(dtype=np.int64)
    got = np.bincount(g_exit, weights=w, minlength=len(exits)).astype(np.int64)
    over = got > target
    if over.any():
        scale = np.where(over, target / np.maximum(got, 1), 1.0)
        w = np.where(over[g_exit], np.floor(w * scale[g_exit]).astype(np.int64), w)
        short = target - np.bincount(g_exit, weights=w, minlength=len(exits)).astype(np.int64)
        # The rounding remainder to the largest part of each such exit.
        big = grouped.assign(w=w).sort_values("w", ascending=False, kind="stable").drop_duplicates("exit")
        fix = big.index.to_numpy()[over[big["exit"].to_numpy(dtype=np.int64)]]
        w[fix] += short[g_exit[fix]]
        got = np.bincount(g_exit, weights=w, minlength=len(exits)).astype(np.int64)
    grouped["wait_ns"] = w
    missing = np.flatnonzero(target > got)
    if len(missing):
        extra = pd.DataFrame(
            {
                "exit": missing,
                "activity": activity_label(ROLE_UNKNOWN, None, None, False),
                "role": ROLE_UNKNOWN,
                "kind": None,
                "addr": pd.array([pd.NA] * len(missing), dtype="UInt64"),
                "preempted": False,
                "holder": -1,
                "wait_ns": (target - got)[missing],
            }
        )
        grouped = pd.concat([grouped, extra], ignore_index=True)
        grouped = _sum_by_activity(grouped, "exit")
    grouped = grouped[grouped["wait_ns"] > 0]
    grouped["addr"] = grouped["addr"].astype("UInt64")
    return grouped[cols].sort_values(["exit", "wait_ns"], ascending=[True, False], kind="stable").reset_index(drop=True)


def split_summary(trace: Trace, exits: pd.DataFrame) -> pd.DataFrame:
    """``bql_wait`` of ``exits`` by holder activity (``exit_split``), most
    first: ``activity``, ``role``, ``kind``, ``addr``, ``preempted``,
    ``holders`` str, ``exits`` int64 (exits with a part), ``wait_ns``
    int64 (total over the exits), ``mean_ns``/``p99_ns`` float64 (per exit
    with a part), ``share`` float64 (of their ``bql_wait``)."""
    return _by_activity(trace, exit_split(trace, exits), "exits")


def _sum_by_activity(seg: pd.DataFrame, key: str) -> pd.DataFrame:
    """Segments summed per (``key``, activity): the wait, and the holder's
    description taken from the first segment (all segments of one activity
    describe the same holder doing the same thing)."""
    return (
        seg.groupby([key, "activity"], sort=False)
        .agg(
            role=("role", "first"),
            kind=("kind", "first"),
            addr=("addr", "first"),
            preempted=("preempted", "first"),
            holder=("holder", "first"),
            wait_ns=("wait_ns", "sum"),
        )
        .reset_index()
    )
