"""The machine: KVM VM, memory map, devices, vCPU threads, main loop.

A PC reduced to what the benchmark guest needs, laid out as QEMU's ``pc``
machine so one guest image boots on both VMMs:

* RAM from 0; ACPI tables (RSDP, RSDT, FADT, MADT, DSDT) at 0xF0000;
* in-kernel irqchip (PIC, IOAPIC, a local APIC per vCPU at 0xFEE00000) and
  PIT, so the guest starts its APs with INIT/SIPI and port 0x4d0 is handled
  in the kernel, as on QEMU;
* COM1 at 0x3f8, isa-debug-exit at 0xf4, the ACPI PM timer at 0x608, PCI
  configuration ports 0xcf8/0xcfc;
* with ``disk``, a legacy virtio-blk-pci function at 00:02.0 (I/O BAR0 at
  0xc000 as SeaBIOS would assign it, INTA# on GSI 11 through an irqfd),
  serviced by the main loop under the BQL (``blk="bql"``) or by an IOThread
  without it (``blk="dataplane"``);
* the roots of ``address_space_io`` and ``address_space_memory`` are I/O
  regions that answer what no device claims (reads all ones, writes
  dropped), counted per address, and take the BQL as QEMU's unassigned
  regions do.

:func:`run_machine` is the library entry point: it returns the guest's exit
status, raises :class:`GuestError` (with a register dump) when the guest
fails and :class:`VmmError` for host problems.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vmtrace import probes

from .block import BlockBackend
from .bql import bql
from .devices.acpi import PM_TIMER_PORT, build_acpi_tables
from .devices.debug_exit import DebugExit
from .devices.pci import CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, PciBus
from .devices.pm_timer import PmTimer
from .devices.serial import Serial16550
from .devices.virtio import VirtIOBlock, VirtIOPCIProxy
from .dispatch import AddressSpaceBus
from .errors import GuestError, VmmError
from .iothread import IOThread, MainLoop
from .kvm import bindings as kb
from .kvm.system import Kvm, VcpuFd
from .kvm_slots import KvmMemoryListener
from .loader import BOOTLOADER_MAGIC, load_multiboot
from .memory.address_space import AddressSpace
from .memory.dma import GuestMemory
from .memory.owner import Owner
from .memory.rcu import drain_call_rcu
from .memory.region import MemoryRegion, transaction
from .vcpu import LOCKING_MODES, Stop, VcpuThread, dump_registers

__all__ = ["MachineConfig", "Machine", "run_machine", "name_lock_futexes", "BLK_MODES"]

ACPI_BASE = 0xF0000
DEBUG_EXIT_PORT = 0xF4
COM1_PORT = 0x3F8
TSS_ADDR = 0xFFFBD000  # as QEMU: just below the BIOS at 4 GiB
IDENTITY_MAP_ADDR = 0xFFFBC000
_KICK_SIGNAL = signal.SIGUSR1
#: Runs the vCPUs of a machine started paused (``-S``), as QEMU's ``cont``.
CONT_SIGNAL = signal.SIGUSR2
_ALL_ONES = {n: (1 << (8 * n)) - 1 for n in range(1, 9)}  # what an unclaimed read returns


@dataclass
class MachineConfig:
    """What to run.

    ``image``: path of a multiboot (v1) kernel.  ``vcpus``: 1-64.
    ``locking``: ``2013``, ``bql`` or ``unlocked``.  ``mem_mb``: RAM size.
    ``append``: the guest command line after the image path.
    ``iothreads``: IOThreads to start (``IO iothread0`` ...).
    ``timeout_s``: stop with a guest failure if the guest has not exited.
    ``serial_out``: receives guest serial output (default: file descriptor 1).
    ``stats``: print exit counts, unclaimed accesses and memory-API counters
    to stderr when the machine stops.
    ``disk``: a raw image for a virtio-blk device; ``blk``: ``bql`` (the
    default with a disk) or ``dataplane``; ``disk_serial``: what GET_ID answers.
    """

    image: str
    vcpus: int = 1
    locking: str = "bql"
    mem_mb: int = 128
    append: str = ""
    iothreads: int = 0
    timeout_s: float | None = None
    serial_out: Callable[[bytes], None] | None = None
    kvm_path: str = "/dev/kvm"
    stats: bool = False
    disk: str | None = None
    blk: str | None = None
    disk_serial: str = ""
    paused: bool = False


BLK_MODES = ("bql", "dataplane")
VIRTIO_BLK_SLOT = 2  # the first free slot on QEMU's -M pc -nodefaults (00.0 host bridge, 01.x PIIX)
VIRTIO_BLK_IO_BASE = 0xC000  # where SeaBIOS puts the first I/O BAR
VIRTIO_BLK_GSI = 11


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _write_stdout(data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(1, view)
        view = view[n:]


def name_lock_futexes() -> dict[str, int]:
    """Report the futex words of the BQL and the GIL through the probe API.

    Returns the names and addresses found (the GIL's may be missing on an
    interpreter whose layout cannot be proven).
    """
    from .gil import GilNotFound, gil_futex_words

    words = {"BQL": bql.futex_addr} if bql.futex_addr else {}
    try:
        words.update(gil_futex_words())
    except GilNotFound:
        pass
    # The kernel only sees futex addresses; naming them lets the trace tell
    # a wait on the GIL from a wait on the BQL.
    for name, addr in words.items():
        probes.name_futex(addr, name.split(".")[0])
    return words


class Machine:
    """A configured VM; :meth:`run` boots it once."""

    def __init__(self, config: MachineConfig) -> None:
        if config.locking not in LOCKING_MODES:
            raise VmmError(f"--locking must be one of {', '.join(LOCKING_MODES)}, not {config.locking!r}")
        if not 1 <= config.vcpus <= 64:
            raise VmmError(f"--vcpus must be between 1 and 64, not {config.vcpus}")
        if not 4 <= config.mem_mb <= 3072:
            raise VmmError(f"--mem must be between 4 and 3072 MiB, not {config.mem_mb}")
        if not os.path.exists(config.image):  # fail before touching /dev/kvm
            raise VmmError(f"guest image not found: {config.image}")
        if config.blk is not None and config.blk not in BLK_MODES:
            raise VmmError(f"--blk must be one of {', '.join(BLK_MODES)}, not {config.blk!r}")
        if config.blk is not None and config.disk is None:
            raise VmmError("--blk needs --disk")
        if config.disk is not None and not os.path.isfile(config.disk) and not _is_block_device(config.disk):
            raise VmmError(f"disk image not found (or not a file): {config.disk}")
        self.config = config
        self.ram_size = config.mem_mb << 20
        self._serial_out = config.serial_out or _write_stdout
        self._serial_buf = bytearray()
        self._stop: Stop | None = None
        self._stop_index = -1
        self._stop_lock = threading.Lock()
        self._halted = 0
        self.main_loop = MainLoop(bql)
        self._unassigned_counts: dict[str, dict[int, int]] = {}
        self.vcpus: list[VcpuFd] = []
        self.threads: list[VcpuThread] = []
        # Holds the vCPU threads before their first KVM_RUN (see VcpuThread).
        self._start_gate = threading.Event()
        self.iothreads: list[IOThread] = []
        self._iothreads_started = False
        self.blk_backend: BlockBackend | None = None
        self.virtio_blk: VirtIOPCIProxy | None = None
        self.kvm = Kvm(config.kvm_path)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------
    def _unassigned_region(self, name: str, size: int, space: str) -> MemoryRegion:
        # One plain dict per kind, keyed by address: ``inl_vmm`` counts here on
        # every exit, and a Counter's ``+=`` costs three times a dict's.  The
        # root regions keep global locking, so every count is made under the
        # BQL: no two threads ever update these dicts at once.
        reads: dict[int, int] = {}
        writes: dict[int, int] = {}
        self._unassigned_counts[space + "-read"] = reads
        self._unassigned_counts[space + "-write"] = writes

        def read(addr: int, size: int) -> int:
            try:
                reads[addr] += 1
            except KeyError:
                reads[addr] = 1
            return _ALL_ONES[size]

        def write(addr: int, value: int, size: int) -> None:
            try:
                writes[addr] += 1
            except KeyError:
                writes[addr] = 1

        return MemoryRegion.io(None, name, size, read, write)

    @property
    def unassigned(self) -> collections.Counter[tuple[str, int]]:
        """``(kind, address) -> count`` of accesses no device claimed (kind: ``pio-read`` ...)."""
        # dict(counts) copies in one step on every build (a vCPU may be adding
        # an address meanwhile); no BQL, so a stuck vCPU holding it cannot hang stats.
        return collections.Counter(
            {(kind, addr): n for kind, counts in self._unassigned_counts.items() for addr, n in dict(counts).items()}
        )

    def _build(self) -> None:
        cfg = self.config
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()  # before any vCPU: their local APICs live in the kernel
        self.vm.create_pit2()

        self.board = Owner("pc")
        self.system_memory = self._unassigned_region("system", 1 << 32, "mmio")
        self.system_io = self._unassigned_region("io", 1 << 16, "pio")
        self.ram = MemoryRegion.ram_region(self.board, "pc.ram", self.ram_size)
        self.serial = Serial16550(self._serial_write)
        self.debug_exit = DebugExit(self._debug_exit)
        self.pm_timer = PmTimer()
        self.pci = PciBus(self.system_io)
        if cfg.locking == "unlocked":
            # The PM timer's state never changes after realize: safe without the BQL.
            self.pm_timer.region.clear_global_locking()
        with transaction():
            self.system_memory.add_subregion(0, self.ram)
            self.system_io.add_subregion(COM1_PORT, self.serial.region)
            self.system_io.add_subregion(DEBUG_EXIT_PORT, self.debug_exit.region)
            self.system_io.add_subregion(PM_TIMER_PORT, self.pm_timer.region)
            self.system_io.add_subregion(CONFIG_ADDRESS_PORT, self.pci.index_region)
            self.system_io.add_subregion(CONFIG_DATA_PORT, self.pci.data_region)
        self.address_space_memory = AddressSpace(self.system_memory, "memory")
        self.address_space_io = AddressSpace(self.system_io, "I/O")
        self.address_space_memory.add_listener(KvmMemoryListener(self.vm))
        self.bus = AddressSpaceBus(self.address_space_io, self.address_space_memory, bql)
        n_iothreads = max(cfg.iothreads, 1 if cfg.blk == "dataplane" else 0)
        self.iothreads = [IOThread(f"iothread{i}") for i in range(n_iothreads)]
        if cfg.disk is not None:
            self._build_virtio_blk(cfg.disk, cfg.blk or "bql", cfg.disk_serial)

        layout, tables = build_acpi_tables(ACPI_BASE, cfg.vcpus)
        self.address_space_memory.write_bytes(ACPI_BASE, tables)
        self.boot = load_multiboot(
            cfg.image,
            self.address_space_memory.write_bytes,
            self.ram_size,
            cfg.append,
            reserved=[(0xE0000, 0x20000)],
        )
        cpuid = self.kvm.supported_cpuid()
        for i in range(cfg.vcpus):
            vcpu = self.vm.create_vcpu(i)
            self.vcpus.append(vcpu)
            vcpu.set_cpuid2(self._cpuid_for(cpuid, i))
            if i == 0:
                self._reset_bsp(vcpu)
                vcpu.set_mp_state(kb.MP_STATE_RUNNABLE)
            else:
                # With the in-kernel LAPIC an AP waits for INIT/SIPI from the BSP.
                vcpu.set_mp_state(kb.MP_STATE_UNINITIALIZED)

    def _build_virtio_blk(self, path: str, mode: str, serial: str) -> None:
        try:
            self.blk_backend = BlockBackend(path)
        except OSError as e:
            raise VmmError(f"cannot open disk image {path}: {e.strerror or e}") from None
        vdev = VirtIOBlock(self.blk_backend, GuestMemory(self.address_space_memory), serial=serial)
        proxy = VirtIOPCIProxy(vdev, 0x1001, 0x010000, io_base=VIRTIO_BLK_IO_BASE, gsi=VIRTIO_BLK_GSI, vm=self.vm)
        self.virtio_blk = proxy
        self.pci.plug(VIRTIO_BLK_SLOT, 0, proxy)
        if mode == "dataplane":
            proxy.attach(self.iothreads[0].ctx, self.iothreads[0].name)
        else:
            proxy.attach(self.main_loop.ctx, "main loop, BQL")

    @staticmethod
    def _cpuid_for(supported: ctypes.Structure, apic_id: int) -> ctypes.Structure:
        cpuid = type(supported).from_buffer_copy(supported)
        for e in cpuid.entries[: cpuid.nent]:
            if e.function == 1:
                e.ebx = (e.ebx & 0x00FFFFFF) | (apic_id << 24)
            elif e.function in (0xB, 0x1F):
                e.edx = apic_id
        return cpuid

    def _reset_bsp(self, vcpu: VcpuFd) -> None:
        # The multiboot machine state: flat 32-bit segments, protected mode, no paging.
        s = vcpu.get_sregs()
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            seg = getattr(s, name)
            seg.base, seg.limit, seg.g, seg.db, seg.s, seg.present, seg.dpl = 0, 0xFFFFFFFF, 1, 1, 1, 1, 0
            seg.l, seg.avl, seg.unusable = 0, 0, 0
            seg.selector = 0x08 if name == "cs" else 0x10
            seg.type = 0xB if name == "cs" else 0x3
        s.cr0 = 0x11  # PE and ET; caches enabled (CD/NW clear), paging off
        s.cr4 = 0
        s.efer = 0
        vcpu.set_sregs(s)
        r = kb.KvmRegs()
        r.rip = self.boot.entry
        r.rax = BOOTLOADER_MAGIC
        r.rbx = self.boot.mbi
        r.rflags = 0x2
        vcpu.set_regs(r)

    # -- devices' callbacks ---------------------------------------------------
    def _serial_write(self, data: bytes) -> None:
        # Under the BQL (the serial region needs it): line-buffered to stdout.
        self._serial_buf += data
        if b"\n" in data or len(self._serial_buf) >= 4096:
            self._flush_serial()

    def _flush_serial(self) -> None:
        if self._serial_buf:
            out, self._serial_buf = bytes(self._serial_buf), bytearray()
            self._serial_out(out)

    def _debug_exit(self, status: int) -> None:
        self.request_stop(Stop(status, "guest exit through isa-debug-exit"), -1)

    # -- running --------------------------------------------------------------
    def request_stop(self, stop: Stop, index: int) -> None:
        """First stop wins: record it, kick every vCPU, wake the main loop."""
        with self._stop_lock:
            if self._stop is not None:
                return
            self._stop, self._stop_index = stop, index
        for t in self.threads:
            t.kick()
        self.main_loop.quit()

    def _on_vcpu_stop(self, index: int, stop: Stop) -> None:
        if not stop.machine:
            with self._stop_lock:
                self._halted += 1
                all_halted = self._halted == len(self.threads)
            if not all_halted:
                return
            stop = Stop(0, "every vCPU halted")
        self.request_stop(stop, index)

    def _stop_threads(self) -> list[int]:
        """Kick and join every vCPU thread; returns the indexes that did not stop."""
        for t in self.threads:
            t.kick()
        self._start_gate.set()  # a machine stopped while paused: its threads see the kick at once
        stuck: list[int] = []
        for t in self.threads:
            for _ in range(50):
                if not t.is_alive():
                    break
                if t.ident is not None:
                    try:
                        signal.pthread_kill(t.ident, _KICK_SIGNAL)
                    except ProcessLookupError:
                        break
                t.join(0.1)
            if t.is_alive():
                stuck.append(t.index)
        return stuck

    def run(self) -> int:
        """Boot and run until the guest exits; returns its exit status."""
        cfg = self.config
        in_main = threading.current_thread() is threading.main_thread()
        old_handler = signal.signal(_KICK_SIGNAL, lambda *_: None) if in_main else None
        name_lock_futexes()
        try:
            self.main_loop.every(0.05, self._flush_serial)
            self._iothreads_started = True
            for iothread in self.iothreads:
                iothread.start()
            gate = self._start_gate
            if cfg.paused and in_main:
                # Before the vCPU threads exist, so that a "cont" sent as soon
                # as they show up is never the signal's default (exit).  The
                # handler runs in this thread: setting the gate is all of it.
                signal.signal(CONT_SIGNAL, lambda *_: gate.set())
            for i, vcpu in enumerate(self.vcpus):
                t = VcpuThread(vcpu, i, self.bus, bql, cfg.locking, self._on_vcpu_stop, start_gate=gate)
                self.threads.append(t)
            for t in self.threads:
                t.start()
            # Released together once every one is set up, as QEMU's resume_all_vcpus:
            # an AP that starts late is time the BSP's benchmark spends waiting for it.
            for t in self.threads:
                while not t.ready.wait(0.1) and t.is_alive():
                    pass
            if not (cfg.paused and in_main):
                gate.set()
            try:
                finished = self.main_loop.run(cfg.timeout_s)
            except KeyboardInterrupt:
                self.request_stop(Stop(130, "interrupted"), -1)
                finished = True
            if not finished:
                self.request_stop(Stop(3, f"guest did not exit within {cfg.timeout_s:g} s", guest_failure=True), -1)
            stuck = self._stop_threads()
            if self.virtio_blk is not None:
                self.virtio_blk.detach()  # no request is in flight after this
            for iothread in self.iothreads:
                iothread.stop()
            with bql:
                self._flush_serial()
            if self.blk_backend is not None:
                try:
                    self.blk_backend.flush()  # a clean stop loses nothing the guest wrote
                except OSError as e:
                    raise VmmError(f"flushing disk image {self.blk_backend.path} failed: {e.strerror or e}") from None
        finally:
            if old_handler is not None:
                signal.signal(_KICK_SIGNAL, old_handler)
            if cfg.paused and in_main:
                signal.signal(CONT_SIGNAL, signal.SIG_DFL)
        stop = self._stop
        assert stop is not None
        if cfg.stats:
            print(self.stats_text(), file=sys.stderr)
        if stuck:
            raise VmmError(f"vCPU thread(s) {stuck} did not stop")
        if stop.guest_failure:
            which = [self._stop_index] if self._stop_index >= 0 else range(len(self.vcpus))
            dump = "\n".join(dump_registers(self.vcpus[i], i) for i in which)
            raise GuestError(stop.message, dump)
        if stop.status == 2:
            raise VmmError(stop.message)
        return stop.status

    def stats_text(self) -> str:
        """Exit counts per vCPU, the most frequent unclaimed accesses, memory-API counters."""
        from .memory.rcu import rcu_stats

        lines = [f"reference-vmm: stats: locking={self.config.locking} vcpus={len(self.threads)}"]
        lines += [f"  {t.name}: {t.exits} exits" for t in self.threads]
        unassigned = self.unassigned
        lines.append(f"  unclaimed accesses: {sum(unassigned.values())}")
        lines += [f"    {kind} {addr:#x}: {n}" for (kind, addr), n in unassigned.most_common(10)]
        rebuilds = self.address_space_memory.rebuilds + self.address_space_io.rebuilds
        rcu = rcu_stats()
        lines.append(
            f"  FlatView rebuilds: {rebuilds}; RCU grace periods: {rcu['grace_periods']}, callbacks: {rcu['callbacks']}"
        )
        if self.virtio_blk is not None:
            lines += self.virtio_blk.stats_lines()
        return "\n".join(lines)

    def close(self) -> None:
        """Release KVM file descriptors and reclaim the memory map."""
        if self.virtio_blk is not None:
            self.virtio_blk.close()
        if self.blk_backend is not None:
            self.blk_backend.close()  # fdatasync, then close
            self.blk_backend = None
        if not self._iothreads_started:
            for iothread in self.iothreads:
                iothread.ctx.close()
            self._iothreads_started = True  # closed: never twice
        for space in ("address_space_memory", "address_space_io"):
            if hasattr(self, space):
                getattr(self, space).destroy()
        if not any(t.is_alive() for t in self.threads):  # never unmap kvm_run under a live thread
            for vcpu in self.vcpus:
                vcpu.close()
            self.vcpus = []
        if hasattr(self, "vm"):
            self.vm.close()
        self.kvm.close()
        self.main_loop.close()
        try:
            drain_call_rcu(timeout=2.0)
        except TimeoutError:
            pass


def run_machine(config: MachineConfig) -> int:
    """Boot ``config.image`` and run it to completion.

    Returns the guest's exit status (isa-debug-exit: ``(value << 1) | 1``;
    0 for a guest power-off).  Raises :class:`GuestError` (``.dump`` holds the
    register dump) when the guest fails and :class:`VmmError` for host
    problems (no /dev/kvm, bad image, failed ioctl).
    """
    machine = Machine(config)
    try:
        return machine.run()
    finally:
        machine.close()
