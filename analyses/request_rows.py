"""The per-request rows of the virtio-blk view: each request the VMM
reported, its time points and the partition of its time into ``PHASES``
(see ``analyses.requests`` for what each phase means).

A request's time points, in order: ``start`` (the kick that started its
batch, else the pickup), ``pickup`` (the servicing thread starts on the
batch: its BQL attempt, else the batch span), ``pop`` and ``push`` (the
request span), ``irq_start`` and ``end`` (the batch's completion interrupt
when one was raised after the push; else both the push).  Each phase but
the lock waits and the disk is one segment between two of them, less the
lock waits inside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vmtrace.schema import EVENT_CODE
from vmtrace.trace import Trace

from . import cache
from .intervals import (
    i64,
    inside_by_thread,
    last_match,
    lost_windows,
    overlap_by_thread,
    overlaps_loss,
    pair_spans,
    thread_spans_lost,
)
from .offcpu import thread_info
from .request_kernel import kicks, notify_port
from .runs import vcpu_threads
from .waits import BQL_NAME, LockWaits, attribute_waits

# requests.py re-exports these names (its public face predates the split).
__all__ = [
    "PHASES",
    "BATCH_SPAN",
    "REQUEST_SPAN",
    "DISK_SPANS",
    "IRQ_SPAN",
    "request_breakdown",
    "dispatch_spans",
    "servicing_waits",
    "lock_events",
]

#: The partition of a request, in the order reports stack it.
PHASES: tuple[str, ...] = ("notify", "bql_wait", "queued", "processing", "disk", "lock_wait", "tail", "irq")

#: Probe span names (``dispatch_*`` events' ``name``) of the reference VMM's virtio-blk.
BATCH_SPAN = "virtio-blk"
REQUEST_SPAN = "virtio-blk-req"
DISK_SPANS: dict[str, str] = {"virtio-blk-read": "read", "virtio-blk-write": "write", "virtio-blk-flush": "flush"}
IRQ_SPAN = "virtio-blk-irq"

_NEVER = np.iinfo(np.int64).min // 4


def dispatch_spans(ev: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Probe spans with these names, paired per thread, name *and address*:
    the batch, request and disk spans nest, and the requests of a batch and
    their disk I/O overlap (popped together, completed as the disk finishes),
    each begin and end carrying the request's avail ring index."""
    codes = ev["event"].cat.codes.to_numpy()
    rows = np.flatnonzero(
        ((codes == EVENT_CODE["dispatch_begin"]) | (codes == EVENT_CODE["dispatch_end"]))
        & ev["name"].isin(names).to_numpy()
    )
    sub = ev.iloc[rows]
    sub = sub.assign(addr=sub["addr"].fillna(0))
    spans = pair_spans(sub, "dispatch_begin", "dispatch_end", keys=("tid", "name", "addr"))
    spans["name"] = spans["name"].astype(object)
    return spans.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)


def _own_disk(
    disks: pd.DataFrame, r_tid: np.ndarray, r_key: np.ndarray, pop: np.ndarray, push: np.ndarray
) -> np.ndarray:
    """For each disk span, the request it belongs to (-1: none): same thread
    and avail index, inside the request's pop -> push."""
    if disks.empty or len(r_tid) == 0:
        return np.full(len(disks), -1, dtype=np.int64)
    d_key = i64(disks, "tid") * 65536 + (disks["addr"].to_numpy(dtype=np.int64) & 0xFFFF)
    d_s, d_e = i64(disks, "start_ns"), i64(disks, "end_ns")
    idx = last_match(d_key, d_s, r_tid * 65536 + (r_key & 0xFFFF), pop)
    ok = idx >= 0
    ok[ok] = d_e[ok] <= push[idx[ok]]
    return np.where(ok, idx, -1)


def lock_events(ev: pd.DataFrame, tids: np.ndarray) -> pd.DataFrame:
    """The lock_begin, lock_acquired and lock_release events of ``tids``."""
    codes = ev["event"].cat.codes.to_numpy()
    return ev.iloc[
        np.flatnonzero(
            (codes >= EVENT_CODE["lock_begin"])
            & (codes <= EVENT_CODE["lock_release"])
            & np.isin(ev["tid"].to_numpy(), tids)
        )
    ]


def servicing_waits(trace: Trace, tids: np.ndarray, locks: pd.DataFrame) -> LockWaits:
    """Lock waits of the servicing threads ``tids`` by the rule of
    ``analyses.waits``; ``locks``: their lock-acquire spans."""
    fw = cache.futex_waits(trace)
    fw = fw[np.isin(i64(fw, "tid"), tids)]
    locks = locks[np.isin(i64(locks, "tid"), tids)]
    return attribute_waits(locks, fw, trace.bql().get("futex_uaddr"), trace.futex_names())


