"""The vCPU thread: a KVM_RUN loop, and the exit handler it calls.

:func:`handle_exit` is a plain function of (exit, vCPU, bus): tests drive it
with a fake vCPU and a fake bus, no KVM needed.  :class:`VcpuThread` runs it
in one of the locking modes:

* ``2013``: QEMU 1.0's loop from the talk.  The thread holds the BQL all the
  time except inside KVM_RUN; every exit is handled under it.
* ``bql`` and ``unlocked``: today's loop.  KVM_RUN and the exit path run
  without the BQL; dispatch takes it only for regions that need it (in
  ``unlocked`` mode the PM timer has opted out).  The mode difference lives
  in which regions cleared ``global_locking`` (see :mod:`.machine`).

The kernel-visible thread name is ``CPU n/KVM``, as QEMU's, so collectors
find vCPU threads the same way on both VMMs.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import NamedTuple, Protocol

from .bql import BigLock
from .dispatch import Bus
from .errors import KvmError
from .kvm import bindings as b
from .kvm import exits as x
from .memory.rcu import rcu_unregister_thread

__all__ = [
    "LOCKING_MODES",
    "Stop",
    "handle_exit",
    "set_thread_name",
    "dump_registers",
    "VcpuThread",
]

LOCKING_MODES = ("2013", "bql", "unlocked")

_PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)
_INTERNAL_SUBERRORS = {1: "emulation failure", 2: "simultaneous exception", 3: "delivery event", 4: "unexpected exit"}


class Stop(NamedTuple):
    """Why a vCPU (and its machine) stops.

    ``status`` is the process exit status to use; ``guest_failure`` asks for
    a register dump of this vCPU; ``machine`` False means only this vCPU
    stopped (HLT without an in-kernel irqchip).
    """

    status: int
    message: str
    guest_failure: bool = False
    machine: bool = True


class VcpuLike(Protocol):
    def complete_io_in(self, data: bytes) -> None: ...

    def complete_mmio_read(self, data: bytes) -> None: ...


class RunnableVcpu(VcpuLike, Protocol):
    """What a vCPU thread drives: a ``VcpuFd``, or a scripted one in tests."""

    def run(self) -> x.VcpuExit: ...

    def set_immediate_exit(self, value: bool) -> None: ...

    def get_regs(self) -> b.KvmRegs: ...

    def get_sregs(self) -> b.KvmSregs: ...


def set_thread_name(name: str) -> None:
    """Set the calling thread's kernel name (``/proc/PID/task/TID/comm``, 15 bytes)."""
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


_IoIn, _IoOut, _MmioRead, _MmioWrite, _Intr = x.IoIn, x.IoOut, x.MmioRead, x.MmioWrite, x.Intr
_MASK = {n: (1 << (8 * n)) - 1 for n in range(1, 9)}  # a device may return more bits than asked


def handle_exit(ex: x.VcpuExit, vcpu: VcpuLike, bus: Bus) -> Stop | None:
    """Handle one exit; None means "run the vCPU again".

    The common exits are dispatched on ``type(ex)``, fetched once, instead of
    ``isinstance``: this is the exit path, and every exit pays for the tests
    before its own.  mypy does not narrow ``ex`` through ``t``, hence the
    ignores in those branches."""
    t = type(ex)
    if t is _IoIn:
        port, size, count = ex  # type: ignore[misc]  # an IoIn: see the docstring
        if count == 1:
            vcpu.complete_io_in((bus.pio_read(port, size) & _MASK[size]).to_bytes(size, "little"))
        else:  # string I/O (rep insb ...): one access per item
            mask = _MASK[size]
            vcpu.complete_io_in(
                b"".join((bus.pio_read(port, size) & mask).to_bytes(size, "little") for _ in range(count))
            )
        return None
    if t is _IoOut:
        port, size, data, count = ex  # type: ignore[misc]  # an IoOut: see the docstring
        if count == 1:
            bus.pio_write(port, int.from_bytes(data, "little"), size)
        else:
            for i in range(count):
                bus.pio_write(port, int.from_bytes(data[i * size : (i + 1) * size], "little"), size)
        return None
    if t is _MmioRead:
        size = ex.size  # type: ignore[union-attr]  # a MmioRead: see the docstring
        vcpu.complete_mmio_read((bus.mmio_read(ex.addr, size) & _MASK[size]).to_bytes(size, "little"))  # type: ignore[union-attr]  # as above
        return None
    if t is _MmioWrite:
        bus.mmio_write(ex.addr, int.from_bytes(ex.data, "little"), len(ex.data))  # type: ignore[union-attr]  # a MmioWrite: see the docstring
        return None
    if t is _Intr:
        return None  # a kick: the loop checks whether the machine is stopping
    if t is x.Hlt:
        return Stop(0, "vCPU halted (no in-kernel irqchip to wake it)", machine=False)
    if t is x.Shutdown:
        return Stop(3, "guest triple fault (KVM_EXIT_SHUTDOWN)", guest_failure=True)
    if isinstance(ex, x.InternalError):  # rare: clarity over speed
        what = _INTERNAL_SUBERRORS.get(ex.suberror, "unknown")
        data = " ".join(f"{d:#x}" for d in ex.data)
        return Stop(3, f"KVM_EXIT_INTERNAL_ERROR suberror {ex.suberror} ({what}) data [{data}]", guest_failure=True)
    if isinstance(ex, x.FailEntry):  # rare: clarity over speed
        return Stop(
            3,
            f"KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {ex.reason:#x} on cpu {ex.cpu}",
            guest_failure=True,
        )
    if isinstance(ex, x.SystemEvent):  # rare: clarity over speed
        kind = ex.type
        if kind == x.SYSTEM_EVENT_SHUTDOWN:
            return Stop(0, "guest requested power off")
        if kind == x.SYSTEM_EVENT_RESET:
            return Stop(0, "guest requested reset (the reference VMM does not reboot)")
        return Stop(3, f"guest system event {kind} (crash)", guest_failure=True)
    reason = ex.reason if isinstance(ex, x.Unknown) else -1
    return Stop(3, f"unhandled KVM exit reason {reason}", guest_failure=True)


