"""bench --qemu and sweep --qemu on the real QEMUs (7.2 and, where setup
installed it, 10.0), with the version shown where it matters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need
from vmtrace.qemu_versions import available_qemus
from vmtrace.trace import read_trace

VMTRACE = [sys.executable, "-m", "vmtrace.cli"]


def test_bench_runs_the_version_asked_for(qemu_version: str, root: None, bpf: None, tmp_path: Path) -> None:
    path = tmp_path / "pm.vmtrace"
    proc = subprocess.run(
        [
            *VMTRACE,
            "bench",
            "--vmm",
            "qemu",
            "--qemu",
            qemu_version,
            "--bench",
            "inl_pmtimer",
            "--vcpus",
            "1",
            "--iterations",
            "2000",
            "--record",
            str(path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["qemu_version"].startswith(qemu_version + ".")
    # A private prefix's QEMU gets its own firmware; Debian's needs none.
    assert ("-L" in res["command"]) == (qemu_version != "7.2")
    t = read_trace(path)
    assert t.meta["target"]["vmm_version"] == res["qemu_version"]
    assert t.bql()["identified"]
    text = subprocess.run([*VMTRACE, "report", str(path)], capture_output=True, text=True, timeout=300).stdout
    assert f"vmm=qemu {res['qemu_version']}" in text


def test_sweep_makes_one_configuration_per_version(root: None, bpf: None, qemu: None, tmp_path: Path) -> None:
    versions = available_qemus()
    need(len(versions) == 2, "needs QEMU 7.2 and 10.0 (scripts/setup.sh installs 10.0)")
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [
            *VMTRACE,
            "sweep",
            "-o",
            str(out),
            "--vmm",
            "qemu",
            "--qemu",
            ",".join(versions),
            "--vcpus",
            "1",
            "--iterations",
            "2000",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "summary.json").read_text())
    assert sorted(r["config"] for r in rows) == sorted(f"qemu {v}" for v in versions)
    for r in rows:
        v = r["config"].split()[1]
        assert read_trace(r["trace"]).meta["target"]["vmm_version"].startswith(v + ".")


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--vmm", "qemu", "--qemu", "9.1"], "vmtrace knows QEMU"),
        (["--vmm", "reference", "--qemu", "10.0"], "--qemu applies to --vmm qemu"),
        (["--vmm", "qemu", "--qemu", "/nonexistent/qemu"], "not an executable"),
        (["--vmm", "qemu", "--callsites", "full"], "--callsites applies to --vmm qemu with --record"),
    ],
)
def test_bad_qemu_arguments_are_one_line(args: list[str], expect: str) -> None:
    proc = subprocess.run([*VMTRACE, "bench", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert expect in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
