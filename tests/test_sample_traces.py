"""Golden tests on the committed traces of real QEMU (no root needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmtrace.analyses.breakdown import COMPONENTS, bql_breakdown, exit_breakdown
from vmtrace.trace import read_trace

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "sample_traces").glob("*.vmtrace"))


def test_samples_exist_and_are_small() -> None:
    names = {p.name for p in SAMPLES}
    for n in (1, 2):
        assert f"qemu-pmtimer-{n}vcpu.vmtrace" in names
        assert f"qemu-pmtimer-{n}vcpu-precise.vmtrace" in names
    assert all(p.stat().st_size < 5 * 1024 * 1024 for p in SAMPLES)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_partition_holds(path: Path) -> None:
    ex = exit_breakdown(read_trace(path))
    parts = ex[[f"{c}_ns" for c in COMPONENTS]]
    assert len(ex) > 1000
    assert (parts >= 0).all().all()
    assert (parts.sum(axis=1) == ex["total_ns"]).all()


@pytest.mark.parametrize("path", [p for p in SAMPLES if "precise" not in p.name], ids=lambda p: p.name)
def test_default_traces_match_the_guest(path: Path) -> None:
    b = bql_breakdown(read_trace(path))
    assert b.bql["identified"]
    assert b.components["total"] == pytest.approx(b.guest_cycles_per_op, rel=0.10)
    if "1vcpu" in path.name:
        assert b.components["bql_wait"] < 0.03 * b.components["total"]


@pytest.mark.parametrize("path", [p for p in SAMPLES if "precise" in p.name], ids=lambda p: p.name)
def test_precise_traces_split_device_and_bql(path: Path) -> None:
    b = bql_breakdown(read_trace(path))
    assert b.components["device"] > 0
    assert b.components["bql_wait"] > 0


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_cli_json_equals_api(path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vmtrace.cli", "report", str(path), "-f", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    api = bql_breakdown(read_trace(path))
    assert got["exits"] == len(api.exits)
    for k, v in api.components.items():
        assert got["components"][k] == pytest.approx(v)
    text = subprocess.run([sys.executable, "-m", "vmtrace.cli", "report", str(path)],
                          capture_output=True, text=True).stdout
    assert f"{len(api.exits):,}" in text and "lost events" in text


# --- exits, locks and off-CPU views -----------------------------------------

ALL_VIEWS = ["--bql-breakdown", "--exits", "--locks", "--offcpu"]


def _api_json(doc: object) -> object:
    from vmtrace.render.text import render_json_safe

    return json.loads(json.dumps(render_json_safe(doc)))


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_view_through_the_cli_equals_the_api(path: Path) -> None:
    from typer.testing import CliRunner

    from vmtrace.analyses.exits import exit_stats
    from vmtrace.analyses.locks import lock_report
    from vmtrace.analyses.offcpu import OFFCPU_STATES, offcpu_report
    from vmtrace.cli import app

    res = CliRunner().invoke(app, ["report", str(path), *ALL_VIEWS, "-f", "json"])
    assert res.exit_code == 0, res.stderr
    got = json.loads(res.stdout)
    t = read_trace(path)
    x, lk, off = exit_stats(t), lock_report(t), offcpu_report(t)
    assert got["bql_breakdown"] == _api_json(bql_breakdown(t).to_json())
    assert got["exits"] == _api_json(x.to_json())
    assert got["locks"] == _api_json(lk.to_json())
    assert got["offcpu"] == _api_json(off.to_json())

    # The views agree with each other and with what the guest ran.
    assert x.exits["userspace"].sum() == len(exit_breakdown(t))
    top = x.by_access.iloc[0]
    assert (top["kind"], int(top["addr"]), top["dir"]) == ("pio", t.meta["bench"]["pm_port"], "in")
    bql = lk.words[lk.words["name"] == "BQL"]
    assert len(bql) == 1 and int(bql["addr"].iloc[0]) == t.bql()["futex_uaddr"]
    assert lk.by_thread.groupby("addr")["wait_ns"].sum().to_dict() == {
        int(a): int(w) for a, w in zip(lk.words["addr"], lk.words["wait_ns"]) if w}
    th = off.threads
    parts = th[[f"{s}_ns" for s in OFFCPU_STATES]].sum(axis=1)
    assert (parts == th["time_ns"]).all()
    assert set(th.loc[th["role"] == "vcpu", "vcpu"]) == set(range(t.meta["bench"]["vcpus"]))
    if "precise" in path.name and "2vcpu" in path.name:
        # Two vCPUs and the main loop take the BQL per PM-timer read: some wait.
        assert bql["waits"].iloc[0] > 0 and bql["holds"].iloc[0] > 0


def test_every_view_through_a_real_process() -> None:
    path = next(p for p in SAMPLES if p.name == "qemu-pmtimer-1vcpu.vmtrace")
    proc = subprocess.run([sys.executable, "-m", "vmtrace.cli", "report", str(path), *ALL_VIEWS, "-f", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    from vmtrace.analyses.exits import exit_stats
    from vmtrace.analyses.locks import lock_report

    t = read_trace(path)
    assert got["exits"]["exits"] == len(exit_stats(t).exits)
    assert got["locks"]["totals"] == _api_json(lock_report(t).totals)
