"""A test-side virtio-blk "driver": builds split-ring requests in guest memory by hand.

Used by the unit tests (guest memory is a RAM MemoryRegion) and by the live
tests (the machine's RAM, filled before the vCPUs start).  It can build any
chain, including the malformed ones a real driver never would.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from vmtrace.reference_vmm.devices.virtio.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    vring_layout,
)

T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2


@dataclass
class Buf:
    """One descriptor: ``len`` bytes at guest address ``addr``; ``w``: device-writable."""

    addr: int
    len: int
    w: bool = False


class RingDriver:
    """A split ring of ``num`` entries at ``desc_addr`` (4 KiB aligned) in guest memory."""

    def __init__(
        self, read: Callable[[int, int], bytes], write: Callable[[int, bytes], None], desc_addr: int, num: int = 256
    ) -> None:
        self.read, self.write = read, write
        self.num = num
        self.desc, self.avail, self.used, _, _ = vring_layout(desc_addr, num)
        self.next_desc = 0
        self.avail_idx = 0
        self.used_seen = 0
        self.write(desc_addr, bytes(self.used + 4 + 8 * num - desc_addr))

    @property
    def pfn(self) -> int:
        return self.desc >> 12

    def put_desc(self, i: int, addr: int, length: int, flags: int, nxt: int, table: int | None = None) -> None:
        base = self.desc if table is None else table
        self.write(base + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def chain(self, bufs: list[Buf]) -> int:
        """Write ``bufs`` as a NEXT-linked chain of fresh descriptors; returns the head."""
        ids = [(self.next_desc + k) % self.num for k in range(len(bufs))]
        self.next_desc = (self.next_desc + len(bufs)) % self.num
        for k, (i, b) in enumerate(zip(ids, bufs, strict=True)):
            last = k == len(bufs) - 1
            flags = (VRING_DESC_F_WRITE if b.w else 0) | (0 if last else VRING_DESC_F_NEXT)
            self.put_desc(i, b.addr, b.len, flags, 0 if last else ids[k + 1])
        return ids[0]

    def indirect(self, table_addr: int, bufs: list[Buf]) -> int:
        """One descriptor pointing at an indirect table holding ``bufs``; returns its index."""
        for k, b in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (VRING_DESC_F_WRITE if b.w else 0) | (0 if last else VRING_DESC_F_NEXT)
            self.put_desc(k, b.addr, b.len, flags, 0 if last else k + 1, table=table_addr)
        head = self.next_desc
        self.next_desc = (self.next_desc + 1) % self.num
        self.put_desc(head, table_addr, 16 * len(bufs), VRING_DESC_F_INDIRECT, 0)
        return head

    def offer(self, head: int, publish: bool = True) -> None:
        """Put ``head`` in the avail ring; ``publish`` also moves the avail index."""
        self.write(self.avail + 4 + 2 * (self.avail_idx % self.num), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if publish:
            self.publish()

    def publish(self, idx: int | None = None) -> None:
        self.write(self.avail + 2, struct.pack("<H", self.avail_idx if idx is None else idx))

    def set_avail_flags(self, flags: int) -> None:
        self.write(self.avail, struct.pack("<H", flags))

    def used_idx(self) -> int:
        return struct.unpack("<H", self.read(self.used + 2, 2))[0]

    def used_flags(self) -> int:
        return struct.unpack("<H", self.read(self.used, 2))[0]

    def take_used(self) -> list[tuple[int, int]]:
        """New used elements ``(id, len)`` since the last call."""
        out = []
        idx = self.used_idx()
        while self.used_seen != idx:
            out.append(struct.unpack("<II", self.read(self.used + 4 + 8 * (self.used_seen % self.num), 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    # -- virtio-blk requests --------------------------------------------------------------
    def blk_request(self, hdr_addr: int, rtype: int, sector: int, data: list[Buf], status_addr: int) -> int:
        """Header (readable), ``data``, status byte (writable) as one chain; returns the head."""
        self.write(hdr_addr, struct.pack("<IIQ", rtype, 0, sector))
        self.write(status_addr, b"\xee")  # a value no device writes
        return self.chain([Buf(hdr_addr, 16), *data, Buf(status_addr, 1, True)])
