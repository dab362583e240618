"""The floor of a userspace exit on this host: a bare KVM_RUN loop in C and in Python.

Whatever a VMM does per exit comes on top of KVM's own round trip (exit,
return from the ioctl, next KVM_RUN, entry).  This measures that floor with
the least possible VMM: one vCPU in real mode running ``in al, dx`` on a port
nothing claims, unrolled 256 times, and a loop that calls KVM_RUN and checks
that the exit is that port read, nothing else:

* ``c``: the loop in C (compiled here with ``cc -O2``), what QEMU's vCPU
  thread does at the least;
* ``python``: the loop in Python through ctypes, as the reference VMM calls
  KVM_RUN (GIL released around the ioctl), without decoding the exit.

Times are taken on the host (CLOCK_MONOTONIC around N exits) and shown in TSC
cycles, so they compare with the guest-measured cycles of ``inl_vmm``.

With ``--vmm`` each round also runs the same guest through the reference
VMM's exit path (decode, dispatch into an unassigned port under the BQL,
completion: what ``inl_vmm`` costs it) beside the Python loop, both timed
in CPU time of the vCPU thread, and prints the difference: the VMM's own
work per exit above the floor.  CPU time leaves out time spent waiting for
a CPU, so the figure holds on a busy host, where guest-measured cycles
swing by more than the whole difference.

    .venv/bin/python benchmarks/kvm_floor.py [--exits 200000] [--rounds 5] [--vmm]

``benchmarks/vmm_roundtrip.py`` runs it beside QEMU and the reference VMM.
Needs /dev/kvm and a C compiler.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import mmap
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmtrace.reference_vmm.kvm import bindings as b
from vmtrace.reference_vmm.kvm.ioctls import IOCTLS
from vmtrace.reference_vmm.kvm.system import Kvm

_KVM_EXIT_IO = 2
PORT = 0x5F0  # no device claims it: no irqchip, no PIT, every read exits to userspace
UNROLL = 256
MEM = 0x10000
# Real mode at 0:0: UNROLL x "in al, dx" then "jmp near" back to 0.
_JMP = bytes([0xE9]) + (-(UNROLL + 3) & 0xFFFF).to_bytes(2, "little")
GUEST = bytes([0xEC]) * UNROLL + _JMP

_C_LOOP = r"""
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#define CHECK(x) do { if ((x) < 0) { perror(#x); return 2; } } while (0)

