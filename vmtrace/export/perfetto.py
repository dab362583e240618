"""The timeline as a Chrome trace-event JSON file, for ui.perfetto.dev and
chrome://tracing.

One process (the VMM), one track per thread named as the kernel names it
(``CPU 0/KVM``), and complete ("X") events nested three deep on vCPU
tracks: the exit (``pio 0x608 read``, its components in cycles as
arguments), its components (vmexit, emulator, dispatch, device, BQL wait,
other lock wait), and off-CPU time inside a component.  Other threads get
their lock waits, device callbacks and off-CPU time; time a thread spends
in no named state is left empty rather than filled with a guess.

Timestamps are CLOCK_MONOTONIC microseconds (the format's unit) with three
decimals, so every nanosecond survives: Perfetto rounds ``ts * 1000`` to the
nearest integer, and ``ts`` and ``dur`` are rounded apart, which keeps a
child's end equal to its parent's.  ``displayTimeUnit`` is left out on
purpose: Perfetto reads it as the unit of the timestamps themselves.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vmtrace import __version__
from vmtrace.analyses.partition import COMPONENTS
from vmtrace.outputs import open_output
from vmtrace.report import Report
from vmtrace.schema import ROLE_OTHER, role_rank
from vmtrace.trace import Trace

__all__ = ["chrome_trace", "write_perfetto", "SLICE_NAMES"]

#: Slice names of the timeline's states.
SLICE_NAMES: dict[str, str] = {
    "guest": "guest",
    "vmexit": "vmexit",
    "emulator": "emulator",
    "dispatch": "user exit + dispatch",
    "device": "device",
    "bql_wait": "BQL wait",
    "lock_wait": "lock wait",
}
# States that say nothing beyond "none of the above": no slice, so an empty
# stretch of a track reads as exactly that.
_UNNAMED = ("running", "unattributed")


def _runs(spans: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Merge neighbouring spans of one thread that agree on ``keys`` (a state
    cut by off-CPU pieces becomes one slice again)."""
    if spans.empty:
        return spans.assign(n=0)
    new = np.ones(len(spans), dtype=bool)
    same = (spans["tid"].to_numpy()[1:] == spans["tid"].to_numpy()[:-1]) & (
        spans["start_ns"].to_numpy()[1:] == spans["end_ns"].to_numpy()[:-1]
    )
    for k in keys:
        v = spans[k].to_numpy()
        same &= v[1:] == v[:-1]
    new[1:] = ~same
    gid = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    last = np.concatenate((first[1:] - 1, [len(spans) - 1]))
    out = spans.iloc[first].reset_index(drop=True).copy()
    out["end_ns"] = spans["end_ns"].to_numpy()[last]
    out["n"] = np.bincount(gid)
    return out


def _metadata(trace: Trace, spans: pd.DataFrame) -> tuple[int, list[dict[str, Any]]]:
    """The process id and the metadata events: process and thread names,
    and a sort order that puts the vCPUs first, by index."""
    target = trace.meta.get("target") or {}
    pid = int(target.get("pid") or 1)
    vmm = " ".join(str(x) for x in (target.get("vmm"), target.get("vmm_version")) if x) or "VMM"
    meta = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"{vmm} (vmtrace)"}}]
    th = trace.threads
    known = th["tid"].to_numpy(dtype=np.int64).tolist()
    names = dict(zip(known, th["name"].tolist(), strict=True))
    roles = dict(zip(known, th["role"].tolist(), strict=True))
    vcpus = dict(zip(known, th["vcpu"].tolist(), strict=True))

    def order(t: int) -> tuple[int, int, int]:
        # A role outside the table, or no thread row at all, sorts with "other".
        rank = min(role_rank(roles.get(t)), role_rank(ROLE_OTHER))
        return rank, int(vcpus[t]) if t in vcpus and pd.notna(vcpus[t]) else 0, t

    tids = sorted({int(t) for t in spans["tid"].unique()}, key=order)
    for i, tid in enumerate(tids):
        name = str(names[tid]) if tid in names and names[tid] else f"thread {tid}"
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": i}})
    return pid, meta


