"""Per-exit attribution: where the cycles of each userspace exit go.

One exit of a vCPU thread is the cycle from one ``run_enter`` (KVM_RUN) to
the next.  Its components partition that cycle (DESIGN.md):

=========  ==================================================================
guest      last kvm_entry -> final kvm_exit (0 where the host lacks them)
vmexit     run_enter -> decode, less guest: hardware exit, kernel exit
           handling (and guest time where kvm_exit does not fire)
emulator   decode (kvm_pio/kvm_mmio/kvm_msr) -> run_exit
lock_wait  lock_begin -> lock_acquired spans, and blocking futex waits not
           inside one, between run_exit and the next run_enter
device     dispatch_begin -> dispatch_end (device callbacks)
dispatch   the rest of run_exit -> next run_enter: the VMM's exit path
runnable   runnable but waiting for a CPU (preempted, or woken and not yet
           scheduled), carved out of whichever of the above it fell in
=========  ==================================================================

``bql_wait`` is the BQL's part of ``lock_wait`` (after ``runnable`` is
carved out).  Off-CPU time inside the cycle is also reported beside the
partition (``offcpu_*``), split into blocked on a lock, blocked on something
else, and runnable-but-not-running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.errors import VmtraceError
from vmtrace.schema import EVENT_CODE, ROLE_VCPU
from vmtrace.trace import Trace

from . import cache
from .holders import split_summary
from .intervals import (
    ThreadWindows,
    dense_codes,
    inside_by_thread,
    lost_windows,
    pair_spans,
    rank_in,
    require_events,
)
from .jsonform import bql_json, hex_or_none, records
from .runnable import cpu_wait_spans, intersect_by_thread
from .runs import run_cycles, vcpu_threads
from .waits import trace_lock_waits

__all__ = ["COMPONENTS", "exit_breakdown", "summarize", "Breakdown", "bql_breakdown", "histogram", "timed_loop_exits"]

#: The partition, in the order reports stack it.
COMPONENTS: tuple[str, ...] = ("guest", "vmexit", "emulator", "dispatch", "lock_wait", "device", "runnable")


def exit_breakdown(trace: Trace) -> pd.DataFrame:
    """One row per complete userspace exit of every vCPU thread, computed
    once per trace (``analyses.cache``); see ``compute_exit_breakdown``."""
    return cache.cached(trace, "exit_breakdown", lambda: compute_exit_breakdown(trace))


def compute_exit_breakdown(trace: Trace) -> pd.DataFrame:
    """One row per complete userspace exit of every vCPU thread.

    Columns: ``tid`` int32, ``vcpu`` int16, ``start_ns``/``end_ns`` int64
    (run_enter to the next run_enter), ``decode_ns`` and ``exit_ns`` int64 (its decode and run_exit:
    the userspace part is ``exit_ns`` -> ``end_ns``), ``kind`` str (pio, mmio, msr, or the
    KVM exit reason: HLT, INTR, EINTR for a signal ...), ``addr`` UInt64
    (port, GPA or MSR; NA otherwise), ``write`` boolean, ``reason`` Int64
    (KVM_EXIT_*, or -errno when KVM_RUN was interrupted), then int64
    nanoseconds ``guest_ns``, ``vmexit_ns``, ``emulator_ns``,
    ``dispatch_ns``, ``lock_wait_ns``, ``bql_wait_ns``, ``device_ns``,
    ``runnable_ns``, ``runnable_<component>_ns`` for guest, vmexit, emulator,
    dispatch (with device), lock_wait and bql_wait (the runnable time carved
    out of that component; they sum to ``runnable_ns``, bql_wait's inside
    lock_wait's), ``total_ns`` (the partition: ``COMPONENTS`` sum to
    ``total_ns``; ``bql_wait_ns`` is part of ``lock_wait_ns``), and
    ``offcpu_lock_ns``, ``offcpu_other_ns``, ``offcpu_runnable_ns``, and
    ``offcpu_woken_ns`` (the part of the first two after the thread was
    woken: runnable, waiting for a CPU).  Cycles whose run_exit is missing,
    or that span a lost-event marker, are left out.
    Raises ``MissingEventsError`` when the trace has no KVM_RUN events.
    """
    ev = trace.events
    require_events(ev, ["run_enter", "run_exit"], "the exit breakdown")
    tids = vcpu_threads(trace)
    cyc = run_cycles(trace, tids).cycles
    cyc = cyc[(cyc["complete"] & ~cyc["lost"]).to_numpy()].reset_index(drop=True)
    if cyc.empty:
        return _empty_exits()

    # Spans of every thread; the windows below only see their own thread's.
    rule = trace_lock_waits(trace)
    devices = pair_spans(ev, "dispatch_begin", "dispatch_end")
    offcpu = cache.offcpu_spans(trace)

    c_tid = cyc["tid"].to_numpy(dtype=np.int64)
    t_enter = cyc["start_ns"].to_numpy(dtype=np.int64)
    t_next = cyc["end_ns"].to_numpy(dtype=np.int64)
    t_exit = cyc["exit_ns"].to_numpy(dtype=np.int64)
    t_dec = cyc["decode_ns"].to_numpy(dtype=np.int64)
    kexit = cyc["kexit_ns"].to_numpy(dtype=np.float64, na_value=np.nan)
    kentry = cyc["kentry_ns"].to_numpy(dtype=np.float64, na_value=np.nan)
    has_guest = ~np.isnan(kexit) & ~np.isnan(kentry)
    guest = np.where(has_guest, np.nan_to_num(kexit) - np.nan_to_num(kentry), 0).astype(np.int64)
    vmexit = t_dec - t_enter - guest
    emulator = t_exit - t_dec

    user_win = ThreadWindows(c_tid, t_exit, t_next)
    cycle_win = ThreadWindows(c_tid, t_enter, t_next)

    def over(s_tid: np.ndarray, s: np.ndarray, e: np.ndarray, win: ThreadWindows = user_win) -> np.ndarray:
        return win.overlap(s_tid, s, e)

    def inside(p_tid: np.ndarray, p: np.ndarray, s_tid: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        return inside_by_thread(p_tid, p, s_tid, s, e) >= 0

    # Userspace part: run_exit -> next run_enter, lock waits by the rule of
    # analyses.waits.
    l_tid, lock_s, lock_e, is_bql_lock = rule.lock_tid, rule.lock_start, rule.lock_end, rule.lock_bql
    lock_all = over(l_tid, lock_s, lock_e)
    lock_bql = over(l_tid[is_bql_lock], lock_s[is_bql_lock], lock_e[is_bql_lock])
    w_tid, w_s, w_e = rule.wait_tid, rule.wait_start, rule.wait_end
    free_bql, free_other, nested_other = rule.free_bql, rule.free_other, rule.wait_nested
    bql_futex = over(w_tid[free_bql], w_s[free_bql], w_e[free_bql])
    other_futex = over(w_tid[free_other], w_s[free_other], w_e[free_other])
    bql_wait = lock_bql + bql_futex - over(w_tid[nested_other], w_s[nested_other], w_e[nested_other])
    lock_wait = lock_all + bql_futex + other_futex
    d_tid = devices["tid"].to_numpy(dtype=np.int64)
    d_s = devices["start_ns"].to_numpy(dtype=np.int64)
    d_e = devices["end_ns"].to_numpy(dtype=np.int64)
    # A device callback that takes a lock (QEMU's BQL inside a region's
    # callback, the reference VMM's disk path) waits inside its own span:
    # that wait is lock_wait, and device keeps only the rest.
    l_in_dev = inside(l_tid, lock_s, d_tid, d_s, d_e)
    free = free_bql | free_other
    w_in_dev = free & inside(w_tid, w_s, d_tid, d_s, d_e)
    device = (
        over(d_tid, d_s, d_e)
        - over(l_tid[l_in_dev], lock_s[l_in_dev], lock_e[l_in_dev])
        - over(w_tid[w_in_dev], w_s[w_in_dev], w_e[w_in_dev])
    )
    device = np.maximum(device, 0)
    user = t_next - t_exit
    # Spans can only overlap when events were lost; never let the remainder
    # go negative: shrink device first, as the least trusted span.
    device = np.minimum(device, np.maximum(user - lock_wait, 0))
    lock_wait = np.minimum(lock_wait, user)
    bql_wait = np.minimum(bql_wait, lock_wait)
    dispatch = user - lock_wait - device

    # Runnable, waiting for a CPU: carved out of whichever component it fell
    # in, each part clipped to its component so the partition still holds.
    r_tid, r_s, r_e = cpu_wait_spans(cache.offcpu_spans(trace))

    def r_over(s_tid: np.ndarray, s: np.ndarray, e: np.ndarray, win: ThreadWindows = user_win) -> np.ndarray:
        return win.overlap(*intersect_by_thread(r_tid, r_s, r_e, s_tid, s, e))

    r_guest = np.zeros(len(cyc), dtype=np.int64)
    if has_guest.any():
        g_win = ThreadWindows(c_tid[has_guest], kentry[has_guest].astype(np.int64), kexit[has_guest].astype(np.int64))
        r_guest[has_guest] = g_win.overlap(r_tid, r_s, r_e)
    r_guest = np.clip(r_guest, 0, guest)
    r_vmexit = np.clip(ThreadWindows(c_tid, t_enter, t_dec).overlap(r_tid, r_s, r_e) - r_guest, 0, vmexit)
    r_emulator = np.clip(ThreadWindows(c_tid, t_dec, t_exit).overlap(r_tid, r_s, r_e), 0, emulator)
    r_user = over(r_tid, r_s, r_e)
    r_lock = (
        r_over(l_tid, lock_s, lock_e)
        + r_over(w_tid[free_bql], w_s[free_bql], w_e[free_bql])
        + r_over(w_tid[free_other], w_s[free_other], w_e[free_other])
    )
    r_bql = (
        r_over(l_tid[is_bql_lock], lock_s[is_bql_lock], lock_e[is_bql_lock])
        + r_over(w_tid[free_bql], w_s[free_bql], w_e[free_bql])
        - r_over(w_tid[nested_other], w_s[nested_other], w_e[nested_other])
    )
    r_device = (
        r_over(d_tid, d_s, d_e)
        - r_over(l_tid[l_in_dev], lock_s[l_in_dev], lock_e[l_in_dev])
        - r_over(w_tid[w_in_dev], w_s[w_in_dev], w_e[w_in_dev])
    )
    r_lock = np.clip(r_lock, 0, lock_wait)
    # bql_wait stays the BQL's part of what is left of lock_wait.
    r_bql = np.clip(r_bql, np.maximum(r_lock - (lock_wait - bql_wait), 0), np.minimum(bql_wait, r_lock))
    r_device = np.clip(r_device, 0, device)
    r_dispatch = np.clip(r_user - r_lock - r_device, 0, dispatch)
    runnable = r_guest + r_vmexit + r_emulator + r_lock + r_device + r_dispatch
    guest, vmexit, emulator = guest - r_guest, vmexit - r_vmexit, emulator - r_emulator
    lock_wait, bql_wait, device, dispatch = (
        lock_wait - r_lock,
        bql_wait - r_bql,
        device - r_device,
        dispatch - r_dispatch,
    )

    # Off-CPU overlay over the whole cycle.
    o_tid = offcpu["tid"].to_numpy(dtype=np.int64)
    off_s = offcpu["start_ns"].to_numpy(dtype=np.int64)
    off_e = offcpu["end_ns"].to_numpy(dtype=np.int64)
    preempted = offcpu["runnable"].to_numpy(dtype=bool)
    wake = offcpu["wakeup_ns"].to_numpy(dtype=np.float64, na_value=np.nan)
    woken = ~np.isnan(wake)
    in_wait = inside(o_tid, off_s, w_tid, w_s, w_e) | inside(o_tid, off_s, l_tid, lock_s, lock_e)
    lk, ot = ~preempted & in_wait, ~preempted & ~in_wait
    off_run = over(o_tid[preempted], off_s[preempted], off_e[preempted], cycle_win)
    off_lock = over(o_tid[lk], off_s[lk], off_e[lk], cycle_win)
    off_other = over(o_tid[ot], off_s[ot], off_e[ot], cycle_win)
    off_woken = over(o_tid[woken], wake[woken].astype(np.int64), off_e[woken], cycle_win)

    out = pd.DataFrame(
        {
            "tid": cyc["tid"].to_numpy(dtype=np.int32),
            "vcpu": cyc["vcpu"].to_numpy(dtype=np.int16),
            "start_ns": t_enter,
            "end_ns": t_next,
            "decode_ns": t_dec,
            "exit_ns": t_exit,
            "kind": cyc["kind"].array,
            "addr": cyc["addr"].array,
            "write": cyc["write"].array,
            "reason": cyc["reason"].array,
            "guest_ns": guest,
            "vmexit_ns": vmexit.astype(np.int64),
            "emulator_ns": emulator.astype(np.int64),
            "dispatch_ns": dispatch.astype(np.int64),
            "lock_wait_ns": lock_wait.astype(np.int64),
            "bql_wait_ns": bql_wait.astype(np.int64),
            "device_ns": device.astype(np.int64),
            "runnable_ns": runnable.astype(np.int64),
            # Where the runnable time was carved from, so that a consumer
            # that cannot see the scheduler (vmtrace top's kernel
            # aggregation) compares with the partition before carving.
            "runnable_guest_ns": r_guest.astype(np.int64),
            "runnable_vmexit_ns": r_vmexit.astype(np.int64),
            "runnable_emulator_ns": r_emulator.astype(np.int64),
            "runnable_dispatch_ns": (r_dispatch + r_device).astype(np.int64),
            "runnable_lock_wait_ns": r_lock.astype(np.int64),
            "runnable_bql_wait_ns": r_bql.astype(np.int64),
            "total_ns": (t_next - t_enter).astype(np.int64),
            "offcpu_lock_ns": off_lock,
            "offcpu_other_ns": off_other,
            "offcpu_runnable_ns": off_run,
            "offcpu_woken_ns": off_woken,
        },
        copy=False,
    )
    order = np.argsort(t_enter, kind="stable")
    return out.take(order).reset_index(drop=True)


_NS_COLS = (
    "guest_ns",
    "vmexit_ns",
    "emulator_ns",
    "dispatch_ns",
    "lock_wait_ns",
    "bql_wait_ns",
    "device_ns",
    "runnable_ns",
    "runnable_guest_ns",
    "runnable_vmexit_ns",
    "runnable_emulator_ns",
    "runnable_dispatch_ns",
    "runnable_lock_wait_ns",
    "runnable_bql_wait_ns",
    "total_ns",
    "offcpu_lock_ns",
    "offcpu_other_ns",
    "offcpu_runnable_ns",
    "offcpu_woken_ns",
)


def _empty_exits() -> pd.DataFrame:
    df = pd.DataFrame({"tid": pd.Series([], dtype="int32"), "vcpu": pd.Series([], dtype="int16")})
    for c in ("start_ns", "end_ns", "decode_ns", "exit_ns"):
        df[c] = pd.Series([], dtype="int64")
    df["kind"] = pd.Series([], dtype="object")
    df["addr"] = pd.Series([], dtype="UInt64")
    df["write"] = pd.Series([], dtype="boolean")
    df["reason"] = pd.Series([], dtype="Int64")
    for c in _NS_COLS:
        df[c] = pd.Series([], dtype="int64")
    return df


# ----------------------------------------------------------------------------
# Summaries


@dataclass
class Breakdown:
    """The BQL breakdown of one trace, in cycles (see ``bql_breakdown``).

    ``exits``: the exits summarised, rows of ``exit_breakdown`` (after the
    timed-loop or ``port`` selection).  ``components``: component -> mean
    cycles per exit (``_SUMMARY_COLS``); ``percentiles``: component ->
    ``p50``/``p90``/``p99`` cycles; ``histograms``: component -> ``edges``
    and ``counts`` (``histogram``).  The groupings, one row per group:

    - ``by_kind``: ``kind`` category, ``addr`` UInt64 (port, GPA or MSR; NA
      for exits without one), ``exits`` int64, then float64 mean cycles per exit ``guest``, ``vmexit``,
    ``emulator``, ``dispatch``, ``device``, ``lock_wait``, ``bql_wait``,
    ``total``, and ``p50``/``p90``/``p99`` float64 cycles of the total;
    most exits first;
    - ``by_vcpu``: ``vcpu`` int16, then the same columns;
    - ``by_role``: ``role`` category (of the exiting thread), the same.

    ``by_kind`` also has ``time_share`` float64 (the group's share of all
    the exits' time).  ``by_holder``: ``bql_wait`` by what the BQL's holder
    was doing (``analyses.holders.split_summary``, plus ``cycles`` float64,
    mean cycles per summarised exit: the rows add up to
    ``components["bql_wait"]``).  ``from_bench``: the trace has ``bench``
    metadata; ``guest_separated``: kvm_entry/kvm_exit fired (else the
    component called vmexit is guest+vmexit, ``component_labels``);
    ``port``: the selection asked for; ``hottest``: ``kind``, ``addr`` int
    and ``time_share`` of the kind and address that took the most time;
    ``path``: the trace file, when read from one.

    ``bql``: the trace's BQL record (``name``, ``identified``, ``method``,
    ``futex_uaddr`` int or None).  ``lost_events`` and ``lost_per_cpu``
    count what the collector lost, ``excluded_lost`` the exits left out
    across a loss; ``guest_cycles_per_op``: what the benchmark guest
    measured itself, when it did.
    """

    exits: pd.DataFrame
    tsc_hz: int
    components: dict[str, float]
    percentiles: dict[str, dict[str, float]]
    by_kind: pd.DataFrame
    by_vcpu: pd.DataFrame
    by_role: pd.DataFrame
    bql: dict[str, Any]
    lost_events: int
    lost_per_cpu: dict[str, int]
    kvm_flavour: str
    notes: list[str] = field(default_factory=list)
    guest_cycles_per_op: float | None = None
    histograms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    excluded_lost: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    by_holder: pd.DataFrame = field(default_factory=pd.DataFrame)
    from_bench: bool = False
    guest_separated: bool = True
    port: int | None = None
    hottest: dict[str, Any] | None = None
    path: str | None = None

    @property
    def component_labels(self) -> dict[str, str]:
        """Component -> the name reports give it: ``vmexit`` is
        ``guest+vmexit`` where kvm_entry/kvm_exit did not fire."""
        labels = {c: c for c in COMPONENTS}
        if not self.guest_separated:
            labels["vmexit"] = "guest+vmexit"
        return labels

    def to_json(self) -> dict[str, Any]:
        by_holder = self.by_holder
        if len(by_holder):
            by_holder = by_holder.assign(addr=by_holder["addr"].map(hex_or_none))
        hottest = None if self.hottest is None else {**self.hottest, "addr": hex_or_none(self.hottest.get("addr"))}
        return {
            "exits": int(len(self.exits)),
            "lost_events": self.lost_events,
            "lost_per_cpu": self.lost_per_cpu,
            "tsc_hz": self.tsc_hz,
            "kvm_flavour": self.kvm_flavour,
            "components": self.components,
            "percentiles": self.percentiles,
            "histograms": self.histograms,
            "excluded_lost": self.excluded_lost,
            "bql": bql_json(self.bql),
            "by_kind": records(self.by_kind.assign(addr=self.by_kind["addr"].map(hex_or_none))),
            "by_vcpu": records(self.by_vcpu),
            "by_role": records(self.by_role),
            "guest_cycles_per_op": self.guest_cycles_per_op,
            "notes": self.notes,
            "backend": self.meta.get("backend"),
            "mode": self.meta.get("mode"),
            "vmm": (self.meta.get("target") or {}).get("vmm"),
            # What the reference VMM reported of its Python (None on QEMU):
            # a free-threaded run has no GIL among its locks.
            "interpreter": (self.meta.get("target") or {}).get("interpreter"),
            "bql_wait_by_holder": records(by_holder),
            "from_bench": self.from_bench,
            "guest_separated": self.guest_separated,
            "component_labels": self.component_labels,
            "hottest": hottest,
        }


#: Histogram bins per doubling of cycles (bins grow by 2 ** (1/4), ~19%).
HIST_BINS_PER_OCTAVE = 4


def histogram(
    cycles: np.ndarray, per_octave: int = HIST_BINS_PER_OCTAVE, presorted: bool = False
) -> dict[str, list[float]]:
    """Log-spaced histogram of per-exit cycles: ``edges`` (len n+1, the first
    0, then 2**(k/per_octave) from 64 cycles up past the maximum) and
    ``counts`` (len n).  Cost per exit spans orders of magnitude (a fast PIO
    against one that waited for the BQL), so equal-ratio bins show both.
    ``presorted``: ``cycles`` is already in ascending order (the breakdown
    sorts each component once for its percentiles and this)."""
    cycles = np.asarray(cycles, dtype=np.float64)
    if len(cycles) == 0:
        return {"edges": [], "counts": []}
    ordered = np.clip(cycles if presorted else np.sort(cycles), 0, None)
    top = max(float(ordered[-1]), 64.0)
    steps = int(np.ceil(np.log2(top / 64.0) * per_octave)) + 1
    edges = np.concatenate(([0.0], 64.0 * 2.0 ** (np.arange(steps + 1) / per_octave)))
    # np.histogram's rule: bins are half-open except the last, which holds
    # its right edge.
    at = np.concatenate((ordered.searchsorted(edges[:-1], "left"), ordered.searchsorted(edges[-1:], "right")))
    counts = np.diff(at)
    return {"edges": [round(float(e), 1) for e in edges], "counts": [int(c) for c in counts]}


def _percentile_sorted(ordered: np.ndarray, q: float) -> float:
    """The q-th quantile (0..1) of an ascending array, interpolated linearly
    between the ranks around it as numpy and pandas do."""
    pos = (len(ordered) - 1) * q
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


_SUMMARY_COLS = ("guest", "vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "runnable", "total")


def summarize(exits: pd.DataFrame, tsc_hz: int) -> pd.DataFrame:
    """Mean cycles per exit per component, plus count and total p50/p99:
    a one-row DataFrame when ``exits`` is one group (use with groupby)."""
    k = tsc_hz / 1e9
    row: dict[str, float] = {"exits": float(len(exits))}
    for c in _SUMMARY_COLS:
        row[c] = float(exits[f"{c}_ns"].mean() * k) if len(exits) else 0.0
    for q in (50, 90, 99):
        row[f"p{q}"] = float(exits["total_ns"].quantile(q / 100) * k) if len(exits) else 0.0
    return pd.DataFrame([row])


def _grouped(
    exits: pd.DataFrame,
    keys: list[str],
    tsc_hz: int,
    order: np.ndarray | None = None,
    components: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """``summarize`` per group of ``keys``: the ``keys``, ``exits``, mean
    cycles per component, and p50/p90/p99 of the total; most exits first.

    Sums are bincounts and percentiles are read off one sort of the totals
    (``order``, an argsort of ``total_ns``, shared by every grouping), so a
    million exits group in a few passes, not one pandas group at a time.
    ``components``: the components as float64 ns arrays, when the caller
    has them already (``_SUMMARY_COLS`` keys).
    """
    cols = keys + ["exits", *_SUMMARY_COLS, "p50", "p90", "p99"]
    n = len(exits)
    if n == 0:
        return pd.DataFrame(columns=cols)
    k = tsc_hz / 1e9
    combined = np.zeros(n, dtype=np.int64)
    for key in keys:
        col = exits[key]
        if isinstance(col.dtype, pd.CategoricalDtype):
            code = col.cat.codes.to_numpy().astype(np.int64)
            code = np.where(code < 0, len(col.cat.categories), code)
        else:
            # factorize refuses a plain numpy column wrapped as a pandas
            # array (what int16 vcpu numbers arrive as); hand it numpy.
            values = col.to_numpy() if isinstance(col.dtype, np.dtype) else col.array
            code = pd.factorize(values, sort=True, use_na_sentinel=False)[0].astype(np.int64)
        combined = combined * (int(code.max()) + 1) + code
    gid = dense_codes(combined)
    n_groups = int(gid.max()) + 1
    counts = np.bincount(gid, minlength=n_groups)
    total = exits["total_ns"].to_numpy(dtype=np.float64)
    order = np.argsort(total, kind="stable") if order is None else order
    by_group = order[np.argsort(gid[order].astype(np.int16) if n_groups < 1 << 15 else gid[order], kind="stable")]
    starts = np.cumsum(counts) - counts
    out = pd.DataFrame({key: exits[key].array.take(by_group[starts]) for key in keys})
    out["exits"] = counts
    for c in _SUMMARY_COLS:
        w = components[c] if components is not None else exits[f"{c}_ns"].to_numpy(dtype=np.float64)
        out[c] = np.bincount(gid, weights=w, minlength=n_groups) / counts * k
    sorted_total = total[by_group]
    for p in (50, 90, 99):
        # Linear interpolation between the ranks around q, as pandas does.
        pos = starts + (counts - 1) * (p / 100)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, starts + counts - 1)
        out[f"p{p}"] = (sorted_total[lo] + (sorted_total[hi] - sorted_total[lo]) * (pos - lo)) * k
    return out[cols].sort_values("exits", ascending=False, kind="stable").reset_index(drop=True)


def timed_loop_exits(exits: pd.DataFrame, port: int) -> pd.DataFrame:
    """The exits of a benchmark guest's timed loop: per vCPU, the longest run
    of consecutive exits on ``port``.  The guest's own cycles-per-operation
    covers exactly that loop, so this is what to compare it with (boot-time
    and calibration accesses to the same port are left out).  The run's first
    exit is left out too: its cycle began before the loop (an AP's first one
    holds everything it did since it was started), while every later cycle
    is one iteration, from one access to the next."""
    parts = []
    for _vcpu, grp in exits.groupby("vcpu", sort=True):
        on = (grp["addr"] == port).fillna(False).to_numpy(dtype=np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], on, [0]))))
        if len(edges) == 0:
            continue
        starts, ends = edges[::2], edges[1::2]
        longest = int(np.argmax(ends - starts))
        first = starts[longest] + (1 if ends[longest] - starts[longest] > 1 else 0)
        parts.append(grp.iloc[first : ends[longest]])
    return pd.concat(parts, ignore_index=True) if parts else exits.iloc[0:0]


def bql_breakdown(trace: Trace, port: int | None = None, timed_loop: bool = True) -> Breakdown:
    """The ``--bql-breakdown`` view of a trace.

    ``port`` restricts the summary to exits on one port or address (the
    benchmark's, e.g. 0x608 for the PM timer).  ``components`` holds mean
    cycles per exit for guest, vmexit, emulator, dispatch, device,
    lock_wait (all locks), bql_wait and total.
    """
    tsc = trace.tsc_hz
    if tsc <= 0:
        raise VmtraceError("the trace has no TSC frequency (metadata tsc_hz): cannot convert to cycles")
    exits = exit_breakdown(trace)
    bench = trace.meta.get("bench") or {}
    notes = list(trace.meta.get("notes") or [])
    excluded = 0
    if len(lost_windows(trace.events)):
        cyc = run_cycles(trace).cycles
        excluded = int((cyc["complete"] & cyc["lost"]).sum())
        notes.append(f"{excluded:,} exits span lost events and are left out")
    elif trace.lost_events:
        notes.append(
            f"{trace.lost_events:,} events were lost and the trace does not say where: "
            "an exit across them may be mis-attributed"
        )
    loop_port = bench.get("pm_port") if bench.get("bench") == "inl_pmtimer" else None
    if timed_loop and port is None and loop_port:
        exits = timed_loop_exits(exits, int(loop_port))
        notes.append(
            f"components cover the guest's timed loop: per vCPU the longest run of consecutive "
            f"exits on port {int(loop_port):#x} ({len(exits):,} exits); --all-exits for every exit"
        )
    elif port is not None:
        exits = exits[(exits["addr"] == port).fillna(False)].reset_index(drop=True)
    k = tsc / 1e9
    # Each component once as float64 and once sorted: the means, the groups'
    # sums, the percentiles and the histograms all read these.
    values = {c: exits[f"{c}_ns"].to_numpy(dtype=np.float64) for c in _SUMMARY_COLS}
    ordered = {c: np.sort(v) for c, v in values.items()}
    components = {c: float(v.mean() * k) if len(v) else 0.0 for c, v in values.items()}
    by_total = np.argsort(values["total"], kind="stable")
    percentiles = {
        c: {f"p{q}": _percentile_sorted(ordered[c], q / 100) * k if len(exits) else 0.0 for q in (50, 90, 99)}
        for c in _SUMMARY_COLS
    }
    histograms = {c: histogram(ordered[c] * k, presorted=True) for c in _SUMMARY_COLS}
    by_kind = _grouped(exits, ["kind", "addr"], tsc, by_total, values)
    # Where the time went, not only the count: what a trace that is not a
    # benchmark's leads with (a few idle HLT exits can outweigh every read).
    all_time = float(values["total"].sum())
    by_kind["time_share"] = by_kind["exits"] * by_kind["total"] / (k * all_time) if all_time else 0.0
    by_vcpu = _grouped(exits, ["vcpu"], tsc, by_total, values)
    threads = trace.threads
    roles = dict(zip(threads["tid"].astype(int), threads["role"], strict=True))
    tids = np.unique(exits["tid"].to_numpy())
    role_of_tid = [str(roles.get(int(t), ROLE_VCPU)) for t in tids]
    role_names = sorted(set(role_of_tid))
    role_code = np.array([role_names.index(r) for r in role_of_tid], dtype=np.int64)
    role = pd.Categorical.from_codes(
        role_code[rank_in(tids, exits["tid"].to_numpy())] if len(tids) else np.zeros(0, np.int64),
        categories=pd.Index(role_names),
    )
    by_role = _grouped(exits.assign(role=role), ["role"], tsc, by_total, values)
    bql = dict(trace.bql())
    bql["futex_uaddr"] = int(bql["futex_uaddr"]) if bql.get("futex_uaddr") else None
    lost = trace.meta.get("lost_events") or {}
    if not (exits["device_ns"] > 0).any() if len(exits) else True:
        notes.append(
            "device time is not separated from dispatch in this trace (record with --precise, "
            "or a VMM that reports its dispatch through vmtrace.probes)"
        )
    by_holder = split_summary(trace, exits)
    n_exits = max(len(exits), 1)
    by_holder.insert(list(by_holder.columns).index("exits") + 1, "cycles", by_holder["wait_ns"] / n_exits * k)
    return Breakdown(
        exits=exits,
        tsc_hz=tsc,
        components=components,
        percentiles=percentiles,
        by_kind=by_kind,
        by_vcpu=by_vcpu,
        by_role=by_role,
        bql=bql,
        lost_events=int(lost.get("total", 0)),
        lost_per_cpu={str(k2): int(v) for k2, v in (lost.get("per_cpu") or {}).items()},
        kvm_flavour=str(trace.meta.get("kvm_flavour", "unknown")),
        notes=notes,
        guest_cycles_per_op=bench.get("cycles_per_op"),
        meta=trace.meta,
        histograms=histograms,
        excluded_lost=excluded,
        by_holder=by_holder,
        from_bench=bool(bench),
        guest_separated=_guest_separated(trace),
        port=port,
        hottest=_hottest(by_kind),
        path=str(trace.path) if trace.path is not None else None,
    )


def _guest_separated(trace: Trace) -> bool:
    """Whether kvm_entry/kvm_exit fired, so guest time is apart from vmexit."""
    fired = (trace.meta.get("tracepoints") or {}).get("kvm_exit") or {}
    if isinstance(fired, dict) and fired.get("fired"):
        return True
    codes = trace.events["event"].cat.codes.to_numpy()
    return bool((codes == EVENT_CODE["kvm_exit"]).any())


def _hottest(by_kind: pd.DataFrame) -> dict[str, Any] | None:
    """The exit kind and port/address that took the most time (``time_share``
    of ``by_kind``), among those with an address: the view to open next."""
    rows = by_kind[by_kind["addr"].notna().to_numpy(dtype=bool)] if len(by_kind) else by_kind
    if not len(rows):
        return None
    top = rows.iloc[int(np.argmax(rows["time_share"].to_numpy(dtype=np.float64)))]
    return {"kind": str(top["kind"]), "addr": int(top["addr"]), "time_share": float(top["time_share"])}
