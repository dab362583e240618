"""Per-request view of a virtio-blk device: where each request's time goes.

A guest publishes a request in the avail ring (guest memory: no exit, no
event), then may *kick* the device: an ``outw`` to the queue-notify port,
which KVM turns into an ioeventfd signal (``kvm_pio`` fires, KVM_RUN does not
return).  The thread that services the queue -- a vCPU, the main loop under
the BQL, or an IOThread -- wakes, takes the BQL where its mode needs it, and
runs one *batch*: it pops requests until the ring is empty, queueing each
one's disk I/O, waits for the disk, pushes each request on the used ring as
its I/O completes, then raises the completion interrupt once, unless the
driver asked for none.  The requests of a batch overlap in time; the probes
carry each request's avail ring index, which ties its spans together.

The VMM reports these steps as probe spans (``dispatch_begin`` /
``dispatch_end`` with the names below; the reference VMM emits them, see
``reference_vmm/devices/virtio``).  One row per request partitions the time
from the kick that started its batch to its completion:

============  ================================================================
notify        kick -> the servicing thread picks the batch up (the ioeventfd
              wakeup, the poll loop, scheduling), less lock waits
bql_wait      waiting for the BQL anywhere on the request's path (the main
              loop takes it before the batch in ``--blk bql``)
queued        pickup -> this request's pop: the handler's entry and the
              earlier requests of the same batch, less lock waits
processing    pop -> push less its disk I/O and lock waits: descriptor walk,
              header, status, used ring -- and, between its I/O's completion
              and its push, the completions handled before it
disk          its read/write/flush, from being queued for the disk to the
              thread seeing it complete (its lock waits apart)
lock_wait     waiting for any other lock (the GIL, the device's AioContext
              lock) on the path
tail          push -> the batch's completion interrupt: the later requests
              of the batch (interrupt coalescing); 0 without an interrupt
irq           raising the interrupt (the irqfd write); 0 without one
============  ================================================================

Beside the partition: ``bql_held_ns`` (the BQL held while the request was
processed), ``wait_cpu_ns`` (the servicing thread runnable but off CPU:
oversubscription, not contention) and ``notify_wakeup_ns`` (kick -> the
kernel's wakeup of the servicing thread).

What a trace cannot say, and the view therefore does not guess: when the
guest published a request (a request taken by a running batch needed no
kick; its time is counted from the batch's kick, an upper bound), and the
kick of a batch whose only kicks came while the previous batch still ran
(its requests start at the pickup and ``notify_known`` is False).

Without the request probes (QEMU has none) only the kernel's view remains:
one row per kick with the thread the ioeventfd woke (``notifications``), and
the uninterruptible sleeps of the threads that do the I/O (``disk_waits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.errors import VmtraceError
from vmtrace.schema import EVENT_CODE, EVENT_TYPES, role_rank
from vmtrace.trace import Trace

from . import cache
from .intervals import (
    inside_by_thread,
    last_match,
    lost_windows,
    overlap_by_thread,
    overlaps_loss,
    pair_spans,
    thread_spans_lost,
)
from .offcpu import thread_info
from .runs import vcpu_threads
from .waits import LockWaits, attribute_waits, empty_wait_spans

__all__ = [
    "PHASES",
    "BATCH_SPAN",
    "REQUEST_SPAN",
    "DISK_SPANS",
    "IRQ_SPAN",
    "request_breakdown",
    "request_report",
    "request_timeline",
    "Requests",
]

#: The partition of a request, in the order reports stack it.
PHASES: tuple[str, ...] = ("notify", "bql_wait", "queued", "processing", "disk", "lock_wait", "tail", "irq")

#: Probe span names (``dispatch_*`` events' ``name``) of the reference VMM's virtio-blk.
BATCH_SPAN = "virtio-blk"
REQUEST_SPAN = "virtio-blk-req"
DISK_SPANS: dict[str, str] = {"virtio-blk-read": "read", "virtio-blk-write": "write", "virtio-blk-flush": "flush"}
IRQ_SPAN = "virtio-blk-irq"

_NEVER = np.iinfo(np.int64).min // 4
_TASK_UNINTERRUPTIBLE = 2
_QUANTILES = (50, 90, 99)


# ----------------------------------------------------------------------------
# Spans of the probes


def _dispatch_spans(ev: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Probe spans with these names, paired per thread, name *and address*:
    the batch, request and disk spans nest, and the requests of a batch and
    their disk I/O overlap (popped together, completed as the disk finishes),
    each begin and end carrying the request's avail ring index."""
    codes = ev["event"].cat.codes.to_numpy()
    rows = np.flatnonzero(((codes == EVENT_CODE["dispatch_begin"]) | (codes == EVENT_CODE["dispatch_end"]))
                          & ev["name"].isin(names).to_numpy())
    sub = ev.iloc[rows]
    sub = sub.assign(addr=sub["addr"].fillna(0))
    spans = pair_spans(sub, "dispatch_begin", "dispatch_end", keys=("tid", "name", "addr"))
    spans["name"] = spans["name"].astype(object)
    return spans.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)


