"""Exit statistics: what ``perf kvm stat`` reports, on any host.

``perf kvm stat`` pairs every ``kvm_exit`` with the next ``kvm_entry`` and
reports, per exit reason (and per port / address for I/O exits), the count,
its share, the share of exit-handling time, and min/mean/max time.  Hosts
without kvm_entry/kvm_exit (the PVM hosts this project runs on) make it
report nothing; this analysis then builds the same tables from the KVM_RUN
boundaries and the kernel's decode events:

- where kvm_exit/kvm_entry fire, every exit is one row: kvm_exit -> the next
  kvm_entry of the thread, its hardware reason (VMX or SVM), the port or
  address a decode event inside names, and whether it went to userspace (a
  run_exit inside it);
- where they do not, each userspace exit is a row timed from its decode
  (the kernel's first sight of the exit) to the next run_enter, and each exit
  the kernel handled itself (a decode with no return to userspace) is a row
  with a count and no time: the trace cannot see when it ended.

The hardware exit reason tables follow the Intel SDM (vol. 3, appendix C,
basic exit reasons) and the AMD APM (vol. 2, appendix C, SVM exit codes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.errors import MissingEventsError
from vmtrace.trace import Trace

from . import cache
from .intervals import events_usable, lost_windows, missing_events, present_events, rank_in, thread_spans_lost
from .runs import DECODE_EVENTS, event_codes, exit_reason_name, run_cycles, vcpu_threads

__all__ = ["VMX_EXIT_REASONS", "SVM_EXIT_CODES", "exit_events", "exit_table", "Exits", "exit_stats"]

VMX_EXIT_REASONS: dict[int, str] = {
    0: "EXCEPTION_NMI",
    1: "EXTERNAL_INTERRUPT",
    2: "TRIPLE_FAULT",
    3: "INIT_SIGNAL",
    4: "SIPI_SIGNAL",
    7: "INTERRUPT_WINDOW",
    8: "NMI_WINDOW",
    9: "TASK_SWITCH",
    10: "CPUID",
    12: "HLT",
    13: "INVD",
    14: "INVLPG",
    15: "RDPMC",
    16: "RDTSC",
    18: "VMCALL",
    19: "VMCLEAR",
    20: "VMLAUNCH",
    21: "VMPTRLD",
    22: "VMPTRST",
    23: "VMREAD",
    24: "VMRESUME",
    25: "VMWRITE",
    26: "VMOFF",
    27: "VMON",
    28: "CR_ACCESS",
    29: "DR_ACCESS",
    30: "IO_INSTRUCTION",
    31: "MSR_READ",
    32: "MSR_WRITE",
    33: "INVALID_STATE",
    34: "MSR_LOAD_FAIL",
    36: "MWAIT_INSTRUCTION",
    37: "MONITOR_TRAP_FLAG",
    39: "MONITOR_INSTRUCTION",
    40: "PAUSE_INSTRUCTION",
    41: "MCE_DURING_VMENTRY",
    43: "TPR_BELOW_THRESHOLD",
    44: "APIC_ACCESS",
    45: "EOI_INDUCED",
    46: "GDTR_IDTR",
    47: "LDTR_TR",
    48: "EPT_VIOLATION",
    49: "EPT_MISCONFIG",
    50: "INVEPT",
    51: "RDTSCP",
    52: "PREEMPTION_TIMER",
    53: "INVVPID",
    54: "WBINVD",
    55: "XSETBV",
    56: "APIC_WRITE",
    57: "RDRAND",
    58: "INVPCID",
    59: "VMFUNC",
    60: "ENCLS",
    61: "RDSEED",
    62: "PML_FULL",
    63: "XSAVES",
    64: "XRSTORS",
    67: "UMWAIT",
    68: "TPAUSE",
    74: "BUS_LOCK",
    75: "NOTIFY",
}

SVM_EXIT_CODES: dict[int, str] = {
    **{i: f"READ_CR{i}" for i in range(16)},
    **{0x10 + i: f"WRITE_CR{i}" for i in range(16)},
    **{0x20 + i: f"READ_DR{i}" for i in range(16)},
    **{0x30 + i: f"WRITE_DR{i}" for i in range(16)},
    **{0x40 + i: f"EXCP_{i}" for i in range(32)},
    0x60: "INTR",
    0x61: "NMI",
    0x62: "SMI",
    0x63: "INIT",
    0x64: "VINTR",
    0x65: "CR0_SEL_WRITE",
    0x66: "IDTR_READ",
    0x67: "GDTR_READ",
    0x68: "LDTR_READ",
    0x69: "TR_READ",
    0x6A: "IDTR_WRITE",
    0x6B: "GDTR_WRITE",
    0x6C: "LDTR_WRITE",
    0x6D: "TR_WRITE",
    0x6E: "RDTSC",
    0x6F: "RDPMC",
    0x70: "PUSHF",
    0x71: "POPF",
    0x72: "CPUID",
    0x73: "RSM",
    0x74: "IRET",
    0x75: "SWINT",
    0x76: "INVD",
    0x77: "PAUSE",
    0x78: "HLT",
    0x79: "INVLPG",
    0x7A: "INVLPGA",
    0x7B: "IOIO",
    0x7C: "MSR",
    0x7D: "TASK_SWITCH",
    0x7E: "FERR_FREEZE",
    0x7F: "SHUTDOWN",
    0x80: "VMRUN",
    0x81: "VMMCALL",
    0x82: "VMLOAD",
    0x83: "VMSAVE",
    0x84: "STGI",
    0x85: "CLGI",
    0x86: "SKINIT",
    0x87: "RDTSCP",
    0x88: "ICEBP",
    0x89: "WBINVD",
    0x8A: "MONITOR",
    0x8B: "MWAIT",
    0x8C: "MWAIT_COND",
    0x8D: "XSETBV",
    0x8E: "RDPRU",
    0x400: "NPF",
    0x401: "AVIC_INCOMPLETE_IPI",
    0x402: "AVIC_UNACCELERATED_ACCESS",
    0x403: "VMGEXIT",
}

# What a decode says about an exit the kernel handled, when no kvm_exit
# gives its hardware reason.
_DECODE_REASON = {"pio": "IO", "mmio": "MMIO", "msr": "MSR"}

_EXIT_COLS = {
    "tid": "int32",
    "vcpu": "int16",
    "start_ns": "int64",
    "end_ns": "Int64",
    "dur_ns": "Int64",
    "reason": "category",
    "kind": "category",
    "addr": "UInt64",
    "size": "UInt8",
    "write": "boolean",
    "userspace": "bool",
}


def _hw_reason_name(code: np.ndarray, flavour: str) -> np.ndarray:
    """Hardware exit reason names: VMX basic reason (low 16 bits) or SVM
    exit code, after the trace's KVM flavour (VMX when it is unknown)."""
    table = SVM_EXIT_CODES if flavour == "svm" else VMX_EXIT_REASONS
    code = code & 0xFFFF if flavour != "svm" else code
    uniq, inv = np.unique(code, return_inverse=True)
    names = np.array([table.get(int(c), f"reason_{int(c)}") for c in uniq] + ["?"], dtype=object)
    return names[inv] if len(code) else np.zeros(0, dtype=object)


