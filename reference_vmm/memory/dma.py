"""What a device sees of guest memory: DMA into RAM, checked against the memory map.

As QEMU's ``dma_memory_map``/``address_space_map``: a guest-physical range
is translated through the address space's current FlatView into host views
of RAM.  A range that touches anything but RAM (a hole, MMIO, past the end
of the address space) raises :class:`DmaError`; the device decides what that
means for the guest (virtio marks itself broken).

Except once per request: QEMU maps a non-RAM range into its one bounce
buffer (at most a page, and only while nobody else holds it), and a virtio
request with a single such buffer goes through.  A guest sees the difference
(``blk_malformed``: a data buffer outside RAM completes with S_OK on QEMU), so
:meth:`GuestMemory.map` does the same when given a :class:`Bounce`: the
window reads as zeros (what QEMU's DMA reads from unassigned memory) and
what the device writes there goes nowhere.  It never reaches a device's
registers or any host memory but the bounce page itself.

The views alias the RAM mapping itself: a device writes guest memory in
place and ``preadv`` fills it without a copy.  The caller holds the RCU read
lock while it uses them (the FlatView, and so the RAM, stays alive) and
releases them when the request is done.
"""

from __future__ import annotations

from .address_space import AddressSpace
from .flatview import FlatView

__all__ = ["DmaError", "GuestMemory", "Bounce", "BOUNCE_SIZE"]

_ADDR_LIMIT = 1 << 64
BOUNCE_SIZE = 4096  # QEMU's TARGET_PAGE_SIZE cap on its bounce buffer


class Bounce:
    """The one bounce window a request may use (QEMU's ``bounce.in_use``)."""

    __slots__ = ("in_use",)

    def __init__(self) -> None:
        self.in_use = False


class DmaError(Exception):
    """A guest-physical range is not (entirely) RAM."""

    def __init__(self, addr: int, length: int) -> None:
        super().__init__(f"guest range [{addr:#x}, +{length:#x}) is not RAM")
        self.addr = addr
        self.length = length


class GuestMemory:
    """Guest RAM as seen through ``space`` (``address_space_memory``)."""

    def __init__(self, space: AddressSpace) -> None:
        self.space = space
        self.bounced = 0  # non-RAM windows handed out through a Bounce

    def map(self, addr: int, length: int, bounce: Bounce | None = None) -> list[memoryview]:
        """Writable host views covering ``[addr, addr + length)``, split where RAM ranges split.

        Raises :class:`DmaError` unless every byte is RAM, or, with ``bounce``
        free, all but one window of at most :data:`BOUNCE_SIZE` bytes.
        Caller holds ``rcu_read_lock()`` and calls ``release()`` on each view.
        """
        end = addr + length
        if addr < 0 or length < 0 or end > _ADDR_LIMIT:
            raise DmaError(addr, length)
        view = self.space.current_map
        out: list[memoryview] = []
        pos = addr
        while pos < end:
            fr = view.lookup(pos)
            if fr is not None and fr.mr.kind == "ram":
                off = pos - fr.start + fr.offset_in_region
                n = min(end, fr.end) - pos
                out.append(memoryview(fr.mr.ram)[off : off + n])  # type: ignore[arg-type]  # a "ram" region always has its mmap
            elif bounce is not None and not bounce.in_use:
                bounce.in_use = True
                self.bounced += 1
                stop = fr.end if fr is not None else self._next_range(view, pos)
                out.append(memoryview(bytearray(min(end, stop, pos + BOUNCE_SIZE) - pos)))
            else:
                for v in out:
                    v.release()
                raise DmaError(addr, length)
            pos += len(out[-1])
        return out

    @staticmethod
    def _next_range(view: FlatView, pos: int) -> int:
        for r in view.ranges:
            if r.start > pos:
                return r.start
        return _ADDR_LIMIT

    def map_one(self, addr: int, length: int) -> memoryview:
        """As :meth:`map`, for a structure that must be one contiguous host range (a vring)."""
        views = self.map(addr, length)
        if len(views) != 1:
            for v in views:
                v.release()
            raise DmaError(addr, length)
        return views[0]

    def is_ram(self, addr: int, length: int) -> bool:
        """True when every byte of ``[addr, addr + length)`` is RAM."""
        try:
            for v in self.map(addr, length):
                v.release()
        except DmaError:
            return False
        return True

    def read(self, addr: int, length: int) -> bytes:
        """Copy ``length`` bytes from guest RAM."""
        views = self.map(addr, length)
        try:
            return b"".join(bytes(v) for v in views)
        finally:
            for v in views:
                v.release()

    def write(self, addr: int, data: bytes) -> None:
        """Copy ``data`` into guest RAM."""
        views = self.map(addr, len(data))
        pos = 0
        try:
            for v in views:
                v[:] = data[pos : pos + len(v)]
                pos += len(v)
        finally:
            for v in views:
                v.release()