def _own_disk(disks: pd.DataFrame, r_tid: np.ndarray, r_key: np.ndarray, pop: np.ndarray,
              push: np.ndarray) -> np.ndarray:
    """For each disk span, the request it belongs to (-1: none): same thread
    and avail index, inside the request's pop -> push."""
    if disks.empty or len(r_tid) == 0:
        return np.full(len(disks), -1, dtype=np.int64)
    d_key = _i64(disks, "tid") * 65536 + (disks["addr"].to_numpy(dtype=np.int64) & 0xFFFF)
    d_s, d_e = _i64(disks, "start_ns"), _i64(disks, "end_ns")
    idx = last_match(d_key, d_s, r_tid * 65536 + (r_key & 0xFFFF), pop)
    ok = idx >= 0
    ok[ok] = d_e[ok] <= push[idx[ok]]
    return np.where(ok, idx, -1)


def _i64(df: pd.DataFrame, col: str) -> np.ndarray:
    return df[col].to_numpy(dtype=np.int64)


def _waits(trace: Trace, tids: np.ndarray, locks: pd.DataFrame) -> LockWaits:
    """Lock waits of the servicing threads ``tids`` by the rule of
    ``analyses.waits``; ``locks``: their lock-acquire spans."""
    fw = cache.futex_waits(trace)
    fw = fw[np.isin(_i64(fw, "tid"), tids)]
    locks = locks[np.isin(_i64(locks, "tid"), tids)]
    return attribute_waits(locks, fw, trace.bql().get("futex_uaddr"), trace.futex_names())


