"""KVM_RUN cycles of vCPU threads, and the exit each one ends with.

One cycle of a vCPU thread runs from one ``run_enter`` to its next.  Inside
it the kernel may handle any number of exits itself (each a ``pio``/``mmio``/
``msr`` decode with no return to userspace) before the one exit that ends the
ioctl (``userspace_exit``, ``run_exit``).  This module finds, for every cycle
of every vCPU thread at once, which event is which; the breakdown and the
exit statistics both build on it, so they can never disagree on what an
exit was.

Every thread is handled in one vectorised pass: the events of interest are
grouped by thread with a stable sort (a radix sort on small thread codes),
so a cycle's events are contiguous and "first/last event of a kind in each
cycle" is a boundary test on a sorted array.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vmtrace.schema import EVENT_TYPES, KVM_EXIT_REASONS
from vmtrace.trace import Trace

from .intervals import lost_windows, overlaps_loss

__all__ = ["RunCycles", "vcpu_threads", "run_cycles", "event_codes", "exit_reason_name", "DECODE_EVENTS"]

DECODE_EVENTS: tuple[str, ...] = ("pio", "mmio", "msr")
_CODE = {name: i for i, name in enumerate(EVENT_TYPES)}
# The KVM_EXIT_* reason each decode kind ends a KVM_RUN with.
_REASON_OF_DECODE = {"pio": (2,), "mmio": (6,), "msr": (29, 30)}
_KIND_NONE = -1


def event_codes(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """A lookup table over category codes: True for the named events.  Index
    it with ``events["event"].cat.codes``; the extra last slot absorbs -1."""
    table = np.zeros(len(EVENT_TYPES) + 1, dtype=bool)
    for n in names:
        table[_CODE[n]] = True
    return table


def exit_reason_name(reason: int) -> str:
    """KVM_EXIT_* name of a ``userspace_exit`` value; a negative value is the
    errno that interrupted KVM_RUN (EINTR for a signal)."""
    if reason < 0:
        return errno.errorcode.get(-reason, f"errno_{-reason}")
    return KVM_EXIT_REASONS.get(reason, f"reason_{reason}")


def vcpu_threads(trace: Trace) -> dict[int, int]:
    """tid -> vCPU index: the threads the recorder named as vCPUs, else every
    thread that entered KVM_RUN, numbered in tid order."""
    tids = trace.vcpu_tids()
    if not tids:
        ev = trace.events
        run = ev.loc[(ev["event"] == "run_enter").to_numpy(), "tid"].unique()
        tids = {int(t): i for i, t in enumerate(sorted(run))}
    return tids


@dataclass
class RunCycles:
    """The KVM_RUN cycles of a trace (see ``run_cycles``)."""

    cycles: pd.DataFrame
    decodes: pd.DataFrame
    completions_traced: bool


def _first_last(group: np.ndarray, pos: np.ndarray, n: int, last: bool) -> np.ndarray:
    """Per group id in [0, n), the first (or last) of ``pos``; -1 where none.
    ``group`` must be non-decreasing along ``pos`` (it is: cycles are
    contiguous in the thread-sorted events)."""
    out = np.full(n, -1, dtype=np.int64)
    if len(group) == 0:
        return out
    change = group[1:] != group[:-1]
    pick = np.concatenate((change, [True])) if last else np.concatenate(([True], change))
    out[group[pick]] = pos[pick]
    return out


def run_cycles(trace: Trace, tids: dict[int, int] | None = None) -> RunCycles:
    """Every KVM_RUN cycle of the vCPU threads, and the role of every decode.

    ``cycles``: one row per cycle that a next ``run_enter`` of the same
    thread closes, in thread then time order: ``tid`` int32, ``vcpu`` int16,
    ``start_ns`` int64 (run_enter), ``end_ns`` int64 (the next run_enter),
    ``exit_ns`` int64 (run_exit; ``end_ns`` when missing), ``decode_ns``
    int64 (the exit's decode event; else its userspace_exit; else
    ``exit_ns``), ``kexit_ns``/``kentry_ns`` Int64 (the last kvm_exit before
    run_exit and the kvm_entry before it, where the host fires them),
    ``reason`` Int64 (the userspace_exit value: KVM_EXIT_* or -errno; NA
    when none was traced), ``kind`` str (pio, mmio or msr when a decode
    names the exit, else the reason's name, else ``unknown``), ``addr``
    UInt64, ``size`` UInt8, ``write`` boolean (NA without a decode),
    ``complete`` bool (run_exit seen) and ``lost`` bool (the cycle spans a
    lost-event marker, so events inside it may be missing).

    ``decodes``: one row per decode event of a vCPU thread: ``tid`` int32,
    ``ts_ns`` int64, ``kind`` str, ``addr`` UInt64, ``size`` UInt8,
    ``write`` boolean, ``cycle`` int64 (row of ``cycles``, -1 outside a
    closed cycle) and ``role`` str: ``exit`` (names the exit that ends its
    cycle), ``completion`` (upstream KVM traces a userspace read when the
    next KVM_RUN completes it; it repeats the previous exit), ``kernel``
    (an exit the kernel handled without returning to userspace) or
    ``stray`` (after run_exit: no exit of its cycle; a run_enter was lost).
    ``completions_traced`` says which of the two read-tracing behaviours
    the trace shows.
    """
    ev = trace.events
    tids = tids if tids is not None else vcpu_threads(trace)
    codes = ev["event"].cat.codes.to_numpy()
    wanted = event_codes(("run_enter", "run_exit", "userspace_exit", "kvm_entry", "kvm_exit") + DECODE_EVENTS)
    sel = np.flatnonzero(wanted[codes])
    tid_all = ev["tid"].to_numpy()
    sorted_tids = np.array(sorted(tids), dtype=np.int64)
    sel = sel[np.isin(tid_all[sel], sorted_tids)]
    thr = np.searchsorted(sorted_tids, tid_all[sel]).astype(np.int16 if len(sorted_tids) < 2**15 else np.int64)
    # Stable: within a thread, trace order (time, then collector order).
    order = np.argsort(thr, kind="stable")
    sel, thr = sel[order], thr[order].astype(np.int64)
    code = codes[sel]
    ts = ev["ts_ns"].to_numpy()[sel]
    n_ev = len(sel)
    pos = np.arange(n_ev)

    is_enter = code == _CODE["run_enter"]
    enter_pos = np.flatnonzero(is_enter)
    n_all = len(enter_pos)
    g = np.cumsum(is_enter) - 1
    cyc_thr = thr[enter_pos]
    valid = g >= 0
    valid[valid] = cyc_thr[g[valid]] == thr[valid]
    gv = np.where(valid, g, 0)
    closed = np.zeros(n_all, dtype=bool)
    closed[:-1] = cyc_thr[1:] == cyc_thr[:-1]
    next_pos = np.concatenate((enter_pos[1:], [n_ev]))

    def first(mask: np.ndarray) -> np.ndarray:
        p = np.flatnonzero(mask & valid)
        return _first_last(g[p], p, n_all, last=False)

    def last_before(mask: np.ndarray, limit: np.ndarray) -> np.ndarray:
        p = np.flatnonzero(mask & valid)
        p = p[p < limit[g[p]]]
        return _first_last(g[p], p, n_all, last=True)

    exit_pos = first(code == _CODE["run_exit"])
    complete = closed & (exit_pos >= 0)
    limit = np.where(exit_pos >= 0, exit_pos, next_pos)

    uexit = last_before(code == _CODE["userspace_exit"], np.where(exit_pos >= 0, exit_pos + 1, 0))
    has_reason = uexit >= 0
    reason = np.zeros(n_all, dtype=np.int64)
    if has_reason.any():
        reason[has_reason] = ev["value"].take(sel[uexit[has_reason]]).to_numpy(dtype=np.int64, na_value=0)

    is_dec = np.isin(code, [_CODE[k] for k in DECODE_EVENTS]) & valid
    dec_p = np.flatnonzero(is_dec)
    dec_rows = sel[dec_p]
    dec_write = ev["write"].take(dec_rows).to_numpy(dtype=bool, na_value=False)
    dec_value = ev["value"].take(dec_rows).to_numpy(dtype=np.float64, na_value=0.0)
    first_dec = _first_last(g[dec_p], dec_p, n_all, last=False)
    # The previous cycle of the same thread, and how it ended.
    prev_same = np.zeros(n_all, dtype=bool)
    prev_same[1:] = cyc_thr[1:] == cyc_thr[:-1]
    prev_reason = np.full(n_all, -1, dtype=np.int64)
    prev_reason[1:] = np.where(prev_same[1:] & has_reason[:-1], reason[:-1], -1)
    first_kexit = first(code == _CODE["kvm_exit"])
    first_kexit = np.where(first_kexit >= 0, first_kexit, np.iinfo(np.int64).max)
    # Upstream KVM traces a userspace PIO/MMIO *read* when the next KVM_RUN
    # completes it (complete_emulator_pio_in), carrying the data; some hosts
    # (PVM here) trace it at decode time with the data still 0.  Which one
    # this trace shows is read off the data: completions name the previous
    # exit's port, and must not be taken for this exit's decode.
    gd = g[dec_p]
    candidate = (
        ~dec_write
        & (dec_p == first_dec[gd])
        & np.isin(prev_reason[gd], (2, 6))
        & (dec_p < first_kexit[gd])
    )
    completions_traced = bool(candidate.any()) and float(np.mean(dec_value[candidate] != 0)) > 0.5
    completion = candidate if completions_traced else np.zeros(len(dec_p), dtype=bool)

    # The exit's own decode: the last one before run_exit that is not a
    # completion, and only when the exit's reason is that decode's (an
    # in-kernel PIO just before a signal interrupts KVM_RUN is not the exit).
    dec_code = code[dec_p]
    before = dec_p < limit[gd]
    cand = dec_p[~completion & before]
    decode = _first_last(g[cand], cand, n_all, last=True)
    has_dec = decode >= 0
    d_code = code[np.clip(decode, 0, None)]
    agrees = ~has_reason
    for kind_name, reasons in _REASON_OF_DECODE.items():
        agrees |= (d_code == _CODE[kind_name]) & np.isin(reason, reasons)
    decode = np.where(has_dec & agrees, decode, -1)
    has_dec = decode >= 0

    kexit = last_before(code == _CODE["kvm_exit"], limit)
    kentry = last_before(code == _CODE["kvm_entry"], np.where(kexit >= 0, kexit, 0))
    # Where the exit itself left no decode event, take its completion.
    comp_p = dec_p[completion]
    comp_of_next = np.full(n_all, -1, dtype=np.int64)
    comp_g = g[comp_p]
    keep = (comp_g >= 1) & prev_same[comp_g]
    comp_of_next[comp_g[keep] - 1] = comp_p[keep]
    name_pos = np.where(has_dec, decode, comp_of_next)

    t_enter = ts[enter_pos]
    t_next = ts[np.clip(next_pos, 0, n_ev - 1)] if n_ev else t_enter
    t_exit = np.where(exit_pos >= 0, ts[np.clip(exit_pos, 0, None)], t_next)
    t_dec = np.where(has_dec, ts[np.clip(decode, 0, None)], np.where(has_reason, ts[np.clip(uexit, 0, None)], t_exit))

    # Exit kind: a decode's event name, else the reason's name.
    has_name = name_pos >= 0
    name_code = code[np.clip(name_pos, 0, None)]
    reason_names = {int(r): exit_reason_name(int(r)) for r in np.unique(reason[has_reason & ~has_name])}
    labels = list(DECODE_EVENTS) + ["unknown"] + list(reason_names.values())
    label_idx = np.full(n_all, len(DECODE_EVENTS), dtype=np.int64)
    for i, k in enumerate(DECODE_EVENTS):
        label_idx[has_name & (name_code == _CODE[k])] = i
    for j, r in enumerate(reason_names):
        label_idx[~has_name & has_reason & (reason == r)] = len(DECODE_EVENTS) + 1 + j
    kind = np.asarray(labels, dtype=object)[label_idx]

    keep_c = np.flatnonzero(closed)
    name_rows = sel[np.clip(name_pos, 0, None)]
    addr = ev["addr"].take(name_rows).array.copy()
    size = ev["size"].take(name_rows).array.copy()
    write = ev["write"].take(name_rows).array.copy()
    addr[~has_name] = pd.NA
    size[~has_name] = pd.NA
    write[~has_name] = pd.NA
    tid_of = sorted_tids[cyc_thr]
    kexit_ns = pd.array(ts[np.clip(kexit, 0, None)] if n_ev else kexit, dtype="Int64")
    kexit_ns[kexit < 0] = pd.NA
    kentry_ns = pd.array(ts[np.clip(kentry, 0, None)] if n_ev else kentry, dtype="Int64")
    kentry_ns[(kentry < 0) | (kexit < 0)] = pd.NA
    reason_col = pd.array(reason, dtype="Int64")
    reason_col[~has_reason] = pd.NA
    cycles = pd.DataFrame(
        {
            "tid": tid_of.astype(np.int32),
            "vcpu": np.array([tids[int(t)] for t in sorted_tids], dtype=np.int16)[cyc_thr]
            if len(sorted_tids) else np.zeros(0, np.int16),
            "start_ns": t_enter.astype(np.int64),
            "end_ns": t_next.astype(np.int64),
            "exit_ns": t_exit.astype(np.int64),
            "decode_ns": t_dec.astype(np.int64),
            "kexit_ns": kexit_ns,
            "kentry_ns": kentry_ns,
            "reason": reason_col,
            "kind": kind,
            "addr": addr,
            "size": size,
            "write": write,
            "complete": complete,
        }
    ).iloc[keep_c].reset_index(drop=True)
    cycles["lost"] = overlaps_loss(cycles["start_ns"].to_numpy(), cycles["end_ns"].to_numpy(), lost_windows(ev))

    # Decode roles, with cycle numbers renumbered to rows of ``cycles``.
    row_of = np.full(n_all, -1, dtype=np.int64)
    row_of[keep_c] = np.arange(len(keep_c))
    role = np.full(len(dec_p), "kernel", dtype=object)
    role[completion] = "completion"
    is_exit_dec = has_dec[gd] & (decode[gd] == dec_p)
    role[is_exit_dec] = "exit"
    # Decodes after run_exit cannot be exits the kernel handled: they belong
    # to no exit (a lost run_enter would put them there).
    role[~before & ~completion] = "stray"
    decodes = pd.DataFrame(
        {
            "tid": tid_all[dec_rows].astype(np.int32),
            "ts_ns": ts[dec_p].astype(np.int64),
            "kind": np.asarray(EVENT_TYPES, dtype=object)[dec_code],
            "addr": ev["addr"].take(dec_rows).array,
            "size": ev["size"].take(dec_rows).array,
            "write": ev["write"].take(dec_rows).array,
            "cycle": row_of[gd],
            "role": role,
        }
    )
    return RunCycles(cycles=cycles, decodes=decodes, completions_traced=completions_traced)
