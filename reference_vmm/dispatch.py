"""Device dispatch: from an address to a MemoryRegion callback, with QEMU's locking rule.

As QEMU's ``prepare_mmio_access``: a region that needs the global lock
(``global_locking``, the default) is dispatched with the BQL held, taken here
if the caller does not hold it already; a region that opted out
(``clear_global_locking``) runs under RCU alone.  The FlatView is taken once
per access inside ``rcu_read_lock()``, so a region removed meanwhile stays
alive until the access ends.

Each access is reported with ``dispatch_begin``/``dispatch_end`` (QEMU's
``memory_region_dispatch_read``/``write``), inside the lock when there is one.
One test of ``probes.enabled`` guards both calls: when nothing records, the
hot path pays a flag check instead of two no-op calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vmtrace import probes

from .bql import BigLock
from .memory.address_space import AddressSpace
from .memory.flatview import FlatView
from .memory.rcu import READER_FENCE, rcu_gp, rcu_read_lock, rcu_read_unlock, rcu_register_thread
from .memory.region import MemoryRegion

__all__ = ["Bus", "AddressSpaceBus", "VcpuBus"]

_get_ident = threading.get_ident


class Bus:
    """What the exit handler needs: port and MMIO reads and writes (ints, little endian)."""

    def pio_read(self, port: int, size: int) -> int:
        raise NotImplementedError

    def pio_write(self, port: int, value: int, size: int) -> None:
        raise NotImplementedError

    def mmio_read(self, addr: int, size: int) -> int:
        raise NotImplementedError

    def mmio_write(self, addr: int, value: int, size: int) -> None:
        raise NotImplementedError

    def for_thread(self) -> Bus:
        """The bus as the calling thread uses it from now on (a vCPU calls this
        once, in its own thread).  A bus with per-thread state returns a view
        that holds it; the default is the bus itself."""
        return self


class AddressSpaceBus(Bus):
    """Dispatch into ``address_space_io`` and ``address_space_memory`` under ``bql``."""

    def __init__(self, io: AddressSpace, memory: AddressSpace, bql: BigLock) -> None:
        self.io = io
        self.memory = memory
        self.bql = bql

    def _read(self, space: AddressSpace, addr: int, size: int) -> int:
        rcu_read_lock()
        try:
            fr = space.current_map.lookup(addr)
            if fr is None:  # roots are I/O regions, so this is outside the space
                return (1 << (8 * size)) - 1
            return self._dispatch_read(fr.mr, addr, addr - fr.start + fr.offset_in_region, size)
        finally:
            rcu_read_unlock()

    def _write(self, space: AddressSpace, addr: int, value: int, size: int) -> None:
        rcu_read_lock()
        try:
            fr = space.current_map.lookup(addr)
            if fr is not None:
                self._dispatch_write(fr.mr, addr, addr - fr.start + fr.offset_in_region, value, size)
        finally:
            rcu_read_unlock()

    # The locking rule and the probes, once for both buses (caller holds the RCU read lock).
    def _dispatch_read(self, mr: MemoryRegion, addr: int, offset: int, size: int) -> int:
        bql = self.bql
        locked = mr.global_locking and bql._owner != _get_ident()
        if locked:
            bql.lock()
        try:
            if probes.enabled:
                probes.dispatch_begin(addr, size, False, mr.name)
                value = mr.read(offset, size)
                probes.dispatch_end(addr, size, False, mr.name)
                return value
            return mr.read(offset, size)
        finally:
            if locked:
                bql.unlock()

    def _dispatch_write(self, mr: MemoryRegion, addr: int, offset: int, value: int, size: int) -> None:
        bql = self.bql
        locked = mr.global_locking and bql._owner != _get_ident()
        if locked:
            bql.lock()
        try:
            if probes.enabled:
                probes.dispatch_begin(addr, size, True, mr.name)
                mr.write(offset, value, size)
                probes.dispatch_end(addr, size, True, mr.name)
            else:
                mr.write(offset, value, size)
        finally:
            if locked:
                bql.unlock()

    def pio_read(self, port: int, size: int) -> int:
        return self._read(self.io, port, size)

    def pio_write(self, port: int, value: int, size: int) -> None:
        self._write(self.io, port, value, size)

    def mmio_read(self, addr: int, size: int) -> int:
        return self._read(self.memory, addr, size)

    def mmio_write(self, addr: int, value: int, size: int) -> None:
        self._write(self.memory, addr, value, size)

    def for_thread(self) -> VcpuBus:
        return VcpuBus(self)


#: Distinct addresses remembered per address space and vCPU (a guest may probe many).
_LOOKUP_CACHE_MAX = 256
_OUTSIDE = (None, 0)  # the address is outside the space: reads all ones, writes dropped
_ALL_ONES = {n: (1 << (8 * n)) - 1 for n in range(1, 9)}


class _SpaceState:
    """One vCPU's memo of lookups in one address space.

    ``hits`` maps an address to ``(region, offset in region)`` as found in
    ``view``, and is only valid while ``view`` is the space's current map:
    a FlatView never changes, so its lookups never go stale; a new view
    brings a new, empty memo.  Holding the old view object here keeps its
    identity from being reused, so the ``is`` test cannot be fooled.
    """

    __slots__ = ("space", "view", "hits")

    def __init__(self, space: AddressSpace) -> None:
        self.space = space
        self.view: FlatView | None = None
        self.hits: dict[int, tuple[MemoryRegion | None, int]] = {}

    def lookup(self, view: FlatView, addr: int) -> tuple[MemoryRegion | None, int]:
        if view is not self.view:
            self.view, self.hits = view, {}
        fr = view.lookup(addr)
        hit = _OUTSIDE if fr is None else (fr.mr, addr - fr.start + fr.offset_in_region)
        if len(self.hits) < _LOOKUP_CACHE_MAX:
            self.hits[addr] = hit
        return hit


class VcpuBus(Bus):
    """:class:`AddressSpaceBus` as one vCPU thread sees it: the exit path's per-thread state.

    QEMU keeps what a vCPU's exit path needs in per-thread places (the RCU
    reader in TLS, ``bql_locked()`` a thread-local flag, the CPU's own
    dispatch caches); so does this, so that an exit touches nothing another
    thread writes except the FlatView pointer and the locks it must take:

    * the thread's RCU reader record, taken once (no thread-local lookup);
    * the thread's ident, to tell whether it already holds the BQL;
    * per address space, a memo of the lookups made in the current FlatView.

    Same semantics as :class:`AddressSpaceBus` (a test checks them side by
    side); made by :meth:`AddressSpaceBus.for_thread` in the vCPU thread,
    and never shared with another thread.

    The four accessors are closures over that state, built once: an exit
    then pays one Python call between the exit handler and the region's
    callback, and loads its state from cells instead of attributes.  They
    inline :meth:`RcuReader.lock`/``unlock`` and, without probes,
    :meth:`BigLock.lock`/``unlock`` (the reference for both); with probes
    on they go through :meth:`AddressSpaceBus._dispatch_read`, which reports.
    """

    def __init__(self, bus: AddressSpaceBus) -> None:
        self.bus = bus
        self.rcu = rcu_register_thread()
        self.ident = threading.get_ident()
        self.io = _SpaceState(bus.io)
        self.memory = _SpaceState(bus.memory)
        self.pio_read = self._make_read(self.io)  # type: ignore[method-assign, assignment]  # per-instance closures in place of Bus's methods: see the docstring
        self.mmio_read = self._make_read(self.memory)  # type: ignore[method-assign, assignment]  # per-instance closures in place of Bus's methods: see the docstring
        self.pio_write = self._make_write(self.io)  # type: ignore[method-assign, assignment]  # per-instance closures in place of Bus's methods: see the docstring
        self.mmio_write = self._make_write(self.memory)  # type: ignore[method-assign, assignment]  # per-instance closures in place of Bus's methods: see the docstring

    def _make_read(self, state: _SpaceState) -> Callable[[int, int], int]:
        bus, space, rcu, gp, me = self.bus, state.space, self.rcu, rcu_gp, self.ident
        bql = bus.bql
        acquire, release = bql._lock.acquire, bql._lock.release

        def read(addr: int, size: int) -> int:
            if rcu.depth:  # already inside a read-side section: the general path nests
                return bus._read(space, addr, size)
            rcu.ctr = gp.ctr
            if READER_FENCE:
                rcu.fence()
            rcu.depth = 1
            try:
                view = space.current_map
                hit = state.hits.get(addr) if view is state.view else None
                mr, offset = hit if hit is not None else state.lookup(view, addr)
                if mr is None:
                    return _ALL_ONES[size]
                if probes.enabled:
                    return bus._dispatch_read(mr, addr, offset, size)
                if not mr.global_locking or bql._owner == me:  # 2013 mode: the loop holds it
                    return mr.read(offset, size)
                acquire()
                bql._owner = me
                try:
                    return mr.read(offset, size)
                finally:
                    bql._owner = 0
                    release()
            finally:
                rcu.depth = 0
                rcu.ctr = 0
                if READER_FENCE:
                    rcu.fence()
                if rcu.waiting:
                    rcu.wake_writer()

        return read

    def _make_write(self, state: _SpaceState) -> Callable[[int, int, int], None]:
        bus, space, rcu, gp, me = self.bus, state.space, self.rcu, rcu_gp, self.ident
        bql = bus.bql
        acquire, release = bql._lock.acquire, bql._lock.release

        def write(addr: int, value: int, size: int) -> None:
            if rcu.depth:
                bus._write(space, addr, value, size)
                return
            rcu.ctr = gp.ctr
            if READER_FENCE:
                rcu.fence()
            rcu.depth = 1
            try:
                view = space.current_map
                hit = state.hits.get(addr) if view is state.view else None
                mr, offset = hit if hit is not None else state.lookup(view, addr)
                if mr is None:
                    return
                if probes.enabled:
                    bus._dispatch_write(mr, addr, offset, value, size)
                elif not mr.global_locking or bql._owner == me:
                    mr.write(offset, value, size)
                else:
                    acquire()
                    bql._owner = me
                    try:
                        mr.write(offset, value, size)
                    finally:
                        bql._owner = 0
                        release()
            finally:
                rcu.depth = 0
                rcu.ctr = 0
                if READER_FENCE:
                    rcu.fence()
                if rcu.waiting:
                    rcu.wake_writer()

        return write
