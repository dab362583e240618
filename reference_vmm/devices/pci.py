"""PCI configuration mechanism #1 (ports 0xcf8/0xcfc) and a host bridge.

The guest writes a config address (enable bit, bus, device, function,
register) to 0xcf8, then reads or writes 0xcfc-0xcff.  Bus 0 device 0 is a
host bridge (i440FX's IDs, as on QEMU ``-M pc``); an empty slot reads all
ones, which is how a guest enumerates.  Later devices (virtio-blk) plug in
with :meth:`PciBus.plug`.

Configuration writes go through a per-byte write mask (QEMU's ``wmask``).
A device registers its BARs with :meth:`PciDevice.register_bar`; after every
write to COMMAND or a BAR the mappings are recomputed as QEMU's
``pci_update_mappings`` does: an I/O BAR is mapped into the bus's I/O space
only while COMMAND.IO is set and its address is a usable one (not 0, not
past the 64 KiB port space, not the all-ones a guest writes to size it).
"""

from __future__ import annotations

import struct

from ..memory.owner import Owner
from ..memory.region import MemoryRegion, transaction

__all__ = ["PciDevice", "PciHostBridge", "PciBus", "PciBar", "CONFIG_ADDRESS_PORT", "CONFIG_DATA_PORT"]

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
_COMMAND = 0x04
COMMAND_IO = 0x1
COMMAND_MASTER = 0x4
_BAR0 = 0x10
_SUBSYSTEM_VENDOR = 0x2C
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
_IO_SPACE_END = 0x10000


class PciBar:
    """One registered BAR: its region and where it is mapped now (None: unmapped)."""

    def __init__(self, index: int, region: MemoryRegion) -> None:
        self.index = index
        self.region = region
        self.mapped_at: int | None = None


class PciDevice(Owner):
    """A function's 256-byte configuration space, a write mask and its BARs.

    Writable by default: COMMAND and INTERRUPT_LINE (a scratch register the
    firmware or guest fills in); a BAR's address bits once registered.
    """

    def __init__(self, name: str, vendor: int, device: int, class_code: int, revision: int = 0) -> None:
        super().__init__(name)
        self.config = bytearray(256)
        self.wmask = bytearray(256)
        struct.pack_into("<HH", self.config, 0, vendor, device)
        struct.pack_into("<I", self.config, 8, (class_code << 8) | revision)
        self.config[0x0E] = 0  # header type 0, single function
        self.wmask[_COMMAND] = self.wmask[_COMMAND + 1] = 0xFF
        self.wmask[INTERRUPT_LINE] = 0xFF
        self.bars: dict[int, PciBar] = {}
        self.bus: PciBus | None = None

    def set_subsystem(self, vendor: int, device: int) -> None:
        struct.pack_into("<HH", self.config, _SUBSYSTEM_VENDOR, vendor, device)

    def set_interrupt(self, pin: int, line: int) -> None:
        """INTERRUPT_PIN (1 = INTA#, read-only) and the line the firmware routed it to."""
        self.config[INTERRUPT_PIN] = pin
        self.config[INTERRUPT_LINE] = line

    def register_bar(self, index: int, region: MemoryRegion, address: int) -> None:
        """``pci_register_bar`` for an I/O BAR, pre-assigned at ``address``.

        There is no firmware to assign BARs, so the device starts where SeaBIOS
        would have put it, with COMMAND.IO set; the guest may move it.
        """
        size = region.size
        if size & (size - 1) or size < 4:
            raise ValueError(f"{self.name}: BAR size {size:#x} must be a power of two >= 4")
        off = _BAR0 + 4 * index
        self.bars[index] = PciBar(index, region)
        # Bit 0 (I/O space indicator) is read-only 1; the low bits below the size read 0.
        struct.pack_into("<I", self.wmask, off, ~(size - 1) & 0xFFFFFFFC)
        struct.pack_into("<I", self.config, off, (address & ~(size - 1)) | 1)
        self.config[_COMMAND] |= COMMAND_IO

    def bar_address(self, index: int) -> int | None:
        """Where BAR ``index`` decodes now (``pci_bar_address``), or None."""
        bar = self.bars[index]
        if not self.config[_COMMAND] & COMMAND_IO:
            return None
        size = bar.region.size
        addr = struct.unpack_from("<I", self.config, _BAR0 + 4 * index)[0] & ~(size - 1) & 0xFFFFFFFC
        if addr == 0 or addr + size > _IO_SPACE_END:
            return None
        return addr

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset : offset + size], "little")

    def config_write(self, offset: int, value: int, size: int) -> None:
        for i in range(size):
            mask = self.wmask[offset + i]
            if mask:
                byte = (value >> (8 * i)) & 0xFF
                self.config[offset + i] = (self.config[offset + i] & ~mask) | (byte & mask)
        end = offset + size
        if self.bars and (offset < _COMMAND + 2 and end > _COMMAND or offset < _BAR0 + 24 and end > _BAR0):
            self.update_mappings()

    def update_mappings(self) -> None:
        """Map, move or unmap each BAR in the bus's I/O space to match config space."""
        space = self.bus.io_space if self.bus is not None else None
        if space is None:
            return
        for index, bar in self.bars.items():
            new = self.bar_address(index)
            old = bar.mapped_at
            if new == old:
                continue
            with transaction():
                if old is not None:
                    space.del_subregion(bar.region)
                if new is not None:
                    space.add_subregion(new, bar.region)
            bar.mapped_at = new
            self.bar_moved(index, old, new)

    def bar_moved(self, index: int, old: int | None, new: int | None) -> None:
        """Hook: BAR ``index`` went from ``old`` to ``new`` (None: unmapped)."""


class PciHostBridge(PciDevice):
    """Bus 0, device 0: Intel 440FX host bridge IDs, class 0x0600 (host bridge)."""

    def __init__(self) -> None:
        super().__init__("i440FX-pcihost", 0x8086, 0x1237, 0x060000, revision=2)


class PciBus(Owner):
    """Bus 0 behind configuration mechanism #1: ``pci-conf-idx`` and ``pci-conf-data``."""

    def __init__(self, io_space: MemoryRegion | None = None) -> None:
        super().__init__("pci.0")
        self.io_space = io_space  # where I/O BARs are mapped (the machine's ``io`` root)
        self.address = 0
        self.devices: dict[tuple[int, int], PciDevice] = {}
        self.plug(0, 0, PciHostBridge())
        self.index_region = MemoryRegion.io(self, "pci-conf-idx", 4, self._index_read, self._index_write)
        self.data_region = MemoryRegion.io(self, "pci-conf-data", 4, self._data_read, self._data_write)

    def plug(self, slot: int, function: int, device: PciDevice) -> None:
        """Put ``device`` at bus 0, ``slot``.``function`` and map its BARs."""
        if (slot, function) in self.devices:
            raise ValueError(f"PCI 00:{slot:02x}.{function} is taken by {self.devices[(slot, function)].name}")
        self.devices[(slot, function)] = device
        device.bus = self
        device.update_mappings()

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