def _slices(trace: Trace, spans: pd.DataFrame, exits: pd.DataFrame) -> pd.DataFrame:
    """Every complete event as a row, in file order: ``tid``, ``start_ns``,
    ``dur_ns`` int64, ``name``, ``cat`` str, ``args`` str (a JSON object)."""
    k = trace.tsc_hz / 1e9 if trace.tsc_hz else 0.0
    parts = []
    # Depth 0: the exits, with their breakdown for the details pane.
    if len(exits):
        # Cycles where the trace has a TSC frequency, else nanoseconds; zero
        # components left out (they are most of them, and the file's size).
        unit, scale = ("cycles", k) if k else ("ns", 1.0)
        comps = (*COMPONENTS, "bql_wait", "total")
        keys = [json.dumps(f"{c}_{unit}") for c in comps]
        vals = np.round(np.column_stack([exits[f"{c}_ns"].to_numpy(dtype=np.float64) for c in comps]) * scale).astype(
            np.int64
        )
        args = [
            "{" + ",".join(f"{key}:{v}" for key, v in zip(keys, row, strict=True) if v) + "}" for row in vals.tolist()
        ]
        label = spans.loc[spans["exit"] >= 0].drop_duplicates("exit").set_index("exit")["detail"].astype(str)
        names = label.reindex(range(len(exits))).fillna(exits["kind"].astype(str)).to_numpy(dtype=object)
        parts.append(
            pd.DataFrame(
                {
                    "tid": exits["tid"].to_numpy(dtype=np.int64),
                    "start_ns": exits["start_ns"].to_numpy(dtype=np.int64),
                    "end_ns": exits["end_ns"].to_numpy(dtype=np.int64),
                    "name": names,
                    "cat": "exit",
                    "depth": 0,
                    "args": args,
                }
            )
        )
    # Depth 1: the states, one slice per run of a state.
    runs = _runs(spans[~spans["state"].isin(_UNNAMED)], ["state", "detail", "exit"])
    if len(runs):
        detail = runs["detail"].astype(str)
        d_args = {d: (json.dumps({"detail": d}) if d else "{}") for d in detail.unique()}
        parts.append(
            pd.DataFrame(
                {
                    "tid": runs["tid"].to_numpy(dtype=np.int64),
                    "start_ns": runs["start_ns"].to_numpy(),
                    "end_ns": runs["end_ns"].to_numpy(),
                    "name": runs["state"].astype(str).map(SLICE_NAMES).to_numpy(),
                    "cat": "state",
                    "depth": 1,
                    "args": detail.map(d_args).to_numpy(dtype=object),
                }
            )
        )
    # Depth 2: off-CPU pieces (top level where the state has no slice).
    off = _runs(spans[spans["sched"] != "on"], ["sched", "state", "detail", "exit"])
    if len(off):
        parts.append(
            pd.DataFrame(
                {
                    "tid": off["tid"].to_numpy(dtype=np.int64),
                    "start_ns": off["start_ns"].to_numpy(),
                    "end_ns": off["end_ns"].to_numpy(),
                    "name": "off-CPU " + off["sched"].astype(str).to_numpy(dtype=object),
                    "cat": "sched",
                    "depth": np.where(off["state"].isin(_UNNAMED).to_numpy(), 0, 2),
                    "args": "{}",
                }
            )
        )
    if not parts:
        return pd.DataFrame({c: [] for c in ("tid", "start_ns", "dur_ns", "name", "cat", "args")})
    allx = pd.concat(parts, ignore_index=True)
    dur = (allx["end_ns"] - allx["start_ns"]).to_numpy(dtype=np.int64)
    # Per thread in time order, a parent before the children it starts with.
    order = np.lexsort((allx["depth"].to_numpy(), -dur, allx["start_ns"].to_numpy(), allx["tid"].to_numpy()))
    out = allx.iloc[order][["tid", "start_ns", "name", "cat", "args"]].reset_index(drop=True)
    out.insert(2, "dur_ns", dur[order])
    return out


def _us_text(ns: np.ndarray) -> list[str]:
    # Exact decimal microseconds from integer nanoseconds: no float rounding.
    q, r = np.divmod(np.asarray(ns, dtype=np.int64), 1000)
    return [f"{a}.{b:03d}" for a, b in zip(q.tolist(), r.tolist(), strict=True)]


