"""What a virtio-blk run must show on either VMM, shared by the QEMU tests and
their reference-VMM twins so that both answer the guest to the same checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vmtrace.bench import run_bench
from vmtrace.blk import BLOCK, SECTOR, pattern, region_checksum

DISK_BYTES = 16 << 20


def random_disk(path: Path) -> Path:
    """A raw image of random bytes: a read that returns the wrong sector, or
    zeros, cannot match by accident."""
    path.write_bytes(os.urandom(DISK_BYTES))
    return path


def verify_write_and_read(vmm: str, disk: Path, mode: str) -> Any:
    """Run ``blk_verify`` on 2 vCPUs and check the image after a clean stop:
    the pattern written byte for byte, nothing else touched, and the guest's
    checksums equal to the image's.  Returns the bench result."""
    before = disk.read_bytes()
    seed, wsec, wblocks, rsec, rblocks = 0xC0FFEE, 1000, 10, 20003, 6  # odd sectors: not block-aligned
    res = run_bench(
        vmm,
        "blk_verify",
        2,
        1,
        queue_depth=3,
        blk=mode,
        disk=disk,
        timeout_s=90,
        guest_args=f"seed={seed} write_sector={wsec} write_blocks={wblocks} read_sector={rsec} read_blocks={rblocks}",
    )
    assert res.exit_status == 1 and res.errors == 0
    assert res.checks["blk_readback_ok"] == 1 and res.checks["blk_flush_ok"] == 1
    after = disk.read_bytes()
    lo, hi = wsec * SECTOR, wsec * SECTOR + wblocks * BLOCK
    assert after[lo:hi] == pattern(seed, wsec, wblocks * BLOCK // SECTOR)
    assert after[:lo] == before[:lo] and after[hi:] == before[hi:], "bytes outside the written region changed"
    sums = {c["region"]: c for c in res.checksums}
    assert int(sums["written"]["fnv"], 16) == region_checksum(after, wsec, wblocks)
    assert int(sums["read"]["fnv"], 16) == region_checksum(before, rsec, rblocks)
    assert (int(sums["read"]["sector"]), int(sums["read"]["blocks"])) == (rsec, rblocks)
    # Writes + read-backs + reads, averaged over the two vCPUs.
    assert res.iterations == round((2 * wblocks + rblocks) / 2)
    return res