def _runnable(trace: Trace, tids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per thread, the disjoint intervals it was runnable but off CPU."""
    off = cache.offcpu_spans(trace)
    off = off[np.isin(i64(off, "tid"), tids)]
    start = np.where(
        off["runnable"].to_numpy(dtype=bool),
        i64(off, "start_ns"),
        off["wakeup_ns"].to_numpy(dtype=np.float64, na_value=np.nan),
    )
    keep = ~np.isnan(start)
    return i64(off, "tid")[keep], start[keep].astype(np.int64), i64(off, "end_ns")[keep]


def _empty_requests() -> pd.DataFrame:
    cols: dict[str, str] = {
        "tid": "int32",
        "role": "object",
        "thread": "object",
        "batch": "int64",
        "pos": "int64",
        "kind": "object",
        "avail_idx": "Int64",
        "kick_vcpu": "Int16",
        "start_ns": "int64",
        "pickup_ns": "int64",
        "pop_ns": "int64",
        "push_ns": "int64",
        "irq_start_ns": "int64",
        "end_ns": "int64",
    }
    cols.update({f"{p}_ns": "int64" for p in PHASES})
    cols.update(
        {
            "total_ns": "int64",
            "bql_held_ns": "int64",
            "wait_cpu_ns": "int64",
            "notify_wakeup_ns": "Int64",
            "notify_known": "bool",
            "irq_raised": "bool",
            "bql_taken": "bool",
            "lost": "bool",
        }
    )
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in cols.items()})


def request_breakdown(trace: Trace) -> pd.DataFrame:
    """One row per virtio-blk request the VMM reported (``REQUEST_SPAN``).

    Columns: ``tid`` int32 (the thread that serviced it), ``role`` str
    (vcpu, main, iothread ...), ``thread`` str (its name), ``batch`` int64
    (the batch, numbered in thread then time order), ``pos`` int64 (its
    place in the batch, from 0), ``kind`` str (read, write, flush, other),
    ``avail_idx`` Int64 (the avail ring index it was popped from),
    ``kick_vcpu`` Int16 (the vCPU whose kick started the batch; NA when not
    known), then int64 ns times ``start_ns`` (the kick, or the pickup when
    the kick is not known), ``pickup_ns`` (the thread starts on the batch:
    its BQL attempt, else the batch span), ``pop_ns``, ``push_ns`` (the
    request span), ``irq_start_ns`` / ``end_ns`` (the batch's completion
    interrupt, when one was raised after the push; else both ``push_ns``);
    the partition ``<phase>_ns`` for each of ``PHASES``,
    summing to ``total_ns`` = end - start; beside it ``bql_held_ns``,
    ``wait_cpu_ns``, ``notify_wakeup_ns`` Int64; and bool ``notify_known``,
    ``irq_raised``, ``bql_taken`` (the BQL was waited for or held on the
    request's path) and ``lost`` (its span overlaps a lost-event window:
    events inside may be missing).  Sorted by ``pop_ns``.  Empty when the
    trace has no request probes.
    """
    ev = trace.events
    spans = dispatch_spans(ev, [BATCH_SPAN, REQUEST_SPAN, IRQ_SPAN, *DISK_SPANS])
    name = spans["name"].to_numpy(dtype=object)
    batches = spans[name == BATCH_SPAN].reset_index(drop=True)
    reqs = spans[name == REQUEST_SPAN].reset_index(drop=True)
    disks = spans[np.isin(name, list(DISK_SPANS))].reset_index(drop=True)
    irqs = spans[name == IRQ_SPAN].reset_index(drop=True)
    if reqs.empty or batches.empty:
        return _empty_requests()

    b_tid, b_s, b_e = i64(batches, "tid"), i64(batches, "start_ns"), i64(batches, "end_ns")
    r_batch = inside_by_thread(i64(reqs, "tid"), i64(reqs, "start_ns"), b_tid, b_s, b_e)
    reqs = reqs[r_batch >= 0].reset_index(drop=True)
    r_batch = r_batch[r_batch >= 0]
    if reqs.empty:
        return _empty_requests()
    r_tid, t_pop, t_push = i64(reqs, "tid"), i64(reqs, "start_ns"), i64(reqs, "end_ns")
    n = len(reqs)

    # The batch before each batch on its thread: kicks after it ended are this one's.
    prev_end = np.full(len(batches), _NEVER, dtype=np.int64)
    same = b_tid[1:] == b_tid[:-1]
    prev_end[1:][same] = b_e[:-1][same]

    tids = np.unique(b_tid)
    codes = ev["event"].cat.codes.to_numpy()
    lock_ev = lock_events(ev, tids)
    lwaits = pair_spans(lock_ev, "lock_begin", "lock_acquired", keys=("tid", "name"))
    holds = pair_spans(lock_ev, "lock_acquired", "lock_release", keys=("tid", "name"))
    lwaits = lwaits.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)
    holds = holds.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)
    hb = (holds["name"].astype(object) == BQL_NAME).to_numpy(dtype=bool)
    wb = (lwaits["name"].astype(object) == BQL_NAME).to_numpy(dtype=bool)
    h_tid, h_s, h_e = i64(holds, "tid")[hb], i64(holds, "start_ns")[hb], i64(holds, "end_ns")[hb]
    q_tid, q_s, q_e = i64(lwaits, "tid")[wb], i64(lwaits, "start_ns")[wb], i64(lwaits, "end_ns")[wb]

    # Pickup: where the batch's own BQL acquisition began, if the BQL is held
    # at the batch's start and was taken after the previous batch.
    pickup = b_s.copy()
    held = inside_by_thread(b_tid, b_s, h_tid, h_s, h_e)
    has = held >= 0
    if has.any():
        acq = h_s[held[has]]
        w = last_match(b_tid[has], acq, q_tid, q_e)
        ok = w >= 0
        ok[ok] = (q_e[w[ok]] == acq[ok]) & (q_s[w[ok]] > prev_end[has][ok])
        idx = np.flatnonzero(has)[ok]
        pickup[idx] = q_s[w[ok]]

    port, _ = notify_port(trace, batches)
    k_ts, k_tid = kicks(trace, port)
    i = np.searchsorted(k_ts, prev_end, side="right")
    b_known = i < len(k_ts)
    b_known[b_known] = k_ts[i[b_known]] <= b_s[b_known]
    b_kick = np.where(b_known, k_ts[np.clip(i, 0, max(len(k_ts) - 1, 0))] if len(k_ts) else 0, 0)
    b_kick_tid = np.where(b_known, k_tid[np.clip(i, 0, max(len(k_tid) - 1, 0))] if len(k_tid) else -1, -1)

    # The batch's completion interrupt (the last one raised inside it).
    b_irq_s = np.full(len(batches), -1, dtype=np.int64)
    b_irq_e = np.full(len(batches), -1, dtype=np.int64)
    if len(irqs):
        ib = inside_by_thread(i64(irqs, "tid"), i64(irqs, "start_ns"), b_tid, b_s, b_e)
        okb = ib >= 0
        b_irq_s[ib[okb]] = i64(irqs, "start_ns")[okb]
        b_irq_e[ib[okb]] = i64(irqs, "end_ns")[okb]

    known = b_known[r_batch]
    t_pickup = pickup[r_batch]
    t_start = np.where(known, np.minimum(b_kick[r_batch], t_pickup), t_pickup)
    irq_raised = (b_irq_s[r_batch] >= 0) & (b_irq_s[r_batch] >= t_push)
    t_irq = np.where(irq_raised, b_irq_s[r_batch], t_push)
    t_end = np.where(irq_raised, b_irq_e[r_batch], t_push)

    # Disk: the request's own I/O span(s), less the lock waits inside them.
    r_key = reqs["addr"].to_numpy(dtype=np.int64)
    d_req = _own_disk(disks, r_tid, r_key, t_pop, t_push)
    dk = d_req >= 0
    d_tid, d_s, d_e = i64(disks, "tid")[dk], i64(disks, "start_ns")[dk], i64(disks, "end_ns")[dk]
    d_req = d_req[dk]
    disk_raw = np.bincount(d_req, weights=d_e - d_s, minlength=n).astype(np.int64)
    kind = np.full(n, "other", dtype=object)
    kind[d_req] = [DISK_SPANS[x] for x in disks["name"].to_numpy(dtype=object)[dk]]

    waits = servicing_waits(trace, tids, lwaits)
    # Each phase is the segment between two of the request's time points,
    # less the lock waits inside it (the disk's waits come off processing).
    seg = {
        "notify": (t_start, t_pickup),
        "queued": (t_pickup, t_pop),
        "processing": (t_pop, t_push),
        "tail": (t_push, t_irq),
        "irq": (t_irq, t_end),
    }
    wq = {phase: waits.within(r_tid, s, e) for phase, (s, e) in seg.items()}
    dwb, dwo = waits.within(d_tid, d_s, d_e)
    disk_waits = np.bincount(d_req, weights=dwb + dwo, minlength=n).astype(np.int64)
    disk = disk_raw - disk_waits
    net = {phase: e - s - wq[phase][0] - wq[phase][1] for phase, (s, e) in seg.items()}
    notify, queued, tail, irq = net["notify"], net["queued"], net["tail"], net["irq"]
    processing = net["processing"] - disk_raw + disk_waits
    bql_wait = sum(w[0] for w in wq.values())
    lock_wait = sum(w[1] for w in wq.values())

    bql_held = overlap_by_thread(r_tid, t_pop, t_push, h_tid, h_s, h_e) if len(h_s) else np.zeros(n, dtype=np.int64)
    on_path = overlap_by_thread(r_tid, t_start, t_end, h_tid, h_s, h_e) if len(h_s) else np.zeros(n, dtype=np.int64)
    rt, rs, re_ = _runnable(trace, tids)
    wait_cpu = overlap_by_thread(r_tid, t_start, t_end, rt, rs, re_) if len(rs) else np.zeros(n, dtype=np.int64)

    wk = ev.iloc[np.flatnonzero((codes == EVENT_CODE["wakeup"]) & np.isin(ev["tid"].to_numpy(), tids))]
    wake = pd.array(np.zeros(n, dtype=np.int64), dtype="Int64")
    wake[:] = pd.NA
    if len(wk) and known.any():
        kk = np.flatnonzero(known)
        kick_at = t_start[kk]
        j = last_match(r_tid[kk], -kick_at, i64(wk, "tid"), -i64(wk, "ts_ns"))
        okw = j >= 0
        okw[okw] = i64(wk, "ts_ns")[j[okw]] <= t_pickup[kk][okw]
        wake[kk[okw]] = i64(wk, "ts_ns")[j[okw]] - kick_at[okw]

    vcpus = vcpu_threads(trace)
    kick_vcpu = pd.array([vcpus.get(int(t), -1) for t in b_kick_tid[r_batch]], dtype="Int16")
    kick_vcpu[~known | (kick_vcpu.to_numpy(dtype=np.int64, na_value=-1) < 0)] = pd.NA

    info = thread_info(trace, r_tid)
    pos = pd.Series(np.arange(n)).groupby(r_batch).cumcount().to_numpy(dtype=np.int64)
    lost = _spans_lost(ev, r_tid, t_start, t_end)
    out = pd.DataFrame(
        {
            "tid": r_tid.astype(np.int32),
            "role": info["role"].to_numpy(),
            "thread": info["name"].to_numpy(),
            "batch": r_batch.astype(np.int64),
            "pos": pos,
            "kind": kind,
            "avail_idx": reqs["addr"].astype("Int64").array,
            "kick_vcpu": kick_vcpu,
            "start_ns": t_start,
            "pickup_ns": t_pickup,
            "pop_ns": t_pop,
            "push_ns": t_push,
            "irq_start_ns": t_irq,
            "end_ns": t_end,
            "notify_ns": notify,
            "bql_wait_ns": bql_wait,
            "queued_ns": queued,
            "processing_ns": processing,
            "disk_ns": disk,
            "lock_wait_ns": lock_wait,
            "tail_ns": tail,
            "irq_ns": irq,
            "total_ns": t_end - t_start,
            "bql_held_ns": bql_held,
            "wait_cpu_ns": wait_cpu,
            "notify_wakeup_ns": wake,
            "notify_known": known,
            "irq_raised": irq_raised,
            "bql_taken": (bql_wait > 0) | (on_path > 0),
            "lost": lost,
        }
    )
    for c in [f"{p}_ns" for p in PHASES] + ["total_ns", "bql_held_ns", "wait_cpu_ns"]:
        out[c] = out[c].astype(np.int64)
    return out.sort_values("pop_ns", kind="stable").reset_index(drop=True)


def _spans_lost(ev: pd.DataFrame, tid: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Whether each span of a servicing thread may have lost events.  A
    thread whose kernel events say which CPUs it ran on is judged by those
    (``thread_spans_lost``); one seen only through its probes (cpu -1) could
    have been on any CPU, so any loss counts."""
    windows = lost_windows(ev)
    if len(windows) == 0 or len(tid) == 0:
        return np.zeros(len(tid), dtype=bool)
    codes = ev["event"].cat.codes.to_numpy()
    own = (ev["cpu"].to_numpy() >= 0) & (codes != EVENT_CODE["wakeup"]) & (codes != EVENT_CODE["lost"])
    seen = np.unique(ev["tid"].to_numpy()[own])
    placed = np.isin(tid, seen)
    out = overlaps_loss(start, end, windows)
    if placed.any():
        out[placed] = thread_spans_lost(ev, tid[placed], start[placed], end[placed], windows)
    return out
