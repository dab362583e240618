"""VirtIODevice: the transport-independent half of a virtio device.

Status, feature negotiation, the interrupt status register (ISR), the
queues, and what happens when the driver breaks the protocol: as QEMU's
``virtio_error``, the device is marked *broken*, counts the error, stops
taking requests and ignores notifications until the driver resets it.
QEMU sets NEEDS_RESET in the status only for virtio 1.0 devices; a legacy
device (the only kind here) just goes quiet, and so does this one.

A transport (:mod:`.pci`) calls :meth:`handle_output` from the thread that
services the queue (the main loop under the BQL, or an IOThread), and gives
the device an ``on_interrupt`` callback that raises its interrupt.
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable

from ...memory.dma import GuestMemory
from ...memory.owner import Owner
from ...memory.rcu import rcu_read_lock, rcu_read_unlock
from .virtqueue import VirtioError, VirtQueue

__all__ = [
    "VirtIODevice",
    "VIRTIO_CONFIG_S_ACKNOWLEDGE",
    "VIRTIO_CONFIG_S_DRIVER",
    "VIRTIO_CONFIG_S_DRIVER_OK",
    "VIRTIO_CONFIG_S_FAILED",
    "VIRTIO_F_NOTIFY_ON_EMPTY",
    "VIRTIO_F_ANY_LAYOUT",
    "VIRTIO_RING_F_INDIRECT_DESC",
    "VIRTIO_RING_F_EVENT_IDX",
]

VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FAILED = 0x80

VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29


class VirtIODevice(Owner):
    """Common virtio state; subclasses implement :meth:`get_config` and :meth:`process_queue`."""

    def __init__(
        self, name: str, device_id: int, config_len: int, host_features: int, mem: GuestMemory, queue_sizes: list[int]
    ) -> None:
        super().__init__(name)
        self.device_id = device_id
        self.config_len = config_len
        self.host_features = host_features
        self.mem = mem
        self.queues = [VirtQueue(mem, n, i) for i, n in enumerate(queue_sizes)]
        #: ``kind -> count`` of driver errors that broke the device (see :class:`VirtioError`).
        #: Like the queues and ``interrupts``, changed only under the transport's
        #: lock (queue work and reconfiguration both hold it), never by two threads at once.
        self.guest_errors: collections.Counter[str] = collections.Counter()
        self.last_guest_error = ""
        self.on_interrupt: Callable[[], None] = lambda: None
        self.interrupts = 0
        self._isr_lock = threading.Lock()  # the ISR is read-and-cleared by a vCPU (BQL) and set by the queue's thread
        self._reported: set[str] = set()
        self.reset()

    # -- state the driver sees ----------------------------------------------------
    def reset(self) -> None:
        """``virtio_reset``: status, features, ISR, queue selector, queues; un-break."""
        self.status = 0
        self.guest_features = 0
        self.queue_sel = 0
        self.isr = 0
        self.broken = False
        for vq in self.queues:
            vq.reset()

    def set_features(self, value: int) -> None:
        """The driver acknowledges features: it gets only what the device offered."""
        self.guest_features = value & self.host_features

    def has_feature(self, bit: int) -> bool:
        return bool(self.guest_features >> bit & 1)

    def set_status(self, value: int) -> None:
        self.status = value & 0xFF

    def set_queue_addr(self, n: int, desc: int) -> None:
        """Legacy QUEUE_PFN: place queue ``n``'s rings (a queue that does not exist ignores it)."""
        if n >= len(self.queues):
            return
        try:
            self.queues[n].set_addr(desc)
        except VirtioError as e:
            self.virtio_error(e)

    def queue_num(self, n: int) -> int:
        return self.queues[n].num if n < len(self.queues) else 0

    def queue_pfn(self, n: int) -> int:
        return self.queues[n].desc_addr >> 12 if n < len(self.queues) else 0

    def get_config(self) -> bytes:
        """The device-specific configuration space, ``config_len`` bytes."""
        raise NotImplementedError

    def config_read(self, offset: int, size: int) -> int:
        """As QEMU's ``virtio_config_read*``: all ones past the end of the config."""
        if offset + size > self.config_len:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.get_config()[offset : offset + size], "little")

    def config_write(self, offset: int, value: int, size: int) -> None:
        """The configuration space is read-only here (no VIRTIO_BLK_F_CONFIG_WCE)."""

    def read_isr(self) -> int:
        """Reading the ISR returns it and clears it (the legacy interrupt acknowledge)."""
        with self._isr_lock:
            isr, self.isr = self.isr, 0
        return isr

    # -- errors -----------------------------------------------------------------------
    def virtio_error(self, error: VirtioError) -> None:
        """``virtio_error``: count, say it once per kind, and stop until reset."""
        self.broken = True
        self.guest_errors[error.kind] += 1
        self.last_guest_error = str(error)
        if error.kind not in self._reported:
            self._reported.add(error.kind)
            print(
                f"reference-vmm: {self.name}: guest error: {error} (device stopped until the driver resets it)",
                file=sys.stderr,
            )

    # -- the queue ----------------------------------------------------------------------
    def handle_output(self, n: int) -> None:
        """Service queue ``n`` after a notification; runs in the queue's thread."""
        if self.broken or n >= len(self.queues):
            return
        vq = self.queues[n]
        rcu_read_lock()  # the rings and buffers are views of RAM: keep the FlatView alive
        try:
            if not vq.map_rings():
                return
            try:
                if self.process_queue(vq):
                    self.notify(vq)
            finally:
                vq.unmap_rings()
        finally:
            rcu_read_unlock()

    def process_queue(self, vq: VirtQueue) -> bool:
        """Take and complete requests; True when any was completed (interrupt the driver)."""
        raise NotImplementedError

    def notify(self, vq: VirtQueue) -> None:
        """``virtio_notify``: set ISR bit 0 and interrupt, unless the driver asked for none."""
        if not vq.should_notify():
            return
        with self._isr_lock:
            self.isr |= 1
        self.interrupts += 1
        self.on_interrupt()
