"""Fleet analysis: summary rows, mergeable histograms, sources, report, CLI.

The fleet builders here are shared by the other test_fleet_*.py files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.analyses.locks import lock_report
from vmtrace.cli import app
from vmtrace.errors import VmtraceError
from vmtrace.fleet import histograms as hist
from vmtrace.fleet.engine import plan_fleet, run_fleet
from vmtrace.fleet.report import fleet_report
from vmtrace.fleet.sources import expand_sources
from vmtrace.fleet.summary import COLUMNS, COMPONENTS, read_fleet, summarize_trace, to_table, write_fleet
from vmtrace.trace import read_trace, write_trace

from .synthetic import ExitScript, replicate

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "sample_traces").glob("*.vmtrace"))
RUN = CliRunner()

TEMPLATES = [
    ExitScript(),
    ExitScript(kernel_exits=(0x70,)),
    ExitScript(bql_futex_ns=5000, waker=1, wake_latency_ns=300),
    ExitScript(lock_span=True, bql_futex_ns=2000, device_ns=700, other_futex_ns=100),
    ExitScript(preempted_ns=100, post_ns=500),
    ExitScript(sleep_ns=1000, post_ns=2000, port=0x3F8, write=True),
]

#: (file name, vCPUs, exits per vCPU, provenance): sizes from tens of
#: events to a few hundred thousand, and several VMMs, versions, modes.
SYNTHETIC: list[tuple[str, int, int, dict[str, Any]]] = [
    (
        "tiny-ref-bql.vmtrace",
        1,
        20,
        {
            "vmm": "reference",
            "locking": "bql",
            "host": "host-a",
            "interpreter": {
                "version": "3.13.5",
                "free_threaded": True,
                "gil_enabled": False,
                "path": "/opt/py/bin/python3.13t",
            },
        },
    ),
    ("small-qemu72.vmtrace", 2, 1_500, {"vmm": "qemu", "version": "7.2.22", "host": "host-b"}),
    (
        "medium-ref-unlocked.vmtrace",
        2,
        6_000,
        {"vmm": "reference", "locking": "unlocked", "host": "host-c", "interpreter": "3.11.2"},
    ),
    ("large-qemu10.vmtrace", 4, 10_000, {"vmm": "qemu", "version": "10.0.2", "host": "host-d"}),
]


def synthetic_trace(path: Path, vcpus: int, per_vcpu: int, seed: int, prov: dict[str, Any]) -> Path:
    """A synthetic trace (tests/synthetic.py) carrying recorder-like
    metadata: host, target VMM and version, workload on the command line."""
    rng = np.random.default_rng(seed)
    # Weighted towards BQL waits on higher seeds, so traces differ.
    weights = np.array([4, 1, 1 + seed, 1 + seed, 1, 1], dtype=float)
    seqs = {100 + i: rng.choice(len(TEMPLATES), per_vcpu, p=weights / weights.sum()) for i in range(vcpus)}
    t = replicate(TEMPLATES, seqs).trace()
    cmd = (
        [
            "python3",
            "-m",
            "vmtrace.reference_vmm",
            "--vcpus",
            str(vcpus),
            "--locking",
            prov["locking"],
            "--",
            "bench=inl_pmtimer",
        ]
        if prov["vmm"] == "reference"
        else ["qemu-system-x86_64", "-smp", str(vcpus), "-append", "bench=inl_pmtimer iterations=100"]
    )
    target: dict[str, Any] = {"command": cmd, "pid": 4242, "vmm": prov["vmm"], "vmm_version": prov.get("version")}
    if "interpreter" in prov:
        target["interpreter"] = prov["interpreter"]
    meta = dict(
        t.meta,
        host={"hostname": prov["host"], "kernel": "6.1.0-test", "cpus": 2},
        target=target,
        backend="bcc",
        mode="default",
        kvm_flavour="vmx",
        created="2026-12-01T10:00:00+00:00",
        start_ns=0,
        end_ns=2_000_000_000,
    )
    return write_trace(path, t.events, meta)


def corrupt_files(d: Path) -> list[Path]:
    """Garbage, a real trace cut in half, and a Parquet file that is not a
    trace."""
    garbage = d / "garbage.vmtrace"
    garbage.write_bytes(b"this is not parquet\n" * 10)
    cut = d / "truncated.vmtrace"
    data = SAMPLES[0].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    plain = d / "plain.vmtrace"
    pd.DataFrame({"x": [1, 2, 3]}).to_parquet(plain)
    return [garbage, cut, plain]


def build_fleet(d: Path) -> list[str]:
    """The sample traces, the synthetic ones and the corrupt files, as the
    sources a fleet run is given."""
    d.mkdir(parents=True, exist_ok=True)
    for seed, (name, vcpus, per_vcpu, prov) in enumerate(SYNTHETIC):
        if not (d / name).exists():
            synthetic_trace(d / name, vcpus, per_vcpu, seed, prov)
    corrupt_files(d)
    return [str(p) for p in SAMPLES] + sorted(str(p) for p in d.glob("*.vmtrace"))


def canonical(rows: list[dict[str, Any]]) -> str:
    """Rows as text, NaN-safe, for exact comparison across engines."""
    return json.dumps(to_table(rows).to_pylist(), default=str, sort_keys=True)


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fleet")
    build_fleet(d)
    return d


@pytest.fixture(scope="module")
def serial_rows(fleet_dir: Path) -> list[dict[str, Any]]:
    return run_fleet(build_fleet(fleet_dir), scheduler="synchronous")


# ----------------------------------------------------------------------------
# Histograms


def test_bucket_edges_are_the_documented_ones() -> None:
    assert hist.N_BUCKETS == 162
    assert hist.bucket_of(np.array([0.0, 0.99, 1.0, 2**0.25, 64.0, 63.999, 2.0**40, 1e300, -5.0])).tolist() == [
        0,
        0,
        1,
        2,
        25,
        24,
        161,
        161,
        0,
    ]
    assert hist.bucket_bounds(25) == (64.0, 64 * 2**0.25)
    # The single-trace report's edges (64 * 2**(k/4)) are a subset of these.
    assert np.isin(64.0 * 2.0 ** (np.arange(20) / 4), hist.EDGES).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1e13, allow_nan=False), max_size=40), min_size=1, max_size=6))
def test_merging_is_exact_addition(chunks: list[list[float]]) -> None:
    merged = hist.merge(hist.histogram(np.array(c)) for c in chunks)
    every = np.concatenate([np.array(c, dtype=np.float64) for c in chunks])
    assert merged.tolist() == hist.histogram(every).tolist()
    # An independent binning: numpy's [a, b) bins over the same edges.
    ref, _ = np.histogram(every, bins=np.concatenate(([0.0], hist.EDGES, [np.inf])))
    assert merged.tolist() == ref.tolist()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1e9, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.0, 0.01, 0.5, 0.9, 0.99, 1.0]),
)
def test_quantile_bucket_holds_the_true_quantile(values: list[float], q: float) -> None:
    v = np.sort(np.array(values))
    found = hist.quantile(hist.histogram(v), q)
    assert found is not None
    nearest = v[min(max(math.ceil(round(q * len(v), 9)), 1), len(v)) - 1]
    assert found.low <= nearest < found.high
    # So the point estimate is off by less than one bucket's ratio.
    if nearest >= 1:
        assert 2**-0.25 <= found.estimate / nearest <= 2**0.25


def test_quantile_of_empty_histogram_is_none() -> None:
    assert hist.quantile(np.zeros(hist.N_BUCKETS, np.int64), 0.5) is None
    with pytest.raises(ValueError):
        hist.merge([[1, 2, 3]])


# ----------------------------------------------------------------------------
# One trace, one row


def test_row_carries_the_analyses_results(fleet_dir: Path) -> None:
    path = fleet_dir / "large-qemu10.vmtrace"
    row = summarize_trace(str(path))
    assert row["error"] is None and set(row) == set(COLUMNS)
    trace = read_trace(path)
    b = bql_breakdown(trace)
    assert row["exits"] == len(b.exits) > 0
    for c in COMPONENTS:
        assert row[f"{c}_mean"] == pytest.approx(b.components[c])
        assert row[f"{c}_p99"] == pytest.approx(b.percentiles[c]["p99"])
        assert sum(row[f"hist_{c}"]) == len(b.exits)
    assert row["bql_share"] == pytest.approx(b.components["bql_wait"] / b.components["total"])
    assert 0 < row["bql_share"] < 1
    words = lock_report(trace).words
    assert row["top_locks"][0]["addr"] == hex(int(words["addr"].iloc[0]))
    assert row["top_lock"] == "BQL"
    assert (row["host"], row["vmm"], row["vmm_version"], row["vcpus"], row["workload"]) == (
        "host-d",
        "qemu",
        "10.0.2",
        4,
        "inl_pmtimer",
    )
    assert row["locking"] is None and row["kvm_flavour"] == "vmx"
    assert row["recorded"] == pd.Timestamp("2026-12-01T10:00:00Z")
    assert row["events"] == len(trace.events) and row["duration_s"] == 2.0


def test_reference_vmm_locking_and_interpreter(fleet_dir: Path) -> None:
    tiny = summarize_trace(str(fleet_dir / "tiny-ref-bql.vmtrace"))
    assert (tiny["vmm"], tiny["locking"], tiny["interpreter"], tiny["free_threaded"], tiny["gil_enabled"]) == (
        "reference",
        "bql",
        "3.13.5t",
        True,
        False,
    )
    medium = summarize_trace(str(fleet_dir / "medium-ref-unlocked.vmtrace"))
    assert (medium["locking"], medium["interpreter"], medium["free_threaded"]) == ("unlocked", "3.11.2", None)


def test_sample_trace_rows_match_the_report_defaults() -> None:
    row = summarize_trace(str(REPO / "sample_traces" / "qemu-pmtimer-2vcpu-precise.vmtrace"))
    b = bql_breakdown(read_trace(REPO / "sample_traces" / "qemu-pmtimer-2vcpu-precise.vmtrace"))
    assert row["exit_scope"] == "timed_loop" and row["exits"] == len(b.exits)
    assert row["vmm_version"] == "7.2.22" and row["mode"] == "precise" and row["bql_identified"]
    every = summarize_trace(str(REPO / "sample_traces" / "qemu-pmtimer-2vcpu-precise.vmtrace"), all_exits=True)
    assert every["exit_scope"] == "all" and every["exits"] > row["exits"]


def test_corrupt_files_become_error_rows(tmp_path: Path) -> None:
    for path in corrupt_files(tmp_path):
        row = summarize_trace(str(path))
        assert row["error"] and str(path.name) in row["error"]
        assert row["trace_id"] and row["exits"] is None and row["hist_total"] is None
    assert "not a vmtrace trace" in summarize_trace(str(tmp_path / "plain.vmtrace"))["error"]


def test_trace_without_futex_events_still_summarised(tmp_path: Path) -> None:
    t = replicate([ExitScript()], {7: np.zeros(50, dtype=np.int64)}).trace()
    path = write_trace(tmp_path / "nofutex.vmtrace", t.events, t.meta)
    row = summarize_trace(str(path))
    assert row["error"] is None and row["exits"] == 50
    assert row["top_locks"] is None and any(n.startswith("lock analysis:") for n in row["notes"])


def test_fsspec_url_is_read_by_the_worker(fleet_dir: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/fleet-test/a.vmtrace", (fleet_dir / "small-qemu72.vmtrace").read_bytes())
    try:
        sources = expand_sources(["memory://fleet-test/"])
        assert sources == ["memory:///fleet-test/a.vmtrace"]
        row = run_fleet(sources, scheduler="synchronous")[0]
        local = summarize_trace(str(fleet_dir / "small-qemu72.vmtrace"))
        assert {k: v for k, v in row.items() if k != "path"} == {k: v for k, v in local.items() if k != "path"}
    finally:
        fs.rm("/fleet-test", recursive=True)


# ----------------------------------------------------------------------------
# Sources and the table on disk


def test_sources_directories_globs_and_refusals(fleet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    every = expand_sources([str(fleet_dir)])
    assert len(every) == len(SYNTHETIC) + 3
    # Relative names leave the client absolute (a worker has another cwd), once each.
    monkeypatch.chdir(fleet_dir)
    assert expand_sources(["small-qemu72.vmtrace", "./small-qemu72.vmtrace", "tiny-*"]) == [
        str(fleet_dir / "small-qemu72.vmtrace"),
        str(fleet_dir / "tiny-ref-bql.vmtrace"),
    ]
    assert expand_sources([str(fleet_dir / "*-qemu*.vmtrace"), str(fleet_dir / "large-qemu10.vmtrace")]) == [
        str(fleet_dir / "large-qemu10.vmtrace"),
        str(fleet_dir / "small-qemu72.vmtrace"),
    ]
    for bad, said in [
        ("/no/such/dir", "no such trace file"),
        (str(fleet_dir / "*.nothing"), "no trace files match"),
        ("nosuchscheme://x/y", "unknown URL scheme"),
    ]:
        with pytest.raises(VmtraceError, match=said):
            expand_sources([bad])
    with pytest.raises(VmtraceError, match="does not exist"):
        plan_fleet([str(fleet_dir)], "/no/such/dir/fleet.parquet")


def test_table_round_trip_keeps_types(serial_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    out = write_fleet(serial_rows, str(tmp_path / "fleet.parquet"))
    df = read_fleet(out)
    assert len(df) == len(serial_rows)
    assert str(df["exits"].dtype) == "Int64" and str(df["vcpus"].dtype) == "Int32"
    failed = df[df["error"].notna()]
    assert len(failed) == 3 and failed["exits"].isna().all()
    meta = json.loads(pq.read_schema(out).metadata[b"vmtrace_fleet"])
    assert meta["edges"] == hist.EDGES.tolist() and meta["buckets"] == hist.N_BUCKETS
    with pytest.raises(VmtraceError, match="not a fleet table"):
        read_fleet(str(SAMPLES[0]))


# ----------------------------------------------------------------------------
# The fleet view


def test_report_weighted_means_equal_the_mean_over_every_exit(
    serial_rows: list[dict[str, Any]], fleet_dir: Path
) -> None:
    r = fleet_report(pd.DataFrame(serial_rows), by=["vmm", "vcpus"], top_n=3)
    assert r.traces == len(serial_rows) and len(r.failed) == 3
    exits = []
    for row in serial_rows:
        if row["error"] is None:
            trace = read_trace(row["path"])
            # float first: ns * tsc_hz overflows int64 for exits over ~3.5 s (the
            # fw_cfg sample has some), which made this reference value wrong.
            exits.append(bql_breakdown(trace).exits["total_ns"].to_numpy(dtype=np.float64) * trace.tsc_hz / 1e9)
    every = np.concatenate(exits)
    total = r.overall.set_index("component").loc["total"]
    assert total["mean"] == pytest.approx(every.mean())
    assert total["p99_low"] <= np.sort(every)[math.ceil(0.99 * len(every)) - 1] < total["p99_high"]
    assert r.groups["traces"].sum() == r.summarised and r.groups["exits"].sum() == r.exits == len(every)
    assert list(r.top["bql_wait_mean"]) == sorted(r.top["bql_wait_mean"], reverse=True) and len(r.top) == 3
    with pytest.raises(VmtraceError, match="cannot group by"):
        fleet_report(pd.DataFrame(serial_rows), by=["hist_total"])


# ----------------------------------------------------------------------------
# The command


def test_cli_summarize_and_report(fleet_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fleet.parquet"
    res = RUN.invoke(
        app, ["fleet", "summarize", str(fleet_dir), str(SAMPLES[0]), "-o", str(out), "--scheduler", "synchronous"]
    )
    assert res.exit_code == 0, res.output
    assert f"{len(SYNTHETIC) + 4} traces, 3 failed" in res.stderr
    assert res.stderr.count("vmtrace: failed:") == 3
    page = tmp_path / "fleet.html"
    res = RUN.invoke(app, ["fleet", "report", str(out), "--by", "vmm_version,vcpus", "--html", str(page)])
    assert res.exit_code == 0, res.output
    assert "by vmm_version, vcpus" in res.stdout and "10.0.2" in res.stdout and "garbage.vmtrace" in res.stdout
    text = page.read_text()
    # plotly.js inlined once; nothing else on the page points off the machine.
    assert text.count(get_plotlyjs()) == 1
    rest = text.replace(get_plotlyjs(), "")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", rest, re.I)
    assert rest.count('class="plotly-graph-div"') >= 3
    assert "Top traces by BQL wait" in text and "Across traces" in text


@pytest.mark.parametrize(
    "args, said",
    [
        (["fleet", "summarize", "/no/such/trace", "-o", "x.parquet"], "no such trace file"),
        (["fleet", "summarize", str(SAMPLES[0]), "-o", "/no/dir/x.parquet"], "does not exist"),
        (["fleet", "summarize", str(SAMPLES[0]), "-o", "x.parquet", "--workers", "0"], "at least 1"),
        (["fleet", "summarize", str(SAMPLES[0]), "-o", "x.parquet", "--scheduler", "localhost:8786"], "tcp://"),
        (["fleet", "report", str(SAMPLES[0])], "not a fleet table"),
        (["fleet", "report", "/no/such.parquet"], "no such fleet table"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = RUN.invoke(app, args)
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vmtrace: error:") and said in lines[0]
    assert "Traceback" not in res.output


def test_report_of_a_fleet_where_every_trace_failed(tmp_path: Path) -> None:
    rows = run_fleet([str(p) for p in corrupt_files(tmp_path)], scheduler="synchronous")
    out = write_fleet(rows, str(tmp_path / "fleet.parquet"))
    r = fleet_report(read_fleet(out), by=["vcpus"])
    assert (r.traces, r.summarised, r.exits, len(r.failed), len(r.groups), len(r.top)) == (3, 0, 0, 3, 0, 0)
    assert r.overall["mean"].isna().all() and r.overall["p99"].isna().all()
    res = RUN.invoke(app, ["fleet", "report", out, "--html", str(tmp_path / "f.html")])
    assert res.exit_code == 0 and "0 summarised, 3 failed" in res.stdout
