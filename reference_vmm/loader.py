"""Multiboot (version 1) loader: ELF32 images and the a.out-kludge header.

What a multiboot loader promises the kernel (Multiboot Specification 0.6.96,
section 3.2): 32-bit protected mode, paging off, flat 4 GiB code and data
segments, EAX = 0x2BADB002, EBX = the physical address of the multiboot
information structure.  The information here carries memory sizes, a
memory map, the command line (``"<image path> <args>"``, as QEMU's
``-kernel``/``-append`` pass it) and the boot loader's name.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import NamedTuple

from .errors import ImageError

__all__ = ["MULTIBOOT_MAGIC", "BOOTLOADER_MAGIC", "BootInfo", "MultibootHeader", "find_header", "load_multiboot"]

MULTIBOOT_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
_SEARCH = 8192
_AOUT_KLUDGE = 1 << 16
_SUPPORTED_REQUIRED = 0x7  # page-align modules, memory info, video mode (ignored)
_INFO_MEM, _INFO_CMDLINE, _INFO_MMAP, _INFO_LOADER_NAME = 1 << 0, 1 << 2, 1 << 6, 1 << 9
_LOW_MEM = 0x9FC00  # conventional memory below the EBDA
_HIGH_MEM = 0x100000

#: ``write(guest_phys_addr, data)`` into guest RAM.
WriteFn = Callable[[int, bytes], None]


class MultibootHeader(NamedTuple):
    offset: int  # in the file
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


class BootInfo(NamedTuple):
    """Where to start the BSP: ``entry`` with EAX = BOOTLOADER_MAGIC and EBX = ``mbi``."""

    entry: int
    mbi: int
    image_end: int


def find_header(image: bytes) -> MultibootHeader | None:
    """The multiboot header in the first 8 KiB (32-bit aligned), or None."""
    for off in range(0, min(len(image), _SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", image, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            if flags & _AOUT_KLUDGE:
                if off + 32 > len(image):
                    return None
                return MultibootHeader(off, flags, *struct.unpack_from("<IIIII", image, off + 12))
            return MultibootHeader(off, flags)
    return None


def _load_elf32(image: bytes, path: str, write: WriteFn, ram_size: int) -> tuple[int, int]:
    if image[:4] != b"\x7fELF":
        raise ImageError(f"{path}: multiboot header without the a.out kludge, but not an ELF file")
    if image[4] != 1 or image[5] != 1:
        raise ImageError(f"{path}: not a 32-bit little-endian ELF (multiboot v1 loads ELF32)")
    e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum = struct.unpack_from("<HHIIIIIHHH", image, 16)
    if e_machine != 3:
        raise ImageError(f"{path}: ELF machine {e_machine}, expected EM_386 (3)")
    end = 0
    loaded = 0
    for i in range(e_phnum):
        p_type, p_offset, _, p_paddr, p_filesz, p_memsz, _, _ = struct.unpack_from(
            "<IIIIIIII", image, e_phoff + i * e_phentsize
        )
        if p_type != 1 or p_memsz == 0:  # PT_LOAD only
            continue
        if p_paddr + p_memsz > ram_size or p_offset + p_filesz > len(image):
            raise ImageError(f"{path}: segment at {p_paddr:#x}+{p_memsz:#x} outside RAM ({ram_size >> 20} MiB) or file")
        write(p_paddr, image[p_offset : p_offset + p_filesz] + bytes(p_memsz - p_filesz))
        end = max(end, p_paddr + p_memsz)
        loaded += 1
    if not loaded:
        raise ImageError(f"{path}: ELF image has no loadable segment")
    return e_entry, end


def _load_aout(image: bytes, hdr: MultibootHeader, path: str, write: WriteFn, ram_size: int) -> tuple[int, int]:
    start = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if start < 0 or hdr.header_addr < hdr.load_addr:
        raise ImageError(f"{path}: inconsistent multiboot a.out addresses")
    end = hdr.load_end_addr or (hdr.load_addr + len(image) - start)
    data = image[start : start + (end - hdr.load_addr)]
    bss_end = max(hdr.bss_end_addr, hdr.load_addr + len(data))
    if bss_end > ram_size:
        raise ImageError(f"{path}: image ends at {bss_end:#x}, beyond RAM ({ram_size >> 20} MiB)")
    write(hdr.load_addr, data + bytes(bss_end - hdr.load_addr - len(data)))
    return hdr.entry_addr, bss_end


def _mbi(at: int, ram_size: int, cmdline: bytes, reserved: list[tuple[int, int]]) -> bytes:
    name = b"vmtrace reference VMM\0"
    mmap = [(0, _LOW_MEM, 1), (_LOW_MEM, 0xA0000 - _LOW_MEM, 2)]
    mmap += [(start, length, 2) for start, length in reserved]
    mmap.append((_HIGH_MEM, ram_size - _HIGH_MEM, 1))
    mmap_bytes = b"".join(struct.pack("<IQQI", 20, base, length, kind) for base, length, kind in mmap)
    info = bytearray(120)
    cmd_at = at + len(info)
    mmap_at = cmd_at + len(cmdline) + 1
    mmap_at = (mmap_at + 7) & ~7
    name_at = mmap_at + len(mmap_bytes)
    flags = _INFO_MEM | _INFO_CMDLINE | _INFO_MMAP | _INFO_LOADER_NAME
    struct.pack_into("<IIII", info, 0, flags, _LOW_MEM >> 10, (ram_size - _HIGH_MEM) >> 10, 0)
    struct.pack_into("<I", info, 16, cmd_at)
    struct.pack_into("<II", info, 44, len(mmap_bytes), mmap_at)
    struct.pack_into("<I", info, 64, name_at)
    blob = bytearray(info) + cmdline + b"\0"
    blob += bytes(mmap_at - at - len(blob))
    return bytes(blob + mmap_bytes + name)


def load_multiboot(
    path: str, write: WriteFn, ram_size: int, args: str = "", reserved: list[tuple[int, int]] | None = None
) -> BootInfo:
    """Load ``path`` into guest RAM through ``write`` and build the multiboot information.

    ``reserved`` lists ``(start, length)`` ranges (firmware tables) the memory
    map marks reserved.  Raises :class:`ImageError` for a missing, unreadable or
    non-multiboot image.
    """
    if not os.path.exists(path):
        raise ImageError(f"guest image not found: {path}")
    try:
        with open(path, "rb") as f:
            image = f.read()
    except OSError as e:
        raise ImageError(f"cannot read guest image {path}: {e.strerror}") from None
    hdr = find_header(image)
    if hdr is None:
        raise ImageError(f"{path} is not a multiboot image (no multiboot header in the first 8 KiB)")
    unsupported = hdr.flags & 0xFFFF & ~_SUPPORTED_REQUIRED
    if unsupported:
        raise ImageError(f"{path}: multiboot header requires unsupported features (flags {unsupported:#x})")
    if hdr.flags & _AOUT_KLUDGE:
        entry, end = _load_aout(image, hdr, path, write, ram_size)
    else:
        entry, end = _load_elf32(image, path, write, ram_size)
    mbi_at = (end + 0xFFF) & ~0xFFF
    cmdline = f"{path} {args}".strip().encode()
    mbi = _mbi(mbi_at, ram_size, cmdline, reserved or [])
    if mbi_at + len(mbi) > ram_size:
        raise ImageError(f"{path}: no room for the multiboot information in {ram_size >> 20} MiB")
    write(mbi_at, mbi)
    return BootInfo(entry, mbi_at, end)
