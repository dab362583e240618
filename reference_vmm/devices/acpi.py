"""ACPI tables the benchmark guest reads: RSDP, RSDT, FADT (with the PM timer), MADT, DSDT.

Built as bytes, with checksums, for the machine to copy into guest RAM in
the BIOS area (0xE0000-0xFFFFF) where a guest scans for the RSDP.  ACPI 1.0
layouts (FADT revision 1) are enough for what a guest needs here: the PM
timer block and one local APIC per vCPU.  Field offsets follow the ACPI
specification, sections 5.2.5 (RSDP), 5.2.7 (RSDT), 5.2.9 (FADT), 5.2.12 (MADT).
"""

from __future__ import annotations

import struct

__all__ = ["build_acpi_tables", "AcpiLayout", "PM_BASE", "PM_TIMER_PORT", "LAPIC_ADDR", "IOAPIC_ADDR"]

PM_BASE = 0x600
PM_TIMER_PORT = PM_BASE + 8  # 0x608, as QEMU's PIIX4/ICH9 PM with SeaBIOS
LAPIC_ADDR = 0xFEE00000
IOAPIC_ADDR = 0xFEC00000
_OEM_ID = b"VMTRCE"
_OEM_TABLE = b"REFVMM  "


def _checksum(data: bytes | bytearray) -> int:
    return (-sum(data)) & 0xFF


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0, _OEM_ID, _OEM_TABLE, 1, b"VMTR", 1)
    table = bytearray(header + body)
    table[9] = _checksum(table)
    return bytes(table)


def _fadt(dsdt: int) -> bytes:
    body = bytearray(116 - 36)

    def put(offset: int, fmt: str, value: int) -> None:
        struct.pack_into(fmt, body, offset - 36, value)

    put(40, "<I", dsdt)
    put(46, "<H", 9)  # SCI_INT
    put(56, "<I", PM_BASE)  # PM1a_EVT_BLK
    put(64, "<I", PM_BASE + 4)  # PM1a_CNT_BLK
    put(76, "<I", PM_TIMER_PORT)  # PM_TMR_BLK
    put(88, "<B", 4)  # PM1_EVT_LEN
    put(89, "<B", 2)  # PM1_CNT_LEN
    put(91, "<B", 4)  # PM_TMR_LEN
    put(112, "<I", 1 << 0)  # WBINVD; TMR_VAL_EXT (bit 8) clear: a 24-bit timer
    return _sdt(b"FACP", 1, bytes(body))


def _madt(ncpus: int) -> bytes:
    body = bytearray(struct.pack("<II", LAPIC_ADDR, 1))  # flags: PCAT_COMPAT (dual 8259s)
    for cpu in range(ncpus):
        body += struct.pack("<BBBBI", 0, 8, cpu, cpu, 1)  # processor local APIC, enabled
    body += struct.pack("<BBBBII", 1, 12, ncpus, 0, IOAPIC_ADDR, 0)  # I/O APIC, GSI base 0
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # ISA IRQ0 -> GSI2 (the PIT)
    return _sdt(b"APIC", 1, bytes(body))


class AcpiLayout:
    """Where each table went: ``rsdp``, ``rsdt``, ``fadt``, ``madt``, ``dsdt`` addresses."""

    def __init__(self, base: int) -> None:
        self.rsdp = base
        self.rsdt = base + 0x40
        self.fadt = base + 0x100
        self.madt = base + 0x200
        self.dsdt = base + 0x600


def build_acpi_tables(base: int, ncpus: int) -> tuple[AcpiLayout, bytes]:
    """The tables for ``ncpus`` vCPUs as one blob to copy at ``base`` (16-byte aligned)."""
    if base % 16:
        raise ValueError("the RSDP must be 16-byte aligned")
    if not 1 <= ncpus <= 254:
        raise ValueError("between 1 and 254 vCPUs")
    lay = AcpiLayout(base)
    dsdt = _sdt(b"DSDT", 1, b"")  # no AML: nothing here needs ACPI methods
    fadt = _fadt(lay.dsdt)
    madt = _madt(ncpus)
    if len(madt) > lay.dsdt - lay.madt:
        raise ValueError("too many vCPUs for the MADT slot")
    rsdt = _sdt(b"RSDT", 1, struct.pack("<II", lay.fadt, lay.madt))
    rsdp = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, _OEM_ID, 0, lay.rsdt))
    rsdp[8] = _checksum(rsdp)
    blob = bytearray(lay.dsdt - base + len(dsdt))
    for addr, table in ((lay.rsdp, rsdp), (lay.rsdt, rsdt), (lay.fadt, fadt), (lay.madt, madt), (lay.dsdt, dsdt)):
        blob[addr - base : addr - base + len(table)] = table
    return lay, bytes(blob)
