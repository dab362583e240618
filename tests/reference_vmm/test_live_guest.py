"""Live: the benchmark guest on the reference VMM, every vCPU count and locking mode.

Also checks what collectors rely on: kernel thread names (``CPU n/KVM``,
``IO iothread0``) and the probe events (BQL wait grows with vCPUs in ``bql``
mode; PM-timer reads take no BQL in ``unlocked`` mode).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from tests.reference_vmm.conftest import run_vmm
from vmtrace import probes
from vmtrace.reference_vmm.machine import MachineConfig, run_machine

ITERATIONS = 1000
_SUMMARY = re.compile(r"VMTRACE-BENCH summary bench=inl_pmtimer vcpus=(\d+) iterations=(\d+) cycles_per_op=(\d+)")


@pytest.mark.parametrize("locking", ["2013", "bql", "unlocked"])
@pytest.mark.parametrize("vcpus", [1, 2, 4, 8])
def test_benchmark_guest_runs(kvm, guest_image: Path, vcpus: int, locking: str) -> None:
    r = run_vmm(
        [
            "run",
            "--image",
            str(guest_image),
            "--vcpus",
            str(vcpus),
            "--locking",
            locking,
            "--timeout",
            "90",
            "--append",
            f"bench=inl_pmtimer iterations={ITERATIONS}",
        ],
        timeout=120,
    )
    assert r.returncode == 1, f"status {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"  # debug-exit 0
    m = _SUMMARY.search(r.stdout)
    assert m, r.stdout[-2000:]
    assert int(m.group(1)) == vcpus and int(m.group(2)) == ITERATIONS
    assert int(m.group(3)) > 0
    assert "VMTRACE-BENCH check pmtimer_monotonic=1" in r.stdout  # a monotonic 24-bit counter
    assert len(re.findall(r"VMTRACE-BENCH result bench=inl_pmtimer vcpu=\d+", r.stdout)) == vcpus
    assert "VMTRACE-BENCH end status=0" in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("locking", ["2013", "bql", "unlocked"])
@pytest.mark.parametrize("vcpus", [1, 2, 4, 8])
def test_benchmark_guest_runs_on_the_free_threaded_interpreter(
    kvm, guest_image: Path, vcpus: int, locking: str, tmp_path: Path
) -> None:
    """The same run as above, in a VMM process on CPython 3.13t, launched as
    vmtrace launches it (only the probe API and the VMM importable)."""
    from tests.conftest import need
    from vmtrace.interpreter import REPORT_ENV, free_threaded_path, read_report, reference_vmm_command, resolve_python

    need(
        os.access(free_threaded_path(), os.X_OK),
        f"needs the free-threaded CPython at {free_threaded_path()} (bash scripts/setup.sh builds it)",
    )
    report = tmp_path / "interp.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHON_GIL")}
    env[REPORT_ENV] = str(report)
    cmd = [
        *reference_vmm_command(resolve_python("ft")),
        "run",
        "--image",
        str(guest_image),
        "--vcpus",
        str(vcpus),
        "--locking",
        locking,
        "--timeout",
        "90",
        "--append",
        f"bench=inl_pmtimer iterations={ITERATIONS}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, f"status {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    m = _SUMMARY.search(r.stdout)
    assert m and int(m.group(1)) == vcpus and int(m.group(2)) == ITERATIONS and int(m.group(3)) > 0
    assert "VMTRACE-BENCH check pmtimer_monotonic=1" in r.stdout
    assert len(re.findall(r"VMTRACE-BENCH result bench=inl_pmtimer vcpu=\d+", r.stdout)) == vcpus
    assert r.stderr == ""
    # Still without the GIL at the end: nothing the VMM imported turned it back on.
    interp = read_report(report)
    assert interp is not None and interp["free_threaded"] and interp["gil_enabled"] is False


def test_guest_finds_the_pm_timer_at_0x608(kvm, guest_image: Path) -> None:
    r = run_vmm(
        ["run", "--image", str(guest_image), "--timeout", "60", "--append", "bench=inl_vmm iterations=200"], timeout=90
    )
    assert "pm_port=0x608" in r.stdout
    assert r.returncode == 1
    assert "VMTRACE-BENCH summary bench=inl_vmm" in r.stdout
    assert "warning" not in r.stdout  # the guest warns when the unclaimed port is not all ones


def _comms() -> set[str]:
    names = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.add(f.read().strip())
        except FileNotFoundError:
            pass
    return names


def test_kernel_thread_names(kvm, guest_image: Path) -> None:
    seen: list[set[str]] = []
    out: list[bytes] = []

    def serial(data: bytes) -> None:
        out.append(data)
        if not seen and b"VMTRACE-BENCH result" in b"".join(out):
            seen.append(_comms())

    before = threading.active_count()
    status = run_machine(
        MachineConfig(
            image=str(guest_image),
            vcpus=2,
            iothreads=1,
            timeout_s=60,
            append="bench=inl_pmtimer iterations=300",
            serial_out=serial,
        )
    )
    assert status == 1
    assert seen, b"".join(out)[-500:]
    assert {"CPU 0/KVM", "CPU 1/KVM", "IO iothread0"} <= seen[0]
    assert not any(n.startswith("CPU ") for n in _comms()), "vCPU threads outlived the machine"
    assert threading.active_count() <= before + 1  # at most the lazily started call_rcu thread


def _record(tmp_path: Path, image: Path, vcpus: int, locking: str) -> tuple[list[tuple], dict[int, str]]:
    spool = tmp_path / f"spool-{locking}-{vcpus}"
    probes.enable(str(spool))
    try:
        status = run_machine(
            MachineConfig(
                image=str(image),
                vcpus=vcpus,
                locking=locking,
                timeout_s=90,
                append="bench=inl_pmtimer iterations=1500",
                serial_out=lambda b: None,
            )
        )
    finally:
        probes.disable()
    assert status == 1
    names = {int(i): n for i, n in (line.rstrip("\n").split("\t", 1) for line in open(str(spool) + ".names"))}
    return list(probes.RECORD.iter_unpack(spool.read_bytes())), names


def _bql_stats(records: list[tuple], names: dict[int, str]) -> tuple[int, int, int]:
    """(BQL wait ns in total, BQL acquisitions, PM-timer dispatches)."""
    begin: dict[int, int] = {}
    wait = acquisitions = pm = 0
    for ts, tid, code, _sw, nid, _addr, _val in records:
        name = names[nid]
        if name == "BQL" and code == probes.EVENT_CODES["lock_begin"]:
            begin[tid] = ts
        elif name == "BQL" and code == probes.EVENT_CODES["lock_acquired"]:
            wait += ts - begin.pop(tid)
            acquisitions += 1
        elif name == "acpi-pm-tmr" and code == probes.EVENT_CODES["dispatch_begin"]:
            pm += 1
    return wait, acquisitions, pm


def test_bql_mode_wait_grows_with_vcpus(kvm, guest_image: Path, tmp_path: Path) -> None:
    w1, a1, pm1 = _bql_stats(*_record(tmp_path, guest_image, 1, "bql"))
    w4, a4, pm4 = _bql_stats(*_record(tmp_path, guest_image, 4, "bql"))
    assert a1 >= pm1 > 1000 and a4 >= pm4  # every PM-timer read took the BQL
    # Mean BQL wait per acquisition: contention appears once vCPUs compete.
    assert w4 / a4 > 1.5 * (w1 / a1), (w1 / a1, w4 / a4)
    assert w4 > 3 * w1


def test_unlocked_mode_pm_timer_takes_no_bql(kvm, guest_image: Path, tmp_path: Path) -> None:
    records, names = _record(tmp_path, guest_image, 2, "unlocked")
    wait, acquisitions, pm = _bql_stats(records, names)
    assert pm > 2000
    assert acquisitions < 0.25 * pm  # what is left: serial output, main-loop timers, debug-exit
    # No PM-timer dispatch happens while its thread holds the BQL.
    holding: dict[int, bool] = collections.defaultdict(bool)
    for _ts, tid, code, _sw, nid, _addr, _val in records:
        name = names[nid]
        if name == "BQL":
            holding[tid] = code == probes.EVENT_CODES["lock_acquired"]
        elif name == "acpi-pm-tmr" and code == probes.EVENT_CODES["dispatch_begin"]:
            assert not holding[tid]


def test_dispatch_events_carry_port_size_and_direction(kvm, guest_image: Path, tmp_path: Path) -> None:
    records, names = _record(tmp_path, guest_image, 1, "bql")
    by_region: collections.Counter[tuple] = collections.Counter()
    for _ts, _tid, code, size_write, nid, addr, _val in records:
        if code == probes.EVENT_CODES["dispatch_begin"]:
            by_region[(names[nid], addr, size_write & 0x7F, bool(size_write & 0x80))] += 1
    assert by_region[("acpi-pm-tmr", 0x608, 4, False)] > 1000
    assert by_region[("serial", 0x3F8, 1, True)] > 10  # the guest's output
    assert by_region[("isa-debug-exit", 0xF4, 4, True)] == 1
