"""The benchmark guest's virtio-blk side, seen from the host.

What a test or a benchmark needs besides running the guest: the disk image
the guest works on, the guest's ``blk_verify`` pattern and checksums
recomputed from an image file (``reference_vmm/guest/README.md``, "The blk
benchmarks"), and what QEMU's virtio-blk answers to each malformed request
``blk_malformed`` sends, which the reference VMM is meant to match.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from .errors import VmtraceError

__all__ = [
    "BLK_BENCHES",
    "BLK_MODES",
    "SECTOR",
    "BLOCK",
    "DEFAULT_DISK_BYTES",
    "QEMU_MALFORMED",
    "make_disk",
    "check_disk",
    "pattern",
    "fnv_words",
    "region_checksum",
    "supports_o_direct",
]

BLK_BENCHES = ("blk_randread", "blk_randwrite", "blk_verify", "blk_malformed", "blk_mixed")
BLK_MODES = ("bql", "dataplane")
SECTOR = 512
BLOCK = 4096
DEFAULT_DISK_BYTES = 64 << 20

_MASK = 0xFFFFFFFF
_SECTOR_MUL = 0x9E3779B1
_WORD_MUL = 0x85EBCA77
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193

# QEMU 7.2 virtio-blk-pci, disable-modern=on, num-queues=1, BQL and IOThread
# alike: kind -> (answered, status, used_len, then_ok).  ``answered`` 0 means
# QEMU called virtio_error(): the device ignores the queue until a reset (a
# legacy device cannot say NEEDS_RESET).  ``status`` 255 means the status
# byte was never written.  Recorded with ``bench=blk_malformed``; see the
# guest README for why each answer is what it is.
QEMU_MALFORMED: dict[str, tuple[int, int | None, int | None, int]] = {
    "data_addr_outside_ram": (1, 0, 4097, 1),
    "hdr_addr_outside_ram": (1, 0, 4097, 1),
    "status_addr_outside_ram": (1, 255, 4097, 1),
    "data_and_status_outside_ram": (0, None, None, 0),
    "chain_loop": (0, None, None, 0),
    "next_out_of_range": (0, None, None, 0),
    "avail_head_out_of_range": (0, None, None, 0),
    "avail_idx_too_far": (0, None, None, 0),
    "sector_past_end": (1, 1, 4097, 1),
    "sector_straddles_end": (1, 1, 4097, 1),
    "hdr_device_writable": (0, None, None, 0),
    "hdr_too_short": (0, None, None, 0),
    "read_data_device_readable": (1, 0, 1, 1),
    "write_data_device_writable": (1, 0, 4097, 1),
    "status_device_readable": (0, None, None, 0),
    "no_status_desc": (1, 255, 4096, 1),
    "data_len_not_sector_multiple": (1, 1, 1001, 1),
    "unknown_type": (1, 2, 4097, 1),
}


def pattern(seed: int, sector: int, sectors: int = 1) -> bytes:
    """What ``blk_verify`` writes to ``sectors`` 512-byte sectors from
    ``sector``: word i of sector s is seed ^ s*0x9e3779b1 ^ i*0x85ebca77
    (32-bit, little-endian, s modulo 2**32)."""
    words: list[int] = []
    for s in range(sector, sector + sectors):
        base = (seed ^ (s * _SECTOR_MUL)) & _MASK
        words.extend(base ^ ((i * _WORD_MUL) & _MASK) for i in range(SECTOR // 4))
    return struct.pack(f"<{len(words)}I", *words)


def fnv_words(data: bytes, h: int = _FNV_OFFSET) -> int:
    """32-bit FNV-1a over little-endian 32-bit words (not bytes), as the guest."""
    for (w,) in struct.iter_unpack("<I", data):
        h = ((h ^ w) * _FNV_PRIME) & _MASK
    return h


def region_checksum(image: Path | bytes, sector: int, blocks: int) -> int:
    """The guest's checksum of ``blocks`` 4 KiB blocks from ``sector``: FNV
    over the blocks' own FNV values, in block order."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image[sector * SECTOR : sector * SECTOR + blocks * BLOCK])
    else:
        with open(image, "rb") as f:
            f.seek(sector * SECTOR)
            data = f.read(blocks * BLOCK)
    if len(data) != blocks * BLOCK:
        raise VmtraceError(f"the region at sector {sector} ({blocks} blocks) runs past the end of the image")
    block_sums = b"".join(struct.pack("<I", fnv_words(data[i : i + BLOCK])) for i in range(0, len(data), BLOCK))
    return fnv_words(block_sums)


def make_disk(path: Path, size: int = DEFAULT_DISK_BYTES) -> Path:
    """A raw image of ``size`` bytes whose every 4 KiB block holds its own
    block number (64-bit little-endian, repeated).  Real data rather than a
    sparse file: reading a hole costs the host no I/O at all, which would
    flatter every configuration alike and hide the device path's cost."""
    if size <= 0 or size % BLOCK:
        raise VmtraceError(f"a disk image size must be a positive multiple of 4096, not {size}")
    chunk_blocks = 256
    with open(path, "wb") as f:
        for first in range(0, size // BLOCK, chunk_blocks):
            n = min(chunk_blocks, size // BLOCK - first)
            f.write(b"".join(struct.pack("<Q", b) * (BLOCK // 8) for b in range(first, first + n)))
    return path


def check_disk(path: Path) -> int:
    """The size of the raw image at ``path``, after checking that the guest
    can use it; raises VmtraceError saying what is wrong."""
    try:
        st = path.stat()
    except OSError as err:
        raise VmtraceError(f"--disk {path}: {err.strerror}") from None
    if not path.is_file():
        raise VmtraceError(f"--disk {path} is not a regular file (a raw image is expected)")
    if st.st_size < BLOCK or st.st_size % SECTOR:
        raise VmtraceError(
            f"--disk {path} is {st.st_size} bytes: a raw image of whole 512-byte sectors, at least 4 KiB, is expected"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise VmtraceError(f"--disk {path} is not readable and writable by this user")
    return st.st_size


def supports_o_direct(path: Path) -> bool:
    """Whether the file system under ``path`` takes O_DIRECT (QEMU's
    cache=none needs it; tmpfs refuses it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    os.close(fd)
    return True