def _runnable(trace: Trace, tids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per thread, the disjoint intervals it was runnable but off CPU."""
    off = cache.offcpu_spans(trace)
    off = off[np.isin(_i64(off, "tid"), tids)]
    start = np.where(off["runnable"].to_numpy(dtype=bool), _i64(off, "start_ns"),
                     off["wakeup_ns"].to_numpy(dtype=np.float64, na_value=np.nan))
    keep = ~np.isnan(start)
    return _i64(off, "tid")[keep], start[keep].astype(np.int64), _i64(off, "end_ns")[keep]


def notify_port(trace: Trace, batches: pd.DataFrame | None = None) -> tuple[int | None, str]:
    """The queue-notify port and how it was found: from the batch spans (the
    reference VMM names its ioeventfd port), from the benchmark guest's
    ``blkdev`` record (I/O BAR + 0x10), else a guess from the kernel events."""
    if batches is not None and len(batches):
        ports = batches["addr"].to_numpy(dtype=np.int64, na_value=0)
        ports = ports[ports > 0]
        if len(ports):
            return int(np.bincount(ports).argmax()), "the VMM's batch probes"
    io = ((trace.meta.get("bench") or {}).get("blkdev") or {}).get("io")
    if io:
        try:
            return int(str(io), 0) + 0x10, "the benchmark guest's blkdev record (BAR0 + 0x10)"
        except ValueError:
            pass
    return _guess_port(trace), "a guess: the PIO port whose writes most often wake a non-vCPU thread"


def _kicks(trace: Trace, port: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Times and threads of the guest's writes to the notify port, sorted."""
    ev = trace.events
    if port is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes = ev["event"].cat.codes.to_numpy()
    rows = np.flatnonzero(codes == EVENT_CODE["pio"])
    pio = ev.iloc[rows]
    m = (pio["addr"].to_numpy(dtype=np.int64, na_value=-1) == port) & pio["write"].to_numpy(dtype=bool,
                                                                                               na_value=False)
    return _i64(pio, "ts_ns")[m], _i64(pio, "tid")[m]


def _guess_port(trace: Trace, window_ns: int = 200_000) -> int | None:
    """The PIO write port after which a non-vCPU thread is most often woken
    by the writing vCPU: an ioeventfd's signature.  None when no port has
    ten such writes making up half of its writes."""
    ev = trace.events
    vcpus = np.asarray(sorted(vcpu_threads(trace)), dtype=np.int64)
    codes = ev["event"].cat.codes.to_numpy()
    pio = ev.iloc[np.flatnonzero(codes == EVENT_CODE["pio"])]
    pio = pio[pio["write"].to_numpy(dtype=bool, na_value=False)]
    wk = ev.iloc[np.flatnonzero(codes == EVENT_CODE["wakeup"])]
    wk = wk[~np.isin(_i64(wk, "tid"), vcpus) & wk["peer_tid"].notna().to_numpy()]
    if pio.empty or wk.empty:
        return None
    p_ts, p_tid = _i64(pio, "ts_ns"), _i64(pio, "tid")
    # The first wakeup by the same thread at or after the write.
    idx = last_match(p_tid, -p_ts, _i64(wk, "peer_tid"), -_i64(wk, "ts_ns"))
    ok = idx >= 0
    ok[ok] = _i64(wk, "ts_ns")[idx[ok]] - p_ts[ok] <= window_ns
    ports = pio["addr"].to_numpy(dtype=np.int64, na_value=-1)
    best, best_n = None, 0
    for p in np.unique(ports[ports >= 0]):
        mine = ports == p
        n = int(ok[mine].sum())
        if n >= 10 and n * 2 >= int(mine.sum()) and n > best_n:
            best, best_n = int(p), n
    return best


# ----------------------------------------------------------------------------
# The per-request rows


def _empty_requests() -> pd.DataFrame:
    cols: dict[str, str] = {"tid": "int32", "role": "object", "thread": "object", "batch": "int64",
                            "pos": "int64", "kind": "object", "avail_idx": "Int64", "kick_vcpu": "Int16",
                            "start_ns": "int64", "pickup_ns": "int64", "pop_ns": "int64", "push_ns": "int64",
                            "irq_start_ns": "int64", "end_ns": "int64"}
    cols.update({f"{p}_ns": "int64" for p in PHASES})
    cols.update({"total_ns": "int64", "bql_held_ns": "int64", "wait_cpu_ns": "int64",
                 "notify_wakeup_ns": "Int64", "notify_known": "bool", "irq_raised": "bool", "bql_taken": "bool",
                 "lost": "bool"})
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
    interrupt, when one was raised after the push; else both ``push_ns``); the partition ``<phase>_ns`` for each of ``PHASES``,
    summing to ``total_ns`` = end - start; beside it ``bql_held_ns``,
    ``wait_cpu_ns``, ``notify_wakeup_ns`` Int64; and bool ``notify_known``,
    ``irq_raised``, ``bql_taken`` (the BQL was waited for or held on the
    request's path) and ``lost`` (its span overlaps a lost-event window:
    events inside may be missing).  Sorted by ``pop_ns``.  Empty when the
    trace has no request probes.
    """
    ev = trace.events
    spans = _dispatch_spans(ev, [BATCH_SPAN, REQUEST_SPAN, IRQ_SPAN, *DISK_SPANS])
    name = spans["name"].to_numpy(dtype=object)
    batches = spans[name == BATCH_SPAN].reset_index(drop=True)
    reqs = spans[name == REQUEST_SPAN].reset_index(drop=True)
    disks = spans[np.isin(name, list(DISK_SPANS))].reset_index(drop=True)
    irqs = spans[name == IRQ_SPAN].reset_index(drop=True)
    if reqs.empty or batches.empty:
        return _empty_requests()

    b_tid, b_s, b_e = _i64(batches, "tid"), _i64(batches, "start_ns"), _i64(batches, "end_ns")
    r_batch = inside_by_thread(_i64(reqs, "tid"), _i64(reqs, "start_ns"), b_tid, b_s, b_e)
    reqs = reqs[r_batch >= 0].reset_index(drop=True)
    r_batch = r_batch[r_batch >= 0]
    if reqs.empty:
        return _empty_requests()
    r_tid, c2, c3 = _i64(reqs, "tid"), _i64(reqs, "start_ns"), _i64(reqs, "end_ns")
    n = len(reqs)

    # The batch before each batch on its thread: kicks after it ended are this one's.
    prev_end = np.full(len(batches), _NEVER, dtype=np.int64)
    same = b_tid[1:] == b_tid[:-1]
    prev_end[1:][same] = b_e[:-1][same]

    tids = np.unique(b_tid)
    codes = ev["event"].cat.codes.to_numpy()
    lock_rows = np.flatnonzero((codes >= EVENT_CODE["lock_begin"]) & (codes <= EVENT_CODE["lock_release"])
                               & np.isin(ev["tid"].to_numpy(), tids))
    lock_ev = ev.iloc[lock_rows]
    lwaits = pair_spans(lock_ev, "lock_begin", "lock_acquired", keys=("tid", "name"))
    holds = pair_spans(lock_ev, "lock_acquired", "lock_release", keys=("tid", "name"))
    lwaits = lwaits.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)
    holds = holds.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)
    hb = (holds["name"].astype(object) == "BQL").to_numpy(dtype=bool)
    wb = (lwaits["name"].astype(object) == "BQL").to_numpy(dtype=bool)
    h_tid, h_s, h_e = _i64(holds, "tid")[hb], _i64(holds, "start_ns")[hb], _i64(holds, "end_ns")[hb]
    q_tid, q_s, q_e = _i64(lwaits, "tid")[wb], _i64(lwaits, "start_ns")[wb], _i64(lwaits, "end_ns")[wb]

    # Pickup: where the batch's own BQL acquisition began, if the BQL is held
    # at the batch's start and was taken after the previous batch.
    pickup = b_s.copy()
    held = inside_by_thread(b_tid, b_s, h_tid, h_s, h_e)
    has = held >= 0
    if has.any():
        acq = h_s[held[has]]
        w = last_match(b_tid[has], acq, q_tid, q_e)
        ok = (w >= 0)
        ok[ok] = (q_e[w[ok]] == acq[ok]) & (q_s[w[ok]] > prev_end[has][ok])
        idx = np.flatnonzero(has)[ok]
        pickup[idx] = q_s[w[ok]]

    port, _ = notify_port(trace, batches)
    k_ts, k_tid = _kicks(trace, port)
    i = np.searchsorted(k_ts, prev_end, side="right")
    b_known = (i < len(k_ts))
    b_known[b_known] = k_ts[i[b_known]] <= b_s[b_known]
    b_kick = np.where(b_known, k_ts[np.clip(i, 0, max(len(k_ts) - 1, 0))] if len(k_ts) else 0, 0)
    b_kick_tid = np.where(b_known, k_tid[np.clip(i, 0, max(len(k_tid) - 1, 0))] if len(k_tid) else -1, -1)

    # The batch's completion interrupt (the last one raised inside it).
    b_irq_s = np.full(len(batches), -1, dtype=np.int64)
    b_irq_e = np.full(len(batches), -1, dtype=np.int64)
    if len(irqs):
        ib = inside_by_thread(_i64(irqs, "tid"), _i64(irqs, "start_ns"), b_tid, b_s, b_e)
        okb = ib >= 0
        b_irq_s[ib[okb]] = _i64(irqs, "start_ns")[okb]
        b_irq_e[ib[okb]] = _i64(irqs, "end_ns")[okb]

    known = b_known[r_batch]
    c1 = pickup[r_batch]
    c0 = np.where(known, np.minimum(b_kick[r_batch], c1), c1)
    irq_raised = (b_irq_s[r_batch] >= 0) & (b_irq_s[r_batch] >= c3)
    c4 = np.where(irq_raised, b_irq_s[r_batch], c3)
    c5 = np.where(irq_raised, b_irq_e[r_batch], c3)

    # Disk: the request's own I/O span(s), less the lock waits inside them.
    r_key = reqs["addr"].to_numpy(dtype=np.int64)
    d_req = _own_disk(disks, r_tid, r_key, c2, c3)
    dk = d_req >= 0
    d_tid, d_s, d_e = _i64(disks, "tid")[dk], _i64(disks, "start_ns")[dk], _i64(disks, "end_ns")[dk]
    d_req = d_req[dk]
    disk_raw = np.bincount(d_req, weights=d_e - d_s, minlength=n).astype(np.int64)
    kind = np.full(n, "other", dtype=object)
    kind[d_req] = [DISK_SPANS[x] for x in disks["name"].to_numpy(dtype=object)[dk]]

    waits = _waits(trace, tids, lwaits)
    seg = [(c0, c1), (c1, c2), (c2, c3), (c3, c4), (c4, c5)]
    wq = [waits.within(r_tid, s, e) for s, e in seg]
    dwb, dwo = waits.within(d_tid, d_s, d_e)
    disk_waits = np.bincount(d_req, weights=dwb + dwo, minlength=n).astype(np.int64)
    disk = disk_raw - disk_waits
    span = [e - s for s, e in seg]
    notify = span[0] - wq[0][0] - wq[0][1]
    queued = span[1] - wq[1][0] - wq[1][1]
    processing = span[2] - disk_raw - (wq[2][0] + wq[2][1] - disk_waits)
    tail = span[3] - wq[3][0] - wq[3][1]
    irq = span[4] - wq[4][0] - wq[4][1]
    bql_wait = sum(w[0] for w in wq)
    lock_wait = sum(w[1] for w in wq)

    bql_held = overlap_by_thread(r_tid, c2, c3, h_tid, h_s, h_e) if len(h_s) else np.zeros(n, dtype=np.int64)
    on_path = overlap_by_thread(r_tid, c0, c5, h_tid, h_s, h_e) if len(h_s) else np.zeros(n, dtype=np.int64)
    rt, rs, re_ = _runnable(trace, tids)
    wait_cpu = overlap_by_thread(r_tid, c0, c5, rt, rs, re_) if len(rs) else np.zeros(n, dtype=np.int64)

    wk = ev.iloc[np.flatnonzero((codes == EVENT_CODE["wakeup"]) & np.isin(ev["tid"].to_numpy(), tids))]
    wake = pd.array(np.zeros(n, dtype=np.int64), dtype="Int64")
    wake[:] = pd.NA
    if len(wk) and known.any():
        kk = np.flatnonzero(known)
        kick_at = c0[kk]
        j = last_match(r_tid[kk], -kick_at, _i64(wk, "tid"), -_i64(wk, "ts_ns"))
        okw = j >= 0
        okw[okw] = _i64(wk, "ts_ns")[j[okw]] <= c1[kk][okw]
        wake[kk[okw]] = _i64(wk, "ts_ns")[j[okw]] - kick_at[okw]

    vcpus = vcpu_threads(trace)
    kick_vcpu = pd.array([vcpus.get(int(t), -1) for t in b_kick_tid[r_batch]], dtype="Int16")
    kick_vcpu[~known | (kick_vcpu.to_numpy(dtype=np.int64, na_value=-1) < 0)] = pd.NA

    info = thread_info(trace, r_tid)
    pos = pd.Series(np.arange(n)).groupby(r_batch).cumcount().to_numpy(dtype=np.int64)
    lost = _spans_lost(ev, r_tid, c0, c5)
    out = pd.DataFrame({
        "tid": r_tid.astype(np.int32),
        "role": info["role"].to_numpy(),
        "thread": info["name"].to_numpy(),
        "batch": r_batch.astype(np.int64),
        "pos": pos,
        "kind": kind,
        "avail_idx": reqs["addr"].astype("Int64").array,
        "kick_vcpu": kick_vcpu,
        "start_ns": c0, "pickup_ns": c1, "pop_ns": c2, "push_ns": c3, "irq_start_ns": c4, "end_ns": c5,
        "notify_ns": notify, "bql_wait_ns": bql_wait, "queued_ns": queued, "processing_ns": processing,
        "disk_ns": disk, "lock_wait_ns": lock_wait, "tail_ns": tail, "irq_ns": irq,
        "total_ns": c5 - c0,
        "bql_held_ns": bql_held, "wait_cpu_ns": wait_cpu, "notify_wakeup_ns": wake,
        "notify_known": known, "irq_raised": irq_raised, "bql_taken": (bql_wait > 0) | (on_path > 0),
        "lost": lost,
    })
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


# ----------------------------------------------------------------------------
# Without request probes: what the kernel shows


def kernel_notifications(trace: Trace, port: int | None) -> pd.DataFrame:
    """One row per kick on ``port``: ``vcpu`` Int16 (the kicking vCPU),
    ``kick_ns`` int64, and the non-vCPU thread that the kicking thread woke
    next (the ioeventfd's poller): ``tid`` Int32, ``role``, ``thread``,
    ``wakeup_ns``/``oncpu_ns`` Int64 (kick -> its wakeup; kick -> back on a
    CPU).  NA where no such wakeup followed within 1 ms (the poller was
    already awake, or the kick found no one waiting)."""
    ev = trace.events
    k_ts, k_tid = _kicks(trace, port)
    vcpus = vcpu_threads(trace)
    codes = ev["event"].cat.codes.to_numpy()
    wk = ev.iloc[np.flatnonzero(codes == EVENT_CODE["wakeup"])]
    wk = wk[~np.isin(_i64(wk, "tid"), np.asarray(list(vcpus), dtype=np.int64)) & wk["peer_tid"].notna().to_numpy()]
    n = len(k_ts)
    tid = np.full(n, -1, dtype=np.int64)
    wake = np.full(n, -1, dtype=np.int64)
    if n and len(wk):
        j = last_match(k_tid, -k_ts, wk["peer_tid"].to_numpy(dtype=np.int64), -_i64(wk, "ts_ns"))
        ok = j >= 0
        ok[ok] = _i64(wk, "ts_ns")[j[ok]] - k_ts[ok] <= 1_000_000
        tid[ok] = _i64(wk, "tid")[j[ok]]
        wake[ok] = _i64(wk, "ts_ns")[j[ok]]
    ins = ev.iloc[np.flatnonzero(codes == EVENT_CODE["sched_in"])]
    oncpu = np.full(n, -1, dtype=np.int64)
    got = tid >= 0
    if got.any() and len(ins):
        j = last_match(tid[got], -wake[got], _i64(ins, "tid"), -_i64(ins, "ts_ns"))
        ok = j >= 0
        idx = np.flatnonzero(got)[ok]
        oncpu[idx] = _i64(ins, "ts_ns")[j[ok]]
    info = thread_info(trace, np.where(got, tid, 0))

    def na(v: np.ndarray, m: np.ndarray, dtype: str) -> Any:
        a = pd.array(np.where(m, v, 0), dtype=dtype)
        a[~m] = pd.NA
        return a

    return pd.DataFrame({
        "vcpu": na(np.array([vcpus.get(int(t), -1) for t in k_tid], dtype=np.int64), np.ones(n, bool), "Int16"),
        "kick_ns": k_ts,
        "tid": na(tid, got, "Int32"),
        "role": np.where(got, info["role"].to_numpy(dtype=object), None),
        "thread": np.where(got, info["name"].to_numpy(dtype=object), None),
        "wakeup_ns": na(wake - k_ts, got, "Int64"),
        "oncpu_ns": na(oncpu - k_ts, oncpu >= 0, "Int64"),
    })


def kernel_disk_waits(trace: Trace) -> pd.DataFrame:
    """Uninterruptible sleeps (prev_state D: what a thread doing direct disk
    I/O shows) of the target's non-vCPU threads: ``tid`` int32, ``role``,
    ``thread``, ``start_ns``, ``dur_ns`` int64."""
    ev = trace.events
    codes = ev["event"].cat.codes.to_numpy()
    outs = ev.iloc[np.flatnonzero(codes == EVENT_CODE["sched_out"])]
    d = (outs["value"].to_numpy(dtype=np.int64, na_value=0) & 0xFF) == _TASK_UNINTERRUPTIBLE
    off = cache.offcpu_spans(trace)
    vcpus = np.asarray(list(vcpu_threads(trace)), dtype=np.int64)
    key = pd.MultiIndex.from_arrays([_i64(outs, "tid")[d], _i64(outs, "ts_ns")[d]])
    mine = pd.MultiIndex.from_arrays([_i64(off, "tid"), _i64(off, "start_ns")]).isin(key)
    off = off[mine & ~np.isin(_i64(off, "tid"), vcpus)]
    info = thread_info(trace, _i64(off, "tid"))
    return pd.DataFrame({"tid": off["tid"].to_numpy(dtype=np.int32), "role": info["role"].to_numpy(),
                         "thread": info["name"].to_numpy(), "start_ns": _i64(off, "start_ns"),
                         "dur_ns": _i64(off, "dur_ns")})


# ----------------------------------------------------------------------------
# Summaries


def _quantiles(v: np.ndarray) -> dict[str, float]:
    if len(v) == 0:
        return {f"p{q}_ns": float("nan") for q in _QUANTILES}
    qs = np.percentile(v, _QUANTILES)
    return {f"p{q}_ns": float(x) for q, x in zip(_QUANTILES, qs)}


def _phase_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per role and phase (then ``total``): ``requests``, ``mean_ns``,
    ``p50_ns``, ``p90_ns``, ``p99_ns``, ``share`` (of the mean total; the
    phases' shares add up to 1) and ``nonzero`` (requests with any of it)."""
    out = []
    roles = sorted(rows["role"].unique(), key=lambda r: (role_rank(r), r))
    for role in roles:
        r = rows[rows["role"] == role]
        total = float(r["total_ns"].mean()) if len(r) else 0.0
        for p in (*PHASES, "total"):
            v = r[f"{p}_ns"].to_numpy(dtype=np.int64)
            out.append({"role": role, "phase": p, "requests": len(r), "mean_ns": float(v.mean()) if len(v) else 0.0,
                        **_quantiles(v), "share": (float(v.mean()) / total) if total else float("nan"),
                        "nonzero": int((v > 0).sum())})
    return pd.DataFrame(out, columns=["role", "phase", "requests", "mean_ns", "p50_ns", "p90_ns", "p99_ns", "share",
                                      "nonzero"])


def _role_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per role: ``threads`` (names), ``requests``, ``batches``, requests by
    kind, ``notify_known``, ``bql_taken``, ``bql_waited`` (with a BQL wait
    > 0), ``irq_raised``, and mean ``bql_held_ns`` / ``wait_cpu_ns``."""
    out = []
    for role, r in rows.groupby("role", sort=False):
        out.append({
            "role": role,
            "threads": ", ".join(sorted({f"{n} [{t}]" for n, t in zip(r["thread"], r["tid"])})),
            "requests": len(r),
            "batches": int(r["batch"].nunique()),
            "per_batch": len(r) / max(int(r["batch"].nunique()), 1),
            "read": int((r["kind"] == "read").sum()), "write": int((r["kind"] == "write").sum()),
            "flush": int((r["kind"] == "flush").sum()), "other": int((r["kind"] == "other").sum()),
            "notify_known": int(r["notify_known"].sum()),
            "bql_taken": int(r["bql_taken"].sum()),
            "bql_waited": int((r["bql_wait_ns"] > 0).sum()),
            "irq_raised": int(r["irq_raised"].sum()),
            "bql_held_mean_ns": float(r["bql_held_ns"].mean()),
            "wait_cpu_mean_ns": float(r["wait_cpu_ns"].mean()),
        })
    df = pd.DataFrame(out)
    if len(df):
        df = df.sort_values("role", key=lambda s: s.map(role_rank), kind="stable")
    return df.reset_index(drop=True)


@dataclass
class Requests:
    """The ``--requests`` view (see ``request_report``)."""

    source: str  # "probes": per-request rows; "kernel": notifications and disk waits only
    requests: pd.DataFrame
    by_role: pd.DataFrame
    phases: pd.DataFrame
    notify_port: int | None
    port_source: str
    notifications: pd.DataFrame
    disk_waits: pd.DataFrame
    spans: pd.DataFrame  # disk and lock-wait spans of the servicing threads, for request_timeline
    lost_events: int
    lost_markers: int
    excluded_lost: int
    tsc_hz: int
    notes: list[str] = field(default_factory=list)

    def notification_summary(self) -> pd.DataFrame:
        """Per woken thread: kicks, and kick -> wakeup / -> on CPU percentiles."""
        return _notify_summary(self.notifications)

    def disk_wait_summary(self) -> pd.DataFrame:
        """Per role of the I/O threads: uninterruptible sleeps and their percentiles."""
        return _disk_summary(self.disk_waits)

    def to_json(self, rows: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "view": "requests",
            "source": self.source,
            "notify_port": self.notify_port,
            "port_source": self.port_source,
            "lost_events": self.lost_events,
            "lost_markers": self.lost_markers,
            "excluded_lost": self.excluded_lost,
            "tsc_hz": self.tsc_hz,
            "phases_order": list(PHASES),
            "by_role": _records(self.by_role),
            "phases": _records(self.phases),
            "notes": self.notes,
        }
        if self.source == "kernel":
            doc["notifications"] = _records(self.notification_summary())
            doc["disk_waits"] = _records(self.disk_wait_summary())
        if rows:
            doc["requests"] = _records(self.requests)
        return doc


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in df.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if v is None or v is pd.NA or (isinstance(v, float) and v != v):
                clean[k] = None
            elif isinstance(v, (np.integer,)):
                clean[k] = int(v)
            elif isinstance(v, (np.floating,)):
                clean[k] = float(v)
            elif isinstance(v, (np.bool_,)):
                clean[k] = bool(v)
            else:
                clean[k] = v
        out.append(clean)
    return out


def _notify_summary(n: pd.DataFrame) -> pd.DataFrame:
    """Per woken role: kicks, and kick -> wakeup / -> on CPU percentiles."""
    out = []
    woke = n[n["tid"].notna()]
    for (role, thread), r in woke.groupby(["role", "thread"], sort=False):
        row = {"role": role, "thread": thread, "kicks": len(r)}
        for col in ("wakeup_ns", "oncpu_ns"):
            v = r[col].dropna().to_numpy(dtype=np.int64)
            q = _quantiles(v)
            row.update({f"{col[:-3]}_{k}": x for k, x in q.items()})
        out.append(row)
    if len(n) - len(woke):
        out.append({"role": None, "thread": "(no thread woken within 1 ms)", "kicks": len(n) - len(woke)})
    return pd.DataFrame(out)


def _disk_summary(d: pd.DataFrame) -> pd.DataFrame:
    out = []
    for role, r in d.groupby("role", sort=False):
        out.append({"role": role, "threads": int(r["tid"].nunique()), "sleeps": len(r),
                    **_quantiles(r["dur_ns"].to_numpy(dtype=np.int64))})
    return pd.DataFrame(out)


def request_report(trace: Trace) -> Requests:
    """The per-request view of a virtio-blk trace: rows (``request_breakdown``),
    their summary per role of the servicing thread (``by_role``) and per
    role and phase (``phases``: mean, p50, p90, p99), with notes on what the
    trace could not tell apart.  Without request probes, the kernel's view
    (``notifications`` per kick, ``disk_waits``) and a note saying the
    per-request phases need probes.  Raises ``VmtraceError`` when the trace
    shows no virtio-blk activity at all."""
    ev = trace.events
    rows = request_breakdown(trace)
    windows = lost_windows(ev)
    notes: list[str] = []
    if len(rows):
        batches = _dispatch_spans(ev, [BATCH_SPAN])
        port, port_src = notify_port(trace, batches)
        kept = rows[~rows["lost"].to_numpy(dtype=bool)]
        excluded = len(rows) - len(kept)
        spans = _servicing_spans(trace, rows)
        notes += _probe_notes(trace, kept, port)
        if excluded:
            notes.append(f"{excluded:,} requests overlap lost events and are left out of the summaries")
        return Requests(source="probes", requests=rows, by_role=_role_table(kept), phases=_phase_table(kept),
                        notify_port=port, port_source=port_src, notifications=kernel_notifications(trace, port),
                        disk_waits=kernel_disk_waits(trace).iloc[0:0], spans=spans,
                        lost_events=trace.lost_events, lost_markers=len(windows), excluded_lost=excluded,
                        tsc_hz=trace.tsc_hz, notes=notes)
    port, port_src = notify_port(trace)
    if port is None:
        raise VmtraceError(
            "no virtio-blk requests in this trace: no request probes (virtio-blk-req spans) and no queue-notify "
            "kicks found (record a run with a virtio-blk disk, e.g. vmtrace bench --bench blk_randread --record)")
    notifications = kernel_notifications(trace, port)
    if notifications.empty:
        raise VmtraceError(f"no virtio-blk requests in this trace: no writes to the queue-notify port {port:#x}")
    disk = kernel_disk_waits(trace)
    notes.append(
        "per-request phases need the VMM's request probes (the reference VMM reports them; this trace has none, "
        "as QEMU has no such events): shown instead is what the kernel events allow -- each kick of the "
        "queue-notify port and the thread its ioeventfd woke, and the threads' uninterruptible sleeps "
        "(disk I/O) -- which cannot be tied to individual requests")
    notes.append(f"queue-notify port {port:#x}, found from {port_src}")
    if "wakeup" not in _present(ev):
        notes.append("no sched_wakeup events: the thread each kick woke is unknown")
    return Requests(source="kernel", requests=rows, by_role=pd.DataFrame(), phases=pd.DataFrame(),
                    notify_port=port, port_source=port_src, notifications=notifications, disk_waits=disk,
                    spans=empty_wait_spans(), lost_events=trace.lost_events, lost_markers=len(windows),
                    excluded_lost=0, tsc_hz=trace.tsc_hz, notes=notes)


def _present(ev: pd.DataFrame) -> set[str]:
    codes = np.unique(ev["event"].cat.codes.to_numpy())
    return {EVENT_TYPES[c] for c in codes if c >= 0}


def _probe_notes(trace: Trace, rows: pd.DataFrame, port: int | None) -> list[str]:
    notes = []
    if port is None:
        notes.append("the queue-notify port is not known, so no kick is: every request starts at its pickup "
                     "and notify is 0")
    elif "pio" not in _present(trace.events):
        notes.append("no kvm_pio events: the guest's kicks are not in the trace, so notify is 0 and every request "
                     "starts at its pickup")
    unknown = int((~rows["notify_known"]).sum())
    if unknown and port is not None:
        batches = rows.loc[~rows["notify_known"], "batch"].nunique()
        notes.append(f"{unknown:,} requests ({batches:,} batches) have no kick of their own: the kick that woke "
                     "their batch came while the previous batch still ran, and may have been that batch's; "
                     "they start at the pickup, with notify 0")
    notes.append("a request's publication in the avail ring is not traced (the guest writes memory without an "
                 "exit): its time starts at the kick that started its batch, an upper bound for requests taken "
                 "by a running batch, which needed no kick")
    if len(rows) and not rows["irq_raised"].any():
        notes.append("no completion interrupt was raised: the driver asked for none (VRING_AVAIL_F_NO_INTERRUPT: "
                     "the benchmark guest polls the used ring), so a request completes at its push; tail and irq "
                     "are 0")
    return notes


def _servicing_spans(trace: Trace, rows: pd.DataFrame) -> pd.DataFrame:
    """Disk and lock-wait spans of the threads that serviced requests."""
    ev = trace.events
    tids = np.unique(rows["tid"].to_numpy(dtype=np.int64))
    disks = _dispatch_spans(ev, list(DISK_SPANS))
    disks = disks[np.isin(_i64(disks, "tid"), tids)]
    codes = ev["event"].cat.codes.to_numpy()
    lock_ev = ev.iloc[np.flatnonzero((codes >= EVENT_CODE["lock_begin"]) & (codes <= EVENT_CODE["lock_release"])
                                     & np.isin(ev["tid"].to_numpy(), tids))]
    lwaits = pair_spans(lock_ev, "lock_begin", "lock_acquired", keys=("tid", "name"))
    w = _waits(trace, tids, lwaits).spans()
    d = pd.DataFrame({"tid": _i64(disks, "tid"), "start_ns": _i64(disks, "start_ns"),
                      "end_ns": _i64(disks, "end_ns"), "what": "disk",
                      "key": disks["addr"].to_numpy(dtype=np.int64) & 0xFFFF})
    w["key"] = -1
    return pd.concat([d, w], ignore_index=True).sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)


def request_timeline(result: Requests, first: int = 0, count: int = 60) -> pd.DataFrame:
    """The phases of requests ``first`` .. ``first + count`` (rows of
    ``result.requests``) laid out in time: ``req`` int64 (row), ``tid``,
    ``phase`` str, ``start_ns``, ``end_ns``.  Spans are listed lowest first:
    the segments (notify, queued, processing, tail, irq), then the disk and
    lock-wait spans inside each request's window, which a chart draws on
    top.  Over one request, the time of each phase equals its ``_ns``
    column."""
    rows = result.requests.iloc[first:first + count]
    parts = []
    seg = [("notify", "start_ns", "pickup_ns"), ("queued", "pickup_ns", "pop_ns"),
           ("processing", "pop_ns", "push_ns")]
    idx = rows.index.to_numpy(dtype=np.int64)
    for phase, a, b in seg:
        parts.append(pd.DataFrame({"req": idx, "tid": rows["tid"].to_numpy(), "phase": phase,
                                   "start_ns": rows[a].to_numpy(dtype=np.int64),
                                   "end_ns": rows[b].to_numpy(dtype=np.int64)}))
    irq_s = rows["irq_start_ns"].to_numpy(dtype=np.int64)
    parts.append(pd.DataFrame({"req": idx, "tid": rows["tid"].to_numpy(), "phase": "tail",
                               "start_ns": rows["push_ns"].to_numpy(dtype=np.int64), "end_ns": irq_s}))
    parts.append(pd.DataFrame({"req": idx, "tid": rows["tid"].to_numpy(), "phase": "irq",
                               "start_ns": irq_s, "end_ns": rows["end_ns"].to_numpy(dtype=np.int64)}))
    sp = result.spans
    if len(sp) and len(rows):
        s_tid = sp["tid"].to_numpy(dtype=np.int64)
        s_s, s_e = sp["start_ns"].to_numpy(dtype=np.int64), sp["end_ns"].to_numpy(dtype=np.int64)
        what = sp["what"].to_numpy(dtype=object)
        key = sp["key"].to_numpy(dtype=np.int64)
        for r_idx, t, lo, hi, avail in zip(idx, rows["tid"].to_numpy(dtype=np.int64),
                                           rows["start_ns"].to_numpy(dtype=np.int64),
                                           rows["end_ns"].to_numpy(dtype=np.int64),
                                           rows["avail_idx"].to_numpy(dtype=np.int64, na_value=-2)):
            m = (s_tid == t) & (s_e > lo) & (s_s < hi)
            # Another request's disk I/O inside this one's window is that
            # request's: only this request's own disk spans are its disk phase.
            m &= (what != "disk") | (key == (avail & 0xFFFF))
            if m.any():
                parts.append(pd.DataFrame({"req": r_idx, "tid": t, "phase": what[m],
                                           "start_ns": np.maximum(s_s[m], lo), "end_ns": np.minimum(s_e[m], hi)}))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["req", "tid", "phase", "start_ns", "end_ns"])
    out = out[out["end_ns"] > out["start_ns"]]
    return out.reset_index(drop=True)