def exit_events(trace: Trace) -> pd.DataFrame:
    return _exit_events(trace)[0]


def _exit_events(trace: Trace) -> tuple[pd.DataFrame, int]:
    """One row per VM exit of every vCPU thread, complete exits only.

    Columns: ``tid`` int32, ``vcpu`` int16, ``start_ns`` int64 (kvm_exit;
    without it, the decode event, or for an exit with no decode its
    userspace_exit), ``end_ns`` Int64 (kvm_entry; without it the next
    run_enter; NA for an exit the kernel handled where kvm_entry does not
    fire), ``dur_ns`` Int64, ``reason`` str (hardware reason where kvm_exit
    fires, else the KVM_EXIT_* reason of a userspace exit, else IO/MMIO/MSR
    from the decode), ``kind`` str (pio, mmio, msr, or the reason), ``addr``
    UInt64, ``size`` UInt8, ``write`` boolean (NA without a decode) and
    ``userspace`` bool (the exit returned to the VMM).  Exits across a
    lost-event marker are left out.  Raises ``MissingEventsError`` when the
    trace has neither KVM_RUN nor kvm_exit/kvm_entry events.
    """
    ev = trace.events
    has_run = events_usable(ev, ["run_enter", "run_exit"])
    has_kvm = events_usable(ev, ["kvm_exit", "kvm_entry"])
    if not (has_run or has_kvm):
        raise MissingEventsError(
            "the exit statistics", ["run_enter and run_exit, or kvm_exit and kvm_entry"], present_events(ev)
        )
    tids = vcpu_threads(trace)
    if not tids:
        tids = {int(t): i for i, t in enumerate(sorted(ev.loc[(ev["event"] == "kvm_exit").to_numpy(), "tid"].unique()))}
    out, excluded = _from_kvm_exit(trace, tids) if has_kvm else _from_runs(trace, tids)
    order = np.lexsort((out["tid"].to_numpy(), out["start_ns"].to_numpy()))
    return out.take(order).reset_index(drop=True), excluded


