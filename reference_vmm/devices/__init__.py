"""Device models: PM timer, serial, isa-debug-exit, PCI host bridge, ACPI tables."""

from .acpi import build_acpi_tables
from .debug_exit import DebugExit
from .pci import PciBus, PciDevice, PciHostBridge
from .pm_timer import PmTimer
from .serial import Serial16550

__all__ = ["build_acpi_tables", "DebugExit", "PciBus", "PciDevice", "PciHostBridge", "PmTimer", "Serial16550"]
