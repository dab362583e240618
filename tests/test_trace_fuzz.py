"""Property: whatever is done to a trace file's metadata or rows, the reader
accepts it with correct (or repaired) data, or refuses it with one line
(``VmtraceError``); and what it accepts, every analysis and export can read
without a traceback."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.analyses.exits import exit_stats
from vmtrace.analyses.locks import lock_report
from vmtrace.analyses.offcpu import offcpu_report
from vmtrace.errors import TraceWarning, VmtraceError
from vmtrace.export.perfetto import chrome_trace
from vmtrace.render.breakdown import render_breakdown
from vmtrace.render.exits import render_exits
from vmtrace.render.locks import render_locks
from vmtrace.render.offcpu import render_offcpu
from vmtrace.schema import EVENT_TYPES
from vmtrace.trace import Trace, read_trace

from .test_bad_input import sample_trace

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_trace(tmp_path_factory.mktemp("fuzz") / "sample.vmtrace")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON tree a value could be replaced or deleted."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(node: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = node
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return node


def _use(t: Trace) -> None:
    """What report, compare and export do with an accepted trace: they may
    refuse it (a VmtraceError, one line), never raise anything else."""
    from rich.console import Console

    console = Console(file=open("/dev/null", "w"), width=160)
    try:
        views: tuple[tuple[Callable[..., Any], Callable[..., None]], ...] = (
            (bql_breakdown, render_breakdown),
            (exit_stats, render_exits),
            (lock_report, render_locks),
            (offcpu_report, render_offcpu),
        )
        for compute, render in views:
            try:
                result = compute(t)
            except VmtraceError as err:
                assert "\n" not in str(err)
                continue
            render(result, console)
            json.dumps(result.to_json(), default=str)
        try:
            chrome_trace(t)
        except VmtraceError as err:
            assert "\n" not in str(err)
    finally:
        console.file.close()


def _read(path: Path) -> Trace | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceWarning)
            return read_trace(path)
    except VmtraceError as err:
        assert "\n" not in str(err).strip(), str(err)
        return None


def _valid_rows(events: pd.DataFrame) -> None:
    ts = events["ts_ns"].to_numpy()
    assert (ts[1:] >= ts[:-1]).all() and (ts >= 0).all()
    lost = (events["event"] == "lost").to_numpy()
    tid = events["tid"].to_numpy()
    assert (tid[lost] == -1).all() and (tid[~lost] > 0).all()
    assert not events[~lost].astype(object).duplicated().any()


@SETTINGS
@given(data=st.data())
def test_mutated_metadata_is_accepted_usable_or_refused(sample: Path, tmp_path: Path, data: st.DataObject) -> None:
    table = pq.read_table(sample)
    meta = json.loads(table.schema.metadata[b"vmtrace"])
    where = data.draw(st.sampled_from(_paths(meta)), label="where")
    value = data.draw(json_values, label="value")
    delete = data.draw(st.booleans(), label="delete")
    meta = _replace(meta, where, value, delete)
    path = tmp_path / "m.vmtrace"
    pq.write_table(table.replace_schema_metadata({b"vmtrace": json.dumps(meta).encode()}), path)
    t = _read(path)
    if t is not None:
        _use(t)


ROW_EDITS = ("duplicate", "swap_ts", "tid", "cpu", "event", "shift", "drop", "addr")


def _edit_rows(df: pd.DataFrame, edit: str, rows: list[int], value: int) -> pd.DataFrame:
    df = df.copy()
    idx = [r % len(df) for r in rows]
    if edit == "duplicate":
        return pd.concat([df, df.iloc[idx]]).sort_values("ts_ns", kind="stable").reset_index(drop=True)
    if edit == "swap_ts":
        ts = df["ts_ns"].to_numpy().copy()
        a, b = idx[0], idx[-1]
        ts[a], ts[b] = ts[b], ts[a]
        df["ts_ns"] = ts
    elif edit == "tid":
        df.loc[idx, "tid"] = np.int32(max(min(value, (1 << 31) - 1), -(1 << 31)))
    elif edit == "cpu":
        df.loc[idx, "cpu"] = np.int16(max(min(value, (1 << 15) - 1), -(1 << 15)))
    elif edit == "event":
        df.loc[idx, "event"] = EVENT_TYPES[value % len(EVENT_TYPES)]
    elif edit == "shift":
        df.loc[idx, "ts_ns"] = df.loc[idx, "ts_ns"] + value
    elif edit == "drop":
        df = df.drop(index=sorted(set(idx))).reset_index(drop=True)
    elif edit == "addr":
        df.loc[idx, "addr"] = abs(value) % (1 << 64)
    return df


@SETTINGS
@given(
    edit=st.sampled_from(ROW_EDITS),
    rows=st.lists(st.integers(0, 10_000), min_size=1, max_size=6),
    value=st.integers(-(1 << 40), 1 << 40),
)
def test_mutated_rows_are_accepted_correct_or_refused(
    sample: Path, tmp_path: Path, edit: str, rows: list[int], value: int
) -> None:
    table = pq.read_table(sample)
    original = read_trace(sample).events
    df = _edit_rows(table.to_pandas(), edit, rows, value)
    path = tmp_path / "r.vmtrace"
    out = pa.Table.from_pandas(df, schema=table.schema, preserve_index=False)
    pq.write_table(out.replace_schema_metadata(table.schema.metadata), path)
    t = _read(path)
    if edit == "duplicate":
        # Exact duplicates are repaired: the data is the original's.
        assert t is not None
        pd.testing.assert_frame_equal(t.events, original)
    if t is None:
        return
    _valid_rows(t.events)
    _use(t)
