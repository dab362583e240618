"""Trace files: round trip, and every way a file can be bad."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vmtrace.errors import TraceFileError
from vmtrace.schema import EVENT_COLUMNS, SCHEMA_VERSION
from vmtrace.trace import read_trace, write_trace

from .synthetic import ExitScript, SyntheticTrace

VMTRACE = [sys.executable, "-m", "vmtrace.cli"]


def _sample(tmp_path: Path) -> Path:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript(bql_futex_ns=10)] * 5)
    t = s.trace()
    return write_trace(tmp_path / "t.vmtrace", t.events, t.meta)


def test_round_trip_keeps_types_and_metadata(tmp_path: Path) -> None:
    path = _sample(tmp_path)
    t = read_trace(path)
    assert list(t.events.columns) == list(EVENT_COLUMNS)
    assert str(t.events["ts_ns"].dtype) == "int64"
    assert str(t.events["addr"].dtype) == "UInt64"
    assert t.meta["schema_version"] == SCHEMA_VERSION
    assert t.events["ts_ns"].is_monotonic_increasing
    assert t.vcpu_tids() == {101: 0}


def test_readable_without_vmtrace(tmp_path: Path) -> None:
    # Plain pyarrow sees the events and the JSON metadata.
    path = _sample(tmp_path)
    table = pq.read_table(path)
    assert "event" in table.column_names and table.num_rows > 0
    meta = json.loads(table.schema.metadata[b"vmtrace"])
    assert meta["tsc_hz"] > 0


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _sample(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFileError, match="truncated or corrupt"):
        read_trace(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = _sample(tmp_path)
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"vmtrace"])
    meta["schema_version"] = SCHEMA_VERSION + 1
    pq.write_table(table.replace_schema_metadata({b"vmtrace": json.dumps(meta).encode()}), path)
    with pytest.raises(TraceFileError, match="newer than this vmtrace reads"):
        read_trace(path)


def test_foreign_parquet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(TraceFileError, match="not a vmtrace trace"):
        read_trace(path)


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    s = SyntheticTrace()
    s.vcpu(1, 0, [ExitScript()])
    t = s.trace()
    with pytest.raises(TraceFileError, match="does not exist"):
        write_trace(tmp_path / "no" / "dir" / "t.vmtrace", t.events, t.meta)


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda p: p / "missing.vmtrace", "no such trace file"),
        (
            lambda p: (p / "garbage.vmtrace").write_bytes(b"not parquet at all") and p / "garbage.vmtrace",
            "truncated or corrupt",
        ),
        (lambda p: p, "is a directory"),
    ],
)
def test_cli_report_bad_input_is_one_line(tmp_path: Path, make, expect: str) -> None:
    target = make(tmp_path)
    proc = subprocess.run(VMTRACE + ["report", str(target)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_report_json_matches_api(tmp_path: Path) -> None:
    from vmtrace.analyses.breakdown import bql_breakdown

    path = _sample(tmp_path)
    proc = subprocess.run(VMTRACE + ["report", str(path), "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    api = bql_breakdown(read_trace(path))
    assert got["exits"] == len(api.exits) == 5
    assert got["components"]["bql_wait"] == pytest.approx(api.components["bql_wait"])
    for key in ("exits", "lost_events", "tsc_hz", "components", "bql", "by_vcpu"):
        assert key in got
    for comp in ("vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "total"):
        assert comp in got["components"]


def test_cli_unknown_option_value(tmp_path: Path) -> None:
    path = _sample(tmp_path)
    proc = subprocess.run(VMTRACE + ["report", str(path), "--format", "xml"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown format" in proc.stderr


# --- outputs: links, streams, devices (vmtrace.outputs) and metadata (vmtrace.meta)


def test_write_trace_goes_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.vmtrace"
    link.symlink_to(tmp_path / "real" / "t.vmtrace")
    s = SyntheticTrace()
    s.vcpu(1, 0, [ExitScript()])
    t = s.trace()
    write_trace(link, t.events, t.meta)
    assert link.is_symlink() and read_trace(link).vcpu_tids() == {1: 0}
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["t.vmtrace"]


def test_fifo_without_reader_is_refused_at_once(tmp_path: Path) -> None:
    import os

    from vmtrace.errors import OutputError
    from vmtrace.render.html import write_html

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="no reader"):
        write_html([("x", "text")], fifo)
    s = SyntheticTrace()
    s.vcpu(1, 0, [ExitScript()])
    t = s.trace()
    with pytest.raises(TraceFileError, match="no reader"):
        write_trace(fifo, t.events, t.meta)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    from vmtrace.outputs import open_output

    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with open_output(target) as f:
            f.write(b"half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_schema_1_metadata_migrates_and_keeps_its_version() -> None:
    from vmtrace.meta import MIGRATIONS, parse_meta, validate_meta

    assert set(MIGRATIONS) == set(range(1, SCHEMA_VERSION))
    meta = validate_meta(
        {"schema_version": 1, "tsc_hz": 2_000_000_000, "threads": [{"tid": 5, "role": "vcpu", "vcpu": 0}]}
    )
    assert meta["schema_version"] == 1
    typed = parse_meta(meta)
    assert typed.threads is not None and typed.threads[0].tid == 5 and typed.tsc_hz == 2_000_000_000


@pytest.mark.parametrize(
    "meta, field",
    [
        ({"schema_version": 2, "threads": [{"tid": 0}]}, "threads[0].tid"),
        ({"schema_version": 2, "tsc_hz": float("nan")}, "tsc_hz"),
        ({"schema_version": 2, "locks": [{"futex_uaddr": 1 << 64}]}, "locks[0].futex_uaddr"),
        ({"schema_version": 2, "futex_names": {"GIL": "GIL"}}, "futex_names"),
        ({"schema_version": 2, "lost_events": {"total": None}}, "lost_events.total"),
        ({"schema_version": 2, "bench": {"per_vcpu": ["fast"]}}, "bench.per_vcpu[0]"),
    ],
)
def test_metadata_errors_name_the_field(meta: dict, field: str) -> None:
    from vmtrace.errors import MetadataError
    from vmtrace.meta import validate_meta

    with pytest.raises(MetadataError) as err:
        validate_meta(meta)
    assert err.value.field.startswith(field) and "\n" not in str(err.value)
