"""The BQL breakdown: the per-exit partition summarised per trace.

``bql_breakdown`` selects the exits a report is about (a benchmark's timed
loop, or one port) from ``analyses.partition.exit_breakdown`` and reduces
them to mean cycles per component, percentiles, log-spaced histograms, and
the same per exit kind and address, per vCPU, per thread role, and of the
BQL wait by what its holder was doing.  Times become cycles here, with the
TSC frequency of the trace's metadata.
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
from .intervals import dense_codes, lost_windows, rank_in
from .jsonform import bql_json, hex_or_none, records
from .partition import COMPONENTS, exit_breakdown

__all__ = ["Breakdown", "bql_breakdown", "histogram", "summarize", "timed_loop_exits"]


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
        cyc = cache.vcpu_run_cycles(trace).cycles
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
