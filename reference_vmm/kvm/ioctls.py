"""KVM ioctl request numbers, derived the way ``<asm-generic/ioctl.h>`` does.

A request number packs direction, argument size, type and command number:
``dir << 30 | size << 16 | type << 8 | nr``.  Computing them from the ctypes
structures (instead of copying hex constants) means a structure whose size is
wrong also yields a wrong request number, which the kernel rejects with
ENOTTY rather than reading a struct of the wrong size.
"""

from __future__ import annotations

import ctypes

from . import bindings as b

__all__ = ["IOC_NONE", "IOC_WRITE", "IOC_READ", "io", "ior", "iow", "iowr", "KVMIO", "IOCTLS", "name_of"]

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    assert size < (1 << _IOC_SIZEBITS), "ioctl argument too large"
    return (direction << _IOC_DIRSHIFT) | (typ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def io(typ: int, nr: int) -> int:
    """``_IO(type, nr)``: no argument (or an integer passed by value)."""
    return _ioc(IOC_NONE, typ, nr, 0)


def ior(typ: int, nr: int, argtype: type) -> int:
    """``_IOR(type, nr, T)``: the kernel writes a ``T`` back to userspace."""
    return _ioc(IOC_READ, typ, nr, ctypes.sizeof(argtype))


def iow(typ: int, nr: int, argtype: type) -> int:
    """``_IOW(type, nr, T)``: userspace passes a ``T`` to the kernel."""
    return _ioc(IOC_WRITE, typ, nr, ctypes.sizeof(argtype))


def iowr(typ: int, nr: int, argtype: type) -> int:
    """``_IOWR(type, nr, T)``: both directions."""
    return _ioc(IOC_READ | IOC_WRITE, typ, nr, ctypes.sizeof(argtype))


KVMIO = 0xAE

#: Name -> request number for every ioctl the reference VMM issues.
IOCTLS: dict[str, int] = {
    # /dev/kvm
    "KVM_GET_API_VERSION": io(KVMIO, 0x00),
    "KVM_CREATE_VM": io(KVMIO, 0x01),
    "KVM_CHECK_EXTENSION": io(KVMIO, 0x03),
    "KVM_GET_VCPU_MMAP_SIZE": io(KVMIO, 0x04),
    "KVM_GET_SUPPORTED_CPUID": iowr(KVMIO, 0x05, b.kvm_cpuid2(0)),
    # VM fd
    "KVM_CREATE_VCPU": io(KVMIO, 0x41),
    "KVM_SET_USER_MEMORY_REGION": iow(KVMIO, 0x46, b.KvmUserspaceMemoryRegion),
    "KVM_SET_TSS_ADDR": io(KVMIO, 0x47),
    "KVM_SET_IDENTITY_MAP_ADDR": iow(KVMIO, 0x48, ctypes.c_uint64),
    "KVM_CREATE_IRQCHIP": io(KVMIO, 0x60),
    "KVM_IRQ_LINE": iow(KVMIO, 0x61, b.KvmIrqLevel),
    "KVM_GET_IRQCHIP": iowr(KVMIO, 0x62, b.KvmIrqchip),
    "KVM_SET_IRQCHIP": ior(KVMIO, 0x63, b.KvmIrqchip),  # sic: the header says _IOR
    "KVM_IRQFD": iow(KVMIO, 0x76, b.KvmIrqfd),
    "KVM_CREATE_PIT2": iow(KVMIO, 0x77, b.KvmPitConfig),
    "KVM_IOEVENTFD": iow(KVMIO, 0x79, b.KvmIoeventfd),
    # vCPU fd
    "KVM_RUN": io(KVMIO, 0x80),
    "KVM_GET_REGS": ior(KVMIO, 0x81, b.KvmRegs),
    "KVM_SET_REGS": iow(KVMIO, 0x82, b.KvmRegs),
    "KVM_GET_SREGS": ior(KVMIO, 0x83, b.KvmSregs),
    "KVM_SET_SREGS": iow(KVMIO, 0x84, b.KvmSregs),
    "KVM_SET_CPUID2": iow(KVMIO, 0x90, b.kvm_cpuid2(0)),
    "KVM_GET_MP_STATE": ior(KVMIO, 0x98, b.KvmMpState),
    "KVM_SET_MP_STATE": iow(KVMIO, 0x99, b.KvmMpState),
}

_NAMES = {v: k for k, v in IOCTLS.items()}


def name_of(request: int) -> str:
    """The ioctl's name for messages, or its number in hex."""
    return _NAMES.get(request, hex(request))
