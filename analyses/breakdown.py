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
=========  ==================================================================

``bql_wait`` is the BQL's part of ``lock_wait``.  Off-CPU time inside the
cycle is reported beside the partition (``offcpu_*``), split into blocked on
a lock, blocked on something else, and runnable-but-not-running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.errors import MissingEventsError, VmtraceError
from vmtrace.schema import KVM_EXIT_REASONS, ROLE_VCPU
from vmtrace.trace import Trace

from .intervals import futex_waits, offcpu_spans, overlap_sum, pair_spans

__all__ = ["COMPONENTS", "exit_breakdown", "summarize", "Breakdown", "bql_breakdown"]

#: The partition, in the order reports stack it.
COMPONENTS: tuple[str, ...] = ("guest", "vmexit", "emulator", "dispatch", "lock_wait", "device")

_DECODE = ("pio", "mmio", "msr")


def _vcpu_tids(trace: Trace) -> dict[int, int]:
    tids = trace.vcpu_tids()
    if not tids:
        run = trace.events.loc[trace.events["event"] == "run_enter", "tid"].unique()
        tids = {int(t): i for i, t in enumerate(sorted(run))}
    return tids


def exit_breakdown(trace: Trace) -> pd.DataFrame:
    """One row per complete userspace exit of every vCPU thread.

    Columns: ``tid`` int32, ``vcpu`` int16, ``start_ns``/``end_ns`` int64
    (run_enter to the next run_enter), ``kind`` str (pio, mmio, msr, or the
    KVM exit reason: HLT, INTR, ...), ``addr`` UInt64 (port, GPA or MSR; NA
    otherwise), ``write`` boolean, ``reason`` Int64 (KVM_EXIT_*), then
    int64 nanoseconds ``guest_ns``, ``vmexit_ns``, ``emulator_ns``,
    ``dispatch_ns``, ``lock_wait_ns``, ``bql_wait_ns``, ``device_ns``,
    ``total_ns`` (the partition: the first six sum to ``total_ns``), and
    ``offcpu_lock_ns``, ``offcpu_other_ns``, ``offcpu_runnable_ns``.
    Raises ``MissingEventsError`` when the trace has no KVM_RUN events.
    """
    ev = trace.events
    present = sorted(str(e) for e in ev["event"].unique())
    need = ["run_enter", "run_exit"]
    if not set(need) <= set(present):
        raise MissingEventsError("the exit breakdown", [e for e in need if e not in present], present)
    tids = _vcpu_tids(trace)
    bql_word = trace.bql().get("futex_uaddr")
    other_named = [a for a, n in trace.futex_names().items() if n != "BQL"]
    vcpu_ev = ev[ev["tid"].isin(list(tids))]
    waits = futex_waits(vcpu_ev)
    locks = pair_spans(vcpu_ev, "lock_begin", "lock_acquired", keys=("tid", "name"))
    devices = pair_spans(vcpu_ev, "dispatch_begin", "dispatch_end")
    offcpu = offcpu_spans(vcpu_ev)
    frames = []
    for tid, vcpu in sorted(tids.items()):
        t_ev = vcpu_ev[vcpu_ev["tid"] == tid]
        frame = _thread_exits(
            t_ev,
            waits[waits["tid"] == tid],
            locks[locks["tid"] == tid],
            devices[devices["tid"] == tid],
            offcpu[offcpu["tid"] == tid],
            bql_word,
            other_named,
        )
        frame.insert(0, "vcpu", np.int16(vcpu))
        frame.insert(0, "tid", np.int32(tid))
        frames.append(frame)
    if not frames:
        return _empty_exits()
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values("start_ns", kind="stable").reset_index(drop=True)


_NS_COLS = (
    "guest_ns", "vmexit_ns", "emulator_ns", "dispatch_ns", "lock_wait_ns", "bql_wait_ns",
    "device_ns", "total_ns", "offcpu_lock_ns", "offcpu_other_ns", "offcpu_runnable_ns",
)