def _labels(codes: np.ndarray, namer: Any) -> pd.Categorical:
    """A categorical of ``namer(code)`` for each code, naming each distinct
    code once."""
    uniq, inv = np.unique(np.asarray(codes, dtype=np.int64), return_inverse=True)
    names = [namer(int(c)) for c in uniq]
    # Distinct codes can share a name (reason_N fallbacks never do; keep safe).
    cats = list(dict.fromkeys(names))
    remap = np.array([cats.index(n) for n in names], dtype=np.int64)
    return pd.Categorical.from_codes(remap[inv] if len(uniq) else inv, categories=pd.Index(cats))


def _concat_labels(a: pd.Categorical, b: pd.Categorical) -> pd.Categorical[str]:
    """Two categoricals end to end, categories merged, without hashing the
    values (``union_categoricals`` refuses categories of different dtypes,
    which an empty one has)."""
    cats = list(dict.fromkeys([str(c) for c in a.categories] + [str(c) for c in b.categories]))
    index = {c: i for i, c in enumerate(cats)}
    ra = np.array([index[str(c)] for c in a.categories] + [-1], dtype=np.int64)
    rb = np.array([index[str(c)] for c in b.categories] + [-1], dtype=np.int64)
    codes = np.concatenate((ra[np.asarray(a.codes)], rb[np.asarray(b.codes)]))
    return pd.Categorical.from_codes(codes, categories=pd.Index(cats))


