"""One trace, one row: what the fleet table holds about each trace.

``summarize_trace`` reads one trace and runs the existing analyses on it,
``bql_breakdown``, ``lock_report`` and ``exit_stats``, then keeps what the
fleet compares: where the trace came from, the component means and
percentiles, the BQL's share, the top lock words, and one mergeable
histogram per component (``vmtrace.fleet.histograms``).  It never raises:
a trace that cannot be read or analysed becomes a row whose ``error`` says
why, and an analysis the trace cannot feed (no futex events, say) leaves
its columns empty with a line in ``notes``.

The columns, their types and meanings are ``COLUMNS`` (README.md, "Fleet
analysis", shows them to DuckDB users).  A row is a pure function of the
trace file: the same trace gives the same row on any worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vmtrace.errors import VmtraceError

from . import histograms as hist
from .sources import content_id, local_copy

__all__ = [
    "COMPONENTS",
    "COLUMNS",
    "SCHEMA",
    "TOP_LOCKS",
    "summarize_trace",
    "error_row",
    "to_table",
    "write_fleet",
    "read_fleet",
    "FLEET_META_KEY",
]

#: The breakdown's components in the order reports stack them, then the
#: BQL's part of lock_wait and the whole exit.
COMPONENTS: Final[tuple[str, ...]] = (
    "guest",
    "vmexit",
    "emulator",
    "dispatch",
    "device",
    "lock_wait",
    "bql_wait",
    "total",
)
#: Lock words kept per trace, most wait time first.
TOP_LOCKS: Final = 3
FLEET_META_KEY: Final = b"vmtrace_fleet"

_LOCK = pa.struct(
    [
        ("addr", pa.string()),
        ("name", pa.string()),
        ("waits", pa.int64()),
        ("wait_ns", pa.int64()),
        ("wait_share", pa.float64()),
    ]
)

#: Column -> (Arrow type, meaning).  Cycles are TSC cycles of the trace's
#: host (``tsc_hz``); ``*_p50``/``*_p99`` are per-exit percentiles.
COLUMNS: Final[dict[str, tuple[pa.DataType, str]]] = {
    "trace_id": (pa.string(), "first 16 hex digits of the file's SHA-256"),
    "path": (pa.string(), "the file or URL as listed"),
    "error": (pa.string(), "why the trace gave no summary; null when it did"),
    "host": (pa.string(), "hostname of the recording host"),
    "kernel": (pa.string(), "host kernel release"),
    "recorded": (pa.timestamp("us", tz="UTC"), "when the trace was written"),
    "vmm": (pa.string(), "qemu | reference | other"),
    "vmm_version": (pa.string(), "QEMU version (null for other VMMs)"),
    "kvm_flavour": (pa.string(), "vmx | svm | pvm | unknown"),
    "backend": (pa.string(), "bcc | ftrace"),
    "mode": (pa.string(), "default | precise"),
    "vcpus": (pa.int32(), "vCPU threads"),
    "locking": (pa.string(), "reference VMM locking mode (bql | modern | unlocked ...); null for QEMU"),
    "interpreter": (pa.string(), "Python running the reference VMM, where the trace records it"),
    "free_threaded": (pa.bool_(), "... a free-threaded build"),
    "gil_enabled": (pa.bool_(), "... with the GIL enabled at run time"),
    "workload": (pa.string(), "the guest's benchmark (bench=NAME), when known"),
    "events": (pa.int64(), "events in the trace"),
    "duration_s": (pa.float64(), "recording time"),
    "tsc_hz": (pa.int64(), "TSC frequency: cycles = ns * tsc_hz / 1e9"),
    "exit_scope": (pa.string(), "timed_loop (a benchmark's timed loop, as `vmtrace report`) | all"),
    "exits": (pa.int64(), "userspace exits in the breakdown"),
    "vm_exits": (pa.int64(), "every exit exit_stats counted, kernel-handled ones included"),
    "userspace_exits": (pa.int64(), "... of which went to the VMM"),
    "exit_source": (pa.string(), "KVM_RUN | kvm_exit: what exit_stats timed exits from"),
    "top_access": (pa.string(), "most frequent access, e.g. 'pio 0x608 in'"),
    "top_access_share": (pa.float64(), "its share of all exits"),
    "lost_events": (pa.int64(), "events the collector lost"),
    "excluded_lost": (pa.int64(), "exits left out because they span lost events"),
    **{
        f"{c}_{stat}": (pa.float64(), f"{c}: {label} cycles per exit")
        for c in COMPONENTS
        for stat, label in (("mean", "mean"), ("p50", "median"), ("p99", "99th percentile"))
    },
    "bql_share": (pa.float64(), "bql_wait_mean / total_mean: the share of an exit spent waiting for the BQL"),
    "lock_share": (pa.float64(), "lock_wait_mean / total_mean"),
    "bql_wait_s": (pa.float64(), "BQL wait summed over the exits, seconds"),
    "bql_identified": (pa.bool_(), "the recorder named the BQL's futex word"),
    "futex_wait_share": (pa.float64(), "share of the target's thread time inside futex waits"),
    "top_lock": (pa.string(), "the futex word waited on longest: its name, else its address"),
    "top_lock_wait_share": (pa.float64(), "its wait time over the target's thread time"),
    "top_locks": (pa.list_(_LOCK), f"the {TOP_LOCKS} words waited on longest: addr, name, waits, wait_ns, wait_share"),
    "notes": (pa.list_(pa.string()), "what the analyses said about this trace"),
    **{
        f"hist_{c}": (pa.list_(pa.int64()), f"{c}: exits per bucket ({hist.N_BUCKETS} fixed buckets)")
        for c in COMPONENTS
    },
}
SCHEMA: Final = pa.schema([(name, typ) for name, (typ, _) in COLUMNS.items()])


def error_row(source: str, error: str, trace_id: str | None = None) -> dict[str, Any]:
    """The row of a trace that gave no summary."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(path=source, error=error, trace_id=trace_id or _path_id(source))
    return row


