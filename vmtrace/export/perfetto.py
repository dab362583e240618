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
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from vmtrace import __version__
from vmtrace.analyses.breakdown import COMPONENTS, exit_breakdown
from vmtrace.analyses.timeline import timeline
from vmtrace.errors import VmtraceError
from vmtrace.trace import Trace

__all__ = ["chrome_trace_events", "chrome_trace", "write_perfetto"]

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
_ROLE_ORDER = {"vcpu": 0, "main": 1, "iothread": 2, "worker": 3}


def _us(ns: np.ndarray | int) -> Any:
    return np.asarray(ns, dtype=np.int64) / 1000.0


def _runs(spans: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Merge neighbouring spans of one thread that agree on ``keys`` (a state
    cut by off-CPU pieces becomes one slice again)."""
    if spans.empty:
        return spans.assign(n=0)
    new = np.ones(len(spans), dtype=bool)
    same = (spans["tid"].to_numpy()[1:] == spans["tid"].to_numpy()[:-1]) & (
        spans["start_ns"].to_numpy()[1:] == spans["end_ns"].to_numpy()[:-1])
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


def chrome_trace_events(trace: Trace, spans: pd.DataFrame | None = None,
                        exits: pd.DataFrame | None = None) -> Iterator[dict[str, Any]]:
    """The trace events, metadata first, then each thread's slices in time
    order (a parent before the children that start with it).

    ``spans`` is ``timeline(trace, exits)`` and ``exits``
    ``exit_breakdown(trace)``; both are computed when not given.
    """
    if exits is None:
        exits = exit_breakdown(trace)
    if spans is None:
        spans = timeline(trace, exits)
    target = trace.meta.get("target") or {}
    pid = int(target.get("pid") or 1)
    vmm = " ".join(str(x) for x in (target.get("vmm"), target.get("vmm_version")) if x) or "VMM"
    yield {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"{vmm} (vmtrace)"}}

    threads = {int(r.tid): r for r in trace.threads.itertuples()}
    tids = sorted(set(int(t) for t in spans["tid"].unique()),
                  key=lambda t: (_ROLE_ORDER.get(str(getattr(threads.get(t), "role", "")), 4),
                                 int(threads[t].vcpu) if t in threads and pd.notna(threads[t].vcpu) else 0, t))
    for i, tid in enumerate(tids):
        r = threads.get(tid)
        name = str(r.name) if r is not None and r.name else f"thread {tid}"
        yield {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}
        yield {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": i}}

    k = trace.tsc_hz / 1e9 if trace.tsc_hz else 0.0
    slices = []
    # Depth 0: the exits, with their breakdown in cycles for the details pane.
    if len(exits):
        # Cycles where the trace has a TSC frequency, else nanoseconds; zero
        # components left out (they are most of them, and the file's size).
        unit, scale = ("cycles", k) if k else ("ns", 1.0)
        keys = [f"{c}_{unit}" for c in (*COMPONENTS, "bql_wait", "total")]
        vals = np.round(np.column_stack([exits[f"{c}_ns"].to_numpy(dtype=np.float64)
                                         for c in (*COMPONENTS, "bql_wait", "total")]) * scale).astype(np.int64)
        label = spans.loc[spans["exit"] >= 0].drop_duplicates("exit").set_index("exit")["detail"].astype(str)
        names = label.reindex(range(len(exits))).fillna(exits["kind"].astype(str)).to_numpy()
        slices.append(pd.DataFrame({
            "tid": exits["tid"].to_numpy(dtype=np.int64), "start_ns": exits["start_ns"].to_numpy(dtype=np.int64),
            "end_ns": exits["end_ns"].to_numpy(dtype=np.int64), "name": names, "cat": "exit", "depth": 0,
            "args": [{key: v for key, v in zip(keys, row) if v} for row in vals.tolist()],
        }))
    # Depth 1: the states, one slice per run of a state.
    named = spans[~spans["state"].isin(_UNNAMED)]
    runs = _runs(named, ["state", "detail", "exit"])
    if len(runs):
        slices.append(pd.DataFrame({
            "tid": runs["tid"].to_numpy(dtype=np.int64), "start_ns": runs["start_ns"].to_numpy(),
            "end_ns": runs["end_ns"].to_numpy(), "name": runs["state"].astype(str).map(SLICE_NAMES).to_numpy(),
            "cat": "state", "depth": 1,
            "args": [{"detail": d} if d else {} for d in runs["detail"].astype(str)],
        }))
    # Depth 2: off-CPU pieces (top level where the state has no slice).
    off = _runs(spans[spans["sched"] != "on"], ["sched", "state", "detail", "exit"])
    if len(off):
        unnamed = off["state"].isin(_UNNAMED).to_numpy()
        slices.append(pd.DataFrame({
            "tid": off["tid"].to_numpy(dtype=np.int64), "start_ns": off["start_ns"].to_numpy(),
            "end_ns": off["end_ns"].to_numpy(), "name": "off-CPU " + off["sched"].astype(str).to_numpy(dtype=object),
            "cat": "sched", "depth": np.where(unnamed, 0, 2), "args": [{} for _ in range(len(off))],
        }))
    if not slices:
        return
    allx = pd.concat(slices, ignore_index=True)
    allx["dur_ns"] = allx["end_ns"] - allx["start_ns"]
    allx = allx.sort_values(["tid", "start_ns", "dur_ns", "depth"], ascending=[True, True, False, True],
                            kind="stable")
    ts = _us(allx["start_ns"].to_numpy()).tolist()
    dur = _us(allx["dur_ns"].to_numpy()).tolist()
    for t, d, tid, name, cat, args in zip(ts, dur, allx["tid"].tolist(), allx["name"].tolist(),
                                          allx["cat"].tolist(), allx["args"].tolist()):
        yield {"ph": "X", "name": name, "cat": cat, "ts": t, "dur": d, "pid": pid, "tid": tid, "args": args}


def chrome_trace(trace: Trace, spans: pd.DataFrame | None = None, exits: pd.DataFrame | None = None) -> dict[str, Any]:
    """The whole Chrome trace-event JSON object: ``traceEvents`` and, under
    ``otherData``, what the trace was and how many events it lost."""
    lost = trace.meta.get("lost_events") or {}
    return {
        "traceEvents": list(chrome_trace_events(trace, spans, exits)),
        "otherData": {
            "producer": f"vmtrace {__version__}",
            "trace": str(trace.path) if trace.path else None,
            "clock": "CLOCK_MONOTONIC",
            "tsc_hz": trace.tsc_hz,
            "lost_events": int(lost.get("total", 0)),
            "kvm_flavour": trace.meta.get("kvm_flavour"),
        },
    }


def write_perfetto(trace: Trace, path: Path | str) -> Path:
    """Write ``trace``'s timeline as Chrome trace-event JSON to ``path``
    (gzip-compressed when the name ends in ``.gz``, which Perfetto opens
    as well).  Written to a temporary file and renamed into place."""
    path = Path(path)
    obj = chrome_trace(trace)
    events = obj.pop("traceEvents")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(tmp, "wt", encoding="utf-8") as f:
            # json.dump on a file runs the pure-Python encoder; json.dumps of
            # batches runs the C one, ~5x faster, without one huge string.
            f.write('{"traceEvents":[')
            for i in range(0, len(events), 20_000):
                if i:
                    f.write(",")
                f.write(json.dumps(events[i:i + 20_000], separators=(",", ":"))[1:-1])
            f.write("],")
            f.write(json.dumps(obj, separators=(",", ":"))[1:])
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise VmtraceError(f"cannot write {path}: {err.strerror}") from None
    return path
