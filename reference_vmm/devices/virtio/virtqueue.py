"""Split virtqueues in guest memory, legacy layout (virtio 0.9.5 / virtio 1.x "legacy interface").

One queue is three areas the driver allocates in guest RAM: the descriptor
table (``num`` x 16 bytes), the available ring right after it, and the used
ring at the next 4 KiB boundary.  The legacy transport only tells the device
where the table starts (the queue PFN).

A driver can write anything there.  Every mistake that QEMU answers with
``virtio_error`` (the device is broken until the driver resets it) raises
:class:`VirtioError` here, with QEMU's message, so the device can count it
and stop; none of them escapes as a host error.  The checks follow QEMU's
``virtqueue_split_pop``: the head index, the avail index moving by more than
the queue size, chains that loop or point past the table, readable buffers
after writable ones, zero-sized buffers, buffers that are not guest RAM,
malformed indirect tables.  A buffer outside guest RAM is one of them unless
it is the request's only one, which QEMU bounces (see :mod:`...memory.dma`).

Ring updates follow the order the spec requires of a device: an element is
written to the used ring before the used index that publishes it (x86 keeps
stores in order).  The indexes and flags the driver and the device share
are read and written as single 16-bit accesses, through views cast to
``H``: ``struct`` moves a ``<H`` one byte at a time, and a vCPU reading the
used index between the two bytes of ``0x05ff -> 0x0600`` sees ``0x0500``,
far behind what it has already consumed (and a torn avail index looks like
the driver jumping past the ring).
"""

from __future__ import annotations

import struct

from ...memory.dma import Bounce, DmaError, GuestMemory

__all__ = [
    "VirtioError",
    "VirtQueue",
    "VirtQueueElement",
    "VRING_DESC_F_NEXT",
    "VRING_DESC_F_WRITE",
    "VRING_DESC_F_INDIRECT",
    "VRING_AVAIL_F_NO_INTERRUPT",
    "VRING_USED_F_NO_NOTIFY",
    "VIRTIO_PCI_VRING_ALIGN",
    "VIRTQUEUE_MAX_SIZE",
    "vring_layout",
]

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
VIRTIO_PCI_VRING_ALIGN = 4096
VIRTQUEUE_MAX_SIZE = 1024  # most buffers one element may carry, as QEMU

_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_USED_ELEM = struct.Struct("<II")  # id, len