def _empty_exits() -> pd.DataFrame:
    df = pd.DataFrame({"tid": pd.Series([], dtype="int32"), "vcpu": pd.Series([], dtype="int16")})
    for c in ("start_ns", "end_ns"):
        df[c] = pd.Series([], dtype="int64")
    df["kind"] = pd.Series([], dtype="object")
    df["addr"] = pd.Series([], dtype="UInt64")
    df["write"] = pd.Series([], dtype="boolean")
    df["reason"] = pd.Series([], dtype="Int64")
    for c in _NS_COLS:
        df[c] = pd.Series([], dtype="int64")
    return df


def _last_before(cycle: np.ndarray, pos: np.ndarray, limit_pos: np.ndarray, n: int) -> np.ndarray:
    """Per cycle, the position of the last marked event before ``limit_pos``
    of its cycle (-1 when none).  ``cycle``/``pos`` describe marked events."""
    out = np.full(n, -1, dtype=np.int64)
    ok = (cycle >= 0) & (pos < limit_pos[np.clip(cycle, 0, n - 1)])
    # Later positions overwrite earlier ones: assignment keeps the last.
    out[cycle[ok]] = pos[ok]
    return out


def _thread_exits(
    ev: pd.DataFrame,
    waits: pd.DataFrame,
    locks: pd.DataFrame,
    devices: pd.DataFrame,
    offcpu: pd.DataFrame,
    bql_word: int | None,
    other_named: list[int] = (),
) -> pd.DataFrame:
    ev = ev.reset_index(drop=True)
    kind = ev["event"].astype(str).to_numpy()
    ts = ev["ts_ns"].to_numpy()
    cycle = np.cumsum(kind == "run_enter") - 1
    enter_pos = np.flatnonzero(kind == "run_enter")
    n = len(enter_pos) - 1  # the last run_enter starts a cycle that never closed
    if n <= 0:
        return _empty_exits().drop(columns=["tid", "vcpu"])
    pos = np.arange(len(ev))
    end_pos = enter_pos[1:]

    exit_pos = np.full(n, -1, dtype=np.int64)
    m = (kind == "run_exit") & (cycle >= 0) & (cycle < n)
    first = pd.Series(pos[m]).groupby(cycle[m]).first()
    exit_pos[first.index.to_numpy()] = first.to_numpy()
    complete = exit_pos >= 0
    # Cycles without a run_exit (lost events) cannot be attributed.
    limit = np.where(complete, exit_pos, end_pos)

    def last_of(mk: np.ndarray, before: np.ndarray) -> np.ndarray:
        mk = mk & (cycle < n)
        return _last_before(cycle[mk], pos[mk], before, n)

    uexit = last_of(kind == "userspace_exit", np.where(complete, exit_pos + 1, 0))
    reason = np.full(n, -1, dtype=np.int64)
    ok_u = uexit >= 0
    value = ev["value"].to_numpy(dtype="float64", na_value=-1)
    reason[ok_u] = value[uexit[ok_u]].astype(np.int64)

    # Upstream KVM traces a userspace PIO/MMIO *read* when the next KVM_RUN
    # completes it (complete_emulator_pio_in), carrying the data; some hosts
    # (PVM here) trace it at decode time with the data still 0.  Which one
    # this trace shows is read off the data: completions name the previous
    # exit's port, and must not be taken for this exit's decode.
    is_dec = np.isin(kind, _DECODE) & (cycle >= 0) & (cycle < n)
    is_read = ~ev["write"].fillna(False).to_numpy(dtype=bool)
    first_dec = np.full(n, -1, dtype=np.int64)
    fd = pd.Series(pos[is_dec]).groupby(cycle[is_dec]).first()
    first_dec[fd.index.to_numpy()] = fd.to_numpy()
    prev_reason = np.concatenate(([-1], reason[:-1]))
    first_kexit = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    ke = (kind == "kvm_exit") & (cycle >= 0) & (cycle < n)
    if ke.any():
        fk = pd.Series(pos[ke]).groupby(cycle[ke]).first()
        first_kexit[fk.index.to_numpy()] = fk.to_numpy()
    cyc = np.clip(cycle, 0, max(n - 1, 0))
    candidate = (
        is_dec & is_read & (pos == first_dec[cyc]) & np.isin(prev_reason[cyc], (2, 6)) & (pos < first_kexit[cyc])
    )
    completion = candidate if _reads_traced_at_completion(value[candidate]) else np.zeros_like(candidate)
    decode = last_of(is_dec & ~completion, limit)
    kexit = last_of(kind == "kvm_exit", limit)
    kentry = last_of(kind == "kvm_entry", np.where(kexit >= 0, kexit, 0))
    # Where the exit itself left no decode event, take its completion.
    comp_of_next = np.full(n, -1, dtype=np.int64)
    cp = np.flatnonzero(completion)
    comp_of_next[cycle[cp] - 1] = cp
    name_pos = np.where(decode >= 0, decode, comp_of_next)

    t_enter = ts[enter_pos[:n]]
    t_next = ts[end_pos]
    t_exit = np.where(complete, ts[np.clip(exit_pos, 0, None)], t_next)
    has_dec = decode >= 0
    t_dec = np.where(has_dec, ts[np.clip(decode, 0, None)], np.where(uexit >= 0, ts[np.clip(uexit, 0, None)], t_exit))
    has_guest = (kexit >= 0) & (kentry >= 0)
    guest = np.where(has_guest, ts[np.clip(kexit, 0, None)] - ts[np.clip(kentry, 0, None)], 0)
    vmexit = t_dec - t_enter - guest
    emulator = t_exit - t_dec

    # Userspace part: run_exit -> next run_enter.
    lock_s = locks["start_ns"].to_numpy(dtype=np.int64)
    lock_e = locks["end_ns"].to_numpy(dtype=np.int64)
    is_bql_lock = (locks["name"].astype(str) == "BQL").to_numpy() if len(locks) else np.zeros(0, bool)
    lock_all = overlap_sum(t_exit, t_next, lock_s, lock_e)
    lock_bql = overlap_sum(t_exit, t_next, lock_s[is_bql_lock], lock_e[is_bql_lock])
    # Futex waits inside a reported lock span are that lock's, not another.
    w_s = waits["start_ns"].to_numpy(dtype=np.int64)
    w_e = waits["end_ns"].to_numpy(dtype=np.int64)
    inside = _inside(w_s, lock_s, lock_e)
    w_addr = waits["uaddr"].to_numpy(dtype="uint64", na_value=0)
    w_bql = (w_addr == np.uint64(bql_word)) if bql_word else np.zeros(len(waits), bool)
    free_bql = ~inside & w_bql
    free_other = ~inside & ~w_bql
    bql_futex = overlap_sum(t_exit, t_next, w_s[free_bql], w_e[free_bql])
    other_futex = overlap_sum(t_exit, t_next, w_s[free_other], w_e[free_other])
    # A thread inside a BQL span can block on another lock the VMM named
    # (the reference VMM re-takes the GIL after the BQL's futex returns):
    # that time is the other lock's, not the BQL's.
    in_bql = _inside(w_s, lock_s[is_bql_lock], lock_e[is_bql_lock])
    nested_other = in_bql & np.isin(w_addr, np.asarray(other_named, dtype=np.uint64))
    bql_wait = lock_bql + bql_futex - overlap_sum(t_exit, t_next, w_s[nested_other], w_e[nested_other])
    lock_wait = lock_all + bql_futex + other_futex
    device = overlap_sum(t_exit, t_next, devices["start_ns"].to_numpy(dtype=np.int64),
                         devices["end_ns"].to_numpy(dtype=np.int64))
    user = t_next - t_exit
    # Spans can only overlap when events were lost; never let the remainder
    # go negative: shrink device first, as the least trusted span.
    device = np.minimum(device, np.maximum(user - lock_wait, 0))
    lock_wait = np.minimum(lock_wait, user)
    bql_wait = np.minimum(bql_wait, lock_wait)
    dispatch = user - lock_wait - device

    # Off-CPU overlay.
    off_s = offcpu["start_ns"].to_numpy(dtype=np.int64)
    off_e = offcpu["end_ns"].to_numpy(dtype=np.int64)
    runnable = offcpu["runnable"].to_numpy(dtype=bool)
    in_wait = _inside(off_s, w_s, w_e) | _inside(off_s, lock_s, lock_e)
    off_run = overlap_sum(t_enter, t_next, off_s[runnable], off_e[runnable])
    off_lock = overlap_sum(t_enter, t_next, off_s[~runnable & in_wait], off_e[~runnable & in_wait])
    off_other = overlap_sum(t_enter, t_next, off_s[~runnable & ~in_wait], off_e[~runnable & ~in_wait])

    has_name = name_pos >= 0
    name_idx = np.clip(name_pos, 0, None)
    exit_kind = np.array(
        [kind[p] if h else _reason_name(r) for p, h, r in zip(name_idx, has_name, reason)], dtype=object
    )
    addr = ev["addr"].array.take(name_idx) if n else pd.array([], dtype="UInt64")
    addr[~has_name] = pd.NA
    write_col = ev["write"].array.take(name_idx) if n else pd.array([], dtype="boolean")
    write_col[~has_name] = pd.NA
    out = pd.DataFrame(
        {
            "start_ns": t_enter.astype(np.int64),
            "end_ns": t_next.astype(np.int64),
            "kind": exit_kind,
            "addr": addr,
            "write": write_col,
            "reason": pd.array(np.where(reason >= 0, reason, 0), dtype="Int64"),
            "guest_ns": guest.astype(np.int64),
            "vmexit_ns": vmexit.astype(np.int64),
            "emulator_ns": emulator.astype(np.int64),
            "dispatch_ns": dispatch.astype(np.int64),
            "lock_wait_ns": lock_wait.astype(np.int64),
            "bql_wait_ns": bql_wait.astype(np.int64),
            "device_ns": device.astype(np.int64),
            "total_ns": (t_next - t_enter).astype(np.int64),
            "offcpu_lock_ns": off_lock,
            "offcpu_other_ns": off_other,
            "offcpu_runnable_ns": off_run,
        }
    )
    out.loc[reason < 0, "reason"] = pd.NA
    return out[complete].reset_index(drop=True)


