"""Multiboot loader and ACPI tables, on byte strings (no KVM)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vmtrace.reference_vmm.devices.acpi import IOAPIC_ADDR, LAPIC_ADDR, PM_TIMER_PORT, build_acpi_tables
from vmtrace.reference_vmm.errors import ImageError
from vmtrace.reference_vmm.loader import BOOTLOADER_MAGIC, MULTIBOOT_MAGIC, find_header, load_multiboot

RAM = 8 << 20


class FakeRam:
    def __init__(self) -> None:
        self.mem = bytearray(RAM)

    def write(self, addr: int, data: bytes) -> None:
        self.mem[addr : addr + len(data)] = data

    def u32(self, addr: int) -> int:
        return struct.unpack_from("<I", self.mem, addr)[0]

    def cstr(self, addr: int) -> bytes:
        return bytes(self.mem[addr : self.mem.index(0, addr)])


def aout_image(code: bytes, load: int = 0x100000, bss: int = 0x100) -> bytes:
    """A multiboot a.out-kludge image: the header, then ``code`` (entry right after the header)."""
    flags = 1 << 16
    header_len = 32
    end = load + header_len + len(code)
    header = struct.pack(
        "<IIIIIIII",
        MULTIBOOT_MAGIC,
        flags,
        -(MULTIBOOT_MAGIC + flags) & 0xFFFFFFFF,
        load,
        load,
        end,
        end + bss,
        load + header_len,
    )
    return header + code


def elf32_image(code: bytes, paddr: int = 0x200000, memsz_extra: int = 0x40) -> bytes:
    """A minimal ELF32 (EM_386) with one PT_LOAD segment and a multiboot header in it."""
    mb = struct.pack("<III", MULTIBOOT_MAGIC, 0, -MULTIBOOT_MAGIC & 0xFFFFFFFF)
    payload = mb + code
    ehdr_size, phdr_size = 52, 32
    offset = ehdr_size + phdr_size
    ident = b"\x7fELF\x01\x01\x01" + bytes(9)
    ehdr = ident + struct.pack(
        "<HHIIIIIHHHHHH", 2, 3, 1, paddr + len(mb), ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 40, 0, 0
    )
    phdr = struct.pack("<IIIIIIII", 1, offset, paddr, paddr, len(payload), len(payload) + memsz_extra, 5, 0x1000)
    return ehdr + phdr + payload


def test_aout_kludge_image_loads_and_zeroes_bss(tmp_path: Path) -> None:
    ram = FakeRam()
    ram.mem[0x100030:0x100200] = b"\xff" * 0x1D0
    img = tmp_path / "k.bin"
    img.write_bytes(aout_image(b"\x90\xf4"))
    boot = load_multiboot(str(img), ram.write, RAM, "bench=x")
    assert boot.entry == 0x100020
    assert ram.mem[0x100020:0x100022] == b"\x90\xf4"
    assert ram.mem[0x100022:0x100122] == bytes(0x100)  # bss zeroed
    assert boot.mbi % 0x1000 == 0 and boot.mbi >= boot.image_end


def test_elf32_image_entry_and_memsz(tmp_path: Path) -> None:
    ram = FakeRam()
    ram.mem[0x200000:0x201000] = b"\xee" * 0x1000
    img = tmp_path / "k.elf"
    img.write_bytes(elf32_image(b"\xf4"))
    boot = load_multiboot(str(img), ram.write, RAM)
    assert boot.entry == 0x20000C
    assert ram.mem[0x20000C] == 0xF4
    assert ram.mem[0x20000D : 0x20000D + 0x40] == bytes(0x40)


def test_multiboot_info_has_memory_cmdline_and_map(tmp_path: Path) -> None:
    ram = FakeRam()
    img = tmp_path / "k.bin"
    img.write_bytes(aout_image(b"\xf4"))
    boot = load_multiboot(str(img), ram.write, RAM, "bench=inl_pmtimer iterations=5", reserved=[(0xE0000, 0x20000)])
    flags = ram.u32(boot.mbi)
    assert flags & 1 and flags & 4 and flags & 0x40
    assert ram.u32(boot.mbi + 4) == 639  # mem_lower, KiB
    assert ram.u32(boot.mbi + 8) == (RAM - (1 << 20)) >> 10  # mem_upper, KiB above 1 MiB
    assert ram.cstr(ram.u32(boot.mbi + 16)) == f"{img} bench=inl_pmtimer iterations=5".encode()
    length, addr = ram.u32(boot.mbi + 44), ram.u32(boot.mbi + 48)
    entries = [struct.unpack_from("<IQQI", ram.mem, addr + off) for off in range(0, length, 24)]
    assert (20, 0xE0000, 0x20000, 2) in entries
    assert entries[-1] == (20, 0x100000, RAM - 0x100000, 1)
    assert BOOTLOADER_MAGIC == 0x2BADB002


@pytest.mark.parametrize(
    "content,words",
    [
        (b"\x7fELF" + bytes(200), "not a multiboot image"),
        (b"hello world" * 10, "not a multiboot image"),
        (struct.pack("<III", MULTIBOOT_MAGIC, 0, 0), "not a multiboot image"),  # bad checksum
        (struct.pack("<III", MULTIBOOT_MAGIC, 0, -MULTIBOOT_MAGIC & 0xFFFFFFFF) + bytes(64), "not an ELF"),
        (struct.pack("<III", MULTIBOOT_MAGIC, 0x8, -(MULTIBOOT_MAGIC + 8) & 0xFFFFFFFF), "unsupported"),
    ],
)
def test_bad_images_are_rejected_with_a_reason(tmp_path: Path, content: bytes, words: str) -> None:
    img = tmp_path / "bad"
    img.write_bytes(content)
    with pytest.raises(ImageError, match=words):
        load_multiboot(str(img), FakeRam().write, RAM)


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_multiboot(str(tmp_path / "nope"), FakeRam().write, RAM)


def test_segment_beyond_ram_is_rejected(tmp_path: Path) -> None:
    img = tmp_path / "k.elf"
    img.write_bytes(elf32_image(b"\xf4", paddr=RAM - 4))
    with pytest.raises(ImageError, match="outside RAM"):
        load_multiboot(str(img), FakeRam().write, RAM)


def test_header_must_be_in_first_8k() -> None:
    hdr = struct.pack("<III", MULTIBOOT_MAGIC, 0, -MULTIBOOT_MAGIC & 0xFFFFFFFF)
    assert find_header(bytes(8180) + hdr) is not None
    assert find_header(bytes(8192) + hdr) is None
    assert find_header(bytes(2) + hdr) is None  # not 32-bit aligned


# -- ACPI ------------------------------------------------------------------------
def _checksum_ok(blob: bytes, off: int, length: int) -> bool:
    return sum(blob[off : off + length]) & 0xFF == 0


@pytest.mark.parametrize("ncpus", [1, 2, 8])
def test_acpi_tables_are_findable_and_consistent(ncpus: int) -> None:
    base = 0xF0000
    lay, blob = build_acpi_tables(base, ncpus)

    def at(addr: int) -> int:
        return addr - base

    assert blob[0:8] == b"RSD PTR " and _checksum_ok(blob, 0, 20)
    rsdt = struct.unpack_from("<I", blob, 16)[0]
    assert blob[at(rsdt) : at(rsdt) + 4] == b"RSDT"
    rsdt_len = struct.unpack_from("<I", blob, at(rsdt) + 4)[0]
    assert _checksum_ok(blob, at(rsdt), rsdt_len)
    tables = {}
    for off in range(36, rsdt_len, 4):
        addr = struct.unpack_from("<I", blob, at(rsdt) + off)[0]
        sig = blob[at(addr) : at(addr) + 4]
        length = struct.unpack_from("<I", blob, at(addr) + 4)[0]
        assert _checksum_ok(blob, at(addr), length), sig
        tables[sig] = at(addr)
    fadt = tables[b"FACP"]
    assert struct.unpack_from("<I", blob, fadt + 76)[0] == PM_TIMER_PORT == 0x608
    assert blob[fadt + 91] == 4  # PM_TMR_LEN
    assert not struct.unpack_from("<I", blob, fadt + 112)[0] & (1 << 8)  # 24-bit timer
    madt = tables[b"APIC"]
    assert struct.unpack_from("<I", blob, madt + 36)[0] == LAPIC_ADDR
    madt_len = struct.unpack_from("<I", blob, madt + 4)[0]
    off, apic_ids, ioapics = madt + 44, [], []
    while off < madt + madt_len:
        kind, length = blob[off], blob[off + 1]
        if kind == 0:
            apic_ids.append(blob[off + 3])
            assert struct.unpack_from("<I", blob, off + 4)[0] & 1
        elif kind == 1:
            ioapics.append(struct.unpack_from("<I", blob, off + 4)[0])
        off += length
    assert apic_ids == list(range(ncpus))
    assert ioapics == [IOAPIC_ADDR]
    dsdt = struct.unpack_from("<I", blob, fadt + 40)[0]
    assert blob[at(dsdt) : at(dsdt) + 4] == b"DSDT"
