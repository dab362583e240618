"""Legacy virtio-pci: a virtio device as a PCI function with one I/O BAR.

The "legacy interface" of the virtio spec (QEMU's ``disable-modern=on``):
vendor 0x1af4, device 0x1000 + (type - 1 for the transitional IDs), the virtio
device type in the subsystem ID, and BAR0 an I/O window holding

====== ==== =========================================================
offset size register
====== ==== =========================================================
0x00   4    host features (read-only)
0x04   4    guest features
0x08   4    queue PFN: the selected queue's rings at PFN << 12; 0 resets
0x0c   2    queue size (read-only)
0x0e   2    queue select
0x10   2    queue notify: the index of the queue that has new buffers
0x12   1    device status; 0 resets
0x13   1    ISR: bit 0 = a queue interrupt; reading clears it
0x14   ...  device configuration (virtio-blk: capacity ...)
====== ==== =========================================================

Notifications and interrupts bypass this register file, as in QEMU with
KVM.  Once the driver sets DRIVER_OK, the notify port is a KVM ioeventfd:
the kernel turns the guest's ``outw`` into an eventfd signal without an
exit, and the thread that services the queue wakes on it -- the main loop,
under the BQL (``--blk bql``), or an IOThread without it (``--blk
dataplane``).  A notify that does reach this code (before DRIVER_OK, or a
write the ioeventfd does not match) signals the same eventfd, as
``virtio_queue_notify`` does when a host notifier is set.  Completions raise
the interrupt through a KVM irqfd on the function's GSI: an eventfd write from
whatever thread completed the request, with no BQL.  The irqfd delivers an
edge; the INTx line is not held until the ISR read as a real level-triggered
line would be (a resample irqfd would do that), which no polling driver sees.

Register accesses run under the BQL (the BAR's region keeps global locking),
so the queue-servicing thread and the vCPUs meet on one lock of the device's
own (QEMU's AioContext lock): queue processing holds it, and so does
everything that changes the queue under it (PFN, status, reset).
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from vmtrace import probes

from ...errors import KvmError
from ...iothread import AioContext
from ...memory.region import MemoryRegion
from ..pci import COMMAND_MASTER, PciDevice
from .device import VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VirtIODevice

__all__ = [
    "VirtIOPCIProxy",
    "VIRTIO_PCI_VENDOR",
    "VIRTIO_PCI_HOST_FEATURES",
    "VIRTIO_PCI_GUEST_FEATURES",
    "VIRTIO_PCI_QUEUE_PFN",
    "VIRTIO_PCI_QUEUE_NUM",
    "VIRTIO_PCI_QUEUE_SEL",
    "VIRTIO_PCI_QUEUE_NOTIFY",
    "VIRTIO_PCI_STATUS",
    "VIRTIO_PCI_ISR",
    "VIRTIO_PCI_CONFIG",
]

VIRTIO_PCI_VENDOR = 0x1AF4
VIRTIO_PCI_HOST_FEATURES = 0x00
VIRTIO_PCI_GUEST_FEATURES = 0x04
VIRTIO_PCI_QUEUE_PFN = 0x08
VIRTIO_PCI_QUEUE_NUM = 0x0C
VIRTIO_PCI_QUEUE_SEL = 0x0E
VIRTIO_PCI_QUEUE_NOTIFY = 0x10
VIRTIO_PCI_STATUS = 0x12
VIRTIO_PCI_ISR = 0x13
VIRTIO_PCI_CONFIG = 0x14
_QUEUE_ADDR_SHIFT = 12
_VIRTIO_QUEUE_MAX = 1024
_EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


class KvmVm(Protocol):
    """What the transport needs of a VM file descriptor (:class:`~..kvm.system.VmFd`)."""

    def ioeventfd(
        self, fd: int, addr: int, length: int, pio: bool, deassign: bool = False, datamatch: int | None = None
    ) -> None: ...

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None: ...


def _pow2ceil(n: int) -> int:
    return 1 << (n - 1).bit_length()


class VirtIOPCIProxy(PciDevice):
    """The PCI function of ``vdev``: config space, BAR0, host notifier and irqfd.

    ``vm`` may be None (no KVM): notifications then only come from register
    writes and the interrupt eventfd is signalled but injected nowhere.
    """

    def __init__(
        self,
        vdev: VirtIODevice,
        pci_device_id: int,
        class_code: int,
        *,
        io_base: int,
        gsi: int,
        vm: KvmVm | None = None,
    ) -> None:
        super().__init__(f"{vdev.name}-pci", VIRTIO_PCI_VENDOR, pci_device_id, class_code)
        self.vdev = vdev
        self.vm = vm
        self.gsi = gsi
        self.set_subsystem(VIRTIO_PCI_VENDOR, vdev.device_id)
        self.set_interrupt(1, gsi)
        size = max(0x40, _pow2ceil(VIRTIO_PCI_CONFIG + vdev.config_len))
        self.region = MemoryRegion.io(self, "virtio-pci", size, self._read, self._write)
        self.lock = threading.Lock()  # QEMU's AioContext lock: queue work vs. queue reconfiguration
        self.host_notifier = os.eventfd(0, _EFD_FLAGS)
        self.irq_notifier = os.eventfd(0, _EFD_FLAGS)
        self._irqfd_assigned = False
        if vm is not None:
            vm.irqfd(self.irq_notifier, gsi)
            self._irqfd_assigned = True
        vdev.on_interrupt = self._raise_irq
        self.ctx: AioContext | None = None
        self.thread_name = ""
        self._ioeventfd_wanted = False  # DRIVER_OK is set
        self._ioeventfd_port: int | None = None
        #: Guest notifications: signals taken from the host notifier, and those
        #: that exited to the VMM first (no ioeventfd yet, or an unmatched write).
        self.notifications = 0
        self.notify_exits = 0
        self.register_bar(0, self.region, io_base)

    # -- where the queue is serviced ------------------------------------------------
    def attach(self, ctx: AioContext, thread_name: str) -> None:
        """Service the queue in ``ctx``'s thread: the main loop (BQL) or an IOThread."""
        self.ctx, self.thread_name = ctx, thread_name
        ctx.set_fd_handler(self.host_notifier, self._host_notifier_read)

    def detach(self) -> None:
        """Stop servicing the queue; returns once no request is being processed."""
        ctx, self.ctx = self.ctx, None
        if ctx is not None:
            ctx.set_fd_handler(self.host_notifier, None)
        with self.lock:  # wait for a batch in progress in the other thread
            pass

    def _host_notifier_read(self) -> None:
        try:
            self.notifications += os.eventfd_read(self.host_notifier)
        except BlockingIOError:
            return
        traced = probes.enabled
        port = self._ioeventfd_port or 0
        if traced:
            probes.dispatch_begin(port, 2, True, self.vdev.name)
        try:
            with self.lock:
                if self.ctx is not None:
                    self.vdev.handle_output(0)
        finally:
            if traced:
                probes.dispatch_end(port, 2, True, self.vdev.name)

    def _raise_irq(self) -> None:
        if probes.enabled:
            probes.dispatch_begin(self.gsi, 0, True, self.vdev.name + "-irq")
            os.eventfd_write(self.irq_notifier, 1)
            probes.dispatch_end(self.gsi, 0, True, self.vdev.name + "-irq")
        else:
            os.eventfd_write(self.irq_notifier, 1)

    # -- ioeventfd on the notify port ---------------------------------------------------
    def _update_ioeventfd(self) -> None:
        """Keep the KVM ioeventfd on BAR0 + QUEUE_NOTIFY while DRIVER_OK is set."""
        bar = self.bars[0].mapped_at
        want = bar + VIRTIO_PCI_QUEUE_NOTIFY if self._ioeventfd_wanted and bar is not None else None
        have = self._ioeventfd_port
        if want == have or self.vm is None:
            return
        if have is not None:
            self.vm.ioeventfd(self.host_notifier, have, 2, pio=True, deassign=True, datamatch=0)
            self._ioeventfd_port = None
        if want is not None:
            self.vm.ioeventfd(self.host_notifier, want, 2, pio=True, datamatch=0)
            self._ioeventfd_port = want

    def bar_moved(self, index: int, old: int | None, new: int | None) -> None:
        self._update_ioeventfd()

    def _set_ioeventfd(self, on: bool) -> None:
        if on == self._ioeventfd_wanted:
            return
        self._ioeventfd_wanted = on
        self._update_ioeventfd()
        if on:  # as virtio_pci_start_ioeventfd: look at the queue once in case the driver kicked early
            os.eventfd_write(self.host_notifier, 1)

    # -- the legacy register file (vCPU threads, under the BQL) ------------------------------
    def _read(self, offset: int, size: int) -> int:
        vdev = self.vdev
        if offset >= VIRTIO_PCI_CONFIG:
            return vdev.config_read(offset - VIRTIO_PCI_CONFIG, size)
        if offset == VIRTIO_PCI_HOST_FEATURES:
            value = vdev.host_features & 0xFFFFFFFF
        elif offset == VIRTIO_PCI_GUEST_FEATURES:
            value = vdev.guest_features
        elif offset == VIRTIO_PCI_QUEUE_PFN:
            value = vdev.queue_pfn(vdev.queue_sel)
        elif offset == VIRTIO_PCI_QUEUE_NUM:
            value = vdev.queue_num(vdev.queue_sel)
        elif offset == VIRTIO_PCI_QUEUE_SEL:
            value = vdev.queue_sel
        elif offset == VIRTIO_PCI_STATUS:
            value = vdev.status
        elif offset == VIRTIO_PCI_ISR:
            value = vdev.read_isr()
        else:  # the middle of a register, or QUEUE_NOTIFY: QEMU answers all ones
            value = 0xFFFFFFFF
        return value & ((1 << (8 * size)) - 1)

    def _write(self, offset: int, value: int, size: int) -> None:
        vdev = self.vdev
        if offset >= VIRTIO_PCI_CONFIG:
            vdev.config_write(offset - VIRTIO_PCI_CONFIG, value, size)
        elif offset == VIRTIO_PCI_GUEST_FEATURES:
            vdev.set_features(value)
        elif offset == VIRTIO_PCI_QUEUE_PFN:
            if value == 0:  # legacy: a PFN of 0 resets the whole device
                self.reset()
            else:
                with self.lock:
                    vdev.set_queue_addr(vdev.queue_sel, value << _QUEUE_ADDR_SHIFT)
        elif offset == VIRTIO_PCI_QUEUE_SEL:
            if value < _VIRTIO_QUEUE_MAX:
                vdev.queue_sel = value
        elif offset == VIRTIO_PCI_QUEUE_NOTIFY:
            self.notify_exits += 1
            if value < len(vdev.queues) and vdev.queues[value].ready and not vdev.broken:
                os.eventfd_write(self.host_notifier, 1)
        elif offset == VIRTIO_PCI_STATUS:
            self._write_status(value & 0xFF)

    def _write_status(self, value: int) -> None:
        if not value & VIRTIO_CONFIG_S_DRIVER_OK:
            self._set_ioeventfd(False)
        with self.lock:
            self.vdev.set_status(value)
        if value & VIRTIO_CONFIG_S_DRIVER_OK:
            self._set_ioeventfd(True)
        if value == 0:
            self.reset()
        if value == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER:
            # As QEMU: old drivers do DMA without setting Bus Master; set it for them.
            self.config[4] |= COMMAND_MASTER

    def reset(self) -> None:
        """``virtio_pci_reset``: stop the ioeventfd and reset the device."""
        self._set_ioeventfd(False)
        with self.lock:
            self.vdev.reset()

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Detach, drop the KVM bindings and close the eventfds (idempotent)."""
        self.detach()
        if self.host_notifier < 0:
            return
        if self.vm is not None:
            try:
                self._set_ioeventfd(False)
                if self._irqfd_assigned:
                    self.vm.irqfd(self.irq_notifier, self.gsi, deassign=True)
            except KvmError:
                pass  # the VM is going away: its fds release everything anyway
        self._irqfd_assigned = False
        os.close(self.host_notifier)
        os.close(self.irq_notifier)
        self.host_notifier = self.irq_notifier = -1

    def stats_lines(self) -> list[str]:
        """What ``--stats`` prints for this function."""
        vdev = self.vdev
        lines = [
            f"  {vdev.name} ({self.thread_name or 'not attached'}): notifications {self.notifications} "
            f"(of which {self.notify_exits} exited to the VMM), interrupts {vdev.interrupts}"
        ]
        requests = getattr(vdev, "requests", None)
        if requests is not None:
            total = sum(requests.values())
            parts = ", ".join(
                f"{k} {requests[k]}"
                for k in ("read", "write", "flush", "get-id", "unsupported", "ioerr-range", "ioerr-host")
            )
            lines.append(f"    requests: {total} ({parts})")
        lines.append(f"    DMA windows outside RAM (bounced, as QEMU): {vdev.mem.bounced}")
        errors = sum(vdev.guest_errors.values())
        lines.append(
            f"    guest errors that broke the device: {errors}"
            + (f" (last: {vdev.last_guest_error})" if errors else "")
        )
        lines += [f"      {kind}: {n}" for kind, n in sorted(vdev.guest_errors.items())]
        return lines