def _from_runs(trace: Trace, tids: dict[int, int]) -> tuple[pd.DataFrame, int]:
    # The breakdown's cycles when these are its vCPU threads (they are, but
    # for a trace whose vCPUs only kvm_exit names).
    rc = cache.vcpu_run_cycles(trace) if tids == vcpu_threads(trace) else run_cycles(trace, tids)
    good = (rc.cycles["complete"] & ~rc.cycles["lost"]).to_numpy()
    c = rc.cycles[good]
    reason = c["reason"].to_numpy(dtype=np.float64, na_value=np.nan)
    has = ~np.isnan(reason)
    # NaN reasons get a code no KVM exit or errno has.
    unknown = np.iinfo(np.int64).min
    names = _labels(
        np.where(has, np.nan_to_num(reason), unknown).astype(np.int64),
        lambda r: "unknown" if r == unknown else exit_reason_name(r),
    )
    d = rc.decodes
    keep_cycle = np.append(good, False)
    d = d[(d["role"] == "kernel").to_numpy() & keep_cycle[d["cycle"].to_numpy()]]
    n_u, n_k = len(c), len(d)
    vcpu_of = np.array([tids[int(t)] for t in sorted(tids)], dtype=np.int16)
    dur = pd.array(np.concatenate(((c["end_ns"] - c["decode_ns"]).to_numpy(), np.zeros(n_k, np.int64))), dtype="Int64")
    dur[n_u:] = pd.NA
    end = pd.array(np.concatenate((c["end_ns"].to_numpy(), np.zeros(n_k, np.int64))), dtype="Int64")
    end[n_u:] = pd.NA
    k_reason = pd.Categorical(d["kind"].map(_DECODE_REASON).astype(object), categories=list(_DECODE_REASON.values()))
    excluded = int((rc.cycles["complete"] & rc.cycles["lost"]).sum())
    return pd.DataFrame(
        {
            "tid": np.concatenate((c["tid"].to_numpy(), d["tid"].to_numpy())).astype(np.int32),
            "vcpu": np.concatenate(
                (c["vcpu"].to_numpy(), vcpu_of[rank_in(np.array(sorted(tids)), d["tid"].to_numpy())])
            ).astype(np.int16),
            "start_ns": np.concatenate((c["decode_ns"].to_numpy(), d["ts_ns"].to_numpy())).astype(np.int64),
            "end_ns": end,
            "dur_ns": dur,
            "reason": _concat_labels(names, k_reason),
            "kind": _concat_labels(c["kind"].array, d["kind"].array),
            "addr": pd.concat([c["addr"], d["addr"]], ignore_index=True).array,
            "size": pd.concat([c["size"], d["size"]], ignore_index=True).array,
            "write": pd.concat([c["write"], d["write"]], ignore_index=True).array,
            "userspace": np.concatenate((np.ones(n_u, dtype=bool), np.zeros(n_k, dtype=bool))),
        },
        copy=False,
    ), excluded


def _from_kvm_exit(trace: Trace, tids: dict[int, int]) -> tuple[pd.DataFrame, int]:
    """kvm_exit -> next kvm_entry of the same thread, with no other kvm_exit
    between; the first decode and any run_exit inside say what it was."""
    ev = trace.events
    codes = ev["event"].cat.codes.to_numpy()
    sel = np.flatnonzero(event_codes(("kvm_exit", "kvm_entry", "run_exit") + DECODE_EVENTS)[codes])
    sel = sel[np.isin(ev["tid"].to_numpy()[sel], list(tids))]
    tid = ev["tid"].to_numpy()[sel].astype(np.int64)
    order = np.lexsort((np.arange(len(sel)), tid))
    sel, tid = sel[order], tid[order]
    kind = np.asarray(ev["event"].cat.categories, dtype=object)[codes[sel]]
    ts = ev["ts_ns"].to_numpy()[sel]
    n = len(sel)
    pos = np.arange(n)
    big = np.iinfo(np.int64).max

    def next_of(mask: np.ndarray) -> np.ndarray:
        """Per position, the first position at or after it with ``mask``."""
        nxt = np.where(mask, pos, big)
        return np.minimum.accumulate(nxt[::-1])[::-1] if n else nxt

    nxt_entry = next_of(kind == "kvm_entry")
    nxt_exit = next_of(kind == "kvm_exit")
    nxt_dec = next_of(np.isin(kind, DECODE_EVENTS))
    nxt_run = next_of(kind == "run_exit")
    x = np.flatnonzero(kind == "kvm_exit")
    after = np.minimum(x + 1, max(n - 1, 0))
    e = nxt_entry[after]
    ok = (x + 1 < n) & (e < big)
    ok[ok] = (tid[e[ok]] == tid[x[ok]]) & (nxt_exit[after[ok]] > e[ok])
    x, e = x[ok], e[ok]
    after = x + 1
    dec = nxt_dec[after]
    has_dec = dec < e
    user = nxt_run[after] < e
    rows = sel[np.where(has_dec, dec, x)]
    flavour = str(trace.meta.get("kvm_flavour", "unknown"))
    hw = ev["value"].take(sel[x]).to_numpy(dtype=np.int64, na_value=-1)
    reason = _hw_reason_name(hw, flavour)
    kinds = np.where(has_dec, kind[np.clip(dec, 0, n - 1)] if n else kind[:0], reason)
    addr = ev["addr"].take(rows).array.copy()
    size = ev["size"].take(rows).array.copy()
    write = ev["write"].take(rows).array.copy()
    addr[~has_dec] = pd.NA
    size[~has_dec] = pd.NA
    write[~has_dec] = pd.NA
    out = pd.DataFrame(
        {
            "tid": tid[x].astype(np.int32),
            "vcpu": np.array([tids.get(int(t), -1) for t in np.unique(tid[x])], dtype=np.int16)[
                np.searchsorted(np.unique(tid[x]), tid[x])
            ]
            if len(x)
            else np.zeros(0, np.int16),
            "start_ns": ts[x],
            "end_ns": ts[e],
            "dur_ns": ts[e] - ts[x],
            "reason": reason,
            "kind": kinds,
            "addr": addr,
            "size": size,
            "write": write,
            "userspace": user,
        }
    )
    lost = thread_spans_lost(ev, tid[x], ts[x], ts[e])
    return out[~lost].astype(_EXIT_COLS), int(lost.sum())


