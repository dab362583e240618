"""Live: the benchmark guest's own virtio-blk driver on the reference VMM, both service modes.

The twins of ``tests/live/test_blk_qemu.py``: the same benches, the same
checks, so the two VMMs answer one guest identically -- data on the image
byte for byte after a clean stop, reads that return what the image holds,
and for every malformed request ``blk_malformed`` sends, the answer QEMU
7.2 gives (``vmtrace.blk.QEMU_MALFORMED``), with the VMM still running and
counting them in ``--stats``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.blk_checks import random_disk, verify_write_and_read
from tests.reference_vmm.conftest import run_vmm
from vmtrace.bench import parse_bench_output, run_bench
from vmtrace.blk import QEMU_MALFORMED


@pytest.fixture
def disk(tmp_path: Path, kvm: None, guest_image: Path) -> Path:
    return random_disk(tmp_path / "disk.img")


@pytest.mark.parametrize("mode", ["bql", "dataplane"])
def test_blk_verify_writes_the_pattern_and_reads_the_image(disk: Path, mode: str) -> None:
    verify_write_and_read("reference", disk, mode)


@pytest.mark.parametrize("mode", ["bql", "dataplane"])
def test_blk_randread_two_vcpus(disk: Path, mode: str) -> None:
    res = run_bench("reference", "blk_randread", 2, 100, queue_depth=4, blk=mode, disk=disk, timeout_s=90)
    assert res.exit_status == 1 and res.errors == 0
    assert res.iops and res.iops > 0


@pytest.mark.parametrize("mode", ["bql", "dataplane"])
def test_blk_malformed_answers_as_qemu_and_the_vmm_counts_them(disk: Path, guest_image: Path, mode: str) -> None:
    r = run_vmm(
        [
            "run",
            "--image",
            str(guest_image),
            "--disk",
            str(disk),
            "--blk",
            mode,
            "--stats",
            "--timeout",
            "100",
            "--append",
            "bench=blk_malformed",
        ],
        timeout=120,
    )
    assert r.returncode == 1, r.stderr[-2000:]  # the guest reached its end: the VMM kept running
    parsed = parse_bench_output(r.stdout)
    assert parsed["check"]["blk_alive_after_malformed"] == 1
    got = {m["kind"]: m for m in parsed["malformed"]}
    assert set(got) == set(QEMU_MALFORMED)
    for kind, (answered, status, used_len, then_ok) in QEMU_MALFORMED.items():
        m = got[kind]
        assert (int(m["answered"]), m["status"], m["used_len"], int(m["then_ok"])) == (
            answered,
            "none" if status is None else str(status),
            "none" if used_len is None else str(used_len),
            then_ok,
        ), kind
        assert m["reset_ok"] == "1" and m["needs_reset"] == "0", kind  # legacy: no NEEDS_RESET, as QEMU
    broken = sum(1 for a, *_ in QEMU_MALFORMED.values() if not a)
    m = re.search(r"guest errors that broke the device: (\d+)", r.stderr)
    assert m and int(m.group(1)) == broken, r.stderr
    assert re.search(
        r"requests: \d+ \(read \d+, write \d+, flush \d+, get-id \d+, unsupported 1, ioerr-range 4,", r.stderr
    )
    # The three kinds QEMU answers anyway, and the first window of the one it does not.
    assert "DMA windows outside RAM (bounced, as QEMU): 4" in r.stderr
    assert "Traceback" not in r.stderr
