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
