"""Options and states of the target that ``record``, ``doctor`` and
``sweep`` must refuse or report in one line, live (root, KVM, tracefs):
``--duration`` that is not finite and positive, ``-p`` of a zombie, of a
target that exits, of a process that never enters KVM_RUN; ``doctor`` as a
user without root and after a killed recorder; ``sweep -o`` that cannot be a
directory; ``recover`` of something that is not a kept spool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import need
from .test_faults import TRACEFS, VMTRACE, alive, host, wait_for  # noqa: F401 - host is a fixture


# ----------------------------------------------------------------- record -p
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_duration_must_be_finite_and_positive(root: None, tmp_path: Path, value: str) -> None:
    r = subprocess.run(
        [*VMTRACE, "record", "-o", str(tmp_path / "d.vmtrace"), "-p", str(os.getpid()), f"--duration={value}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--duration" in r.stderr, r.stderr
    assert not (tmp_path / "d.vmtrace").exists()


def test_record_p_warns_when_nothing_enters_kvm_run(host: None, tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        r = subprocess.run(
            [
                *VMTRACE,
                "record",
                "--backend",
                "ftrace",
                "-o",
                str(tmp_path / "w.vmtrace"),
                "-p",
                str(sleeper.pid),
                "--duration",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert r.returncode == 0, r.stderr
    assert "warning: no thread of process" in r.stderr and "KVM_RUN" in r.stderr, r.stderr


def test_record_p_stops_when_the_target_exits_and_stays_a_zombie(host: None, tmp_path: Path) -> None:
    # Not waited for until the end: once it exits it is a zombie of this test.
    target = subprocess.Popen(["sleep", "8"])
    try:
        r = subprocess.run(
            [*VMTRACE, "record", "--backend", "ftrace", "-o", str(tmp_path / "z.vmtrace"), "-p", str(target.pid)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        target.wait()
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "z.vmtrace").exists()


def test_record_p_of_a_zombie_is_one_line(root: None, tmp_path: Path) -> None:
    target = subprocess.Popen(["true"])
    assert wait_for(lambda: not alive(target.pid), 10, 0.01)
    try:
        r = subprocess.run(
            [*VMTRACE, "record", "-o", str(tmp_path / "z.vmtrace"), "-p", str(target.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        target.wait()
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "zombie" in r.stderr


def test_recover_of_something_else_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [*VMTRACE, "recover", str(tmp_path), "-o", str(tmp_path / "x.vmtrace")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


# --------------------------------------------------------- doctor, non-root
def test_doctor_as_non_root_reports_what_it_can(tmp_path: Path) -> None:
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv to become nobody")
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *VMTRACE, "doctor", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path), "COLUMNS": "250"},
    )
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr  # "root" fails; nothing crashes
    assert "needs root" in r.stdout and "kernel headers" in r.stdout, r.stdout


def test_doctor_removes_and_reports_leftovers(host: None) -> None:
    # A leftover of a recorder that is certainly dead: a pid above pid_max.
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    inst = TRACEFS / "instances" / f"vmtrace-{dead}-0"
    inst.mkdir()
    try:
        r = subprocess.run(
            [*VMTRACE, "doctor", "--quick"],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "COLUMNS": "250"},
        )
        assert f"instance vmtrace-{dead}-0" in " ".join(r.stdout.split()), r.stdout
        assert not inst.exists()
    finally:
        if inst.exists():
            inst.rmdir()


# -------------------------------------------------------------------- sweep
def test_sweep_checks_options_before_creating_its_directory(tmp_path: Path) -> None:
    out = tmp_path / "never"
    r = subprocess.run(
        [*VMTRACE, "sweep", "-o", str(out), "--bench", "nonsense"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_sweep_output_that_cannot_be_a_directory_is_one_line(tmp_path: Path, where: str) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    target = {"file": f, "under_file": f / "sub", "proc": Path("/proc/vmtrace-sweep")}[where]
    r = subprocess.run(
        [*VMTRACE, "sweep", "-o", str(target), "--vcpus", "1"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f.read_text() == "x"
