"""KVM bindings: layouts and ioctl numbers against <linux/kvm.h> (values from the header)."""

from __future__ import annotations

import ctypes

import pytest

from vmtrace.reference_vmm.kvm import bindings as b
from vmtrace.reference_vmm.kvm.ioctls import IOCTLS, io, ior, iow, iowr, name_of

# Printed by a C program including <linux/kvm.h> on the development host.
HEADER_IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48,
    "KVM_CREATE_IRQCHIP": 0xAE60,
    "KVM_IRQ_LINE": 0x4008AE61,
    "KVM_GET_IRQCHIP": 0xC208AE62,
    "KVM_SET_IRQCHIP": 0x8208AE63,
    "KVM_IRQFD": 0x4020AE76,
    "KVM_CREATE_PIT2": 0x4040AE77,
    "KVM_IOEVENTFD": 0x4040AE79,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99,
}


@pytest.mark.parametrize("name,number", sorted(HEADER_IOCTLS.items()))
def test_ioctl_number_matches_header(name: str, number: int) -> None:
    assert IOCTLS[name] == number, f"{name}: {IOCTLS[name]:#x} != {number:#x}"


def test_every_ioctl_is_checked() -> None:
    assert set(IOCTLS) == set(HEADER_IOCTLS)


def test_ioc_direction_bits() -> None:
    assert io(0xAE, 1) == 0xAE01
    assert ior(0xAE, 1, ctypes.c_uint32) >> 30 == 2
    assert iow(0xAE, 1, ctypes.c_uint32) >> 30 == 1
    assert iowr(0xAE, 1, ctypes.c_uint32) >> 30 == 3
    assert (iow(0xAE, 1, ctypes.c_uint64) >> 16) & 0x3FFF == 8


@pytest.mark.parametrize(
    "struct,size",
    [
        (b.KvmRegs, 144),
        (b.KvmSregs, 312),
        (b.KvmSegment, 24),
        (b.KvmUserspaceMemoryRegion, 32),
        (b.KvmIrqchip, 520),
        (b.KvmCpuidEntry2, 40),
        (b.KvmRun, 2352),
        (b.KvmIrqfd, 32),
        (b.KvmIoeventfd, 64),
        (b.KvmPitConfig, 64),
    ],
)
def test_struct_sizes(struct: type, size: int) -> None:
    assert ctypes.sizeof(struct) == size


def test_kvm_run_exit_union_offsets() -> None:
    assert b.KVM_RUN_EXIT_OFFSET == 32  # offsetof(struct kvm_run, io) in the header
    assert b.KvmRun.exit_reason.offset == 8
    assert b.KvmRunMmio.is_write.offset == 20


def test_name_of_unknown_request_is_hex() -> None:
    assert name_of(0xAE80) == "KVM_RUN"
    assert name_of(0x1234) == "0x1234"
