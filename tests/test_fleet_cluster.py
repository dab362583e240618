"""The fleet on real Dask: a dask.distributed LocalCluster with 2 worker
processes, and the local process pool, give exactly the serial rows; the
merged histograms equal the histogram of every exit concatenated."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.fleet import histograms as hist
from vmtrace.fleet.engine import run_fleet, summarize_fleet
from vmtrace.fleet.report import fleet_report
from vmtrace.fleet.summary import COMPONENTS, read_fleet
from vmtrace.trace import read_trace

from .test_fleet import build_fleet, canonical

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return build_fleet(tmp_path_factory.mktemp("fleet-cluster"))


@pytest.fixture(scope="module")
def serial(sources: list[str]) -> list[dict[str, Any]]:
    return run_fleet(sources, scheduler="synchronous")


def _children() -> set[int]:
    """Our child processes, less multiprocessing's resource tracker (one
    per interpreter, started by the first spawned process and kept until
    the interpreter exits: not a worker)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def test_local_cluster_gives_the_serial_rows(sources: list[str], serial: list[dict[str, Any]], tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    before = _children()
    seen: list[int] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            worker_pids = set(client.run(lambda: __import__("os").getpid()).values())
        assert len(worker_pids) == 2 and not worker_pids & {psutil.Process().pid}
        out = tmp_path / "fleet.parquet"
        path, rows = summarize_fleet(
            sources, str(out), scheduler=cluster.scheduler_address, progress=lambda done, total: seen.append(done)
        )
    assert canonical(rows) == canonical(serial)
    assert [r["path"] for r in rows] == sources
    assert seen[0] == 0 and seen[-1] == len(sources) and sorted(seen) == seen
    assert sum(1 for r in rows if r["error"]) == 3
    # The cluster's processes are gone with it.
    assert not (_children() - before)
    assert not [p for p in worker_pids if psutil.pid_exists(p)]
    assert read_fleet(path)["path"].tolist() == sources


def test_local_process_pool_gives_the_serial_rows(sources: list[str], serial: list[dict[str, Any]]) -> None:
    before = _children()
    seen: list[int] = []
    rows = run_fleet(sources, workers=2, progress=lambda done, total: seen.append(done))
    assert canonical(rows) == canonical(serial)
    assert seen[-1] == len(sources)
    assert not (_children() - before)


def test_merged_histograms_are_the_histogram_of_every_exit(serial: list[dict[str, Any]]) -> None:
    r = fleet_report(__import__("pandas").DataFrame(serial))
    per_component: dict[str, list[np.ndarray]] = {c: [] for c in COMPONENTS}
    for row in serial:
        if row["error"] is not None:
            continue
        trace = read_trace(row["path"])
        exits = bql_breakdown(trace).exits
        for c in COMPONENTS:
            per_component[c].append(exits[f"{c}_ns"].to_numpy(dtype=np.float64) * trace.tsc_hz / 1e9)
    for c in COMPONENTS:
        every = np.concatenate(per_component[c])
        expected, _ = np.histogram(every, bins=np.concatenate(([0.0], hist.EDGES, [np.inf])))
        assert r.merged[c].tolist() == expected.tolist(), c
        ordered = np.sort(every)
        for q in (0.5, 0.9, 0.99):
            found = hist.quantile(r.merged[c], q)
            assert found is not None
            true = ordered[max(math.ceil(round(q * len(ordered), 9)), 1) - 1]
            assert found.low <= true < found.high, (c, q)
    assert r.merged["total"].sum() == sum(len(x) for x in per_component["total"]) > 100_000


def test_rows_are_json_safe(serial: list[dict[str, Any]]) -> None:
    # What a worker returns crosses a process boundary: plain values only.
    assert json.loads(canonical(serial))[0]["path"] == serial[0]["path"]


def test_command_on_the_local_pool(sources: list[str], serial: list[dict[str, Any]], tmp_path: Path) -> None:
    # The installed command, as an operator runs it: spawned workers must
    # start from the console script too.
    import subprocess
    import sys

    out = tmp_path / "fleet.parquet"
    vmtrace = Path(sys.executable).with_name("vmtrace")
    proc = subprocess.run(
        [str(vmtrace), "fleet", "summarize", *sources, "-o", str(out), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{len(sources)} traces, 3 failed" in proc.stderr
    import pyarrow.parquet as pq

    assert json.dumps(pq.read_table(out).to_pylist(), default=str, sort_keys=True) == canonical(serial)


def _die_on_doomed(source: str) -> dict[str, Any]:
    """A task whose worker process dies on one source, as one killed for
    memory would."""
    if "doomed" in source:
        os._exit(3)
    return {"path": source, "error": None}


def test_a_dead_worker_costs_its_trace_not_the_fleet() -> None:
    import dask
    from distributed import LocalCluster

    # No retries: the task is lost with its first worker.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            rows = run_fleet(
                ["a.vmtrace", "doomed.vmtrace", "c.vmtrace"], scheduler=cluster.scheduler_address, task=_die_on_doomed
            )
    assert [r["path"] for r in rows] == ["a.vmtrace", "doomed.vmtrace", "c.vmtrace"]
    assert rows[0]["error"] is None and rows[2]["error"] is None
    assert rows[1]["error"].startswith("the Dask worker running it failed: KilledWorker")
