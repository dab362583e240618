"""``VcpuFd.run`` on real KVM: port exits decode right, whether decoded afresh or found in the cache.

A real-mode guest of a few bytes at 0x1000 does port reads and writes of
several ports and sizes, repeating some, so that a cached port read sits
between fresh ones and between writes; every exit and every value the guest
receives is checked.
"""

from __future__ import annotations

import ctypes
import mmap

from vmtrace.reference_vmm.kvm import bindings as kb
from vmtrace.reference_vmm.kvm import exits as x
from vmtrace.reference_vmm.kvm.system import Kvm

CODE_ADDR = 0x1000
RESULTS = 0x2000  # the guest stores what each read returned here

# Real mode, 16-bit code; "66" makes an access 32 bits wide.
_CODE = b"".join(
    [
        b"\xba\x00\x0e",  # mov dx, 0xe00
        b"\x66\xed",  # in eax, dx          (read 1: port 0xe00, 4 bytes)
        b"\x66\xa3\x00\x20",  # mov [0x2000], eax
        b"\xba\x08\x06",  # mov dx, 0x608
        b"\xec",  # in al, dx           (read 2: port 0x608, 1 byte)
        b"\xa2\x04\x20",  # mov [0x2004], al
        b"\xba\x00\x0e",  # mov dx, 0xe00
        b"\x66\xb8\x78\x56\x34\x12",  # mov eax, 0x12345678
        b"\x66\xef",  # out dx, eax         (write: port 0xe00, 4 bytes)
        b"\x66\xed",  # in eax, dx          (read 3: port 0xe00 again)
        b"\x66\xa3\x08\x20",  # mov [0x2008], eax
        b"\xed",  # in ax, dx           (read 4: port 0xe00, 2 bytes)
        b"\xa3\x0c\x20",  # mov [0x200c], ax
        b"\xf4",  # hlt
        b"\xeb\xfe",  # jmp $
    ]
)


def _vcpu(kvm_fd: Kvm):
    vm = kvm_fd.create_vm()
    vm.set_tss_addr(0xFFFBD000)
    mem = mmap.mmap(-1, 0x10000, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    mem[CODE_ADDR : CODE_ADDR + len(_CODE)] = _CODE
    host = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    vm.set_user_memory_region(0, 0, 0x10000, host)
    vcpu = vm.create_vcpu(0)
    s = vcpu.get_sregs()
    s.cs.base, s.cs.selector = 0, 0
    s.ds.base, s.ds.selector = 0, 0
    vcpu.set_sregs(s)
    regs = kb.KvmRegs()
    regs.rip, regs.rflags = CODE_ADDR, 0x2
    vcpu.set_regs(regs)
    return vm, mem, vcpu


def test_port_exits_decode_the_same_fresh_and_cached(kvm: None) -> None:
    system = Kvm()
    vm, mem, vcpu = _vcpu(system)
    answers = iter([0xAABBCCDD, 0x5A, 0x01020304, 0xBEEF])
    seen = []
    try:
        for _ in range(10):
            ex = vcpu.run()
            seen.append(ex)
            if isinstance(ex, x.IoIn):
                vcpu.complete_io_in(next(answers).to_bytes(ex.size, "little"))
            elif not isinstance(ex, x.IoOut):
                break
        assert seen[:5] == [
            x.IoIn(0xE00, 4, 1),
            x.IoIn(0x608, 1, 1),
            x.IoOut(0xE00, 4, b"\x78\x56\x34\x12", 1),
            x.IoIn(0xE00, 4, 1),
            x.IoIn(0xE00, 2, 1),
        ]
        assert seen[0] is seen[3], "a repeated port read is served from the decode cache"
        results = mem[RESULTS : RESULTS + 14]
        assert int.from_bytes(results[0:4], "little") == 0xAABBCCDD
        assert results[4] == 0x5A
        assert int.from_bytes(results[8:12], "little") == 0x01020304
        assert int.from_bytes(results[12:14], "little") == 0xBEEF
    finally:
        vcpu.close()
        vm.close()
        system.close()
        mem.close()


def test_immediate_exit_makes_run_return_intr(kvm: None) -> None:
    # The kick: KVM_RUN fails with EINTR at once, which run() turns into Intr.
    system = Kvm()
    vm, mem, vcpu = _vcpu(system)
    try:
        vcpu.set_immediate_exit(True)
        assert vcpu.run() == x.Intr()
        vcpu.set_immediate_exit(False)
        assert vcpu.run() == x.IoIn(0xE00, 4, 1)
    finally:
        vcpu.close()
        vm.close()
        system.close()
        mem.close()