def _path_id(source: str) -> str:
    # No file to hash: the id says it is the name's.
    return "path:" + hashlib.sha256(source.encode()).hexdigest()[:11]


def summarize_trace(source: str, all_exits: bool = False) -> dict[str, Any]:
    """The summary row (keys ``COLUMNS``) of the trace at ``source``, a
    local path or an fsspec URL the calling process can open.

    ``all_exits``: summarise every exit; by default a benchmark trace's
    components cover its timed loop, as ``vmtrace report`` does.
    Never raises for a bad trace: ``error`` says what went wrong.
    """
    # Imported here, not at module level: a worker pays for them once, and a
    # client that only lists traces never does.
    from vmtrace.trace import read_trace

    tid: str | None = None
    try:
        with local_copy(source) as path:
            tid = content_id(path)
            trace = read_trace(path)
    except VmtraceError as err:
        return error_row(source, str(err), tid)
    except OSError as err:
        return error_row(source, f"cannot read {source}: {err.strerror or err}", tid)
    except Exception as err:  # a filesystem backend's failure: a row, not a failed fleet
        return error_row(source, f"cannot read {source}: {type(err).__name__}: {err}", tid)
    try:
        return _summarize(source, tid, trace, all_exits)
    except VmtraceError as err:
        return error_row(source, str(err), tid)
    except Exception as err:  # an analysis bug on one odd trace must not lose the fleet
        return error_row(source, f"analysis failed: {type(err).__name__}: {err}", tid)


