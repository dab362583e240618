"""isa-debug-exit: a guest write ends the VM with status ``(value << 1) | 1``.

QEMU's convention (``-device isa-debug-exit,iobase=0xf4,iosize=4``), kept so
the same runner reads the exit status of both VMMs.
"""

from __future__ import annotations

from collections.abc import Callable

from ..memory.owner import Owner
from ..memory.region import MemoryRegion

__all__ = ["DebugExit"]


class DebugExit(Owner):
    """``isa-debug-exit``: calls ``request_exit(status)`` on every write."""

    def __init__(self, request_exit: Callable[[int], None], size: int = 4) -> None:
        super().__init__("isa-debug-exit")
        self._request_exit = request_exit
        self.region = MemoryRegion.io(self, "isa-debug-exit", size, self.read, self.write)

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        self._request_exit(((value << 1) | 1) & 0xFF)
