"""The blk benches' host side without KVM: parsing the guest's records, the
VMM command lines, argument checks, and the pattern and checksums the guest
computes (known answers taken from a run of the guest on QEMU)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vmtrace.bench import _result, parse_bench_output, run_bench, vmm_command
from vmtrace.blk import BLOCK, check_disk, fnv_words, make_disk, pattern, region_checksum
from vmtrace.errors import TargetError, VmtraceError

RANDREAD = """\
SeaBIOS (version 1.16.2-debian-1.16.2-1)
VMTRACE-BENCH begin vcpus=2 tsc_hz=2596017615 pm_port=0x608 cmdline="bench=blk_randread iterations=1000 qd=16"
VMTRACE-BENCH result bench=blk_randread vcpu=0 apic_id=0 iterations=1000 cycles=362124048 cycles_per_op=362124 cycles_per_request=362124 iops=7169 qd=16 errors=0\r
VMTRACE-BENCH result bench=blk_randread vcpu=1 apic_id=1 iterations=1000 cycles=377509678 cycles_per_op=377510 cycles_per_request=377510 iops=6877 qd=16 errors=0\r
VMTRACE-BENCH summary bench=blk_randread vcpus=2 iterations=1000 requests=2000 cycles_per_op=369817 cycles_per_request=369817 iops=13753 qd=16 errors=0\r
VMTRACE-BENCH blkdev bench=blk_randread pci=00:02.0 io=0xc000 queue_size=256 capacity=131072 host_features=0x71006ed4 features=0x00000200 flush=1 isr=0x0 bogus_used=0
VMTRACE-BENCH end status=0
"""

VERIFY = """\
VMTRACE-BENCH begin vcpus=2 tsc_hz=2596017615 pm_port=0x608 cmdline="bench=blk_verify qd=4 seed=7 write_sector=100 write_blocks=9 read_sector=5000 read_blocks=5"
VMTRACE-BENCH result bench=blk_verify vcpu=0 apic_id=0 iterations=13 cycles=377866502 cycles_per_op=29066654 cycles_per_request=29066654 iops=89 qd=4 errors=0
VMTRACE-BENCH result bench=blk_verify vcpu=1 apic_id=1 iterations=10 cycles=396803238 cycles_per_op=39680324 cycles_per_request=39680324 iops=65 qd=4 errors=0
VMTRACE-BENCH summary bench=blk_verify vcpus=2 iterations=12 requests=23 cycles_per_op=34373489 cycles_per_request=34373489 iops=148 qd=4 errors=0
VMTRACE-BENCH blkdev bench=blk_verify pci=00:02.0 io=0xc000 queue_size=256 capacity=131072 host_features=0x71006ed4 features=0x00000200 flush=1 isr=0x0 bogus_used=0
VMTRACE-BENCH checksum bench=blk_verify region=written sector=100 blocks=9 seed=7 fnv=0x2a3b55f8
VMTRACE-BENCH checksum bench=blk_verify region=read sector=5000 blocks=5 fnv=0xf3281690
VMTRACE-BENCH check blk_readback_ok=1
VMTRACE-BENCH check blk_flush_ok=1
VMTRACE-BENCH end status=0
"""

MALFORMED = """\
VMTRACE-BENCH begin vcpus=1 tsc_hz=2596065721 pm_port=0x608 cmdline="bench=blk_malformed"
VMTRACE-BENCH malformed kind=data_addr_outside_ram reset_ok=1 answered=1 status=0 used_id=0 used_len=4097 then_ok=1 needs_reset=0 device_status=0x7
VMTRACE-BENCH malformed kind=chain_loop reset_ok=1 answered=0 status=none used_id=none used_len=none then_ok=0 needs_reset=0 device_status=0x7
VMTRACE-BENCH blkdev bench=blk_malformed pci=00:02.0 io=0xc000 queue_size=256 capacity=131072 host_features=0x71006ed4 features=0x00000200 flush=1 isr=0x0 bogus_used=0
VMTRACE-BENCH check blk_alive_after_malformed=1
VMTRACE-BENCH end status=0
"""

STALLED = RANDREAD.replace(
    "VMTRACE-BENCH end status=0",
    'VMTRACE-BENCH error msg="vcpu 1: no request completed for 10000 ms: the device stopped answering"\n'
    "VMTRACE-BENCH end status=2",
)

# QEMU 7.2, -smp 4, bench=blk_mixed iterations=300 qd=4 warmup=30 (2 readers, 2 PM-timer hammers).
MIXED = """\
VMTRACE-BENCH begin vcpus=4 tsc_hz=2300215950 pm_port=0x608 cmdline="bench=blk_mixed iterations=300 qd=4 warmup=30"
VMTRACE-BENCH result bench=blk_mixed vcpu=0 apic_id=0 iterations=300 cycles=1944656726 cycles_per_op=6482189 cycles_per_request=6482189 iops=355 qd=4 errors=0
VMTRACE-BENCH result bench=blk_mixed vcpu=1 apic_id=1 iterations=300 cycles=1915340496 cycles_per_op=6384468 cycles_per_request=6384468 iops=360 qd=4 errors=0
VMTRACE-BENCH summary bench=blk_mixed vcpus=4 iterations=300 requests=600 cycles_per_op=6433329 cycles_per_request=6433329 iops=404 qd=4 errors=0 readers=2
VMTRACE-BENCH hammer bench=blk_mixed vcpu=2 apic_id=2 target=pmtimer port=0x608 ops=14232 cycles=3613913856 cycles_per_op=253929
VMTRACE-BENCH hammer bench=blk_mixed vcpu=3 apic_id=3 target=pmtimer port=0x608 ops=14264 cycles=3405189384 cycles_per_op=238726
VMTRACE-BENCH blkdev bench=blk_mixed pci=00:02.0 io=0xc000 queue_size=256 capacity=32768 host_features=0x71006ed4 features=0x00000200 flush=1 isr=0x0 bogus_used=0
VMTRACE-BENCH end status=0
"""

INFO = {"queue_depth": 16, "blk": "bql", "disk": None}


def result_of(text: str, bench: str):
    return _result("qemu", bench, parse_bench_output(text), 1, 1.0, [], None, text, blk=INFO)


def test_randread_records_give_iops_and_cycles_per_request() -> None:
    r = result_of(RANDREAD, "blk_randread")
    assert r.iops == 13753 and r.cycles_per_request == 369817 == r.cycles_per_op
    assert r.per_vcpu == [362124, 377510] and r.per_vcpu_iops == [7169, 6877]
    assert (r.vcpus, r.iterations, r.errors, r.queue_depth, r.blk) == (2, 1000, 0, 16, "bql")
    assert r.blkdev["queue_size"] == "256" and r.blkdev["io"] == "0xc000"
    js = r.to_json()
    assert js["iops"] == 13753 and js["cycles_per_request"] == 369817


def test_mixed_records_give_the_readers_iops_and_the_hammers_cost() -> None:
    r = result_of(MIXED, "blk_mixed")
    assert (r.vcpus, r.readers, r.iterations, r.iops) == (4, 2, 300, 404)
    assert r.per_vcpu == [6482189, 6384468] and r.per_vcpu_iops == [355, 360]
    assert [h["vcpu"] for h in r.hammers] == ["2", "3"] and {h["target"] for h in r.hammers} == {"pmtimer"}
    assert r.hammer_cycles_per_op == pytest.approx((253929 + 238726) / 2)
    assert r.to_json()["hammers"][1]["ops"] == "14264"


def test_old_records_still_parse_without_blk_fields() -> None:
    text = (
        'VMTRACE-BENCH begin vcpus=1 tsc_hz=2596030669 pm_port=0x608 cmdline="bench=cpuid"\n'
        "VMTRACE-BENCH result bench=cpuid vcpu=0 apic_id=0 iterations=10 cycles=45570 cycles_per_op=4557\n"
        "VMTRACE-BENCH summary bench=cpuid vcpus=1 iterations=10 cycles_per_op=4557\n"
        "VMTRACE-BENCH end status=0\n"
    )
    r = _result("qemu", "cpuid", parse_bench_output(text), 1, 1.0, [], None, text)
    assert r.cycles_per_op == 4557 and r.iops is None and r.cycles_per_request is None


def test_verify_checksums_and_checks() -> None:
    r = result_of(VERIFY, "blk_verify")
    assert [(c["region"], c["sector"], c["blocks"], c["fnv"]) for c in r.checksums] == [
        ("written", "100", "9", "0x2a3b55f8"),
        ("read", "5000", "5", "0xf3281690"),
    ]
    assert r.checks == {"blk_readback_ok": 1, "blk_flush_ok": 1}


def test_malformed_has_no_timing() -> None:
    r = result_of(MALFORMED, "blk_malformed")
    assert r.cycles_per_op is None and r.iops is None
    assert [m["kind"] for m in r.malformed] == ["data_addr_outside_ram", "chain_loop"]
    assert r.malformed[1]["status"] == "none" and r.checks["blk_alive_after_malformed"] == 1


def test_stalled_device_is_an_error() -> None:
    with pytest.raises(TargetError, match="stopped answering"):
        result_of(STALLED, "blk_randread")


def test_no_records_names_the_vmm_complaint() -> None:
    with pytest.raises(TargetError, match="Could not open"):
        _result(
            "qemu",
            "blk_randread",
            parse_bench_output(""),
            1,
            0.1,
            [],
            None,
            "",
            "qemu-system-x86_64: -drive file=/x: Could not open '/x': No such file or directory\n",
            INFO,
        )


def test_pattern_and_checksum_match_the_guest() -> None:
    # The guest printed fnv=0x2a3b55f8 for the 9 blocks it wrote from sector
    # 100 with seed 7 (VERIFY above); the region holds nothing but the pattern.
    assert region_checksum(pattern(7, 100, 72), 0, 9) == 0x2A3B55F8
    p = pattern(7, 100, 1)
    assert struct.unpack_from("<2I", p) == (
        7 ^ (100 * 0x9E3779B1) & 0xFFFFFFFF,
        (7 ^ (100 * 0x9E3779B1) ^ 0x85EBCA77) & 0xFFFFFFFF,
    )
    assert fnv_words(b"") == 0x811C9DC5
    with pytest.raises(VmtraceError, match="past the end"):
        region_checksum(bytes(BLOCK), 0, 2)


def test_make_disk_holds_block_numbers(tmp_path: Path) -> None:
    path = make_disk(tmp_path / "d.img", 5 * BLOCK)
    data = path.read_bytes()
    assert len(data) == 5 * BLOCK
    assert data[3 * BLOCK : 4 * BLOCK] == struct.pack("<Q", 3) * (BLOCK // 8)
    assert check_disk(path) == 5 * BLOCK
    with pytest.raises(VmtraceError, match="multiple of 4096"):
        make_disk(tmp_path / "bad.img", 1000)


def test_check_disk_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(VmtraceError, match="No such file"):
        check_disk(tmp_path / "missing.img")
    with pytest.raises(VmtraceError, match="not a regular file"):
        check_disk(tmp_path)
    small = tmp_path / "small.img"
    small.write_bytes(bytes(1000))
    with pytest.raises(VmtraceError, match="whole 512-byte sectors"):
        check_disk(small)


def test_qemu_command_bql_and_dataplane(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "d.img", BLOCK)
    image = Path("guest.elf")
    bql = vmm_command("qemu", "blk_randread", 2, 100, image, extra="qd=4", disk=disk, blk="bql")
    dp = vmm_command("qemu", "blk_randread", 2, 100, image, extra="qd=4", disk=disk, blk="dataplane")
    assert bql[bql.index("-append") + 1] == "bench=blk_randread iterations=100 qd=4"
    drive = bql[bql.index("-drive") + 1]
    assert drive.startswith(f"file={disk},if=none,id=vmtrace-disk,format=raw,cache=")
    assert (
        bql[bql.index("-device", bql.index("-drive")) + 1]
        == "virtio-blk-pci,disable-modern=on,drive=vmtrace-disk,num-queues=1"
    )
    assert "iothread" not in " ".join(bql)
    assert dp[dp.index("-object") + 1] == "iothread,id=iothread0"
    assert dp[-1].endswith(",iothread=iothread0")
    assert "vmtrace-bench,debug-threads=on" in dp  # names the IOThread "IO iothread0"


def test_reference_command_passes_disk_and_mode(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    cmd = vmm_command("reference", "blk_randread", 1, 100, Path("g.elf"), disk=disk, blk="dataplane")
    assert cmd[-4:] == ["--disk", str(disk), "--blk", "dataplane"]
    assert "--disk" not in vmm_command("reference", "cpuid", 1, 100, Path("g.elf"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bench": "blk_randread", "blk": "iothread"}, "unknown --blk mode"),
        ({"bench": "blk_randread", "queue_depth": 0}, "--queue-depth must be between 1 and 64"),
        ({"bench": "blk_randread", "queue_depth": 65}, "--queue-depth must be between 1 and 64"),
        ({"bench": "inl_pmtimer", "queue_depth": 4}, "apply to the blk_randread"),
        ({"bench": "cpuid", "blk": "bql"}, "apply to the blk_randread"),
        ({"bench": "blk_verify", "disk": Path("/nonexistent/disk.img")}, "No such file"),
        ({"bench": "blk_mixed", "python": "ft"}, "--python applies to --vmm reference"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(kwargs: dict, message: str) -> None:
    bench = kwargs.pop("bench")
    with pytest.raises(VmtraceError, match=message):
        run_bench("qemu", bench, 1, 10, **kwargs)


def test_cli_bad_blk_mode_is_one_line_and_status_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vmtrace.cli", "bench", "--vmm", "qemu", "--bench", "blk_randread", "--blk", "bogus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vmtrace: error: unknown --blk mode 'bogus': choose one of bql, dataplane"
    ]
