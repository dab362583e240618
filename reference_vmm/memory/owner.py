"""Reference-counted owners of memory regions (a sliver of QEMU's QOM).

The hot-unplug lesson of the 2013 talk: removing a device from the memory
map (``del_subregion``: it becomes unreachable to *new* accesses) is not the
same as freeing it (reclamation: no in-flight access can still reach it).
A MemoryRegion does not count its own references; it forwards them to its
owner, as ``memory_region_ref`` forwards to ``object_ref``.  Every FlatView
that contains one of the owner's regions holds a reference, so the owner is
finalized only after the last FlatView that could route an access to it has
been reclaimed after a grace period.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Owner"]


class Owner:
    """An object that owns memory regions (a device, a machine).

    Starts with one reference, held by whoever created it (``unparent`` in
    QEMU's words drops it).  ``finalize`` runs once, when the count reaches 0.
    """

    def __init__(self, name: str, on_finalize: Callable[[Owner], None] | None = None) -> None:
        self.name = name
        self.refcount = 1
        self.finalized = False
        self._on_finalize = on_finalize
        self._lock = threading.Lock()

    def ref(self) -> None:
        """Take a reference (``object_ref``)."""
        with self._lock:
            assert not self.finalized, f"{self.name}: ref after finalize (use after free)"
            self.refcount += 1

    def unref(self) -> None:
        """Drop a reference (``object_unref``); finalize on the last one."""
        with self._lock:
            assert self.refcount > 0, f"{self.name}: unref below zero"
            self.refcount -= 1
            last = self.refcount == 0
            if last:
                self.finalized = True
        if last:
            self.finalize()

    def finalize(self) -> None:
        """Release what the owner holds.  Subclasses extend; the hook is for tests."""
        if self._on_finalize is not None:
            self._on_finalize(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} refs={self.refcount}>"
