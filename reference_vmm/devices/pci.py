"""PCI configuration mechanism #1 (ports 0xcf8/0xcfc) and a host bridge.

The guest writes a config address (enable bit, bus, device, function,
register) to 0xcf8, then reads or writes 0xcfc-0xcff.  Bus 0 device 0 is a
host bridge (i440FX's IDs, as on QEMU ``-M pc``); an empty slot reads all
ones, which is how a guest enumerates.  Later devices (virtio-blk) plug in
with :meth:`PciBus.plug`.
"""

from __future__ import annotations

import struct

from ..memory.owner import Owner
from ..memory.region import MemoryRegion

__all__ = ["PciDevice", "PciHostBridge", "PciBus", "CONFIG_ADDRESS_PORT", "CONFIG_DATA_PORT"]

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
_COMMAND = 0x04


class PciDevice(Owner):
    """A function's 256-byte configuration space; only the command register is writable."""

    def __init__(self, name: str, vendor: int, device: int, class_code: int, revision: int = 0) -> None:
        super().__init__(name)
        self.config = bytearray(256)
        struct.pack_into("<HH", self.config, 0, vendor, device)
        self.config[8] = revision
        struct.pack_into("<I", self.config, 8, (class_code << 8) | revision)
        self.config[0x0E] = 0  # header type 0, single function

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset : offset + size], "little")

    def config_write(self, offset: int, value: int, size: int) -> None:
        # Only COMMAND (0x04-0x05) takes writes; everything else is read-only here.
        for i in range(size):
            if _COMMAND <= offset + i < _COMMAND + 2:
                self.config[offset + i] = (value >> (8 * i)) & 0xFF


class PciHostBridge(PciDevice):
    """Bus 0, device 0: Intel 440FX host bridge IDs, class 0x0600 (host bridge)."""

    def __init__(self) -> None:
        super().__init__("i440FX-pcihost", 0x8086, 0x1237, 0x060000, revision=2)


class PciBus(Owner):
    """Bus 0 behind configuration mechanism #1: ``pci-conf-idx`` and ``pci-conf-data``."""

    def __init__(self) -> None:
        super().__init__("pci.0")
        self.address = 0
        self.devices: dict[tuple[int, int], PciDevice] = {}
        self.plug(0, 0, PciHostBridge())
        self.index_region = MemoryRegion.io(self, "pci-conf-idx", 4, self._index_read, self._index_write)
        self.data_region = MemoryRegion.io(self, "pci-conf-data", 4, self._data_read, self._data_write)

    def plug(self, slot: int, function: int, device: PciDevice) -> None:
        """Put ``device`` at bus 0, ``slot``.``function``."""
        self.devices[(slot, function)] = device

    def _index_read(self, offset: int, size: int) -> int:
        return (self.address >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def _index_write(self, offset: int, value: int, size: int) -> None:
        if offset == 0 and size == 4:  # as QEMU: only dword writes latch the address
            self.address = value & 0x80FFFFFC

    def _target(self) -> tuple[PciDevice | None, int]:
        addr = self.address
        if not addr & 0x80000000 or (addr >> 16) & 0xFF != 0:
            return None, 0
        return self.devices.get(((addr >> 11) & 0x1F, (addr >> 8) & 0x7)), addr & 0xFC

    def _data_read(self, offset: int, size: int) -> int:
        dev, reg = self._target()
        if dev is None:
            return (1 << (8 * size)) - 1
        return dev.config_read(reg + offset, size)

    def _data_write(self, offset: int, value: int, size: int) -> None:
        dev, reg = self._target()
        if dev is not None:
            dev.config_write(reg + offset, value, size)
