"""Per-thread states over time: what each thread was doing, span by span.

The timeline is the exit breakdown laid out on the time axis.  It uses the
same events and the same rules as ``analyses.partition`` (KVM_RUN cycles,
decode events, lock spans, free futex waits, device spans, sched switches),
so over any exit of a vCPU thread the time in each state equals that exit's
component in ``exit_breakdown``:

===============  ============================================================
guest            last kvm_entry -> kvm_exit of the exit (hosts that fire them)
vmexit           run_enter -> decode, less guest
emulator         decode -> run_exit
dispatch         the VMM's exit path: run_exit -> next run_enter, less the
                 waits and device spans below
device           dispatch_begin -> dispatch_end
bql_wait         waiting for the BQL (its lock span, or a futex wait on its
                 word outside any lock span)
lock_wait        waiting for any other lock (a named lock span, or a futex
                 wait on another word); ``bql_wait + lock_wait`` is the
                 breakdown's ``lock_wait_ns``, ``bql_wait`` its ``bql_wait_ns``
running          a non-vCPU thread (main loop, IOThread) neither waiting nor
                 in a device callback
unattributed     a vCPU thread outside a complete exit: before its first
                 KVM_RUN, inside the last (still open) one, or in a cycle whose
                 run_exit was lost
===============  ============================================================

Off-CPU time is not a state of its own but an attribute of every span
(``sched``: on, runnable, blocked), because the breakdown reports it beside
the partition, not inside it: a span is cut where the thread is switched out
or in, so ``sched == "runnable"`` over an exit sums to ``offcpu_runnable_ns``
and ``"blocked"`` to ``offcpu_lock_ns + offcpu_other_ns``.

Where events were lost, two spans of one kind can overlap; the breakdown
then adds both and clips, while a timeline can show only one state at a
time.  The timeline paints by priority (kernel parts over lock waits over
device over dispatch; within one kind the earlier span wins), so the two
agree exactly whenever each thread's spans are well nested, which is every
trace without lost events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from vmtrace.trace import Trace

from . import cache
from .holders import bql_holder_segments
from .intervals import pair_spans
from .partition import exit_breakdown
from .runs import vcpu_threads
from .waits import LockWaits, trace_lock_waits

__all__ = ["STATES", "SCHED", "STATE_GROUP", "timeline", "display_state", "state_durations"]

#: Thread states, in the order reports stack and colour them.
STATES: tuple[str, ...] = (
    "guest",
    "vmexit",
    "emulator",
    "dispatch",
    "device",
    "bql_wait",
    "lock_wait",
    "running",
    "unattributed",
)
#: Scheduler state of a span: on a CPU, off it but runnable (waiting for a
#: CPU: oversubscription), or off it and blocked (sleeping: a lock, I/O ...).
SCHED: tuple[str, ...] = ("on", "runnable", "blocked")

#: The coarse grouping a reader asks about first.
STATE_GROUP: dict[str, str] = {
    "guest": "guest",
    "vmexit": "kernel",
    "emulator": "kernel",
    "dispatch": "userspace",
    "device": "userspace",
    "bql_wait": "BQL wait",
    "lock_wait": "other lock wait",
    "running": "running",
    "unattributed": "unattributed",
}

_S = {s: i for i, s in enumerate(STATES)}


@dataclass
class _Details:
    """Interned detail strings, so spans carry small integer codes until the
    result becomes one categorical column."""

    names: list[str] = field(default_factory=lambda: [""])
    index: dict[str, int] = field(default_factory=lambda: {"": 0})

    def code(self, text: str) -> int:
        got = self.index.get(text)
        if got is None:
            got = self.index[text] = len(self.names)
            self.names.append(text)
        return got

    def codes(self, texts: pd.Series) -> np.ndarray:
        """Codes for a column of strings, interning each distinct one once."""
        if len(texts) == 0:
            return np.zeros(0, dtype=np.int64)
        uniq, inv = np.unique(texts.astype(str).to_numpy(), return_inverse=True)
        table = np.array([self.code(u) for u in uniq], dtype=np.int64)
        return table[inv]


def _exit_labels(exits: pd.DataFrame, details: _Details) -> np.ndarray:
    """Detail code per exit: ``pio 0x608 read``, ``HLT``, ..."""
    if exits.empty:
        return np.zeros(0, dtype=np.int64)
    addr = exits["addr"].astype("Float64")
    direction = exits["write"].map({True: " write", False: " read"}).astype(object).where(exits["write"].notna(), "")
    hexa = pd.Series("", index=exits.index, dtype=object)
    has = addr.notna().to_numpy()
    # Formatting runs once per distinct address, not once per exit.
    uniq = pd.unique(addr[has].astype("int64"))
    fmt = {int(a): f" {int(a):#x}" for a in uniq}
    hexa[has] = addr[has].astype("int64").map(fmt)
    return details.codes(exits["kind"].astype(str) + hexa + direction)


def _disjoint(s: np.ndarray, e: np.ndarray, *attrs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Make one kind of span disjoint: sorted by start, each span begins no
    earlier than every earlier span ended (the earlier span wins), empties
    dropped."""
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    attrs = tuple(a[order] for a in attrs)
    if len(s):
        prev_end = np.maximum.accumulate(e)
        s = np.maximum(s, np.concatenate(([s[0]], prev_end[:-1])))
    keep = s < e
    return (s[keep], e[keep], *(a[keep] for a in attrs))


