"""Tiny multiboot guests assembled from bytes, for live tests that need a guest to misbehave.

Each is an a.out-kludge multiboot image loaded at 1 MiB; the code runs in
32-bit protected mode with flat segments, as the loader promises.
"""

from __future__ import annotations

import struct
from pathlib import Path

MULTIBOOT_MAGIC = 0x1BADB002
LOAD = 0x100000
HEADER = 32
CODE = LOAD + HEADER


def image(code: bytes) -> bytes:
    flags = 1 << 16
    end = CODE + len(code)
    header = struct.pack(
        "<IIIIIIII", MULTIBOOT_MAGIC, flags, -(MULTIBOOT_MAGIC + flags) & 0xFFFFFFFF, LOAD, LOAD, end, end + 64, CODE
    )
    return header + code


def out_byte(port: int, value: int) -> bytes:
    return b"\x66\xba" + struct.pack("<H", port) + b"\xb0" + bytes([value]) + b"\xee"  # mov dx; mov al; out dx, al


def print_text(text: bytes) -> bytes:
    return b"".join(out_byte(0x3F8, c) for c in text)


def exit_with(value: int) -> bytes:
    # mov dx, 0xf4; mov eax, value; out dx, eax; jmp $
    return b"\x66\xba\xf4\x00" + b"\xb8" + struct.pack("<I", value) + b"\xef" + b"\xeb\xfe"


HANG = b"\xeb\xfe"  # jmp $
# mov dx, 0xe00 (nobody claims it); in eax, dx; mov dx, 0xf4; out dx, eax
READ_UNCLAIMED_AND_EXIT = b"\x66\xba\x00\x0e" + b"\xed" + b"\x66\xba\xf4\x00" + b"\xef" + HANG


def triple_fault() -> bytes:
    # lidt [idtr] with a zero limit, then ud2: #UD -> #DF -> shutdown.
    code_len = 7 + 2 + 2
    idtr = CODE + code_len
    return b"\x0f\x01\x1d" + struct.pack("<I", idtr) + b"\x0f\x0b" + HANG + bytes(6)


# Jump into an address no RAM backs: instruction fetch from MMIO cannot be emulated.
JUMP_TO_MMIO = b"\xb8\x00\x00\x00\xf0" + b"\xff\xe0"


def write(tmp: Path, name: str, code: bytes) -> Path:
    path = tmp / name
    path.write_bytes(image(code))
    return path


# mov eax, [0xfed00000] (no device there: MMIO exit, all ones); mov [0xfed00010], eax; exit with eax
MMIO_READ_WRITE_AND_EXIT = b"\xa1\x00\x00\xd0\xfe" + b"\xa3\x10\x00\xd0\xfe" + b"\x66\xba\xf4\x00" + b"\xef" + HANG
