"""Where each thread's time goes when it is not running: lock, other, CPU.

A thread off CPU is in one of three states, and telling them apart is the
point: blocked on a lock (switched out inside a futex wait or a reported
lock-acquire span), blocked on something else (I/O, a condition, sleep), or
runnable but without a CPU (preempted, or woken and not yet scheduled).
With more runnable threads than CPUs the last state grows; it is
oversubscription, not lock contention, even when the thread was woken from
a futex wait: the wait ends at the wakeup, what follows is the scheduler's.

Built on ``pairing.offcpu_spans``: a span from sched_out to sched_in is
runnable when prev_state says so, and a blocked span is cut at the thread's
last sched_wakeup inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.schema import ROLE_VCPU, role_rank
from vmtrace.trace import Trace

from . import cache
from .intervals import (
    inside_by_thread,
    lost_windows,
    require_events,
    thread_lifetimes,
    thread_spans_lost,
)
from .waits import BQL_NAME

__all__ = ["OFFCPU_STATES", "offcpu_by_thread", "OffCpu", "offcpu_report"]

#: The partition of a thread's observed lifetime, in report order.
OFFCPU_STATES: tuple[str, ...] = ("running", "lock", "other_blocked", "runnable", "unknown")


def thread_info(trace: Trace, tids: np.ndarray) -> pd.DataFrame:
    """``name`` str, ``role`` str, ``vcpu`` Int16 for ``tids`` (in order),
    from the trace metadata; threads it does not list are ``?``/``other``."""
    t = trace.threads.drop_duplicates("tid").set_index("tid")
    idx = pd.Index(np.asarray(tids, dtype=np.int64))
    known = t.reindex(idx)
    return pd.DataFrame(
        {
            "name": known["name"].fillna("?").astype(object).to_numpy(),
            "role": known["role"].fillna("other").astype(object).to_numpy(),
            "vcpu": known["vcpu"].astype("Int16").array,
        }
    )


def offcpu_by_thread(trace: Trace) -> pd.DataFrame:
    """One row per thread with events: where its observed lifetime went.

    Columns: ``tid`` int32, ``name`` str, ``role`` str, ``vcpu`` Int16,
    ``time_ns`` int64 (first to last event of the thread), then int64
    nanoseconds that partition ``time_ns``: ``running_ns`` (not inside an
    off-CPU span), ``lock_ns`` (blocked inside a futex wait or a
    lock_begin -> lock_acquired span, until the wakeup), ``other_blocked_ns``
    (blocked on anything else), ``runnable_ns`` (waiting for a CPU),
    ``unknown_ns`` (off-CPU spans across a lost-event marker); and beside
    them ``bql_ns`` (the BQL's part of ``lock_ns``), ``preempted_ns`` and
    ``woken_wait_ns`` (the two parts of ``runnable_ns``: switched out while
    runnable; woken, not yet on a CPU) and ``switches`` int64 (off-CPU
    spans).  Raises ``MissingEventsError`` without sched events.
    """
    require_events(trace.events, ["sched_out", "sched_in"], "the off-CPU analysis")
    ev = trace.events
    life = thread_lifetimes(ev)
    off = cache.offcpu_spans(trace)
    s_tid = off["tid"].to_numpy(dtype=np.int64)
    s_start = off["start_ns"].to_numpy(dtype=np.int64)
    s_end = off["end_ns"].to_numpy(dtype=np.int64)
    lost = thread_spans_lost(ev, s_tid, s_start, s_end)

    waits = cache.futex_waits(trace)
    bql_word = trace.bql().get("futex_uaddr")
    w_in = inside_by_thread(
        s_tid,
        s_start,
        waits["tid"].to_numpy(dtype=np.int64),
        waits["start_ns"].to_numpy(dtype=np.int64),
        waits["end_ns"].to_numpy(dtype=np.int64),
    )
    w_addr = waits["uaddr"].to_numpy(dtype=np.uint64, na_value=0)
    in_wait = w_in >= 0
    on_bql = np.zeros(len(off), dtype=bool)
    if bql_word:
        on_bql[in_wait] = w_addr[w_in[in_wait]] == np.uint64(bql_word)
    # A reported lock-acquire span counts even where no futex wait shows
    # (the collector may not trace futex calls, or the lock spins then sleeps).
    spans = cache.lock_spans(trace)
    if len(spans):
        spans = spans.sort_values(["tid", "start_ns"], kind="stable").reset_index(drop=True)
        l_in = inside_by_thread(
            s_tid,
            s_start,
            spans["tid"].to_numpy(dtype=np.int64),
            spans["start_ns"].to_numpy(dtype=np.int64),
            spans["end_ns"].to_numpy(dtype=np.int64),
        )
        in_span = l_in >= 0
        span_bql = (spans["name"].astype(object) == BQL_NAME).to_numpy(dtype=bool)
        on_bql |= ~in_wait & in_span & span_bql[np.clip(l_in, 0, None)]
        in_lock = in_wait | in_span
    else:
        in_lock = in_wait

    runnable = off["runnable"].to_numpy(dtype=bool)
    blocked = off["blocked_ns"].to_numpy(dtype=np.int64)
    wait_cpu = off["wait_cpu_ns"].to_numpy(dtype=np.int64)
    dur = off["dur_ns"].to_numpy(dtype=np.int64)
    known = ~lost
    parts = pd.DataFrame(
        {
            "tid": s_tid,
            "offcpu_ns": dur,
            "lock_ns": np.where(known & in_lock, blocked, 0),
            "bql_ns": np.where(known & on_bql, blocked, 0),
            "other_blocked_ns": np.where(known & ~in_lock, blocked, 0),
            "preempted_ns": np.where(known & runnable, wait_cpu, 0),
            "woken_wait_ns": np.where(known & ~runnable, wait_cpu, 0),
            "unknown_ns": np.where(lost, dur, 0),
            "switches": np.ones(len(off), dtype=np.int64),
        }
    )
    sums = parts.groupby("tid", sort=True).sum()
    out = life.set_index(life["tid"].astype(np.int64))[["time_ns"]].join(sums, how="left").fillna(0)
    out = out.astype(np.int64)
    out["runnable_ns"] = out["preempted_ns"] + out["woken_wait_ns"]
    out["running_ns"] = out["time_ns"] - out["offcpu_ns"]
    out = out.reset_index(names="tid")
    info = thread_info(trace, out["tid"].to_numpy())
    out.insert(1, "name", info["name"].to_numpy())
    out.insert(2, "role", info["role"].to_numpy())
    out.insert(3, "vcpu", info["vcpu"].array)
    out["tid"] = out["tid"].astype(np.int32)
    cols = [
        "tid",
        "name",
        "role",
        "vcpu",
        "time_ns",
        "running_ns",
        "lock_ns",
        "other_blocked_ns",
        "runnable_ns",
        "unknown_ns",
        "bql_ns",
        "preempted_ns",
        "woken_wait_ns",
        "switches",
    ]
    return (
        out[cols]
        .sort_values(["role", "tid"], key=lambda s: s.map(role_rank) if s.name == "role" else s, kind="stable")
        .reset_index(drop=True)
    )


@dataclass
class OffCpu:
    """The ``--offcpu`` view (see ``offcpu_report``).

    ``threads``: one row per thread (``offcpu_by_thread``): ``tid`` int32,
    ``name``, ``role`` str, ``vcpu`` Int16, then int64 ns ``time_ns`` and
    its partition ``running_ns``, ``lock_ns``, ``other_blocked_ns``,
    ``runnable_ns``, ``unknown_ns``; beside it ``bql_ns``,
    ``preempted_ns``, ``woken_wait_ns`` and ``switches`` int64.  ``totals``:
    ``vcpu`` and ``all`` -> those ns columns summed (ints).
    """

    threads: pd.DataFrame
    totals: dict[str, Any]
    lost_events: int
    lost_markers: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "view": "offcpu",
            "lost_events": self.lost_events,
            "lost_markers": self.lost_markers,
            "totals": self.totals,
            "threads": self.threads.to_dict(orient="records"),
            "notes": self.notes,
        }


def offcpu_report(trace: Trace) -> OffCpu:
    """Per-thread off-CPU partition, and its sum over vCPU threads and over
    all threads (``totals``: state -> ns, plus ``time_ns``)."""
    threads = offcpu_by_thread(trace)
    states = [f"{s}_ns" for s in OFFCPU_STATES] + ["bql_ns", "preempted_ns", "woken_wait_ns"]
    totals: dict[str, Any] = {}
    for label, rows in ((ROLE_VCPU, threads[threads["role"] == ROLE_VCPU]), ("all", threads)):
        totals[label] = {c: int(rows[c].sum()) for c in ["time_ns"] + states}
    notes = []
    if not (trace.events["event"] == "wakeup").any():
        notes.append(
            "no sched_wakeup events: a blocked span counts as blocked until the thread ran again, "
            "so waiting for a CPU after a wakeup is not separated"
        )
    windows = lost_windows(trace.events)
    if trace.lost_events and len(windows) == 0:
        notes.append(
            f"{trace.lost_events:,} events were lost and the trace does not say where: "
            "spans across them are counted as if complete"
        )
    return OffCpu(threads=threads, totals=totals, lost_events=trace.lost_events, lost_markers=len(windows), notes=notes)
