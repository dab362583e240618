"""The guest's virtio-blk driver against real QEMU: data lands on the image
byte for byte, reads return what the image holds, both queue paths (BQL and
IOThread) run, and malformed requests leave QEMU running.

These run in CI (KVM and QEMU are there); elsewhere they skip and say why,
and CI=true turns such a skip into a failure.  Iteration counts are small: on
a host that emulates every guest instruction a request costs the guest
~100k cycles of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.blk_checks import random_disk, verify_write_and_read
from vmtrace.bench import guest_image, parse_bench_output, run_bench, vmm_command
from vmtrace.blk import QEMU_MALFORMED

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def disk(tmp_path: Path, qemu: None) -> Path:
    return random_disk(tmp_path / "disk.img")


@pytest.mark.parametrize("mode", ["bql", "dataplane"])
def test_verify_pattern_on_image_and_read_checksums(disk: Path, mode: str) -> None:
    res = verify_write_and_read("qemu", disk, mode)
    assert res.cycles_per_request and res.cycles_per_request > 0


def _threads(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (comm, utime + stime in clock ticks) of a live process."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (comm, int(fields[11]) + int(fields[12]))
        except (OSError, ValueError, IndexError):
            continue
    return out


@pytest.mark.parametrize("mode", ["bql", "dataplane"])
def test_randread_both_queue_paths(disk: Path, mode: str) -> None:
    """Sane numbers on both paths, and the IOThread exists (and does the
    work) only in dataplane mode."""
    cmd = vmm_command("qemu", "blk_randread", 2, 300, guest_image(), extra="qd=4 warmup=20", disk=disk, blk=mode)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, tuple[str, int]] = {}
    try:
        while proc.poll() is None:
            try:
                seen.update(_threads(proc.pid))
            except OSError:
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    parsed = parse_bench_output(out)
    assert not parsed["error"], parsed["error"]
    summary = parsed["summary"][-1]
    results = parsed["result"]
    assert len(results) == 2 and int(summary["requests"]) == 600
    assert int(summary["errors"]) == 0 and int(summary["qd"]) == 4
    hz = int(parsed["begin"]["tsc_hz"])
    for r in results:
        per, iops = int(r["cycles_per_request"]), int(r["iops"])
        assert 1000 < per < hz, r  # more than a port exit, less than a second
        assert iops * per == pytest.approx(hz, rel=0.01)
    assert 0 < int(summary["iops"]) <= sum(int(r["iops"]) for r in results) * 1.01

    io_threads = [ticks for comm, ticks in seen.values() if comm.startswith("IO iothread0")]
    if mode == "dataplane":
        assert io_threads, f"no 'IO iothread0' thread among {sorted({c for c, _ in seen.values()})}"
    else:
        assert not io_threads


def test_randwrite_changes_image(disk: Path) -> None:
    before = disk.read_bytes()
    res = run_bench("qemu", "blk_randwrite", 1, 50, queue_depth=2, disk=disk, timeout_s=60)
    assert res.exit_status == 1 and res.errors == 0
    assert res.iops and res.iops > 0
    assert disk.read_bytes() != before


def test_malformed_requests_leave_qemu_running(disk: Path) -> None:
    """QEMU answers each kind, or stops serving the queue until the reset
    the guest does next, and serves a good request after all of them.  The
    answers themselves are compared with vmtrace.blk.QEMU_MALFORMED (what
    the guest README records) on QEMU 7.2, where they were recorded."""
    from vmtrace.collectors.qemu import qemu_version

    res = run_bench("qemu", "blk_malformed", 1, 1, disk=disk, timeout_s=90)
    assert res.exit_status == 1  # the guest reached its end: QEMU kept running
    assert res.checks["blk_alive_after_malformed"] == 1
    got = {m["kind"]: m for m in res.malformed}
    assert set(got) == set(QEMU_MALFORMED)
    assert all(m["reset_ok"] == "1" for m in got.values())
    version = qemu_version(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64") or ""
    if not version.startswith("7.2."):
        return
    for kind, (answered, status, used_len, then_ok) in QEMU_MALFORMED.items():
        m = got[kind]
        assert int(m["answered"]) == answered, kind
        assert m["status"] == ("none" if status is None else str(status)), kind
        assert m["used_len"] == ("none" if used_len is None else str(used_len)), kind
        assert int(m["then_ok"]) == then_ok, kind
