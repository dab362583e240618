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
from vmtrace.schema import role_rank
from vmtrace.trace import Trace

from .intervals import i64, lost_windows, pair_spans, present_events
from .jsonform import records
from .request_kernel import (
    disk_wait_summary,
    kernel_disk_waits,
    kernel_notifications,
    notification_summary,
    notify_port,
    quantiles,
)
from .request_rows import (
    BATCH_SPAN,
    DISK_SPANS,
    IRQ_SPAN,
    PHASES,
    REQUEST_SPAN,
    dispatch_spans,
    lock_events,
    request_breakdown,
    servicing_waits,
)
from .waits import empty_wait_spans

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
    "kernel_notifications",
    "kernel_disk_waits",
    "notify_port",
]


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
            out.append(
                {
                    "role": role,
                    "phase": p,
                    "requests": len(r),
                    "mean_ns": float(v.mean()) if len(v) else 0.0,
                    **quantiles(v),
                    "share": (float(v.mean()) / total) if total else float("nan"),
                    "nonzero": int((v > 0).sum()),
                }
            )
    return pd.DataFrame(
        out, columns=["role", "phase", "requests", "mean_ns", "p50_ns", "p90_ns", "p99_ns", "share", "nonzero"]
    )


def _role_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per role: ``threads`` (names), ``requests``, ``batches``, requests by
    kind, ``notify_known``, ``bql_taken``, ``bql_waited`` (with a BQL wait
    > 0), ``irq_raised``, and mean ``bql_held_ns`` / ``wait_cpu_ns``."""
    out = []
    for role, r in rows.groupby("role", sort=False):
        out.append(
            {
                "role": role,
                "threads": ", ".join(sorted({f"{n} [{t}]" for n, t in zip(r["thread"], r["tid"], strict=True)})),
                "requests": len(r),
                "batches": int(r["batch"].nunique()),
                "per_batch": len(r) / max(int(r["batch"].nunique()), 1),
                "read": int((r["kind"] == "read").sum()),
                "write": int((r["kind"] == "write").sum()),
                "flush": int((r["kind"] == "flush").sum()),
                "other": int((r["kind"] == "other").sum()),
                "notify_known": int(r["notify_known"].sum()),
                "bql_taken": int(r["bql_taken"].sum()),
                "bql_waited": int((r["bql_wait_ns"] > 0).sum()),
                "irq_raised": int(r["irq_raised"].sum()),
                "bql_held_mean_ns": float(r["bql_held_ns"].mean()),
                "wait_cpu_mean_ns": float(r["wait_cpu_ns"].mean()),
            }
        )
    df = pd.DataFrame(out)
    if len(df):
        df = df.sort_values("role", key=lambda s: s.map(role_rank), kind="stable")
    return df.reset_index(drop=True)


@dataclass
class Requests:
    """The ``--requests`` view (see ``request_report``).

    ``requests``: one row per request (``request_breakdown``; empty without
    request probes).  ``by_role``, per role of the servicing thread:
    ``role``, ``threads`` str, ``requests``, ``batches`` int64,
    ``per_batch`` float64, ``read``, ``write``, ``flush``, ``other``,
    ``notify_known``, ``bql_taken``, ``bql_waited``, ``irq_raised`` int64,
    ``bql_held_mean_ns``, ``wait_cpu_mean_ns`` float64.  ``phases``, per
    role and phase (``PHASES`` then ``total``): ``role``, ``phase`` str,
    ``requests`` int64, ``mean_ns``, ``p50_ns``, ``p90_ns``, ``p99_ns``,
    ``share`` float64, ``nonzero`` int64.  ``notifications``: one row per
    kick (``kernel_notifications``); ``disk_waits``: the I/O threads'
    uninterruptible sleeps (``kernel_disk_waits``; empty with probes).
    ``spans``: disk and lock-wait spans of the servicing threads, ``tid``,
    ``start_ns``, ``end_ns``, ``key`` int64 (a disk span's avail index, -1
    for a wait) and ``what`` str (``disk``, ``bql_wait``, ``lock_wait``).
    """

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
        return notification_summary(self.notifications)

    def disk_wait_summary(self) -> pd.DataFrame:
        """Per role of the I/O threads: uninterruptible sleeps and their percentiles."""
        return disk_wait_summary(self.disk_waits)

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
            "by_role": records(self.by_role),
            "phases": records(self.phases),
            "notes": self.notes,
        }
        if self.source == "kernel":
            doc["notifications"] = records(self.notification_summary())
            doc["disk_waits"] = records(self.disk_wait_summary())
        if rows:
            doc["requests"] = records(self.requests)
        return doc


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
        batches = dispatch_spans(ev, [BATCH_SPAN])
        port, port_src = notify_port(trace, batches)
        kept = rows[~rows["lost"].to_numpy(dtype=bool)]
        excluded = len(rows) - len(kept)
        spans = _servicing_spans(trace, rows)
        notes += _probe_notes(trace, kept, port)
        if excluded:
            notes.append(f"{excluded:,} requests overlap lost events and are left out of the summaries")
        return Requests(
            source="probes",
            requests=rows,
            by_role=_role_table(kept),
            phases=_phase_table(kept),
            notify_port=port,
            port_source=port_src,
            notifications=kernel_notifications(trace, port),
            disk_waits=kernel_disk_waits(trace).iloc[0:0],
            spans=spans,
            lost_events=trace.lost_events,
            lost_markers=len(windows),
            excluded_lost=excluded,
            tsc_hz=trace.tsc_hz,
            notes=notes,
        )
    port, port_src = notify_port(trace)
    if port is None:
        raise VmtraceError(
            "no virtio-blk requests in this trace: no request probes (virtio-blk-req spans) and no queue-notify "
            "kicks found (record a run with a virtio-blk disk, e.g. vmtrace bench --bench blk_randread --record)"
        )
    notifications = kernel_notifications(trace, port)
    if notifications.empty:
        raise VmtraceError(f"no virtio-blk requests in this trace: no writes to the queue-notify port {port:#x}")
    disk = kernel_disk_waits(trace)
    notes.append(
        "per-request phases need the VMM's request probes (the reference VMM reports them; this trace has none, "
        "as QEMU has no such events): shown instead is what the kernel events allow -- each kick of the "
        "queue-notify port and the thread its ioeventfd woke, and the threads' uninterruptible sleeps "
        "(disk I/O) -- which cannot be tied to individual requests"
    )
    notes.append(f"queue-notify port {port:#x}, found from {port_src}")
    if "wakeup" not in present_events(ev):
        notes.append("no sched_wakeup events: the thread each kick woke is unknown")
    return Requests(
        source="kernel",
        requests=rows,
        by_role=pd.DataFrame(),
        phases=pd.DataFrame(),
        notify_port=port,
        port_source=port_src,
        notifications=notifications,
        disk_waits=disk,
        spans=empty_wait_spans(),
        lost_events=trace.lost_events,
        lost_markers=len(windows),
        excluded_lost=0,
        tsc_hz=trace.tsc_hz,
        notes=notes,
    )


def _probe_notes(trace: Trace, rows: pd.DataFrame, port: int | None) -> list[str]:
    notes = []
    if port is None:
        notes.append(
            "the queue-notify port is not known, so no kick is: every request starts at its pickup and notify is 0"
        )
    elif "pio" not in present_events(trace.events):
        notes.append(
            "no kvm_pio events: the guest's kicks are not in the trace, so notify is 0 and every request "
            "starts at its pickup"
        )
    unknown = int((~rows["notify_known"]).sum())
    if unknown and port is not None:
        batches = rows.loc[~rows["notify_known"], "batch"].nunique()
        notes.append(
            f"{unknown:,} requests ({batches:,} batches) have no kick of their own: the kick that woke "
            "their batch came while the previous batch still ran, and may have been that batch's; "
            "they start at the pickup, with notify 0"
        )
    notes.append(
        "a request's publication in the avail ring is not traced (the guest writes memory without an "
        "exit): its time starts at the kick that started its batch, an upper bound for requests taken "
        "by a running batch, which needed no kick"
    )
    if len(rows) and not rows["irq_raised"].any():
        notes.append(
            "no completion interrupt was raised: the driver asked for none (VRING_AVAIL_F_NO_INTERRUPT: "
            "the benchmark guest polls the used ring), so a request completes at its push; tail and irq "
            "are 0"
        )
    return notes


def _servicing_spans(trace: Trace, rows: pd.DataFrame) -> pd.DataFrame:
    """Disk and lock-wait spans of the threads that serviced requests."""
    ev = trace.events
    tids = np.unique(rows["tid"].to_numpy(dtype=np.int64))
    disks = dispatch_spans(ev, list(DISK_SPANS))
    disks = disks[np.isin(i64(disks, "tid"), tids)]
    lock_ev = lock_events(ev, tids)
    lwaits = pair_spans(lock_ev, "lock_begin", "lock_acquired", keys=("tid", "name"))
    w = servicing_waits(trace, tids, lwaits).spans()
    d = pd.DataFrame(
        {
            "tid": i64(disks, "tid"),
            "start_ns": i64(disks, "start_ns"),
            "end_ns": i64(disks, "end_ns"),
            "what": "disk",
            "key": disks["addr"].to_numpy(dtype=np.int64) & 0xFFFF,
        }
    )
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
    rows = result.requests.iloc[first : first + count]
    parts = []
    seg = [("notify", "start_ns", "pickup_ns"), ("queued", "pickup_ns", "pop_ns"), ("processing", "pop_ns", "push_ns")]
    idx = rows.index.to_numpy(dtype=np.int64)
    for phase, a, b in seg:
        parts.append(
            pd.DataFrame(
                {
                    "req": idx,
                    "tid": rows["tid"].to_numpy(),
                    "phase": phase,
                    "start_ns": rows[a].to_numpy(dtype=np.int64),
                    "end_ns": rows[b].to_numpy(dtype=np.int64),
                }
            )
        )
    irq_s = rows["irq_start_ns"].to_numpy(dtype=np.int64)
    parts.append(
        pd.DataFrame(
            {
                "req": idx,
                "tid": rows["tid"].to_numpy(),
                "phase": "tail",
                "start_ns": rows["push_ns"].to_numpy(dtype=np.int64),
                "end_ns": irq_s,
            }
        )
    )
    parts.append(
        pd.DataFrame(
            {
                "req": idx,
                "tid": rows["tid"].to_numpy(),
                "phase": "irq",
                "start_ns": irq_s,
                "end_ns": rows["end_ns"].to_numpy(dtype=np.int64),
            }
        )
    )
    sp = result.spans
    if len(sp) and len(rows):
        s_tid = sp["tid"].to_numpy(dtype=np.int64)
        s_s, s_e = sp["start_ns"].to_numpy(dtype=np.int64), sp["end_ns"].to_numpy(dtype=np.int64)
        what = sp["what"].to_numpy(dtype=object)
        key = sp["key"].to_numpy(dtype=np.int64)
        for r_idx, t, lo, hi, avail in zip(
            idx,
            rows["tid"].to_numpy(dtype=np.int64),
            rows["start_ns"].to_numpy(dtype=np.int64),
            rows["end_ns"].to_numpy(dtype=np.int64),
            rows["avail_idx"].to_numpy(dtype=np.int64, na_value=-2),
            strict=True,
        ):
            m = (s_tid == t) & (s_e > lo) & (s_s < hi)
            # Another request's disk I/O inside this one's window is that
            # request's: only this request's own disk spans are its disk phase.
            m &= (what != "disk") | (key == (avail & 0xFFFF))
            if m.any():
                parts.append(
                    pd.DataFrame(
                        {
                            "req": r_idx,
                            "tid": t,
                            "phase": what[m],
                            "start_ns": np.maximum(s_s[m], lo),
                            "end_ns": np.minimum(s_e[m], hi),
                        }
                    )
                )
    out = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["req", "tid", "phase", "start_ns", "end_ns"])
    )
    out = out[out["end_ns"] > out["start_ns"]]
    return out.reset_index(drop=True)