def _covering(seg_s: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each segment start, the index of the disjoint span covering it.

    Segments are cut at every span edge, so a span covering a segment's
    start covers all of it."""
    idx = np.searchsorted(s, seg_s, side="right") - 1
    safe = np.clip(idx, 0, max(len(s) - 1, 0))
    cov = (idx >= 0) & (e[safe] > seg_s) if len(s) else np.zeros(len(seg_s), dtype=bool)
    return cov, safe


Layer = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # start, end, state code, detail code


def _layer(start: npt.ArrayLike, end: npt.ArrayLike, state: int | np.ndarray, detail: int | np.ndarray) -> Layer:
    s = np.asarray(start, dtype=np.int64)
    e = np.asarray(end, dtype=np.int64)
    n = len(s)
    st = np.broadcast_to(np.asarray(state, dtype=np.int64), (n,)).copy()
    dt = np.broadcast_to(np.asarray(detail, dtype=np.int64), (n,)).copy()
    return s, e, st, dt


def _paint(
    lo: int,
    hi: int,
    layers: list[Layer],
    off: tuple[np.ndarray, np.ndarray, np.ndarray],
    exit_iv: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> pd.DataFrame:
    """Cut [lo, hi) at every edge, give each piece the state of the highest
    layer covering it (``layers`` go from lowest to highest priority), its
    scheduler state and exit, then merge neighbours that agree."""
    edges = [np.array([lo, hi], dtype=np.int64)]
    for s, e, _, _ in layers:
        edges += [s, e]
    edges += [off[0], off[1], exit_iv[0], exit_iv[1]]
    bounds = np.unique(np.concatenate(edges))
    bounds = bounds[(bounds >= lo) & (bounds <= hi)]
    seg_s, seg_e = bounds[:-1], bounds[1:]
    n = len(seg_s)
    state = np.full(n, -1, dtype=np.int64)
    detail = np.zeros(n, dtype=np.int64)
    for layer in layers:
        s, e, st, dt = _disjoint(*layer)
        cov, idx = _covering(seg_s, s, e)
        state[cov] = st[idx[cov]]
        detail[cov] = dt[idx[cov]]
    o_s, o_e, o_kind = _disjoint(*off)
    cov, idx = _covering(seg_s, o_s, o_e)
    sched = np.zeros(n, dtype=np.int64)
    sched[cov] = o_kind[idx[cov]]
    x_s, x_e, x_row = _disjoint(*exit_iv)
    cov, idx = _covering(seg_s, x_s, x_e)
    exit_row = np.full(n, -1, dtype=np.int64)
    exit_row[cov] = x_row[idx[cov]]

    keep = state >= 0
    seg_s, seg_e, state, detail, sched, exit_row = (a[keep] for a in (seg_s, seg_e, state, detail, sched, exit_row))
    if len(seg_s) == 0:
        return pd.DataFrame(
            {"start_ns": seg_s, "end_ns": seg_e, "state": state, "detail": detail, "sched": sched, "exit": exit_row}
        )
    new = np.ones(len(seg_s), dtype=bool)
    new[1:] = (
        (seg_s[1:] != seg_e[:-1])
        | (state[1:] != state[:-1])
        | (detail[1:] != detail[:-1])
        | (sched[1:] != sched[:-1])
        | (exit_row[1:] != exit_row[:-1])
    )
    first = np.flatnonzero(new)
    last = np.concatenate((first[1:] - 1, [len(seg_s) - 1]))
    return pd.DataFrame(
        {
            "start_ns": seg_s[first],
            "end_ns": seg_e[last],
            "state": state[first],
            "detail": detail[first],
            "sched": sched[first],
            "exit": exit_row[first],
        }
    )


def _wait_layers(rule: LockWaits, names: dict[int, str], details: _Details) -> list[Layer]:
    """The lock-wait layers of one thread, lowest priority first, by the
    rule of ``analyses.waits``: other locks' spans and free waits, then the
    BQL's, then waits on another named lock nested in a BQL span, which
    paint over the BQL's span as that lock's."""
    lock_name = pd.Series(rule.lock_name, dtype=object).astype(str)
    is_bql = rule.lock_bql
    lock_detail = details.codes(lock_name)
    w_s, w_e, w_addr = rule.wait_start, rule.wait_end, rule.wait_addr
    w_text = pd.Series(w_addr).map(
        {
            int(a): (f"{names[int(a)]} (futex {int(a):#x})" if int(a) in names else f"futex {int(a):#x}")
            for a in np.unique(w_addr)
        }
    )
    w_detail = details.codes(w_text) if len(w_addr) else np.zeros(0, dtype=np.int64)

    free_other, free_bql, nested_other = rule.free_other, rule.free_bql, rule.wait_nested
    other = _layer(
        np.concatenate((rule.lock_start[~is_bql], w_s[free_other])),
        np.concatenate((rule.lock_end[~is_bql], w_e[free_other])),
        _S["lock_wait"],
        np.concatenate((lock_detail[~is_bql], w_detail[free_other])),
    )
    bql = _layer(
        np.concatenate((rule.lock_start[is_bql], w_s[free_bql])),
        np.concatenate((rule.lock_end[is_bql], w_e[free_bql])),
        _S["bql_wait"],
        np.concatenate((lock_detail[is_bql], w_detail[free_bql])),
    )
    nested = _layer(w_s[nested_other], w_e[nested_other], _S["lock_wait"], w_detail[nested_other])
    return [other, bql, nested]


def _device_layer(devices: pd.DataFrame, details: _Details) -> Layer:
    if devices.empty:
        return _layer(np.zeros(0), np.zeros(0), _S["device"], 0)
    name = devices["name"].astype(object)
    addr = devices["addr"].astype("Float64")
    fallback = addr.map(lambda a: "" if pd.isna(a) else f"{int(a):#x}")
    text = name.where(name.notna() & (name.astype(str) != ""), fallback).astype(str)
    return _layer(devices["start_ns"], devices["end_ns"], _S["device"], details.codes(text))


def timeline(trace: Trace, exits: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-thread states over time.

    ``trace`` is a ``Trace``; ``exits`` is ``exit_breakdown(trace)`` when the
    caller already has it (it is computed otherwise; pass the unfiltered
    result, since the ``exit`` column indexes its rows).

    Returns one row per span, sorted by ``tid`` then ``start_ns``: ``tid``
    int32, ``start_ns``/``end_ns`` int64, ``state`` category (``STATES``),
    ``detail`` category (the exit, e.g. ``pio 0x608 read``; the lock, e.g.
    ``BQL`` or ``futex 0x7f...``; the MemoryRegion of a device callback),
    ``sched`` category (``SCHED``), ``exit`` int64 (position in ``exits``
    of the exit the span belongs to, -1 outside an exit) and ``holder``
    category (for ``bql_wait`` spans, what the BQL's holder was doing and
    its thread, ``main loop [1234]``, from ``analyses.holders``: a wait is
    cut where the holder changes; "" elsewhere).  A thread's spans are disjoint
    and cover its first to its last event.  vCPU threads (or, when the trace
    names none, every thread that calls KVM_RUN) take the exit states;
    other threads are ``running``, ``device``, ``bql_wait`` or
    ``lock_wait``.  Raises ``MissingEventsError`` (from the breakdown) when
    the trace has no KVM_RUN events.
    """
    ev = trace.events
    if exits is None:
        exits = exit_breakdown(trace)
    vcpus = vcpu_threads(trace)
    names = trace.futex_names()
    details = _Details()
    exit_detail = _exit_labels(exits, details)
    unattributed = details.code("outside a complete exit")

    rule = trace_lock_waits(trace)
    devices = pair_spans(ev, "dispatch_begin", "dispatch_end")
    offcpu = cache.offcpu_spans(trace)
    # Collector markers that belong to no thread (tid < 0) have no timeline.
    own = ev[ev["tid"].to_numpy() >= 0]
    extent = own.groupby("tid", sort=True)["ts_ns"].agg(["min", "max"])

    seg = bql_holder_segments(trace)
    seg_label = (
        np.where(
            seg["holder"].to_numpy() >= 0,
            seg["activity"].astype(str) + " [" + seg["holder"].astype(str) + "]",
            seg["activity"].astype(str),
        )
        if len(seg)
        else np.zeros(0, dtype=object)
    )
    holders = _Details()
    seg_code = holders.codes(pd.Series(seg_label, dtype=object))
    seg_tid = seg["tid"].to_numpy(dtype=np.int64)

    frames = []
    for tid, lo, hi in zip(
        extent.index.to_numpy(dtype=np.int64).tolist(), extent["min"].tolist(), extent["max"].tolist(), strict=True
    ):
        if hi <= lo:
            continue
        t_dev = devices[devices["tid"] == tid]
        t_off = offcpu[offcpu["tid"] == tid]
        off = (
            t_off["start_ns"].to_numpy(dtype=np.int64),
            t_off["end_ns"].to_numpy(dtype=np.int64),
            np.where(t_off["runnable"].to_numpy(dtype=bool), 1, 2).astype(np.int64),
        )
        waits_layers = _wait_layers(rule.of_thread(tid), names, details)
        device = _device_layer(t_dev, details)
        if tid in vcpus:
            mine = (exits["tid"] == tid).to_numpy()
            layers, exit_iv = _vcpu_layers(ev, tid, exits[mine], np.flatnonzero(mine), exit_detail[mine])
            base = _layer([lo], [hi], _S["unattributed"], unattributed)
            # Kernel parts lie over everything: nothing userspace reports can
            # happen inside KVM_RUN, so a wait overlapping one is a lost event.
            layers = [base, layers[0], device, *waits_layers, *layers[1:]]
        else:
            base = _layer([lo], [hi], _S["running"], 0)
            layers = [base, device, *waits_layers]
            exit_iv = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        frame = _paint(int(lo), int(hi), layers, off, exit_iv)
        mine_seg = seg_tid == tid
        frame = _with_holders(
            frame,
            seg["start_ns"].to_numpy(dtype=np.int64)[mine_seg],
            seg["end_ns"].to_numpy(dtype=np.int64)[mine_seg],
            seg_code[mine_seg],
        )
        frame.insert(0, "tid", np.int32(tid))
        frames.append(frame)

    cols = ["tid", "start_ns", "end_ns", "state", "detail", "sched", "exit", "holder"]
    if not frames:
        out = pd.DataFrame({c: pd.Series([], dtype="int64") for c in cols}).astype({"tid": "int32"})
    else:
        out = pd.concat(frames, ignore_index=True)
    out["state"] = pd.Categorical.from_codes(out["state"].to_numpy(dtype=np.int64), categories=pd.Index(list(STATES)))
    out["detail"] = pd.Categorical.from_codes(
        out["detail"].to_numpy(dtype=np.int64), categories=pd.Index(details.names)
    )
    out["sched"] = pd.Categorical.from_codes(out["sched"].to_numpy(dtype=np.int64), categories=pd.Index(list(SCHED)))
    out["holder"] = pd.Categorical.from_codes(
        out["holder"].to_numpy(dtype=np.int64), categories=pd.Index(holders.names)
    )
    return out[cols]


def _with_holders(frame: pd.DataFrame, s: np.ndarray, e: np.ndarray, code: np.ndarray) -> pd.DataFrame:
    """Cut one thread's ``bql_wait`` spans where the BQL's holder changes
    (``analyses.holders``) and give every span a ``holder`` code (0: none)."""
    frame["holder"] = np.zeros(len(frame), dtype=np.int64)
    bql = np.flatnonzero(frame["state"].to_numpy() == _S["bql_wait"])
    if len(s) == 0 or len(bql) == 0:
        return frame
    order = np.argsort(s, kind="stable")
    s, e, code = s[order], e[order], code[order]
    edges = np.unique(np.concatenate((s, e)))
    b_s = frame["start_ns"].to_numpy(dtype=np.int64)[bql]
    b_e = frame["end_ns"].to_numpy(dtype=np.int64)[bql]
    lo = np.searchsorted(edges, b_s, side="right")
    n = np.maximum(np.searchsorted(edges, b_e, side="left") - lo, 0)
    row = np.repeat(np.arange(len(bql)), n + 1)
    k = np.arange(len(row)) - np.repeat(np.cumsum(n + 1) - (n + 1), n + 1)
    cut = lo[row] + k  # the edge a piece starts at (k > 0) or ends at (k < n)
    top = len(edges) - 1
    p_s = np.where(k == 0, b_s[row], edges[np.clip(cut - 1, 0, top)])
    p_e = np.where(k == n[row], b_e[row], edges[np.clip(cut, 0, top)])
    cov, idx = _covering(p_s, s, e)
    pieces = frame.iloc[bql[row]].reset_index(drop=True)
    pieces["start_ns"] = p_s
    pieces["end_ns"] = p_e
    pieces["holder"] = np.where(cov, code[idx], 0)
    keep = np.ones(len(frame), dtype=bool)
    keep[bql] = False
    out = pd.concat([frame[keep], pieces[p_e > p_s]], ignore_index=True)
    return out.sort_values("start_ns", kind="stable").reset_index(drop=True)


def _vcpu_layers(
    ev: pd.DataFrame, tid: int, ex: pd.DataFrame, rows: np.ndarray, label: np.ndarray
) -> tuple[list[Layer], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The exits of one vCPU thread as layers: the userspace part (dispatch,
    lowest), then vmexit+emulator, then guest; and each exit's interval."""
    t_enter = ex["start_ns"].to_numpy(dtype=np.int64)
    t_next = ex["end_ns"].to_numpy(dtype=np.int64)
    guest = ex["guest_ns"].to_numpy(dtype=np.int64)
    # The boundaries themselves: components less their runnable_ns do not
    # add up to them.
    t_dec = ex["decode_ns"].to_numpy(dtype=np.int64)
    t_exit = ex["exit_ns"].to_numpy(dtype=np.int64)
    # The breakdown measures guest from the exit's last kvm_exit back to the
    # kvm_entry before it; find that kvm_exit to place the span, and keep
    # it inside the kernel part so vmexit keeps exactly its share.
    kx = ev.loc[(ev["tid"] == tid) & (ev["event"] == "kvm_exit"), "ts_ns"].to_numpy(dtype=np.int64)
    g_end = t_dec.copy()
    if len(kx):
        i = np.searchsorted(kx, t_exit, side="right") - 1
        found = i >= 0
        g_end[found] = kx[i[found]]
    g_end = np.clip(g_end, t_enter + guest, t_dec)
    g_start = g_end - guest
    has_g = guest > 0
    layers = [
        _layer(t_exit, t_next, _S["dispatch"], label),
        _layer(
            np.concatenate((t_enter, t_dec)),
            np.concatenate((t_dec, t_exit)),
            np.concatenate((np.full(len(ex), _S["vmexit"]), np.full(len(ex), _S["emulator"]))),
            np.concatenate((label, label)),
        ),
        _layer(g_start[has_g], g_end[has_g], _S["guest"], label[has_g]),
    ]
    return layers, (t_enter, t_next, rows.astype(np.int64))


def display_state(spans: pd.DataFrame) -> pd.Series:
    """What a chart colours a span by: its state, unless the thread was off
    CPU, which a reader must see first ("off-CPU runnable" / "off-CPU
    blocked")."""
    st = spans["state"].astype(str)
    sched = spans["sched"].astype(str)
    return st.where(sched == "on", "off-CPU " + sched)


def state_durations(spans: pd.DataFrame) -> pd.DataFrame:
    """Nanoseconds per exit (rows: ``exit``) in each state (columns:
    ``STATES``) and scheduler state (``sched_runnable``, ``sched_blocked``):
    the timeline's side of the agreement with ``exit_breakdown``."""
    inside = spans[spans["exit"] >= 0]
    dur = inside["end_ns"] - inside["start_ns"]
    by_state = dur.groupby([inside["exit"], inside["state"]], observed=False).sum().unstack(fill_value=0)
    by_sched = dur.groupby([inside["exit"], inside["sched"]], observed=False).sum().unstack(fill_value=0)
    out = by_state.reindex(columns=list(STATES), fill_value=0)
    out["sched_runnable"] = by_sched.get("runnable", 0)
    out["sched_blocked"] = by_sched.get("blocked", 0)
    return out.astype("int64")
