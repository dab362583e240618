"""Live: tiny guests that exit, misbehave or hang, and host problems, through the CLI.

Every case must end promptly (no hung thread keeps the process alive) with
the documented status: the guest's ``(value << 1) | 1``, 2 for a host error
(one line on stderr), 3 for a guest failure (with a register dump).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from tests.conftest import have_root
from tests.reference_vmm import guests as g
from tests.reference_vmm.conftest import run_vmm
from vmtrace.reference_vmm.errors import GuestError, KvmError, VmmError
from vmtrace.reference_vmm.machine import MachineConfig, run_machine


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("reference-vmm: error: ")
    return lines[0]


def test_guest_output_and_debug_exit_status(kvm, tmp_path: Path) -> None:
    img = g.write(tmp_path, "exit5", g.print_text(b"hello\n") + g.exit_with(5))
    r = run_vmm(["run", "--image", str(img), "--timeout", "20"], timeout=60)
    assert r.stdout == "hello\n"
    assert r.returncode == (5 << 1) | 1
    assert r.stderr == ""


def test_unclaimed_port_reads_all_ones(kvm, tmp_path: Path) -> None:
    img = g.write(tmp_path, "unclaimed", g.READ_UNCLAIMED_AND_EXIT)
    r = run_vmm(["run", "--image", str(img), "--timeout", "20"], timeout=60)
    assert r.returncode == 0xFF  # ((0xffffffff << 1) | 1) & 0xff: the read returned all ones


def test_unclaimed_accesses_are_counted(kvm, tmp_path: Path) -> None:
    from vmtrace.reference_vmm.machine import Machine

    img = g.write(tmp_path, "unclaimed", g.READ_UNCLAIMED_AND_EXIT)
    m = Machine(MachineConfig(image=str(img), timeout_s=20, serial_out=lambda b: None))
    try:
        assert m.run() == 0xFF
    finally:
        m.close()
    assert m.unassigned[("pio-read", 0xE00)] == 1


def test_unclaimed_mmio_reads_all_ones_and_drops_writes(kvm, tmp_path: Path) -> None:
    from vmtrace.reference_vmm.machine import Machine

    img = g.write(tmp_path, "mmio-rw", g.MMIO_READ_WRITE_AND_EXIT)
    m = Machine(MachineConfig(image=str(img), timeout_s=20, serial_out=lambda b: None))
    try:
        assert m.run() == 0xFF
    finally:
        m.close()
    assert m.unassigned[("mmio-read", 0xFED00000)] == 1
    assert m.unassigned[("mmio-write", 0xFED00010)] == 1


def test_triple_fault_is_a_guest_failure_with_dump(kvm, tmp_path: Path) -> None:
    img = g.write(tmp_path, "triple", g.triple_fault())
    r = run_vmm(["run", "--image", str(img), "--timeout", "20"], timeout=60)
    assert r.returncode == 3
    assert "guest failure: guest triple fault (KVM_EXIT_SHUTDOWN)" in r.stderr
    assert "EIP=" in r.stderr and "CR0=" in r.stderr


def test_internal_error_is_a_guest_failure_with_dump(kvm, tmp_path: Path) -> None:
    img = g.write(tmp_path, "mmio", g.JUMP_TO_MMIO)
    r = run_vmm(["run", "--image", str(img), "--timeout", "20"], timeout=60)
    assert r.returncode == 3
    assert "KVM_EXIT_INTERNAL_ERROR" in r.stderr
    assert "EIP=f0000000" in r.stderr


def test_hung_guest_times_out_with_a_dump_and_no_hung_threads(kvm, tmp_path: Path) -> None:
    img = g.write(tmp_path, "hang", g.HANG)
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(GuestError, match="did not exit within 1 s") as err:
        run_machine(MachineConfig(image=str(img), vcpus=2, timeout_s=1, serial_out=lambda b: None))
    assert "CPU#0" in err.value.dump and "CPU#1" in err.value.dump
    alive = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("CPU ")]
    assert alive == []


def test_missing_image(kvm, tmp_path: Path) -> None:
    r = run_vmm(["run", "--image", str(tmp_path / "nope.elf")], timeout=60)
    assert r.returncode == 2
    assert "guest image not found" in _one_error_line(r.stderr)


def test_not_multiboot_image(kvm, tmp_path: Path) -> None:
    img = tmp_path / "plain.bin"
    img.write_bytes(b"\x90" * 16384)
    r = run_vmm(["run", "--image", str(img)], timeout=60)
    assert r.returncode == 2
    assert "not a multiboot image" in _one_error_line(r.stderr)


def test_no_kvm_device(tmp_path: Path) -> None:
    img = g.write(tmp_path, "exit", g.exit_with(0))
    r = run_vmm(["run", "--image", str(img), "--kvm", str(tmp_path / "no-kvm")], timeout=60)
    assert r.returncode == 2
    assert "KVM is not available" in _one_error_line(r.stderr)


def test_kvm_device_without_permission(kvm, tmp_path: Path) -> None:
    if have_root():  # root ignores file modes: drop to nobody for this run
        shared = Path(tempfile.mkdtemp(prefix="rvmm-perm-", dir="/tmp"))
        try:
            shared.chmod(0o755)
            img = g.write(shared, "exit", g.exit_with(0))
            img.chmod(0o644)
            r = run_vmm(["run", "--image", str(img)], timeout=60, preexec_fn=lambda: os.setuid(65534), cwd="/")
        finally:
            shutil.rmtree(shared)
    else:
        img = g.write(tmp_path, "exit", g.exit_with(0))
        fake = tmp_path / "kvm"
        fake.write_bytes(b"")
        fake.chmod(0)
        r = run_vmm(["run", "--image", str(img), "--kvm", str(fake)], timeout=60)
    assert r.returncode == 2
    assert "needs read/write access" in _one_error_line(r.stderr)


def test_not_a_kvm_device(tmp_path: Path) -> None:
    img = g.write(tmp_path, "exit", g.exit_with(0))
    with pytest.raises(KvmError, match="KVM_GET_API_VERSION failed: ENOTTY"):
        run_machine(MachineConfig(image=str(img), kvm_path="/dev/null"))


@pytest.mark.parametrize(
    "args,words", [(["--locking", "2014"], "invalid choice"), (["--vcpus", "0"], "between 1 and 64")]
)
def test_bad_arguments(tmp_path: Path, args: list[str], words: str) -> None:
    img = g.write(tmp_path, "exit", g.exit_with(0))
    r = run_vmm(["run", "--image", str(img), *args], timeout=60)
    assert r.returncode == 2
    assert words in _one_error_line(r.stderr)


def test_bad_config_is_a_vmm_error(tmp_path: Path) -> None:
    with pytest.raises(VmmError, match="--mem"):
        run_machine(MachineConfig(image=str(tmp_path), mem_mb=1))