_STAT_COLS = ["count", "share", "timed", "time_ns", "time_share", "min_ns", "mean_ns", "p50_ns", "p99_ns", "max_ns"]


def exit_table(exits: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``perf kvm stat`` columns per group of ``exits`` (from ``exit_events``):
    the ``keys`` columns, then ``count`` int, ``share`` float (of all
    exits given), ``userspace`` int (of them, how many went to the VMM),
    ``timed`` int (exits with a known time), ``time_ns`` int (their sum),
    ``time_share`` float (of all known time), ``min_ns``, ``mean_ns``,
    ``p50_ns``, ``p99_ns``, ``max_ns`` float (NaN when none is timed).
    Most frequent first."""
    if exits.empty:
        return pd.DataFrame(columns=keys + _STAT_COLS[:2] + ["userspace"] + _STAT_COLS[2:])
    dur = exits["dur_ns"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    df = exits[keys].copy()
    df["dur"] = dur
    df["timed"] = ~np.isnan(dur)
    df["userspace"] = exits["userspace"].to_numpy()
    g = df.groupby(keys, dropna=False, sort=False, observed=True)
    out = pd.DataFrame(
        {
            "count": g.size(),
            "userspace": g["userspace"].sum(),
            "timed": g["timed"].sum(),
            "time_ns": g["dur"].sum(min_count=0),
            "min_ns": g["dur"].min(),
            "mean_ns": g["dur"].mean(),
            "p50_ns": g["dur"].quantile(0.5),
            "p99_ns": g["dur"].quantile(0.99),
            "max_ns": g["dur"].max(),
        }
    ).reset_index()
    total_time = float(np.nansum(dur))
    out["share"] = out["count"] / len(exits)
    out["time_share"] = out["time_ns"] / total_time if total_time else 0.0
    out["time_ns"] = out["time_ns"].astype(np.int64)
    out = out[keys + ["count", "share", "userspace"] + _STAT_COLS[2:]]
    return out.sort_values(["count", "time_ns"], ascending=False, kind="stable").reset_index(drop=True)


@dataclass
class Exits:
    """The ``--exits`` view (see ``exit_stats``).

    ``exits``: one row per VM exit (``exit_events``): ``tid`` int32,
    ``vcpu`` int16, ``start_ns`` int64, ``end_ns``/``dur_ns`` Int64,
    ``reason`` and ``kind`` category, ``addr`` UInt64, ``size`` UInt8,
    ``write`` boolean, ``userspace`` bool.  ``by_reason`` (keys ``reason``,
    ``handled`` category), ``by_access`` (keys ``kind`` category, ``addr``
    UInt64, ``dir`` category: in/out, read/write) and ``by_vcpu`` (key
    ``vcpu`` int16) carry ``exit_table``'s columns after their keys:
    ``count`` int64, ``share`` float64, ``userspace``, ``timed``,
    ``time_ns`` int64, ``time_share`` float64, ``min_ns``, ``mean_ns``,
    ``p50_ns``, ``p99_ns``, ``max_ns`` float64 (NaN when none is timed).
    ``source``: what timed the exits (``kvm_exit`` or ``KVM_RUN``).
    """

    exits: pd.DataFrame
    by_reason: pd.DataFrame
    by_access: pd.DataFrame
    by_vcpu: pd.DataFrame
    source: str
    tsc_hz: int
    lost_events: int
    lost_markers: int
    excluded_lost: int
    kvm_flavour: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        access = self.by_access.assign(addr=self.by_access["addr"].map(lambda a: None if pd.isna(a) else hex(int(a))))
        return {
            "view": "exits",
            "exits": int(len(self.exits)),
            "userspace_exits": int(self.exits["userspace"].sum()),
            "source": self.source,
            "kvm_flavour": self.kvm_flavour,
            "tsc_hz": self.tsc_hz,
            "lost_events": self.lost_events,
            "lost_markers": self.lost_markers,
            "excluded_lost": self.excluded_lost,
            "by_reason": self.by_reason.to_dict(orient="records"),
            "by_access": access.to_dict(orient="records"),
            "by_vcpu": self.by_vcpu.to_dict(orient="records"),
            "notes": self.notes,
        }


def exit_stats(trace: Trace, port: int | None = None) -> Exits:
    """The ``--exits`` view: ``exit_table`` by reason (and whether the exit
    went to userspace), by access (kind, port or address, direction: ``dir``
    is ``in``/``out`` for PIO, ``read``/``write`` for MMIO and MSR), and by
    vCPU.  ``port`` keeps only exits on that port or address."""
    ev = trace.events
    exits, excluded = _exit_events(trace)
    if port is not None:
        exits = exits[(exits["addr"] == port).fillna(False).to_numpy(dtype=bool)].reset_index(drop=True)
    source = "KVM_RUN" if missing_events(ev, ["kvm_exit", "kvm_entry"]) else "kvm_exit"
    handled = pd.Categorical.from_codes(
        exits["userspace"].to_numpy().astype(np.int8), pd.Index(["kernel", "userspace"])
    )
    by_reason = exit_table(exits.assign(handled=handled), ["reason", "handled"])
    acc = exits[exits["kind"].isin(DECODE_EVENTS).to_numpy()]
    write = acc["write"].to_numpy(dtype=bool, na_value=False)
    is_pio = (acc["kind"] == "pio").to_numpy()
    direction = pd.Categorical.from_codes(np.where(is_pio, 0, 2) + write, pd.Index(["in", "out", "read", "write"]))
    by_access = exit_table(acc.assign(dir=direction), ["kind", "addr", "dir"])
    by_vcpu = exit_table(exits, ["vcpu"]).sort_values("vcpu", kind="stable").reset_index(drop=True)
    notes = []
    windows = lost_windows(ev)
    if len(windows):
        notes.append(f"{excluded:,} exits across lost events are left out")
    elif trace.lost_events:
        notes.append(f"{trace.lost_events:,} events were lost and the trace does not say where")
    if source == "KVM_RUN":
        notes.append(
            "kvm_exit/kvm_entry did not fire: userspace exits are timed from the kernel's decode to the next "
            "KVM_RUN; exits the kernel handled itself are counted, not timed"
        )
    return Exits(
        exits=exits,
        by_reason=by_reason,
        by_access=by_access,
        by_vcpu=by_vcpu,
        source=source,
        tsc_hz=trace.tsc_hz,
        lost_events=trace.lost_events,
        lost_markers=len(windows),
        excluded_lost=excluded,
        kvm_flavour=str(trace.meta.get("kvm_flavour", "unknown")),
        notes=notes,
    )