def _reads_traced_at_completion(values: np.ndarray) -> bool:
    """Decode-time read events carry 0 (the data is not there yet); most
    completion events carry data.  A majority of non-zero values says the
    kernel traces reads at completion."""
    return len(values) > 0 and float(np.mean(values != 0)) > 0.5


def _reason_name(reason: int) -> str:
    if reason < 0:
        return "unknown"
    return KVM_EXIT_REASONS.get(int(reason), f"reason_{reason}")


def _inside(points: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Whether each point lies inside one of the disjoint spans [s, e)."""
    if len(s) == 0 or len(points) == 0:
        return np.zeros(len(points), dtype=bool)
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    idx = np.searchsorted(s, points, side="right") - 1
    ok = idx >= 0
    res = np.zeros(len(points), dtype=bool)
    res[ok] = points[ok] < e[idx[ok]]
    return res


# ----------------------------------------------------------------------------
# Summaries


@dataclass
class Breakdown:
    """The BQL breakdown of one trace, in cycles (see ``bql_breakdown``)."""

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
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "exits": int(len(self.exits)),
            "lost_events": self.lost_events,
            "lost_per_cpu": self.lost_per_cpu,
            "tsc_hz": self.tsc_hz,
            "kvm_flavour": self.kvm_flavour,
            "components": self.components,
            "percentiles": self.percentiles,
            "bql": self.bql,
            "by_kind": _records(self.by_kind),
            "by_vcpu": _records(self.by_vcpu),
            "by_role": _records(self.by_role),
            "guest_cycles_per_op": self.guest_cycles_per_op,
            "notes": self.notes,
            "backend": self.meta.get("backend"),
            "mode": self.meta.get("mode"),
            "vmm": (self.meta.get("target") or {}).get("vmm"),
        }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in df.to_dict(orient="records"):
        out.append({k: (None if (isinstance(v, float) and v != v) or v is pd.NA else
                        (int(v) if isinstance(v, (np.integer,)) else
                         float(v) if isinstance(v, (np.floating,)) else v)) for k, v in row.items()})
    return out


_SUMMARY_COLS = ("guest", "vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "total")


def summarize(exits: pd.DataFrame, tsc_hz: int) -> pd.DataFrame:
    """Mean cycles per exit per component, plus count and total p50/p99:
    a one-row DataFrame when ``exits`` is one group (use with groupby)."""
    k = tsc_hz / 1e9
    row: dict[str, float] = {"exits": float(len(exits))}
    for c in _SUMMARY_COLS:
        row[c] = float(exits[f"{c}_ns"].mean() * k) if len(exits) else 0.0
    row["p50"] = float(exits["total_ns"].quantile(0.5) * k) if len(exits) else 0.0
    row["p99"] = float(exits["total_ns"].quantile(0.99) * k) if len(exits) else 0.0
    return pd.DataFrame([row])


def _grouped(exits: pd.DataFrame, keys: list[str], tsc_hz: int) -> pd.DataFrame:
    if exits.empty:
        return pd.DataFrame(columns=keys + ["exits", *_SUMMARY_COLS, "p50", "p99"])
    parts = []
    for key, grp in exits.groupby(keys, dropna=False, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        s = summarize(grp, tsc_hz)
        for name, val in zip(keys, key):
            s.insert(0, name, [val])
        parts.append(s)
    out = pd.concat(parts, ignore_index=True)
    out["exits"] = out["exits"].astype(int)
    return out.sort_values("exits", ascending=False, kind="stable").reset_index(drop=True)


def timed_loop_exits(exits: pd.DataFrame, port: int) -> pd.DataFrame:
    """The exits of a benchmark guest's timed loop: per vCPU, the longest run
    of consecutive exits on ``port``.  The guest's own cycles-per-operation
    covers exactly that loop, so this is what to compare it with (boot-time
    and calibration accesses to the same port are left out)."""
    parts = []
    for _vcpu, grp in exits.groupby("vcpu", sort=True):
        on = (grp["addr"] == port).fillna(False).to_numpy(dtype=np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], on, [0]))))
        if len(edges) == 0:
            continue
        starts, ends = edges[::2], edges[1::2]
        longest = int(np.argmax(ends - starts))
        parts.append(grp.iloc[starts[longest]:ends[longest]])
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
    loop_port = bench.get("pm_port") if bench.get("bench") == "inl_pmtimer" else None
    if timed_loop and port is None and loop_port:
        exits = timed_loop_exits(exits, int(loop_port))
        notes.append(
            f"components cover the guest's timed loop: per vCPU the longest run of consecutive "
            f"exits on port {int(loop_port):#x} ({len(exits):,} exits); --all-exits for every exit"
        )
    elif port is not None:
        exits = exits[(exits["addr"] == port).fillna(False)].reset_index(drop=True)
    comp = summarize(exits, tsc).iloc[0].to_dict()
    components = {c: float(comp[c]) for c in _SUMMARY_COLS}
    k = tsc / 1e9
    percentiles = {
        c: {
            f"p{q}": float(exits[f"{c}_ns"].quantile(q / 100) * k) if len(exits) else 0.0
            for q in (50, 90, 99)
        }
        for c in _SUMMARY_COLS
    }
    by_kind = _grouped(exits.assign(addr=exits["addr"].astype("Float64")), ["kind", "addr"], tsc)
    by_kind["addr"] = by_kind["addr"].map(lambda a: None if pd.isna(a) else hex(int(a)))
    by_vcpu = _grouped(exits, ["vcpu"], tsc)
    threads = trace.threads
    role = exits["tid"].map(dict(zip(threads["tid"], threads["role"]))).fillna(ROLE_VCPU)
    by_role = _grouped(exits.assign(role=role), ["role"], tsc)
    bql = dict(trace.bql())
    bql["futex_uaddr"] = hex(bql["futex_uaddr"]) if bql.get("futex_uaddr") else None
    lost = trace.meta.get("lost_events") or {}
    if not (exits["device_ns"] > 0).any() if len(exits) else True:
        notes.append(
            "device time is not separated from dispatch in this trace (record with --precise, "
            "or a VMM that reports its dispatch through vmtrace.probes)"
        )
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
    )
