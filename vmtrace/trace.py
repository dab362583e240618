"""Read and write trace files (see ``vmtrace.schema`` for the format).

``write_trace`` is the only place events become a file and ``read_trace`` the
only place a file becomes events, so every reader of a trace sees the same
validated, typed DataFrame.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import MetadataError, OutputError, TraceFileError, TraceWarning
from .meta import validate_meta
from .outputs import _kind, check_output, open_output
from .schema import EVENT_COLUMNS, EVENT_TYPES, ROLE_VCPU, SCHEMA_VERSION

__all__ = ["Trace", "empty_events", "normalize_events", "write_trace", "read_trace", "check_writable"]

_META_KEY = b"vmtrace"


@dataclass
class Trace:
    """A trace in memory: ``events`` (schema columns, sorted by ``ts_ns``) and
    ``meta`` (the JSON metadata object, keys in ``schema.METADATA_KEYS``)."""

    events: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def tsc_hz(self) -> int:
        return int(self.meta.get("tsc_hz") or 0)

    @property
    def threads(self) -> pd.DataFrame:
        """One row per known thread: ``tid`` int32, ``name`` str, ``role`` str,
        ``vcpu`` Int16 (NA unless the role is vcpu)."""
        rows = self.meta.get("threads") or []
        df = pd.DataFrame(rows, columns=["tid", "name", "role", "vcpu"])
        return df.astype({"tid": "int32", "name": "object", "role": "object", "vcpu": "Int16"})

    @property
    def lost_events(self) -> int:
        return int((self.meta.get("lost_events") or {}).get("total") or 0)

    def vcpu_tids(self) -> dict[int, int]:
        """tid -> vCPU index for the threads the recorder identified as vCPUs."""
        t = self.threads
        t = t[t["role"] == ROLE_VCPU]
        tids = t["tid"].to_numpy(dtype=np.int64).tolist()
        vcpus = t["vcpu"].astype("Int64").fillna(-1).to_numpy(dtype=np.int64).tolist()
        return dict(zip(tids, vcpus, strict=True))

    def futex_names(self) -> dict[int, str]:
        """Futex word -> lock name: the BQL (however it was identified) and
        any word the target named through the probe API."""
        names: dict[int, str] = {}
        for key, name in (self.meta.get("futex_names") or {}).items():
            try:  # hex strings as written; ints from other writers; junk skipped
                names[int(key, 0) if isinstance(key, str) else int(key)] = str(name)
            except (TypeError, ValueError):
                continue
        for lock in self.meta.get("locks") or []:
            if lock.get("futex_uaddr"):
                names[int(lock["futex_uaddr"])] = str(lock.get("name"))
        return names

    def bql(self) -> dict[str, Any]:
        locks: list[dict[str, Any]] = self.meta.get("locks") or []
        for lock in locks:
            if lock.get("name") == "BQL":
                return lock
        return {"name": "BQL", "identified": False, "method": "none", "futex_uaddr": None}


def empty_events() -> pd.DataFrame:
    """A zero-row DataFrame with the schema's columns and dtypes."""
    return normalize_events(pd.DataFrame({c: [] for c in EVENT_COLUMNS}))


def normalize_events(df: pd.DataFrame) -> pd.DataFrame:
    """Cast to the schema's dtypes, fill absent columns, sort stably by time.

    Stable sorting keeps the order in which a collector saw two events of the
    same nanosecond on one CPU.
    """
    cols: dict[str, Any] = {}
    for col, dtype in EVENT_COLUMNS.items():
        if col == "event":
            values = df[col]
            same = isinstance(values.dtype, pd.CategoricalDtype) and list(values.cat.categories) == list(EVENT_TYPES)
            cols[col] = values.array if same else pd.Categorical(values, categories=list(EVENT_TYPES))
        elif col == "name":
            values = df[col] if col in df else pd.Series([None] * len(df), index=df.index)
            cols[col] = values.astype("category").array
        elif col in df:
            cols[col] = df[col].astype(pd.api.types.pandas_dtype(dtype)).array
        else:
            cols[col] = pd.Series(pd.NA, index=df.index, dtype=dtype).array
    # No copies: at 10M events every column copy costs hundreds of MB.
    out = pd.DataFrame(cols, copy=False)
    if out["event"].isna().any():
        bad = df.loc[out["event"].isna().to_numpy(), "event"].unique()[:5]
        raise ValueError(f"unknown event names {list(bad)}")
    ts = out["ts_ns"].to_numpy()
    if len(ts) < 2 or bool((ts[1:] >= ts[:-1]).all()):
        return out
    order = np.argsort(ts, kind="stable")
    return out.iloc[order].reset_index(drop=True)