def _write_events(
    f: Any, trace: Trace, spans: pd.DataFrame | None, exits: pd.DataFrame | None, batch: int = 200_000
) -> None:
    """Write the ``traceEvents`` array's members, comma-separated, to ``f``.
    Lines are formatted from columns in batches: a dict and a json.dumps per
    event would cost several times the time and memory on a large trace."""
    if exits is None or spans is None:
        # The session's views, as the HTML page has them; spans given
        # without their exits are laid out as given.
        session = Report(trace)
        if exits is None:
            exits = session["all_exits"]
        else:
            session.seed("all_exits", exits)
        if spans is None:
            spans = session["timeline"]
    pid, meta = _metadata(trace, spans)
    f.write(",".join(json.dumps(m, separators=(",", ":")) for m in meta))
    x = _slices(trace, spans, exits)
    names = {n: json.dumps(n) for n in pd.unique(x["name"])}
    for i in range(0, len(x), batch):
        b = x.iloc[i : i + batch]
        ts, dur = _us_text(b["start_ns"].to_numpy()), _us_text(b["dur_ns"].to_numpy())
        f.write(
            "".join(
                f',{{"ph":"X","name":{names[n]},"cat":"{c}","ts":{t},"dur":{d},"pid":{pid},"tid":{tid},"args":{a}}}'
                for n, c, t, d, tid, a in zip(
                    b["name"].tolist(), b["cat"].tolist(), ts, dur, b["tid"].tolist(), b["args"].tolist(), strict=True
                )
            )
        )


def _other_data(trace: Trace) -> dict[str, Any]:
    lost = trace.meta.get("lost_events") or {}
    return {
        "producer": f"vmtrace {__version__}",
        "trace": str(trace.path) if trace.path else None,
        "clock": "CLOCK_MONOTONIC",
        "tsc_hz": trace.tsc_hz,
        "lost_events": int(lost.get("total", 0)),
        "kvm_flavour": trace.meta.get("kvm_flavour"),
    }


def _write(f: Any, trace: Trace, spans: pd.DataFrame | None, exits: pd.DataFrame | None) -> None:
    f.write('{"traceEvents":[')
    _write_events(f, trace, spans, exits)
    f.write('],"otherData":')
    f.write(json.dumps(_other_data(trace), separators=(",", ":")))
    f.write("}")


def chrome_trace(trace: Trace, spans: pd.DataFrame | None = None, exits: pd.DataFrame | None = None) -> dict[str, Any]:
    """The Chrome trace-event JSON object of ``trace`` (what
    ``write_perfetto`` writes, parsed): ``traceEvents`` (metadata first, then
    each thread's slices in time order, a parent before the children that
    start with it) and, under ``otherData``, what the trace was and how many
    events it lost.  ``spans`` is ``timeline(trace, exits)`` and ``exits``
    ``exit_breakdown(trace)``; both are computed when not given."""
    buf = io.StringIO()
    _write(buf, trace, spans, exits)
    doc: dict[str, Any] = json.loads(buf.getvalue())
    return doc


def write_perfetto(trace: Trace | Report, path: Path | str) -> Path:
    """Write ``trace``'s timeline as Chrome trace-event JSON to ``path``
    (gzip-compressed when the name ends in ``.gz``, which Perfetto opens
    as well).  ``trace`` is a ``Trace``, or a ``vmtrace.report.Report``
    whose exits and timeline are reused.  Written to a temporary file and
    renamed into place."""
    path = Path(path)
    if isinstance(trace, Report):
        spans, exits = trace["timeline"], trace["all_exits"]
        trace = trace.trace
    else:
        spans = exits = None
    gz = path.name.endswith(".gz")
    # Atomic for a regular file, through a symlink, refused for a device (vmtrace.outputs).
    with open_output(path, "Perfetto trace") as raw:
        with (
            gzip.open(raw, "wt", encoding="utf-8", compresslevel=6)
            if gz
            else io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
        ) as f:
            _write(f, trace, spans, exits)
    return path
