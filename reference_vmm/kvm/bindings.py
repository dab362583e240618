"""ctypes mirrors of the ``<linux/kvm.h>`` structures the reference VMM uses.

Only this module and :mod:`.system` know the binary layout of KVM's ABI.  Each
structure is checked against the size the kernel header gives (see
``tests/reference_vmm/test_kvm_bindings.py``): a wrong field would otherwise
surface as a guest that boots into garbage.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

__all__ = [
    "KvmRegs",
    "KvmSegment",
    "KvmDtable",
    "KvmSregs",
    "KvmUserspaceMemoryRegion",
    "KvmIrqchip",
    "KvmIrqLevel",
    "KvmMpState",
    "KvmPitConfig",
    "KvmIrqfd",
    "KvmIoeventfd",
    "KvmCpuidEntry2",
    "kvm_cpuid2",
    "KvmRunIo",
    "KvmRunMmio",
    "KvmRunFailEntry",
    "KvmRunInternal",
    "KvmRunSystemEvent",
    "KvmRun",
    "KVM_RUN_EXIT_OFFSET",
    "MP_STATE_RUNNABLE",
    "MP_STATE_UNINITIALIZED",
    "MP_STATE_INIT_RECEIVED",
    "MP_STATE_HALTED",
    "MP_STATE_SIPI_RECEIVED",
    "EXIT_REASONS",
]


class KvmRegs(ctypes.Structure):
    """``struct kvm_regs``: general-purpose registers, RIP and RFLAGS."""

    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax",
            "rbx",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "rsp",
            "rbp",
            "r8",
            "r9",
            "r10",
            "r11",
            "r12",
            "r13",
            "r14",
            "r15",
            "rip",
            "rflags",
        )
    ]


class KvmSegment(ctypes.Structure):
    """``struct kvm_segment``: a segment register with its hidden part."""

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class KvmDtable(ctypes.Structure):
    """``struct kvm_dtable``: GDTR or IDTR."""

    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class KvmSregs(ctypes.Structure):
    """``struct kvm_sregs``: segments, descriptor tables, control registers."""

    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * 4),
    ]


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region``: one memory slot."""

    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class KvmIrqchip(ctypes.Structure):
    """``struct kvm_irqchip``: PIC or IOAPIC state (opaque here)."""

    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", c_uint8 * 512)]


class KvmIrqLevel(ctypes.Structure):
    """``struct kvm_irq_level``: raise or lower a GSI of the in-kernel irqchip."""

    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class KvmMpState(ctypes.Structure):
    """``struct kvm_mp_state``: a vCPU's multiprocessing state."""

    _fields_ = [("mp_state", c_uint32)]


class KvmPitConfig(ctypes.Structure):
    """``struct kvm_pit_config`` for KVM_CREATE_PIT2."""

    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class KvmIrqfd(ctypes.Structure):
    """``struct kvm_irqfd``: an eventfd that injects a GSI when signalled."""

    _fields_ = [
        ("fd", c_uint32),
        ("gsi", c_uint32),
        ("flags", c_uint32),
        ("resamplefd", c_uint32),
        ("pad", c_uint8 * 16),
    ]


class KvmIoeventfd(ctypes.Structure):
    """``struct kvm_ioeventfd``: a guest write the kernel turns into an eventfd signal."""

    _fields_ = [
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    ]


class KvmCpuidEntry2(ctypes.Structure):
    """``struct kvm_cpuid_entry2``: one CPUID leaf/subleaf."""

    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


def kvm_cpuid2(nent: int) -> type[ctypes.Structure]:
    """Return a ``struct kvm_cpuid2`` type with room for ``nent`` entries.

    The kernel structure ends in a flexible array, so the type is made per size.
    """

    class KvmCpuid2(ctypes.Structure):
        _fields_ = [
            ("nent", c_uint32),
            ("padding", c_uint32),
            ("entries", KvmCpuidEntry2 * nent),
        ]

    return KvmCpuid2


class KvmRunIo(ctypes.Structure):
    """``kvm_run.io``: a port access; the data lives at ``data_offset`` in kvm_run."""

    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    ]


class KvmRunMmio(ctypes.Structure):
    """``kvm_run.mmio``: a memory access no memory slot backs."""

    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class KvmRunFailEntry(ctypes.Structure):
    """``kvm_run.fail_entry``: the hardware refused VM entry."""

    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class KvmRunInternal(ctypes.Structure):
    """``kvm_run.internal``: KVM could not handle an exit (e.g. emulation failed)."""

    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class KvmRunSystemEvent(ctypes.Structure):
    """``kvm_run.system_event``: the guest asked for shutdown, reset or crash."""

    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _KvmRunExit(ctypes.Union):
    _fields_ = [
        ("io", KvmRunIo),
        ("mmio", KvmRunMmio),
        ("fail_entry", KvmRunFailEntry),
        ("internal", KvmRunInternal),
        ("system_event", KvmRunSystemEvent),
        ("padding", c_uint8 * 256),
    ]


class KvmRun(ctypes.Structure):
    """The head of ``struct kvm_run``, the page shared with the kernel per vCPU."""

    _anonymous_ = ("exit",)
    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", _KvmRunExit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", c_uint8 * 2048),
    ]


#: Offset of the exit union in kvm_run (where ``io``/``mmio`` start).
KVM_RUN_EXIT_OFFSET = KvmRun.exit.offset

MP_STATE_RUNNABLE = 0
MP_STATE_UNINITIALIZED = 1
MP_STATE_INIT_RECEIVED = 2
MP_STATE_HALTED = 3
MP_STATE_SIPI_RECEIVED = 4

#: KVM_EXIT_* numbers and names, for messages.  vmtrace.schema has the same
#: table for the analyses on purpose: the reference VMM is a target that runs
#: on an interpreter where only its own package and vmtrace.probes exist, and
#: the analyses never import the target.
EXIT_REASONS: dict[int, str] = {
    0: "UNKNOWN",
    1: "EXCEPTION",
    2: "IO",
    3: "HYPERCALL",
    4: "DEBUG",
    5: "HLT",
    6: "MMIO",
    7: "IRQ_WINDOW_OPEN",
    8: "SHUTDOWN",
    9: "FAIL_ENTRY",
    10: "INTR",
    11: "SET_TPR",
    12: "TPR_ACCESS",
    16: "NMI",
    17: "INTERNAL_ERROR",
    24: "SYSTEM_EVENT",
}