def _summarize(source: str, tid: str, trace: Any, all_exits: bool) -> dict[str, Any]:
    from vmtrace.analyses.breakdown import bql_breakdown

    b = bql_breakdown(trace, timed_loop=not all_exits)
    meta = trace.meta
    row = error_row(source, "", tid)
    row["error"] = None
    row.update(_provenance(meta))
    row["vcpus"] = len(trace.vcpu_tids()) or int(b.exits["vcpu"].nunique())
    row["events"] = int(len(trace.events))
    start, end = meta.get("start_ns"), meta.get("end_ns")
    row["duration_s"] = (end - start) / 1e9 if isinstance(start, int) and isinstance(end, int) else None
    row["tsc_hz"] = int(b.tsc_hz)
    row["exit_scope"] = "all" if all_exits or not any("timed loop" in n for n in b.notes) else "timed_loop"
    row["exits"] = int(len(b.exits))
    row["lost_events"] = int(b.lost_events)
    row["excluded_lost"] = int(b.excluded_lost)
    for c in COMPONENTS:
        row[f"{c}_mean"] = float(b.components.get(c, 0.0))
        row[f"{c}_p50"] = float(b.percentiles[c]["p50"])
        row[f"{c}_p99"] = float(b.percentiles[c]["p99"])
    total = row["total_mean"]
    row["bql_share"] = row["bql_wait_mean"] / total if total else 0.0
    row["lock_share"] = row["lock_wait_mean"] / total if total else 0.0
    row["bql_wait_s"] = float(b.exits["bql_wait_ns"].sum()) / 1e9
    row["bql_identified"] = bool(b.bql.get("identified"))
    k = b.tsc_hz / 1e9
    for c in COMPONENTS:
        row[f"hist_{c}"] = hist.histogram(b.exits[f"{c}_ns"].to_numpy(dtype=np.float64) * k).tolist()
    notes = list(b.notes)
    for name, part in (("exit statistics", _exit_part), ("lock analysis", _lock_part)):
        fields, said = _optional(name, part, trace)
        row.update(fields)
        notes += said
    row["notes"] = notes
    return row


def _optional(
    name: str, part: Callable[[Any], tuple[dict[str, Any], list[str]]], trace: Any
) -> tuple[dict[str, Any], list[str]]:
    """An analysis whose absence leaves its columns null: a trace without
    futex events still has a breakdown."""
    try:
        return part(trace)
    except VmtraceError as err:
        return {}, [f"{name}: {err}"]


def _exit_part(trace: Any) -> tuple[dict[str, Any], list[str]]:
    from vmtrace.analyses.exits import exit_stats

    x = exit_stats(trace)
    out: dict[str, Any] = {
        "vm_exits": int(len(x.exits)),
        "userspace_exits": int(x.exits["userspace"].sum()),
        "exit_source": x.source,
    }
    if len(x.by_access):
        top = x.by_access.iloc[0]
        addr = "-" if pd.isna(top["addr"]) else hex(int(top["addr"]))
        out["top_access"] = f"{top['kind']} {addr} {top['dir']}"
        out["top_access_share"] = float(top["share"])
    return out, list(x.notes)


def _lock_part(trace: Any) -> tuple[dict[str, Any], list[str]]:
    from vmtrace.analyses.locks import lock_report

    lk = lock_report(trace)
    words = lk.words.head(TOP_LOCKS)
    top = [
        {
            "addr": hex(int(addr)),
            "name": None if pd.isna(name) else str(name),
            "waits": int(waits),
            "wait_ns": int(wait_ns),
            "wait_share": float(share),
        }
        for addr, name, waits, wait_ns, share in zip(
            words["addr"], words["name"], words["waits"], words["wait_ns"], words["wait_share"], strict=True
        )
    ]
    out: dict[str, Any] = {"top_locks": top, "futex_wait_share": float(lk.totals.get("futex_wait_share") or 0.0)}
    if top:
        out["top_lock"] = top[0]["name"] or top[0]["addr"]
        out["top_lock_wait_share"] = top[0]["wait_share"]
    return out, list(lk.notes)


_BENCH_WORD = re.compile(r"(?:^|\s)bench=([\w.-]+)")


