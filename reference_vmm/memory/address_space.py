"""AddressSpace: a root MemoryRegion plus its current FlatView, swapped with RCU.

As QEMU's ``address_space_set_flatview``: render the new view, publish it with
one attribute store (``current_map``), tell the listeners (KVM memory slots),
and drop the old view after a grace period with :func:`call_rcu`.  A reader
takes ``current_map`` once per access inside ``rcu_read_lock()``.

Accesses that hit no region behave as on QEMU's unassigned memory: reads
return all ones, writes are dropped; both are counted per address.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from .flatview import FlatRange, FlatView
from .rcu import call_rcu, rcu_read_lock
from .region import MemoryRegion
from .topology import register_address_space, topology_lock, unregister_address_space

__all__ = ["AddressSpace", "Listener"]

#: ``listener(old_view, new_view)``, called under the topology lock on every swap.
Listener = Callable[[FlatView | None, FlatView], None]


class AddressSpace:
    """A named view of a MemoryRegion tree (``address_space_memory``, ``address_space_io``)."""

    def __init__(self, root: MemoryRegion, name: str) -> None:
        self.root = root
        self.name = name
        self.listeners: list[Listener] = []
        #: (address, "read"|"write") -> count of accesses no region claimed.
        self.unassigned: collections.Counter[tuple[int, str]] = collections.Counter()
        # Any thread may read or write through the space, and a Counter's
        # ``+= 1`` is a load and a store: without the GIL two threads lose
        # counts.  Off the hot path (vCPUs dispatch through dispatch.py), so
        # a lock of its own rather than per-thread counters.
        self._unassigned_lock = threading.Lock()
        self.rebuilds = 0  # under the topology lock
        with topology_lock:
            self.current_map = FlatView.from_root(root)
            register_address_space(self)

    def add_listener(self, listener: Listener) -> None:
        """Register a listener and replay the current view to it."""
        with topology_lock:
            self.listeners.append(listener)
            listener(None, self.current_map)

    def update_topology(self) -> None:
        """Re-render and publish; the old view is reclaimed after a grace period."""
        with topology_lock:
            new = FlatView.from_root(self.root)
            old = self.current_map
            self.current_map = new  # the publication: one store, atomic for readers
            self.rebuilds += 1
            for listener in self.listeners:
                listener(old, new)
        call_rcu(old.unref)

    def destroy(self) -> None:
        """Stop tracking topology changes and drop the current view."""
        unregister_address_space(self)
        call_rcu(self.current_map.unref)

    # -- simple accessors (no BQL: the vCPU loop decides locking) -----------
    def lookup(self, addr: int) -> FlatRange | None:
        """The range at ``addr`` in the current view (caller holds the RCU read lock)."""
        return self.current_map.lookup(addr)

    def read(self, addr: int, size: int) -> int:
        """Read through the current view, as a device access."""
        with rcu_read_lock():
            fr = self.current_map.lookup(addr)
            if fr is None or not fr.mr.terminates:
                with self._unassigned_lock:
                    self.unassigned[(addr, "read")] += 1
                return (1 << (8 * size)) - 1
            offset = addr - fr.start + fr.offset_in_region
            if fr.mr.kind == "ram":
                return int.from_bytes(fr.mr.ram[offset : offset + size], "little")  # type: ignore[index]  # a "ram" region always has its mmap
            return fr.mr.read(offset, size)

    def write(self, addr: int, value: int, size: int) -> None:
        """Write through the current view, as a device access."""
        with rcu_read_lock():
            fr = self.current_map.lookup(addr)
            if fr is None or not fr.mr.terminates:
                with self._unassigned_lock:
                    self.unassigned[(addr, "write")] += 1
                return
            offset = addr - fr.start + fr.offset_in_region
            if fr.mr.kind == "ram":
                fr.mr.ram[offset : offset + size] = value.to_bytes(size, "little")  # type: ignore[index]  # a "ram" region always has its mmap
                return
            fr.mr.write(offset, value, size)

    def write_bytes(self, addr: int, data: bytes) -> None:
        """Copy ``data`` into RAM at ``addr`` (loader, firmware tables); may span ranges."""
        with rcu_read_lock():
            view = self.current_map
            pos = 0
            while pos < len(data):
                fr = view.lookup(addr + pos)
                if fr is None or fr.mr.kind != "ram":
                    raise ValueError(f"{self.name}: no RAM at {addr + pos:#x}")
                offset = addr + pos - fr.start + fr.offset_in_region
                n = min(len(data) - pos, fr.end - (addr + pos))
                fr.mr.ram[offset : offset + n] = data[pos : pos + n]  # type: ignore[index]  # a "ram" region always has its mmap
                pos += n

    def read_bytes(self, addr: int, length: int) -> bytes:
        """Copy ``length`` bytes of RAM from ``addr``."""
        with rcu_read_lock():
            view = self.current_map
            out = bytearray()
            while len(out) < length:
                a = addr + len(out)
                fr = view.lookup(a)
                if fr is None or fr.mr.kind != "ram":
                    raise ValueError(f"{self.name}: no RAM at {a:#x}")
                offset = a - fr.start + fr.offset_in_region
                n = min(length - len(out), fr.end - a)
                out += fr.mr.ram[offset : offset + n]  # type: ignore[index]  # a "ram" region always has its mmap
            return bytes(out)
