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
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.schema import EVENT_CODE, EVENT_TYPES, KVM_EXIT_REASONS
from vmtrace.trace import Trace

from .intervals import rank_in, thread_spans_lost

__all__ = ["RunCycles", "vcpu_threads", "run_cycles", "event_codes", "exit_reason_name", "DECODE_EVENTS"]

DECODE_EVENTS: tuple[str, ...] = ("pio", "mmio", "msr")
# The KVM_EXIT_* reason each decode kind ends a KVM_RUN with.
_REASON_OF_DECODE = {"pio": (2,), "mmio": (6,), "msr": (29, 30)}
_ROLES = ("exit", "completion", "kernel", "stray")
assert [EVENT_CODE[k] for k in DECODE_EVENTS] == list(range(EVENT_CODE["pio"], EVENT_CODE["pio"] + 3))
_CYCLE_KINDS = ("run_enter", "run_exit", "kvm_entry", "kvm_exit") + DECODE_EVENTS + ("userspace_exit",)
assert [EVENT_CODE[k] for k in _CYCLE_KINDS] == list(range(len(_CYCLE_KINDS)))


def event_codes(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """A lookup table over category codes: True for the named events.  Index
    it with ``events["event"].cat.codes``; the extra last slot absorbs -1."""
    table = np.zeros(len(EVENT_TYPES) + 1, dtype=bool)
    for n in names:
        table[EVENT_CODE[n]] = True
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
    """The KVM_RUN cycles of a trace: ``cycles``, one row per KVM_RUN cycle,
    and ``decodes``, one row per decode event with its role; both DataFrames'
    columns and dtypes are listed in ``run_cycles``."""

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
    # The events a cycle is made of are the first kinds of the schema (see
    # _CYCLE_KINDS): one comparison selects them, and -1 wraps to 255.
    sel = np.flatnonzero(codes.view(np.uint8) < len(_CYCLE_KINDS))
    tid_all = ev["tid"].to_numpy()
    sorted_tids = np.array(sorted(tids), dtype=np.int64)
    # Group by thread, keeping trace order (time, then collector order)
    # inside each: for a few vCPUs one pass per thread beats a sort.
    if len(sorted_tids) <= 16:
        tid_sel = tid_all[sel]
        parts = [sel[tid_sel == t] for t in sorted_tids]
        del tid_sel
        sel = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        thr = np.repeat(np.arange(len(sorted_tids), dtype=np.int16), [len(p) for p in parts])
        del parts
    else:
        rank = rank_in(sorted_tids, tid_all[sel])
        keep = np.flatnonzero(rank >= 0)
        order = keep[
            np.argsort(rank[keep].astype(np.int16) if len(sorted_tids) < 1 << 15 else rank[keep], kind="stable")
        ]
        thr = rank[order]
        sel = sel[order]
        del rank, order
    code = codes[sel]
    ts = ev["ts_ns"].to_numpy()[sel]
    n_ev = len(sel)
    # Positions of each kind, in thread-then-time order: everything below
    # touches these subsets, not the whole selection.
    pos_of = {
        name: np.flatnonzero(code == EVENT_CODE[name])
        for name in ("run_enter", "run_exit", "userspace_exit", "kvm_entry", "kvm_exit")
    }
    dec_all = np.flatnonzero((code >= EVENT_CODE["pio"]) & (code <= EVENT_CODE["msr"]))

    enter_pos = pos_of["run_enter"]
    n_all = len(enter_pos)
    is_enter = np.zeros(n_ev, dtype=bool)
    is_enter[enter_pos] = True
    g_all = np.cumsum(is_enter, dtype=np.int32) - 1
    cyc_thr = thr[enter_pos]
    closed = np.zeros(n_all, dtype=bool)
    closed[:-1] = cyc_thr[1:] == cyc_thr[:-1]
    next_pos = np.append(enter_pos[1:], n_ev)

    def in_cycle(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions that fall inside a cycle of their own thread, and the
        cycle of each."""
        g = g_all[p]
        ok = g >= 0
        ok[ok] = cyc_thr[g[ok]] == thr[p[ok]]
        return p[ok], g[ok]

    def first(name: str) -> np.ndarray:
        p, g = in_cycle(pos_of[name])
        return _first_last(g, p, n_all, last=False)

    def last_before(name: str, limit: np.ndarray) -> np.ndarray:
        p, g = in_cycle(pos_of[name])
        ok = p < limit[g]
        return _first_last(g[ok], p[ok], n_all, last=True)

    exit_pos = first("run_exit")
    has_exit = exit_pos >= 0
    complete = closed & has_exit
    limit = np.where(has_exit, exit_pos, next_pos)

    uexit = last_before("userspace_exit", np.where(has_exit, exit_pos + 1, 0))
    has_reason = uexit >= 0
    reason = np.zeros(n_all, dtype=np.int64)
    if has_reason.any():
        reason[has_reason] = ev["value"].array.take(sel[uexit[has_reason]]).to_numpy(dtype=np.int64, na_value=0)

    dec_p, gd = in_cycle(dec_all)
    dec_rows = sel[dec_p]
    dec_write = ev["write"].array.take(dec_rows).to_numpy(dtype=bool, na_value=False)
    dec_value = ev["value"].array.take(dec_rows).to_numpy(dtype=np.float64, na_value=0.0)
    first_dec = _first_last(gd, dec_p, n_all, last=False)
    # The previous cycle of the same thread, and how it ended.
    prev_same = np.zeros(n_all, dtype=bool)
    prev_same[1:] = cyc_thr[1:] == cyc_thr[:-1]
    prev_reason = np.full(n_all, -1, dtype=np.int64)
    prev_reason[1:] = np.where(prev_same[1:] & has_reason[:-1], reason[:-1], -1)
    first_kexit = first("kvm_exit")
    first_kexit = np.where(first_kexit >= 0, first_kexit, np.iinfo(np.int64).max)
    # Upstream KVM traces a userspace PIO/MMIO *read* when the next KVM_RUN
    # completes it (complete_emulator_pio_in), carrying the data; some hosts
    # (PVM here) trace it at decode time with the data still 0.  Which one
    # this trace shows is read off the data: completions name the previous
    # exit's port, and must not be taken for this exit's decode.
    candidate = ~dec_write & (dec_p == first_dec[gd]) & np.isin(prev_reason[gd], (2, 6)) & (dec_p < first_kexit[gd])
    completions_traced = bool(candidate.any()) and float(np.mean(dec_value[candidate] != 0)) > 0.5
    completion = candidate if completions_traced else np.zeros(len(dec_p), dtype=bool)

    # The exit's own decode: the last one before run_exit that is not a
    # completion, and only when the exit's reason is that decode's (an
    # in-kernel PIO just before a signal interrupts KVM_RUN is not the exit).
    dec_code = code[dec_p]
    before = dec_p < limit[gd]
    cand = ~completion & before
    decode = _first_last(gd[cand], dec_p[cand], n_all, last=True)
    has_dec = decode >= 0
    d_code = code[np.maximum(decode, 0)] if n_ev else np.zeros(n_all, dtype=code.dtype)
    agrees = ~has_reason
    for kind_name, reasons in _REASON_OF_DECODE.items():
        agrees |= (d_code == EVENT_CODE[kind_name]) & np.isin(reason, reasons)
    decode = np.where(has_dec & agrees, decode, -1)
    has_dec = decode >= 0

    kexit = last_before("kvm_exit", limit)
    kentry = last_before("kvm_entry", np.where(kexit >= 0, kexit, 0))
    # Where the exit itself left no decode event, take its completion.
    comp_p = dec_p[completion]
    comp_g = gd[completion]
    comp_of_next = np.full(n_all, -1, dtype=np.int64)
    ok = (comp_g >= 1) & prev_same[comp_g]
    comp_of_next[comp_g[ok] - 1] = comp_p[ok]
    name_pos = np.where(has_dec, decode, comp_of_next)

    t_enter = ts[enter_pos]
    t_next = ts[np.minimum(next_pos, max(n_ev - 1, 0))] if n_ev else t_enter
    t_exit = np.where(has_exit, ts[np.maximum(exit_pos, 0)], t_next) if n_ev else t_enter
    t_dec = (
        np.where(has_dec, ts[np.maximum(decode, 0)], np.where(has_reason, ts[np.maximum(uexit, 0)], t_exit))
        if n_ev
        else t_enter
    )

    # Exit kind: a decode's event name, else the reason's name.
    keep_c = np.flatnonzero(closed)
    has_name = name_pos[keep_c] >= 0
    name_rows = sel[np.maximum(name_pos[keep_c], 0)] if n_ev else keep_c
    name_code = codes[name_rows]
    c_reason = reason[keep_c]
    c_has_reason = has_reason[keep_c]
    reason_names = {int(r): exit_reason_name(int(r)) for r in np.unique(c_reason[c_has_reason & ~has_name])}
    labels = list(DECODE_EVENTS) + ["unknown"] + list(reason_names.values())
    label_idx = np.full(len(keep_c), len(DECODE_EVENTS), dtype=np.int16)
    for i, k in enumerate(DECODE_EVENTS):
        label_idx[has_name & (name_code == EVENT_CODE[k])] = i
    for j, r in enumerate(reason_names):
        label_idx[~has_name & c_has_reason & (c_reason == r)] = len(DECODE_EVENTS) + 1 + j
    kind = pd.Categorical.from_codes(label_idx, categories=pd.Index(labels))

    def named(col: str) -> Any:
        arr = ev[col].array.take(name_rows)
        arr[~has_name] = pd.NA
        return arr

    def opt_time(p: np.ndarray, valid: np.ndarray) -> Any:
        values = ts[np.maximum(p, 0)] if n_ev and valid.any() else np.zeros(len(p), dtype=np.int64)
        return pd.arrays.IntegerArray(values.astype(np.int64), ~valid)

    kx, ke = kexit[keep_c], kentry[keep_c]
    reason_col = pd.array(c_reason, dtype="Int64")
    reason_col[~c_has_reason] = pd.NA
    vcpu_of = np.array([tids[int(t)] for t in sorted_tids], dtype=np.int16)
    c_thr = cyc_thr[keep_c]
    cycles = pd.DataFrame(
        {
            "tid": sorted_tids[c_thr].astype(np.int32),
            "vcpu": vcpu_of[c_thr] if len(vcpu_of) else np.zeros(0, np.int16),
            "start_ns": t_enter[keep_c],
            "end_ns": t_next[keep_c],
            "exit_ns": t_exit[keep_c],
            "decode_ns": t_dec[keep_c],
            "kexit_ns": opt_time(kx, kx >= 0),
            "kentry_ns": opt_time(ke, (ke >= 0) & (kx >= 0)),
            "reason": reason_col,
            "kind": kind,
            "addr": named("addr"),
            "size": named("size"),
            "write": named("write"),
            "complete": complete[keep_c],
        },
        copy=False,
    )
    cycles["lost"] = thread_spans_lost(
        ev, cycles["tid"].to_numpy(), cycles["start_ns"].to_numpy(), cycles["end_ns"].to_numpy()
    )

    # Decode roles, with cycle numbers renumbered to rows of ``cycles``.
    row_of = np.full(n_all, -1, dtype=np.int64)
    row_of[keep_c] = np.arange(len(keep_c))
    role = np.full(len(dec_p), _ROLES.index("kernel"), dtype=np.int8)
    role[completion] = _ROLES.index("completion")
    role[has_dec[gd] & (decode[gd] == dec_p)] = _ROLES.index("exit")
    # Decodes after run_exit cannot be exits the kernel handled: they belong
    # to no exit (a lost run_enter would put them there).
    role[~before & ~completion] = _ROLES.index("stray")
    decodes = pd.DataFrame(
        {
            "tid": tid_all[dec_rows].astype(np.int32),
            "ts_ns": ts[dec_p],
            "kind": pd.Categorical.from_codes(dec_code - EVENT_CODE["pio"], categories=pd.Index(list(DECODE_EVENTS))),
            "addr": ev["addr"].array.take(dec_rows),
            "size": ev["size"].array.take(dec_rows),
            "write": ev["write"].array.take(dec_rows),
            "cycle": row_of[gd],
            "role": pd.Categorical.from_codes(role, categories=pd.Index(list(_ROLES))),
        },
        copy=False,
    )
    return RunCycles(cycles=cycles, decodes=decodes, completions_traced=completions_traced)
