"""MemoryRegion: the tree a machine's memory map is built from.

Vocabulary and semantics follow QEMU's ``docs/devel/memory.rst``:

* a *container* only groups subregions;
* a *RAM* region is backed by host memory (KVM maps it into the guest);
* an *I/O* region calls ``read``/``write`` callbacks (port I/O or MMIO);
* an *alias* shows a window of another region at a new address.

Subregions carry a priority; where siblings overlap, the higher priority
wins and, between equal priorities, the one added last.  A region whose own
content is not a container (RAM/I/O) shows through wherever none of its
subregions does.  Changes are grouped in transactions (:mod:`.topology`,
which holds the topology lock and the list of address spaces); the FlatViews
of every AddressSpace are re-rendered once per outermost commit.

``global_locking`` is True unless the device opts out with
:meth:`MemoryRegion.clear_global_locking` (QEMU's
``memory_region_clear_global_locking``): then dispatch runs under RCU alone,
without the BQL.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable

from .owner import Owner
from .topology import (
    memory_region_transaction_begin,
    memory_region_transaction_commit,
    memory_region_update_pending,
    transaction,
)

__all__ = [
    "MemoryRegion",
    "ReadFn",
    "WriteFn",
    "memory_region_transaction_begin",
    "memory_region_transaction_commit",
    "transaction",
]

#: ``read(offset, size) -> value`` of an I/O region.
ReadFn = Callable[[int, int], int]
#: ``write(offset, value, size)`` of an I/O region.
WriteFn = Callable[[int, int, int], None]


def _unassigned_read(offset: int, size: int) -> int:
    return (1 << (8 * size)) - 1


def _ignore_write(offset: int, value: int, size: int) -> None:
    return None


class MemoryRegion:
    """One node of the memory tree.  Build with the classmethods."""

    __slots__ = (
        "name",
        "size",
        "owner",
        "kind",
        "read",
        "write",
        "alias",
        "alias_offset",
        "container",
        "addr",
        "priority",
        "subregions",
        "enabled",
        "global_locking",
        "ram",
        "host_addr",
        "_seq",
        "__weakref__",
    )
    _next_seq = 0

    def __init__(self, owner: Owner | None, name: str, size: int, kind: str) -> None:
        if size <= 0:
            raise ValueError(f"memory region {name!r}: size must be positive")
        self.name = name
        self.size = size
        self.owner = owner
        self.kind = kind
        self.read: ReadFn = _unassigned_read
        self.write: WriteFn = _ignore_write
        self.alias: MemoryRegion | None = None
        self.alias_offset = 0
        self.container: MemoryRegion | None = None
        self.addr = 0  # offset inside the container
        self.priority = 0
        self.subregions: list[MemoryRegion] = []  # render order: priority desc, newest first
        self.enabled = True
        self.global_locking = True
        self.ram: mmap.mmap | None = None
        self.host_addr = 0
        self._seq = 0  # insertion order, for the reference renderer in tests

    # -- constructors, named after memory_region_init_* --------------------
    @classmethod
    def container_region(cls, owner: Owner | None, name: str, size: int) -> MemoryRegion:
        """``memory_region_init``: a pure container."""
        return cls(owner, name, size, "container")

    @classmethod
    def io(cls, owner: Owner | None, name: str, size: int, read: ReadFn, write: WriteFn) -> MemoryRegion:
        """``memory_region_init_io``: accesses call ``read``/``write`` with offsets."""
        mr = cls(owner, name, size, "io")
        mr.read, mr.write = read, write
        return mr

    @classmethod
    def ram_region(cls, owner: Owner | None, name: str, size: int) -> MemoryRegion:
        """``memory_region_init_ram``: anonymous host memory, page aligned."""
        if size % mmap.PAGESIZE:
            raise ValueError(f"RAM region {name!r}: size must be a multiple of the page size")
        mr = cls(owner, name, size, "ram")
        mr.ram = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
        mr.host_addr = ctypes.addressof(ctypes.c_char.from_buffer(mr.ram))
        return mr

    @classmethod
    def alias_region(cls, owner: Owner | None, name: str, target: MemoryRegion, offset: int, size: int) -> MemoryRegion:
        """``memory_region_init_alias``: ``size`` bytes of ``target`` from ``offset``."""
        mr = cls(owner, name, size, "alias")
        mr.alias, mr.alias_offset = target, offset
        return mr

    @property
    def terminates(self) -> bool:
        """True when the region has content of its own (RAM or I/O)."""
        return self.kind in ("ram", "io")

    # -- reference counting: forwarded to the owner (memory_region_ref) ----
    def ref(self) -> None:
        if self.owner is not None:
            self.owner.ref()

    def unref(self) -> None:
        if self.owner is not None:
            self.owner.unref()

    # -- topology -----------------------------------------------------------
    def add_subregion(self, offset: int, sub: MemoryRegion) -> None:
        """``memory_region_add_subregion``: priority 0."""
        self.add_subregion_overlap(offset, sub, 0)

    def add_subregion_overlap(self, offset: int, sub: MemoryRegion, priority: int) -> None:
        """``memory_region_add_subregion_overlap``: place ``sub`` at ``offset``."""
        if sub.container is not None:
            raise ValueError(f"{sub.name!r} is already in {sub.container.name!r}")
        with transaction():
            sub.ref()  # the container's reference, dropped by del_subregion
            sub.container, sub.addr, sub.priority = self, offset, priority
            # A read-modify-write of a class attribute: safe because every
            # caller holds the topology lock (the transaction).
            MemoryRegion._next_seq += 1
            sub._seq = MemoryRegion._next_seq
            # As QEMU: insert before the first sibling of lower or equal priority,
            # so the newest of equal priority renders first and wins.
            at = len(self.subregions)
            for i, other in enumerate(self.subregions):
                if priority >= other.priority:
                    at = i
                    break
            self.subregions.insert(at, sub)
            memory_region_update_pending()

    def del_subregion(self, sub: MemoryRegion) -> None:
        """``memory_region_del_subregion``: unreachable after the commit.

        The region's owner stays alive while any FlatView that still routes
        to it is in use; the FlatView's references go after a grace period.
        """
        if sub.container is not self:
            raise ValueError(f"{sub.name!r} is not a subregion of {self.name!r}")
        with transaction():
            self.subregions.remove(sub)
            sub.container = None
            memory_region_update_pending()
        sub.unref()

    def set_enabled(self, enabled: bool) -> None:
        """``memory_region_set_enabled``: a disabled region renders as absent."""
        with transaction():
            self.enabled = enabled
            memory_region_update_pending()

    def set_address(self, offset: int) -> None:
        """``memory_region_set_address``: move the region inside its container."""
        parent = self.container
        if parent is None:
            self.addr = offset
            return
        with transaction():
            priority = self.priority
            parent.del_subregion_nounref(self)
            parent.add_subregion_overlap(offset, self, priority)
            self.unref()  # add_subregion took a second reference

    def del_subregion_nounref(self, sub: MemoryRegion) -> None:
        with transaction():
            self.subregions.remove(sub)
            sub.container = None
            memory_region_update_pending()

    def clear_global_locking(self) -> None:
        """``memory_region_clear_global_locking``: dispatch without the BQL."""
        self.global_locking = False

    def __repr__(self) -> str:
        return f"<MemoryRegion {self.name} {self.kind} size={self.size:#x}>"
