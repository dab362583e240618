"""The per-exit partition: where the cycles of each userspace exit go.

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

import numpy as np
import pandas as pd

from vmtrace.trace import Trace

from . import cache
from .intervals import ThreadWindows, inside_by_thread, pair_spans, require_events
from .runnable import cpu_wait_spans, intersect_by_thread
from .waits import trace_lock_waits

__all__ = ["COMPONENTS", "compute_exit_breakdown", "exit_breakdown"]

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
    cyc = cache.vcpu_run_cycles(trace).cycles
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