def _provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """Where and what the trace recorded, from its metadata alone."""
    host = meta.get("host") or {}
    target = meta.get("target") or {}
    bench = meta.get("bench") or {}
    command = [str(w) for w in (target.get("command") or [])]
    recorded = None
    if meta.get("created"):
        try:
            recorded = pd.Timestamp(meta["created"])
            recorded = recorded.tz_localize("UTC") if recorded.tzinfo is None else recorded.tz_convert("UTC")
        except (ValueError, TypeError):
            recorded = None
    workload = bench.get("bench")
    if not workload:
        hit = _BENCH_WORD.search(" ".join(command))
        workload = hit.group(1) if hit else None
    locking = bench.get("locking")
    if not locking and "--locking" in command[:-1]:
        locking = command[command.index("--locking") + 1]
    interp = target.get("interpreter") or bench.get("interpreter") or meta.get("interpreter")
    return {
        "host": host.get("hostname"),
        "kernel": host.get("kernel"),
        "recorded": recorded,
        "vmm": target.get("vmm"),
        "vmm_version": target.get("vmm_version"),
        "kvm_flavour": meta.get("kvm_flavour"),
        "backend": meta.get("backend"),
        "mode": meta.get("mode"),
        "locking": locking if target.get("vmm") != "qemu" else None,
        "workload": workload,
        **_interpreter(interp),
    }


def _interpreter(interp: Any) -> dict[str, Any]:
    """The reference VMM's Python, as the recorder stores it (a dict of
    version, free_threaded, gil_enabled, path; or a plain string)."""
    if isinstance(interp, dict):
        version = interp.get("version")
        ft = interp.get("free_threaded")
        label = f"{version}{'t' if ft else ''}" if version else interp.get("path")
        return {
            "interpreter": None if label is None else str(label),
            "free_threaded": None if ft is None else bool(ft),
            "gil_enabled": None if interp.get("gil_enabled") is None else bool(interp["gil_enabled"]),
        }
    return {"interpreter": None if interp is None else str(interp), "free_threaded": None, "gil_enabled": None}


# ----------------------------------------------------------------------------
# The fleet table on disk


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows as an Arrow table of ``SCHEMA`` (an all-error fleet keeps
    every column's type)."""
    cols = {name: [r.get(name) for r in rows] for name in COLUMNS}
    return pa.table({name: pa.array(cols[name], type=typ) for name, (typ, _) in COLUMNS.items()}, schema=SCHEMA)


def write_fleet(rows: list[dict[str, Any]], path: str) -> str:
    """Write the fleet table as one Parquet file (zstd).  Its key-value
    metadata ``vmtrace_fleet`` holds the histogram edges, so a reader needs
    nothing else to plot them."""
    from vmtrace import __version__

    table = to_table(rows)
    meta = {
        "vmtrace_version": __version__,
        "buckets": hist.N_BUCKETS,
        "per_octave": hist.PER_OCTAVE,
        "edges": [float(e) for e in hist.EDGES],
        "bucket_rule": "bucket 0 is [0, edges[0]); bucket i is [edges[i-1], edges[i]); the last is [edges[-1], inf)",
    }
    table = table.replace_schema_metadata({FLEET_META_KEY: json.dumps(meta).encode()})
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except (OSError, pa.ArrowException) as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise VmtraceError(f"cannot write {path}: {getattr(err, 'strerror', None) or err}") from None
    return path


def read_fleet(path: str) -> pd.DataFrame:
    """A fleet table as pandas, one row per trace (columns ``COLUMNS``).
    Raises ``VmtraceError`` for a file that is not one."""
    if not os.path.exists(path):
        raise VmtraceError(f"no such fleet table: {path}")
    try:
        pf = pq.ParquetFile(path)
        if FLEET_META_KEY not in (pf.schema_arrow.metadata or {}):
            raise VmtraceError(f"{path} is not a fleet table (write one with `vmtrace fleet summarize`)")
        table = pf.read()
    except (pa.ArrowException, OSError) as err:
        raise VmtraceError(f"{path} is not a readable fleet table ({str(err).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise VmtraceError(f"{path}: fleet table lacks columns {', '.join(missing[:5])}")
    # Nullable pandas dtypes: an error row's NULL stays NA, and counts stay integers.
    nullable = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype()}
    df: pd.DataFrame = table.to_pandas(types_mapper=nullable.get)
    return df