def check_writable(path: Path) -> None:
    """Fail early, before recording anything, when ``path`` cannot be written
    (see ``vmtrace.outputs`` for devices, FIFOs and symlinks)."""
    try:
        check_output(path, "trace")
    except OutputError as err:
        raise TraceFileError(str(err)) from None


def write_trace(path: Path, events: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """Write a trace file: atomically (a temporary file renamed into place)
    for a regular file, through a symlink, directly to a FIFO or /dev/null;
    refused for other device nodes and sockets (``vmtrace.outputs``)."""
    path = Path(path)
    check_writable(path)
    events = normalize_events(events)
    meta = dict(meta)
    meta.setdefault("schema_version", SCHEMA_VERSION)
    meta.setdefault("vmtrace_version", __version__)
    meta.setdefault("created", pd.Timestamp.now(tz="UTC").isoformat())
    table = pa.Table.from_pandas(events, preserve_index=False)
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    try:
        with open_output(path, "trace") as f:
            pq.write_table(
                table,
                f,
                compression="zstd",
                compression_level=6,
                # Timestamps and addresses repeat in small deltas: delta encoding
                # before zstd is what keeps a trace near a few bytes per event.
                use_dictionary=["event", "name"],
                column_encoding={"ts_ns": "DELTA_BINARY_PACKED", "tid": "DELTA_BINARY_PACKED"},
                row_group_size=1 << 20,
            )
    except OutputError as err:
        raise TraceFileError(str(err)) from None
    except pa.ArrowException as err:
        raise TraceFileError(f"cannot write trace {path}: {err}") from None
    return path


_NULLABLE = {
    "UInt64": pd.UInt64Dtype(),
    "UInt8": pd.UInt8Dtype(),
    "boolean": pd.BooleanDtype(),
    "Int64": pd.Int64Dtype(),
    "Int32": pd.Int32Dtype(),
}


def _read_events(pf: pq.ParquetFile) -> pd.DataFrame:
    """The events, one column at a time, straight to the schema's pandas
    dtypes: the peak is one copy of the events plus one Arrow column (not
    the whole Arrow table beside its pandas copy), and a nullable column
    never takes the float64/object detour of ``Table.to_pandas``."""
    cols: dict[str, Any] = {}
    for name, dtype in EVENT_COLUMNS.items():
        col = pf.read(columns=[name]).column(0)
        if dtype in _NULLABLE:
            cols[name] = _NULLABLE[dtype].__from_arrow__(col)  # type: ignore[attr-defined]  # missing from pandas-stubs
        else:
            cols[name] = col.to_pandas().array
    return pd.DataFrame(cols, copy=False)


def _file_kind(path: Path) -> None:
    """Refuse, from its inode alone, what cannot be a trace: opening a FIFO
    would block and a device would be read as if it were one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TraceFileError(f"no such trace file: {path}") from None
    except OSError as err:
        raise TraceFileError(f"cannot read trace {path}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise TraceFileError(f"{path} is a directory, not a trace file")
    if not stat.S_ISREG(st.st_mode):
        raise TraceFileError(f"{path} is {_kind(st.st_mode)}, not a trace file (traces are regular files)")


def _row_problem(events: pd.DataFrame) -> str | None:
    """What in ``events`` (normalized, in file order) no vmtrace writer
    produces, or None.  ``write_trace`` sorts by time, every collector
    reads CLOCK_MONOTONIC (never negative) and records threads by tid,
    and only ``lost`` markers have tid -1."""
    ts = events["ts_ns"].to_numpy()
    back = np.flatnonzero(ts[1:] < ts[:-1])
    if len(back):
        i = int(back[0]) + 1
        return (
            f"row {i}: events are not in time order (ts_ns {int(ts[i])} after {int(ts[i - 1])}); "
            "vmtrace writes them sorted, so the file was changed by another tool"
        )
    neg = np.flatnonzero(ts < 0)
    if len(neg):
        return f"row {int(neg[0])}: negative timestamp ts_ns {int(ts[neg[0]])}"
    lost = (events["event"] == "lost").to_numpy()
    tid = events["tid"].to_numpy()
    bad = np.flatnonzero(np.where(lost, tid != -1, tid <= 0))
    if len(bad):
        i = int(bad[0])
        what = "a lost marker must have tid -1" if lost[i] else "only lost markers have no thread"
        return f"row {i}: {events['event'].iloc[i]} event with tid {int(tid[i])} ({what})"
    cpu = events["cpu"].to_numpy()
    bad = np.flatnonzero(cpu < -1)
    if len(bad):
        return f"row {int(bad[0])}: cpu {int(cpu[bad[0]])} (a CPU number, or -1 for userspace probes)"
    return None


def _exact_duplicates(events: pd.DataFrame) -> np.ndarray:
    """Rows equal in every column to an earlier row (lost markers apart):
    no collector emits one event twice.  Only rows sharing a timestamp with
    a neighbour are compared, which keeps this cheap on 10M events."""
    ts = events["ts_ns"].to_numpy()
    same = np.zeros(len(ts), dtype=bool)
    if len(ts) > 1:
        eq = ts[1:] == ts[:-1]
        same[1:] |= eq
        same[:-1] |= eq
    same &= (events["event"] != "lost").to_numpy()
    dup = np.zeros(len(ts), dtype=bool)
    if not same.any():
        return dup
    rows = np.flatnonzero(same)
    sub = events.iloc[rows]
    keys: list[np.ndarray] = []
    for col in events.columns:
        values = sub[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            keys.append(values.cat.codes.to_numpy())
            continue
        na = values.isna().to_numpy()
        keys += [values.to_numpy(dtype="uint64" if str(values.dtype) == "UInt64" else "int64", na_value=0), na]
    # Sorted on every column, equal rows are neighbours: one vectorised pass.
    order = np.lexsort(keys[::-1])
    equal = np.ones(len(rows) - 1, dtype=bool)
    for k in keys:
        ks = k[order]
        equal &= ks[1:] == ks[:-1]
    dup[rows[order[1:][equal]]] = True
    return dup


def read_trace(path: Path | str) -> Trace:
    """Read and validate a trace file.

    Raises ``TraceFileError`` for a missing, truncated or corrupt file, a
    FIFO or device node, a Parquet file that is not a vmtrace trace, a
    newer schema version, metadata that does not match ``vmtrace.meta``'s
    schema (``MetadataError``, naming the field), and rows no vmtrace
    writer produces (out of time order, tid -1 outside a lost marker, a
    negative time).  Exact duplicate rows are dropped with a
    ``TraceWarning`` and a note in ``meta["notes"]``.
    """
    path = Path(path)
    _file_kind(path)
    try:
        pf = pq.ParquetFile(path)
        raw = (pf.schema_arrow.metadata or {}).get(_META_KEY)
    except (pa.ArrowException, OSError) as err:
        raise TraceFileError(
            f"{path} is not a readable trace (truncated or corrupt: {str(err).splitlines()[0]})"
        ) from None
    if raw is None:
        raise TraceFileError(f"{path} is a Parquet file but not a vmtrace trace (no vmtrace metadata)")
    try:
        decoded = json.loads(raw)
    except ValueError:
        raise TraceFileError(f"{path}: the trace metadata is corrupt (not JSON)") from None
    version = decoded.get("schema_version") if isinstance(decoded, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise TraceFileError(
            f"{path} uses trace schema {version}, newer than this vmtrace reads ({SCHEMA_VERSION}); upgrade vmtrace"
        )
    try:
        meta = validate_meta(decoded)
    except MetadataError as err:
        raise TraceFileError(f"{path}: {err}") from None
    missing = [c for c in EVENT_COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise TraceFileError(f"{path}: trace lacks columns {', '.join(missing)}")
    try:
        events = _read_events(pf)
    except (pa.ArrowException, OSError) as err:
        raise TraceFileError(f"{path}: cannot read events (truncated or corrupt: {err})") from None
    try:
        raw_ts = events["ts_ns"].to_numpy()
        if len(raw_ts) > 1 and not bool((raw_ts[1:] >= raw_ts[:-1]).all()):
            # Checked before normalize_events, which would sort the damage away.
            problem = _row_problem(events)
            raise TraceFileError(f"{path}: {problem}")
        events = normalize_events(events)
    except (ValueError, TypeError) as err:
        raise TraceFileError(f"{path}: events do not match the schema ({err})") from None
    problem = _row_problem(events)
    if problem:
        raise TraceFileError(f"{path}: {problem}")
    dup = _exact_duplicates(events)
    if dup.any():
        n = int(dup.sum())
        events = events[~dup].reset_index(drop=True)
        note = (
            f"{n:,} exact duplicate event rows were dropped when the trace was read "
            "(no collector writes one event twice)"
        )
        meta["notes"] = [*(meta.get("notes") or []), note]
        warnings.warn(TraceWarning(f"{path}: {note}"), stacklevel=2)
    return Trace(events=events, meta=meta, path=path)
