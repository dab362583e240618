"""What a device sees of guest memory: DMA into RAM, checked against the memory map.

As QEMU's ``dma_memory_map``/``address_space_map``: a guest-physical range
is translated through the address space's current FlatView into host views
of RAM.  A range that touches anything but RAM (a hole, MMIO, past the end
of the address space) raises :class:`DmaError`; the device decides what that
means for the guest (virtio marks itself broken).  Unlike QEMU there is no
bounce buffer for MMIO: a device cannot DMA into another device here.

The views alias the RAM mapping itself: a device writes guest memory in
place and ``preadv`` fills it without a copy.  The caller holds the RCU read
lock while it uses them (the FlatView, and so the RAM, stays alive) and
releases them when the request is done.
"""

from __future__ import annotations

from .address_space import AddressSpace

__all__ = ["DmaError", "GuestMemory"]

_ADDR_LIMIT = 1 << 64


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

    def map(self, addr: int, length: int) -> list[memoryview]:
        """Writable host views covering ``[addr, addr + length)``, split where RAM ranges split.

        Raises :class:`DmaError` unless every byte is RAM.  Caller holds
        ``rcu_read_lock()`` and calls ``release()`` on each view afterwards.
        """
        end = addr + length
        if addr < 0 or length < 0 or end > _ADDR_LIMIT:
            raise DmaError(addr, length)
        view = self.space.current_map
        out: list[memoryview] = []
        pos = addr
        while pos < end:
            fr = view.lookup(pos)
            if fr is None or fr.mr.kind != "ram":
                for v in out:
                    v.release()
                raise DmaError(addr, length)
            off = pos - fr.start + fr.offset_in_region
            n = min(end, fr.end) - pos
            out.append(memoryview(fr.mr.ram)[off : off + n])  # type: ignore[arg-type]
            pos += n
        return out

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