class VirtioError(Exception):
    """The driver broke the virtio protocol; the device must stop until reset.

    ``kind`` is a stable short name for counting; the message is QEMU's.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def vring_layout(desc: int, num: int) -> tuple[int, int, int, int, int]:
    """``(desc, avail, used, avail_size, used_size)`` of a legacy ring at ``desc``."""
    avail = desc + 16 * num
    avail_size = 4 + 2 * num
    used = (avail + avail_size + VIRTIO_PCI_VRING_ALIGN - 1) & ~(VIRTIO_PCI_VRING_ALIGN - 1)
    return desc, avail, used, avail_size, 4 + 8 * num


class VirtQueueElement:
    """One popped request: the head index and host views of its buffers.

    ``out_sg`` are the device-readable buffers, in chain order; ``in_sg`` the
    device-writable ones.  The views alias guest RAM; :meth:`release` them
    when the request is done (:meth:`VirtQueue.push` does).
    """

    __slots__ = ("index", "out_sg", "in_sg")

    def __init__(self, index: int, out_sg: list[memoryview], in_sg: list[memoryview]) -> None:
        self.index = index
        self.out_sg = out_sg
        self.in_sg = in_sg

    def release(self) -> None:
        for v in self.out_sg:
            v.release()
        for v in self.in_sg:
            v.release()
        self.out_sg, self.in_sg = [], []


class _Rings:
    """Host views of the three ring areas, held for one batch of work;
    ``avail16``/``used16`` are the same memory as 16-bit words (native, i.e.
    little-endian on x86), for single-access index and flag updates."""

    __slots__ = ("desc", "avail", "used", "avail16", "used16")

    def __init__(self, desc: memoryview, avail: memoryview, used: memoryview) -> None:
        self.desc, self.avail, self.used = desc, avail, used
        self.avail16 = avail.cast("H")
        self.used16 = used.cast("H")

    def release(self) -> None:
        self.avail16.release()
        self.used16.release()
        self.desc.release()
        self.avail.release()
        self.used.release()


class VirtQueue:
    """A split virtqueue of ``num`` entries in guest memory ``mem``."""

    def __init__(self, mem: GuestMemory, num: int, index: int = 0) -> None:
        if num <= 0 or num & (num - 1) or num > 32768:
            raise ValueError(f"virtqueue size {num} must be a power of two <= 32768")
        self.mem = mem
        self.num = num
        self.index = index
        self._rings: _Rings | None = None
        self.reset()

    def reset(self) -> None:
        """``virtio_queue_reset``: forget the rings and the indexes."""
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.last_avail_idx = 0
        self.used_idx = 0

    @property
    def ready(self) -> bool:
        return self.desc_addr != 0

    def set_addr(self, desc: int) -> None:
        """Place the rings at ``desc`` (legacy: the queue PFN << 12).

        Raises :class:`VirtioError` when an area is not guest RAM, as QEMU's
        ``virtio_init_region_cache`` does ("Cannot map desc" ...); the queue
        is then left unset.
        """
        self.desc_addr = self.avail_addr = self.used_addr = 0
        d, a, u, asize, usize = vring_layout(desc, self.num)
        for what, addr, size in (("desc", d, 16 * self.num), ("avail", a, asize), ("used", u, usize)):
            if not self._contiguous_ram(addr, size):
                raise VirtioError("ring-not-in-ram", f"Cannot map {what}")
        self.desc_addr, self.avail_addr, self.used_addr = d, a, u

    def _contiguous_ram(self, addr: int, size: int) -> bool:
        try:
            self.mem.map_one(addr, size).release()
        except DmaError:
            return False
        return True

    # -- a batch of work holds host views of the rings --------------------------
    def map_rings(self) -> bool:
        """Take views of the rings for a batch (caller holds the RCU read lock); False if unset."""
        if not self.desc_addr:
            return False
        _, _, _, asize, usize = vring_layout(self.desc_addr, self.num)
        try:
            desc = self.mem.map_one(self.desc_addr, 16 * self.num)
            avail = self.mem.map_one(self.avail_addr, asize)
            used = self.mem.map_one(self.used_addr, usize)
        except DmaError:  # the memory map changed under a configured queue
            return False
        self._rings = _Rings(desc, avail, used)
        return True

    def unmap_rings(self) -> None:
        if self._rings is not None:
            self._rings.release()
            self._rings = None

    # -- the driver's side of the rings, read by the device ---------------------
    def avail_idx(self) -> int:
        assert self._rings is not None
        return self._rings.avail16[1]

    def empty(self) -> bool:
        """``virtio_queue_empty``."""
        return self.avail_idx() == self.last_avail_idx

    def should_notify(self) -> bool:
        """False when the driver asked for no interrupts (VRING_AVAIL_F_NO_INTERRUPT)."""
        assert self._rings is not None
        return not self._rings.avail16[0] & VRING_AVAIL_F_NO_INTERRUPT

    def set_notification(self, enable: bool) -> None:
        """``virtio_queue_set_notification``: VRING_USED_F_NO_NOTIFY while the device is busy."""
        assert self._rings is not None
        used16 = self._rings.used16
        flags = used16[0]
        used16[0] = flags & ~VRING_USED_F_NO_NOTIFY if enable else flags | VRING_USED_F_NO_NOTIFY

    def pop(self) -> VirtQueueElement | None:
        """``virtqueue_pop``: the next available chain, or None when there is none.

        The head is consumed even when the chain is bad, as in QEMU: after a
        :class:`VirtioError` the device is broken and never completes it.
        """
        rings = self._rings
        assert rings is not None
        avail_idx = rings.avail16[1]
        last = self.last_avail_idx
        if avail_idx == last:
            return None
        if (avail_idx - last) & 0xFFFF > self.num:
            # QEMU 7.2 ends up broken too, later: it pops a ring's worth of stale
            # heads before "Virtqueue size exceeded"; refusing at once moves no data.
            raise VirtioError("avail-index", f"Guest moved avail index from {last} to {avail_idx}")
        head = rings.avail16[2 + last % self.num]
        self.last_avail_idx = (last + 1) & 0xFFFF
        if head >= self.num:
            raise VirtioError("head-out-of-range", f"Guest says index {head} is available")
        table = rings.desc
        indirect: memoryview | None = None
        max_entries = self.num
        addr, length, flags, nxt = _DESC.unpack_from(table, 16 * head)
        if flags & VRING_DESC_F_INDIRECT:
            if length == 0 or length % 16:
                raise VirtioError("indirect-size", "Invalid size for indirect buffer table")
            try:
                indirect = self.mem.map_one(addr, length)
            except DmaError:
                raise VirtioError("indirect-not-in-ram", "Cannot map indirect buffer") from None
            table, max_entries = indirect, length // 16
            addr, length, flags, nxt = _DESC.unpack_from(table, 0)
        out_sg: list[memoryview] = []
        in_sg: list[memoryview] = []
        try:
            self._map_chain(
                table, max_entries, indirect is not None, (addr, length, flags, nxt), out_sg, in_sg, Bounce()
            )
        except BaseException:
            for v in out_sg + in_sg:
                v.release()
            raise
        finally:
            if indirect is not None:
                indirect.release()
        return VirtQueueElement(head, out_sg, in_sg)

    def _map_chain(
        self,
        table: memoryview,
        max_entries: int,
        in_indirect: bool,
        desc: tuple[int, int, int, int],
        out_sg: list[memoryview],
        in_sg: list[memoryview],
        bounce: Bounce,
    ) -> None:
        """Map every descriptor of one chain into ``out_sg`` / ``in_sg``.

        One buffer window outside RAM is tolerated per element (``bounce``), as
        QEMU's single bounce buffer tolerates it; a second one is a bogus
        descriptor.
        """
        addr, length, flags, nxt = desc
        entries = 0
        while True:
            if flags & VRING_DESC_F_WRITE:
                sg = in_sg
            elif in_sg:
                raise VirtioError("incorrect-order", "Incorrect order for descriptors")
            else:
                sg = out_sg
            if in_indirect and flags & VRING_DESC_F_INDIRECT:
                raise VirtioError("nested-indirect", "Nested indirect descriptor")
            if length == 0:
                raise VirtioError("zero-sized-buffer", "virtio: zero sized buffers are not allowed")
            try:
                sg.extend(self.mem.map(addr, length, bounce))
            except DmaError:
                raise VirtioError("buffer-not-in-ram", "virtio: bogus descriptor or out of resources") from None
            if len(out_sg) + len(in_sg) > VIRTQUEUE_MAX_SIZE:
                raise VirtioError("too-many-buffers", "virtio: too many write descriptors in indirect table")
            entries += 1
            if entries > max_entries:  # more descriptors than the table holds: a loop
                raise VirtioError("looped-descriptor", "Looped descriptor")
            if not flags & VRING_DESC_F_NEXT:
                return
            if nxt >= max_entries:
                raise VirtioError("next-out-of-range", f"Desc next is {nxt}")
            addr, length, flags, nxt = _DESC.unpack_from(table, 16 * nxt)

    def push(self, elem: VirtQueueElement, length: int) -> None:
        """``virtqueue_push``: return ``elem`` with ``length`` bytes written, and publish it."""
        rings = self._rings
        assert rings is not None
        elem.release()
        idx = self.used_idx
        _USED_ELEM.pack_into(rings.used, 4 + 8 * (idx % self.num), elem.index, length)
        self.used_idx = (idx + 1) & 0xFFFF
        rings.used16[1] = self.used_idx  # after the element, in one store: the driver may read it now