def dump_registers(vcpu: RunnableVcpu, index: int) -> str:
    """A QEMU-style register dump of a stopped vCPU, for guest failures."""
    try:
        r = vcpu.get_regs()
        s = vcpu.get_sregs()
    except KvmError as e:
        return f"CPU#{index}: registers unavailable: {e}"
    lines = [
        f"CPU#{index}",
        f"EAX={r.rax:08x} EBX={r.rbx:08x} ECX={r.rcx:08x} EDX={r.rdx:08x}",
        f"ESI={r.rsi:08x} EDI={r.rdi:08x} EBP={r.rbp:08x} ESP={r.rsp:08x}",
        f"EIP={r.rip:08x} EFL={r.rflags:08x}",
    ]
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
        seg = getattr(s, name)
        lines.append(
            f"{name.upper():3}={seg.selector:04x} {seg.base:08x} {seg.limit:08x} type={seg.type:x} p={seg.present} db={seg.db}"
        )
    lines.append(f"GDT=     {s.gdt.base:08x} {s.gdt.limit:08x}")
    lines.append(f"IDT=     {s.idt.base:08x} {s.idt.limit:08x}")
    lines.append(f"CR0={s.cr0:08x} CR2={s.cr2:08x} CR3={s.cr3:08x} CR4={s.cr4:08x} EFER={s.efer:016x}")
    return "\n".join(lines)


class VcpuThread(threading.Thread):
    """One vCPU: ``CPU n/KVM``, running KVM_RUN until the machine stops.

    ``on_stop(index, stop)`` is called once when the loop ends on its own
    (guest exit, failure); a stop requested from outside (``kick``) ends the
    loop without calling it.

    With a ``start_gate``, the thread is created paused, as QEMU creates its
    vCPU threads and lets them run only at ``resume_all_vcpus``: it does its
    per-thread set-up, sets :attr:`ready` and waits for the gate before its
    first KVM_RUN.  Without it, thread start-up is staggered by however long
    the interpreter takes to create a thread (160-235 ms per thread on the
    free-threaded 3.13), and the guest's BSP waits that long for its APs.
    """

    def __init__(
        self,
        vcpu: RunnableVcpu,
        index: int,
        bus: Bus,
        bql: BigLock,
        mode: str,
        on_stop: Callable[[int, Stop], None],
        start_gate: threading.Event | None = None,
    ) -> None:
        if mode not in LOCKING_MODES:
            raise ValueError(f"locking mode must be one of {', '.join(LOCKING_MODES)}")
        super().__init__(name=f"CPU {index}/KVM", daemon=True)
        self.vcpu = vcpu
        self.index = index
        self.bus = bus
        self.bql = bql
        self.mode = mode
        self.on_stop = on_stop
        self.stopping = False
        self.exits = 0
        self.error: BaseException | None = None
        self.start_gate = start_gate
        self.ready = threading.Event()

    def kick(self) -> None:
        """Ask the loop to end: KVM_RUN returns EINTR now or on its next entry."""
        self.stopping = True
        self.vcpu.set_immediate_exit(True)

    def run(self) -> None:
        set_thread_name(self.name)
        stop: Stop | None = None
        try:
            # This thread's own bus (RCU reader, lookup memo) is made here, in the thread.
            bus = self.bus.for_thread()
            self.ready.set()
            if self.start_gate is not None:
                self.start_gate.wait()
            stop = self._loop_2013(bus) if self.mode == "2013" else self._loop(bus)
        except BaseException as e:  # a host error: report it, do not hang the machine
            self.error = e
            stop = Stop(2, f"vCPU {self.index}: {e}")
        finally:
            rcu_unregister_thread()
        if stop is not None:
            self.on_stop(self.index, stop)

    def _loop(self, bus: Bus) -> Stop | None:
        vcpu = self.vcpu
        run = vcpu.run
        n = 0
        try:
            while not self.stopping:
                ex = run()
                n += 1
                stop = handle_exit(ex, vcpu, bus)
                if stop is not None:
                    return stop
            return None
        finally:
            self.exits += n

    def _loop_2013(self, bus: Bus) -> Stop | None:
        # QEMU 1.0 (kvm_cpu_exec): hold the BQL except around the ioctl itself.
        vcpu, bql = self.vcpu, self.bql
        run = vcpu.run
        n = 0
        bql.lock()
        try:
            while not self.stopping:
                bql.unlock()
                try:
                    ex = run()
                finally:
                    bql.lock()
                n += 1
                stop = handle_exit(ex, vcpu, bus)
                if stop is not None:
                    return stop
            return None
        finally:
            bql.unlock()
            self.exits += n