int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    unsigned port = strtoul(argv[2], NULL, 0);
    size_t mem_size = strtoul(argv[3], NULL, 0);
    FILE *f = fopen(argv[4], "rb");
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), vm, vcpu;
    CHECK(kvm);
    CHECK(vm = ioctl(kvm, KVM_CREATE_VM, 0));
    unsigned char *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!f || mem == MAP_FAILED || fread(mem, 1, mem_size, f) == 0) { perror("guest"); return 2; }
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (unsigned long)mem };
    CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region));
    CHECK(vcpu = ioctl(vm, KVM_CREATE_VCPU, 0));
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    CHECK(run_size);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) { perror("kvm_run"); return 2; }
    struct kvm_sregs sregs;
    CHECK(ioctl(vcpu, KVM_GET_SREGS, &sregs));
    sregs.cs.base = 0; sregs.cs.selector = 0;
    CHECK(ioctl(vcpu, KVM_SET_SREGS, &sregs));
    struct kvm_regs regs = { .rip = 0, .rdx = port, .rflags = 2 };
    CHECK(ioctl(vcpu, KVM_SET_REGS, &regs));
    struct timespec t0, t1;
    for (long i = -1000; i < n; i++) {          /* 1000 untimed exits first */
        if (i == 0)
            clock_gettime(CLOCK_MONOTONIC, &t0);
        CHECK(ioctl(vcpu, KVM_RUN, 0));
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != port || run->io.direction != KVM_EXIT_IO_IN) {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 3;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
"""


class FloorError(Exception):
    pass


def build_c(workdir: Path) -> Path:
    """Compile the C loop (and write the guest) into ``workdir``; returns the binary."""
    src, exe = workdir / "kvm_floor.c", workdir / "kvm_floor"
    src.write_text(_C_LOOP)
    (workdir / "guest.bin").write_bytes(GUEST)
    cc = subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
    if cc.returncode != 0:
        raise FloorError(f"cc failed: {cc.stderr.strip().splitlines()[-1] if cc.stderr.strip() else cc.returncode}")
    return exe


def c_ns_per_exit(exe: Path, exits: int) -> float:
    out = subprocess.run(
        [str(exe), str(exits), hex(PORT), hex(MEM), str(exe.parent / "guest.bin")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise FloorError(f"C loop failed: {out.stderr.strip()}")
    return float(out.stdout)


class _FloorVm:
    """The one-vCPU real-mode VM both Python loops run (``GUEST`` at 0)."""

    def __init__(self) -> None:
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.mem = mmap.mmap(-1, MEM, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
        self.vcpu = None
        try:
            self.mem[: len(GUEST)] = GUEST
            view = ctypes.c_char.from_buffer(self.mem)
            self.vm.set_user_memory_region(0, 0, MEM, ctypes.addressof(view))
            del view  # KVM holds the mapping now; a live export would keep mem from closing
            self.vcpu = self.vm.create_vcpu(0)
            sregs = self.vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            self.vcpu.set_sregs(sregs)
            self.vcpu.set_regs(b.KvmRegs(rip=0, rdx=PORT, rflags=2))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.vcpu is not None:
            self.vcpu.close()
        self.vm.close()
        self.kvm.close()
        self.mem.close()


def python_ns_per_exit(exits: int, clock=time.perf_counter_ns) -> float:
    fvm = _FloorVm()
    try:
        # The reference VMM's own call: libc ioctl through ctypes, no argtypes.
        ioctl = ctypes.CDLL(None, use_errno=True).ioctl
        fd, req, run = fvm.vcpu.fd, IOCTLS["KVM_RUN"], fvm.vcpu.kvm_run
        for _ in range(1000):
            ioctl(fd, req, 0)
        t0 = clock()
        for _ in range(exits):
            if ioctl(fd, req, 0) < 0 or run.exit_reason != _KVM_EXIT_IO:
                raise FloorError(f"Python loop: unexpected exit {run.exit_reason} (errno {ctypes.get_errno()})")
        ns = (clock() - t0) / exits
        del run
        return ns
    finally:
        fvm.close()


def vmm_ns_per_exit(exits: int, clock=time.thread_time_ns, stub_kvm_run: bool = False) -> float:
    """The same guest through the reference VMM's exit path, as ``inl_vmm`` takes it.

    ``VcpuFd.run`` decodes the exit, ``handle_exit`` dispatches it through
    the vCPU's bus into an unassigned I/O root (counted, under the BQL, as
    the machine's) and completes the read: everything a vCPU thread does
    per exit but the guest's own loop.
    """
    from vmtrace.reference_vmm.bql import BigLock
    from vmtrace.reference_vmm.dispatch import AddressSpaceBus
    from vmtrace.reference_vmm.machine import Machine
    from vmtrace.reference_vmm.memory import AddressSpace
    from vmtrace.reference_vmm.vcpu import handle_exit

    fvm = _FloorVm()
    counts = Machine.__new__(Machine)  # only for its unassigned-region factory and counters
    counts._unassigned_counts = {}
    if not isinstance(getattr(type(counts), "unassigned", None), property):
        counts.unassigned = collections.Counter()  # older VMMs kept a Counter here: compare them too
    io = AddressSpace(counts._unassigned_region("io", 1 << 16, "pio"), "I/O")
    memory = AddressSpace(counts._unassigned_region("system", 1 << 32, "mmio"), "memory")
    bus = AddressSpaceBus(io, memory, BigLock("floor-BQL"))
    bus = getattr(bus, "for_thread", lambda: bus)()  # the vCPU's own view, where the VMM has one
    vcpu = fvm.vcpu
    from vmtrace.reference_vmm.kvm import system

    real_ioctl = system._kvm_run_ioctl
    try:
        for _ in range(1000):
            handle_exit(vcpu.run(), vcpu, bus)
        if stub_kvm_run:
            system._kvm_run_ioctl = lambda _fd, _req, _arg: 0
        run = vcpu.run
        t0 = clock()
        for _ in range(exits):
            if handle_exit(run(), vcpu, bus) is not None:
                raise FloorError("reference VMM loop: the exit stopped the vCPU")
        ns = (clock() - t0) / exits
        if counts.unassigned[("pio-read", PORT)] != exits + 1000:
            raise FloorError("reference VMM loop: the unassigned port was not read once per exit")
        return ns
    finally:
        system._kvm_run_ioctl = real_ioctl
        io.destroy()
        memory.destroy()
        fvm.close()


def main() -> None:
    from vmtrace.collectors import host

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exits", type=int, default=200_000, help="timed exits per run")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are shown")
    ap.add_argument(
        "--vmm",
        action="store_true",
        help="also the reference VMM's own exit path: Python floor and VMM loop on thread CPU time",
    )
    args = ap.parse_args()
    tsc_hz, _ = host.tsc_hz()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            exe = build_c(Path(tmp))
            c, py, py_cpu, vmm_cpu, warm_cpu = [], [], [], [], []
            for _ in range(args.rounds):
                c.append(c_ns_per_exit(exe, args.exits))
                py.append(python_ns_per_exit(args.exits))
                if args.vmm:
                    py_cpu.append(python_ns_per_exit(args.exits, clock=time.thread_time_ns))
                    vmm_cpu.append(vmm_ns_per_exit(args.exits))
                    warm_cpu.append(vmm_ns_per_exit(args.exits, stub_kvm_run=True))
        except (FloorError, OSError) as err:
            sys.exit(f"kvm_floor: error: {err}")
    rows = [("C KVM_RUN loop", statistics.median(c)), ("Python KVM_RUN loop", statistics.median(py))]
    if args.vmm:
        rows += [
            ("Python loop, CPU time", statistics.median(py_cpu)),
            ("reference VMM, CPU time", statistics.median(vmm_cpu)),
            ("VMM path, KVM_RUN stubbed", statistics.median(warm_cpu)),
        ]
    for name, ns in rows:
        print(f"{name:24} {ns:8,.0f} ns {ns * tsc_hz / 1e9:10,.0f} cycles per exit")
    if args.vmm:
        # Per round, so that both loops of a pair met the same host; CPU time
        # of the vCPU thread leaves out the time it waited for a CPU.
        above = [(v - p) * tsc_hz / 1e9 for v, p in zip(vmm_cpu, py_cpu, strict=False)]
        print(
            f"reference VMM's own work per exit above the Python floor: {statistics.median(above):,.0f} cycles "
            f"(rounds {min(above):,.0f}-{max(above):,.0f}; target <= 3,000)"
        )
        # The same Python code with warm caches: what it costs when no trip
        # through KVM evicts it between exits (the stub's own call included).
        warm = statistics.median(warm_cpu) * tsc_hz / 1e9
        print(
            f"the same exit path run back to back, KVM_RUN stubbed (warm caches): {warm:,.0f} cycles; "
            f"the rest, {statistics.median(above) - warm:,.0f} cycles, is what each trip through KVM costs it"
        )


if __name__ == "__main__":
    main()
