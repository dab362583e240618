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

from vmtrace import probes

from .bql import BigLock
from .memory.address_space import AddressSpace
from .memory.rcu import rcu_read_lock, rcu_read_unlock

__all__ = ["Bus", "AddressSpaceBus"]

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


class AddressSpaceBus(Bus):
    """Dispatch into ``address_space_io`` and ``address_space_memory`` under ``bql``."""

    def __init__(self, io: AddressSpace, memory: AddressSpace, bql: BigLock) -> None:
        self.io = io
        self.memory = memory
        self.bql = bql

    # _read and _write stay apart, and the probe test sits inside each, so
    # an exit costs no call beyond the region's own: this is the hot path of
    # every PIO and MMIO exit.
    def _read(self, space: AddressSpace, addr: int, size: int) -> int:
        rcu_read_lock()
        try:
            fr = space.current_map.lookup(addr)
            if fr is None:  # roots are I/O regions, so this is outside the space
                return (1 << (8 * size)) - 1
            mr = fr.mr
            offset = addr - fr.start + fr.offset_in_region
            bql = self.bql
            locked = mr.global_locking and bql._owner != _get_ident()
            if locked:
                bql.lock()
            try:
                if probes.enabled:
                    probes.dispatch_begin(addr, size, False, mr.name)
                    value = mr.read(offset, size)
                    probes.dispatch_end(addr, size, False, mr.name)
                else:
                    value = mr.read(offset, size)
            finally:
                if locked:
                    bql.unlock()
            return value
        finally:
            rcu_read_unlock()

    def _write(self, space: AddressSpace, addr: int, value: int, size: int) -> None:
        rcu_read_lock()
        try:
            fr = space.current_map.lookup(addr)
            if fr is None:
                return
            mr = fr.mr
            offset = addr - fr.start + fr.offset_in_region
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
        finally:
            rcu_read_unlock()

    def pio_read(self, port: int, size: int) -> int:
        return self._read(self.io, port, size)

    def pio_write(self, port: int, value: int, size: int) -> None:
        self._write(self.io, port, value, size)

    def mmio_read(self, addr: int, size: int) -> int:
        return self._read(self.memory, addr, size)

    def mmio_write(self, addr: int, value: int, size: int) -> None:
        self._write(self.memory, addr, value, size)
