"""virtio-blk and split virtqueues, driven directly: guest memory is a RAM MemoryRegion.

Each test plays the driver with :class:`RingDriver` (requests built by hand,
malformed ones included) and checks what the device answers: the data on
the image and in guest memory, the status byte, the used ring, and for the
mistakes QEMU answers with ``virtio_error``, a broken device that counts the
error and completes nothing until reset.  The live twins on /dev/kvm are in
``test_virtio_blk_live.py``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from tests.reference_vmm.virtio_driver import S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT, Buf, RingDriver
from vmtrace.reference_vmm.block import BlockBackend
from vmtrace.reference_vmm.devices.virtio import VirtIOBlock
from vmtrace.reference_vmm.devices.virtio.blk import BLK_CONFIG_LEN, VIRTIO_BLK_F_FLUSH
from vmtrace.reference_vmm.devices.virtio.virtqueue import (
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
)
from vmtrace.reference_vmm.memory import AddressSpace, MemoryRegion, transaction
from vmtrace.reference_vmm.memory.dma import DmaError, GuestMemory

RAM_SIZE = 4 << 20
MMIO_BASE = 0xFEC00000
RING = 0x10000
HDR = 0x30000
STATUS = 0x30100
DATA = 0x100000
SECTORS = 64


class Rig:
    """Guest RAM, a disk image, a VirtIOBlock on them and a driver for its queue."""

    def __init__(self, tmp: Path, serial: str = "vmtrace-disk0") -> None:
        self.root = MemoryRegion.container_region(None, "system", 1 << 32)
        self.ram = MemoryRegion.ram_region(None, "ram", RAM_SIZE)
        mmio = MemoryRegion.io(None, "mmio", 0x1000, lambda o, s: 0, lambda o, v, s: None)
        with transaction():
            self.root.add_subregion(0, self.ram)
            self.root.add_subregion(MMIO_BASE, mmio)
        self.space = AddressSpace(self.root, "memory")
        self.mem = GuestMemory(self.space)
        self.image = tmp / "disk.img"
        self.content = bytes((i * 7 + i // 512) & 0xFF for i in range(SECTORS * 512))
        self.image.write_bytes(self.content)
        self.backend = BlockBackend(str(self.image))
        self.dev = VirtIOBlock(self.backend, self.mem, serial=serial)
        self.irqs = 0
        self.dev.on_interrupt = self._irq
        self.drv = RingDriver(self.mem.read, self.guest_write, RING)
        self.dev.set_features(1 << VIRTIO_BLK_F_FLUSH)
        self.dev.set_queue_addr(0, RING)
        self.dev.set_status(7)

    def guest_write(self, addr: int, data: bytes) -> None:
        """A guest store: dropped where there is no RAM, as on unassigned memory."""
        if self.mem.is_ram(addr, len(data)):
            self.mem.write(addr, data)

    def _irq(self) -> None:
        self.irqs += 1

    def request(self, rtype: int, sector: int, data: list[Buf], hdr: int = HDR, status: int = STATUS) -> int:
        head = self.drv.blk_request(hdr, rtype, sector, data, status)
        self.drv.offer(head)
        return head

    def kick(self) -> list[tuple[int, int]]:
        self.dev.handle_output(0)
        return self.drv.take_used()

    def status(self, addr: int = STATUS) -> int:
        return self.mem.read(addr, 1)[0]

    def on_disk(self) -> bytes:
        return self.image.read_bytes()

    def close(self) -> None:
        self.backend.close()
        self.space.destroy()


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.close()


# -- the requests a correct driver sends ------------------------------------------------------
def test_read_fills_guest_buffers_with_the_image(rig: Rig) -> None:
    head = rig.request(T_IN, 3, [Buf(DATA, 4096, True), Buf(DATA + 0x2000, 512, True)])
    assert rig.kick() == [(head, 4096 + 512 + 1)]  # used length: every writable byte, status included
    assert rig.status() == S_OK
    assert rig.mem.read(DATA, 4096) + rig.mem.read(DATA + 0x2000, 512) == rig.content[3 * 512 : 3 * 512 + 4608]
    assert rig.dev.requests["read"] == 1 and rig.irqs == 1 and rig.dev.isr == 1


def test_unaligned_guest_buffers_still_read_right(rig: Rig) -> None:
    rig.request(T_IN, 1, [Buf(DATA + 3, 700, True), Buf(DATA + 0x1001, 324, True)])
    rig.kick()
    assert rig.status() == S_OK
    assert rig.mem.read(DATA + 3, 700) + rig.mem.read(DATA + 0x1001, 324) == rig.content[512 : 512 + 1024]
    assert rig.backend.buffered_requests == 1  # O_DIRECT cannot take these buffers


def test_write_lands_on_the_image_byte_for_byte(rig: Rig) -> None:
    payload = os.urandom(8192)
    rig.mem.write(DATA, payload)
    head = rig.request(T_OUT, 10, [Buf(DATA, 4096), Buf(DATA + 4096, 4096)])
    assert rig.kick() == [(head, 1)]
    assert rig.status() == S_OK
    disk = rig.on_disk()
    assert disk[10 * 512 : 10 * 512 + 8192] == payload
    assert disk[: 10 * 512] == rig.content[: 10 * 512] and disk[10 * 512 + 8192 :] == rig.content[10 * 512 + 8192 :]
    assert rig.dev.bytes_written == 8192


def test_flush_and_barrier_bit(rig: Rig) -> None:
    rig.request(T_FLUSH, 0, [])
    rig.kick()
    assert rig.status() == S_OK and rig.dev.requests["flush"] == 1
    rig.request(T_IN | 0x80000000, 0, [Buf(DATA, 512, True)])  # BARRIER is ignored, as QEMU does
    rig.kick()
    assert rig.status() == S_OK and rig.mem.read(DATA, 512) == rig.content[:512]


@pytest.mark.parametrize(
    "serial,room,expect",
    [
        ("vmtrace-disk0", 20, b"vmtrace-disk0\0"),
        ("", 20, b"\0"),
        ("A" * 20, 20, b"A" * 20),  # exactly 20 bytes: no NUL, as the spec allows
        ("vmtrace-disk0", 4, b"vmtr"),
    ],
)
def test_get_id(tmp_path: Path, serial: str, room: int, expect: bytes) -> None:
    r = Rig(tmp_path, serial=serial)
    try:
        r.mem.write(DATA, b"\xff" * 32)
        r.request(T_GET_ID, 0, [Buf(DATA, room, True)])
        r.kick()
        assert r.status() == S_OK
        assert r.mem.read(DATA, room)[: len(expect)] == expect
        assert r.mem.read(DATA + len(expect), 1) == b"\xff"
    finally:
        r.close()


@pytest.mark.parametrize("rtype", [2, 11, 13, 0x10])  # SCSI, discard, write-zeroes (not offered), unknown
def test_unsupported_request_types(rig: Rig, rtype: int) -> None:
    head = rig.request(rtype, 0, [Buf(DATA, 512, True)])
    assert rig.kick() == [(head, 513)]
    assert rig.status() == S_UNSUPP and rig.dev.requests["unsupported"] == 1
    assert not rig.dev.broken


# -- requests a device must refuse without breaking ---------------------------------------
@pytest.mark.parametrize(
    "rtype,sector,length",
    [
        (T_IN, SECTORS, 512),  # starts at the end
        (T_IN, SECTORS - 1, 1024),  # runs past the end
        (T_OUT, SECTORS + 100, 512),
        (T_OUT, 2**64 - 1, 512),  # would wrap a 64-bit sector + count
        (T_IN, 0, 100),  # not a whole sector
        (T_OUT, 0, 513),
    ],
)
def test_bad_sector_ranges_are_ioerr_and_touch_nothing(rig: Rig, rtype: int, sector: int, length: int) -> None:
    rig.mem.write(DATA, b"\x5a" * length)
    head = rig.request(rtype, sector, [Buf(DATA, length, rtype == T_IN)])
    assert rig.kick() == [(head, (length + 1) if rtype == T_IN else 1)]
    assert rig.status() == S_IOERR
    assert rig.on_disk() == rig.content
    assert rig.mem.read(DATA, length) == b"\x5a" * length
    assert rig.dev.requests["ioerr-range"] == 1 and not rig.dev.broken


def test_last_sector_and_empty_request_at_the_end_are_fine(rig: Rig) -> None:
    rig.request(T_IN, SECTORS - 1, [Buf(DATA, 512, True)])
    rig.kick()
    assert rig.status() == S_OK and rig.mem.read(DATA, 512) == rig.content[-512:]
    rig.request(T_IN, SECTORS, [])  # 0 bytes at the end: QEMU's range check passes it
    rig.kick()
    assert rig.status() == S_OK


def test_data_buffers_in_the_wrong_direction_move_nothing(rig: Rig) -> None:
    # QEMU takes a write's data from the readable buffers after the header, a
    # read's from the writable ones before the status: pointed the other way,
    # the request carries no data and completes with S_OK.
    rig.mem.write(DATA, b"\x11" * 512)
    rig.request(T_OUT, 0, [Buf(DATA, 512, True)])
    rig.kick()
    assert rig.status() == S_OK and rig.on_disk() == rig.content
    rig.request(T_IN, 0, [Buf(DATA, 512, False)])
    rig.kick()
    assert rig.status() == S_OK and rig.mem.read(DATA, 512) == b"\x11" * 512


def test_host_io_error_is_ioerr(rig: Rig) -> None:
    rig.backend.sectors += 8  # the device believes in sectors the file does not have
    rig.request(T_IN, SECTORS, [Buf(DATA, 4096, True)])
    rig.kick()
    assert rig.status() == S_IOERR and rig.dev.requests["ioerr-host"] == 1 and not rig.dev.broken


# -- driver mistakes that break the device (QEMU's virtio_error) --------------------------------
def _good_read(rig: Rig) -> None:
    rig.request(T_IN, 0, [Buf(DATA + 0x8000, 512, True)], hdr=HDR + 0x200, status=STATUS + 0x200)


def _broken_cases():
    ram_end = RAM_SIZE

    def data_and_status_outside_ram(r: Rig) -> None:
        r.request(T_IN, 0, [Buf(1 << 40, 512, True)], status=(1 << 40) + 0x1000)  # two bounce windows

    def more_than_a_page_outside_ram(r: Rig) -> None:
        r.request(T_IN, 0, [Buf(ram_end - 256, 256 + 4097, True)])

    def header_and_data_outside_ram(r: Rig) -> None:
        r.drv.offer(r.drv.chain([Buf(ram_end + 0x1000, 16), Buf(MMIO_BASE, 512, True), Buf(STATUS, 1, True)]))

    def loop(r: Rig) -> None:
        r.mem.write(HDR, struct.pack("<IIQ", T_IN, 0, 0))
        r.drv.put_desc(0, HDR, 16, VRING_DESC_F_NEXT, 1)
        r.drv.put_desc(1, DATA, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2)
        r.drv.put_desc(2, STATUS, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1)  # back to the data buffer
        r.drv.next_desc = 3
        r.drv.offer(0)

    def self_loop(r: Rig) -> None:
        r.drv.put_desc(0, HDR, 16, VRING_DESC_F_NEXT, 0)
        r.drv.next_desc = 1
        r.drv.offer(0)

    def next_past_table(r: Rig) -> None:
        r.drv.put_desc(0, HDR, 16, VRING_DESC_F_NEXT, 300)
        r.drv.next_desc = 1
        r.drv.offer(0)

    def readable_after_writable(r: Rig) -> None:
        r.drv.offer(r.drv.chain([Buf(HDR, 16), Buf(DATA, 512, True), Buf(DATA + 0x1000, 512), Buf(STATUS, 1, True)]))

    def zero_sized(r: Rig) -> None:
        r.request(T_IN, 0, [Buf(DATA, 0, True)])

    def no_status(r: Rig) -> None:
        r.mem.write(HDR, struct.pack("<IIQ", T_OUT, 0, 0))
        r.drv.offer(r.drv.chain([Buf(HDR, 16), Buf(DATA, 512)]))

    def no_header(r: Rig) -> None:
        r.drv.offer(r.drv.chain([Buf(DATA, 512, True), Buf(STATUS, 1, True)]))

    def short_header(r: Rig) -> None:
        r.drv.offer(r.drv.chain([Buf(HDR, 8), Buf(STATUS, 1, True)]))

    def head_past_table(r: Rig) -> None:
        r.drv.offer(256)

    def avail_jumps(r: Rig) -> None:
        r.request(
            T_IN,
            0,
            [Buf(DATA, 512, True)],
        )
        r.drv.publish(300)

    def indirect_bad_size(r: Rig) -> None:
        r.drv.put_desc(0, 0x40000, 24, 4, 0)  # INDIRECT, 24 is not a multiple of 16
        r.drv.next_desc = 1
        r.drv.offer(0)

    def indirect_out_of_ram(r: Rig) -> None:
        r.drv.put_desc(0, ram_end - 16, 48, 4, 0)
        r.drv.next_desc = 1
        r.drv.offer(0)

    def nested_indirect(r: Rig) -> None:
        r.drv.put_desc(0, HDR, 16, 4, 0, table=0x40000)
        r.drv.put_desc(0, 0x40000, 16, 4, 0)
        r.drv.next_desc = 1
        r.drv.offer(0)

    return [
        ("buffer-not-in-ram", data_and_status_outside_ram),
        ("buffer-not-in-ram", more_than_a_page_outside_ram),
        ("buffer-not-in-ram", header_and_data_outside_ram),
        ("looped-descriptor", loop),
        ("looped-descriptor", self_loop),
        ("next-out-of-range", next_past_table),
        ("incorrect-order", readable_after_writable),
        ("zero-sized-buffer", zero_sized),
        ("missing-headers", no_status),
        ("missing-headers", no_header),
        ("outhdr-too-short", short_header),
        ("head-out-of-range", head_past_table),
        ("avail-index", avail_jumps),
        ("indirect-size", indirect_bad_size),
        ("indirect-not-in-ram", indirect_out_of_ram),
        ("nested-indirect", nested_indirect),
    ]


@pytest.mark.parametrize("kind,build", _broken_cases(), ids=lambda c: c if isinstance(c, str) else c.__name__)
def test_malformed_chain_breaks_the_device_until_reset(rig: Rig, kind: str, build, capsys) -> None:
    disk_before = rig.on_disk()
    build(rig)
    assert rig.kick() == []  # never completed, as in QEMU
    assert rig.dev.broken and rig.dev.guest_errors == {kind: 1}
    assert rig.on_disk() == disk_before
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "guest error" in err and "Traceback" not in err
    # Broken: a good request is not even looked at.
    _good_read(rig)
    assert rig.kick() == [] and rig.irqs == 0
    # Reset (status 0), set up again: the device works.
    rig.dev.set_status(0)
    rig.dev.reset()
    dev = rig.dev  # a fresh name: mypy still holds broken == True from before the reset
    assert not dev.broken
    rig.drv = RingDriver(rig.mem.read, rig.guest_write, RING)
    rig.dev.set_queue_addr(0, RING)
    rig.dev.set_status(7)
    _good_read(rig)
    assert len(rig.kick()) == 1 and rig.status(STATUS + 0x200) == S_OK


@pytest.mark.parametrize("where", ["straddles-ram-end", "past-4g", "mmio"])
def test_one_data_buffer_outside_ram_is_bounced_as_qemu_does(rig: Rig, where: str) -> None:
    # QEMU maps one non-RAM window per request into its bounce buffer: the
    # read completes, what lands outside RAM goes nowhere.
    addr = {"straddles-ram-end": RAM_SIZE - 256, "past-4g": 1 << 40, "mmio": MMIO_BASE}[where]
    head = rig.request(T_IN, 1, [Buf(addr, 512, True)])
    assert rig.kick() == [(head, 513)]
    assert rig.status() == S_OK and not rig.dev.broken and rig.mem.bounced == 1
    if where == "straddles-ram-end":
        assert rig.mem.read(RAM_SIZE - 256, 256) == rig.content[512:768]


def test_header_outside_ram_reads_as_zeros(rig: Rig) -> None:
    # A zero header is a read of sector 0; with no data buffer it moves nothing.
    head = rig.request(T_OUT, 5, [Buf(DATA, 512, True)], hdr=RAM_SIZE + 0x1000)
    assert rig.kick() == [(head, 513)]
    assert rig.status() == S_OK and rig.mem.read(DATA, 512) == rig.content[:512]


def test_status_outside_ram_is_never_seen(rig: Rig) -> None:
    head = rig.request(T_IN, 0, [Buf(DATA, 512, True)], status=1 << 40)
    assert rig.kick() == [(head, 513)]
    assert rig.mem.read(DATA, 512) == rig.content[:512] and not rig.dev.broken


def test_write_from_outside_ram_writes_zeros(rig: Rig) -> None:
    rig.request(T_OUT, 2, [Buf(1 << 40, 512)])
    rig.kick()
    assert rig.status() == S_OK
    assert rig.on_disk()[1024:1536] == bytes(512) and rig.on_disk()[1536:] == rig.content[1536:]


def test_one_report_per_kind_but_every_error_counted(rig: Rig, capsys) -> None:
    for _ in range(3):
        rig.dev.reset()
        rig.drv = RingDriver(rig.mem.read, rig.guest_write, RING)
        rig.dev.set_queue_addr(0, RING)
        rig.drv.offer(256)
        rig.kick()
    assert rig.dev.guest_errors["head-out-of-range"] == 3
    assert capsys.readouterr().err.count("\n") == 1


def test_requests_before_a_malformed_one_complete(rig: Rig) -> None:
    h1 = rig.request(T_IN, 0, [Buf(DATA, 512, True)])
    rig.drv.offer(256)
    assert rig.kick() == [(h1, 513)]
    assert rig.irqs == 1 and rig.dev.broken


def test_rings_outside_ram_break_the_device(rig: Rig) -> None:
    rig.dev.reset()
    rig.dev.set_queue_addr(0, RAM_SIZE - 0x1000)  # the used ring would be past the end of RAM
    assert rig.dev.broken and rig.dev.guest_errors == {"ring-not-in-ram": 1}
    assert not rig.dev.queues[0].ready


# -- ring mechanics ---------------------------------------------------------------------------
def test_indirect_descriptors(rig: Rig) -> None:
    rig.mem.write(HDR, struct.pack("<IIQ", T_IN, 0, 5))
    head = rig.drv.indirect(0x40000, [Buf(HDR, 16), Buf(DATA, 1024, True), Buf(STATUS, 1, True)])
    rig.drv.offer(head)
    assert rig.kick() == [(head, 1025)]
    assert rig.status() == S_OK and rig.mem.read(DATA, 1024) == rig.content[5 * 512 : 7 * 512]


def test_ring_wraps_and_every_request_of_a_batch_completes(rig: Rig) -> None:
    done = []
    for batch in range(5):  # 5 x 80 requests of 3 descriptors through a 256-entry ring
        heads = []
        for k in range(80):
            n = batch * 80 + k
            heads.append(
                rig.request(T_IN, n % SECTORS, [Buf(DATA + 512 * k, 512, True)], hdr=HDR + 16 * k, status=0x38000 + k)
            )
        used = rig.kick()
        # The batch's I/O runs concurrently: the used ring follows the disk's completion order.
        assert sorted(u[0] for u in used) == sorted(heads)
        assert all(rig.status(0x38000 + k) == S_OK for k in range(80))
        assert rig.mem.read(DATA + 512 * 79, 512) == rig.content[((batch * 80 + 79) % SECTORS) * 512 :][:512]
        done += used
    assert len(done) == 400 and rig.drv.used_idx() == 400
    assert rig.irqs == 5  # one interrupt per batch


def test_notification_suppression_and_no_interrupt_flag(rig: Rig) -> None:
    seen: list[int] = []
    completions = rig.dev.backend.completions

    def spy():  # while the device works, the driver is told not to kick
        seen.append(rig.drv.used_flags())
        yield from completions()

    rig.dev.backend.completions = spy  # type: ignore[method-assign]  # a spy on this one backend
    rig.request(T_IN, 0, [Buf(DATA, 512, True)])
    rig.kick()
    assert seen == [1] and rig.drv.used_flags() == 0
    rig.drv.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
    rig.dev.read_isr()
    rig.request(T_IN, 0, [Buf(DATA, 512, True)])
    assert len(rig.kick()) == 1
    assert rig.irqs == 1 and rig.dev.isr == 0  # completed, but no interrupt asked for


def test_isr_read_clears_and_reset_forgets_the_queue(rig: Rig) -> None:
    rig.request(T_IN, 0, [Buf(DATA, 512, True)])
    rig.kick()
    assert rig.dev.read_isr() == 1 and rig.dev.read_isr() == 0
    rig.dev.reset()
    assert not rig.dev.queues[0].ready and rig.dev.status == 0 and rig.dev.guest_features == 0
    rig.request(T_IN, 0, [Buf(DATA, 512, True)])
    assert rig.kick() == []  # no rings: nothing to look at


def test_config_space_and_write_cache(rig: Rig) -> None:
    cfg = rig.dev.get_config()
    assert len(cfg) == BLK_CONFIG_LEN
    capacity, size_max, seg_max = struct.unpack_from("<QII", cfg)
    assert capacity == SECTORS and seg_max == 254
    assert struct.unpack_from("<I", cfg, 20)[0] == 512 and cfg[32] == 1  # blk_size, wce
    assert rig.dev.config_read(0, 4) == SECTORS and rig.dev.config_read(BLK_CONFIG_LEN, 4) == 0xFFFFFFFF
    # A driver that does not negotiate FLUSH gets a write-through disk, as QEMU gives it.
    rig.dev.reset()
    rig.dev.set_features(0)
    rig.dev.set_status(7)
    assert rig.backend.writethrough and rig.dev.get_config()[32] == 0
    rig.dev.reset()
    assert not rig.backend.writethrough


# -- guest memory --------------------------------------------------------------------------------
def test_guest_memory_maps_ram_only(rig: Rig) -> None:
    views = rig.mem.map(0x1000, 0x2000)
    assert sum(len(v) for v in views) == 0x2000
    for v in views:
        v.release()
    for addr, length in [(RAM_SIZE - 1, 2), (MMIO_BASE, 4), (2**64 - 1, 2), (-1, 1)]:
        with pytest.raises(DmaError):
            rig.mem.map(addr, length)
    assert rig.mem.is_ram(0, RAM_SIZE) and not rig.mem.is_ram(0, RAM_SIZE + 1)


# -- the image backend -----------------------------------------------------------------------------
def test_backend_rounds_capacity_down_and_writes_without_o_direct_too(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    img.write_bytes(b"x" * 1000)  # not a whole number of sectors: capacity rounds down
    b = BlockBackend(str(img))
    try:
        assert b.direct and b.sectors == 1  # ext4 and (since Linux 6.6) tmpfs take O_DIRECT
    finally:
        b.close()
    b = BlockBackend(str(img), direct=False)
    b.pwritev(0, [memoryview(bytearray(b"\x07" * 512))])
    b.close()
    assert img.read_bytes() == b"\x07" * 512 + b"x" * 488


def test_backend_short_read_at_the_end_is_an_error(tmp_path: Path) -> None:
    img = tmp_path / "b.img"
    img.write_bytes(bytes(1024))
    b = BlockBackend(str(img))
    try:
        with pytest.raises(OSError):
            b.preadv(512, [memoryview(bytearray(1024))])
    finally:
        b.close()


def _aligned(n: int, fill: int = 0) -> memoryview:
    import mmap

    m = mmap.mmap(-1, max(n, 4096))
    m.write(bytes([fill]) * n)
    return memoryview(m)[:n]


def test_backend_batch_goes_through_linux_aio_and_unaligned_requests_run_synchronously(tmp_path: Path) -> None:
    img = tmp_path / "c.img"
    content = bytes((i * 13) & 0xFF for i in range(64 * 512))
    img.write_bytes(content)
    b = BlockBackend(str(img))
    try:
        reads = [_aligned(4096) for _ in range(8)]
        for k, buf in enumerate(reads):
            b.queue(False, 4096 * (k % 8), [buf], ("r", k))
        odd = memoryview(bytearray(1000))  # not a whole number of sectors: only the page cache takes it
        b.queue(False, 100, [odd], ("odd", 0))
        b.queue(True, 8 * 4096, [_aligned(4096, 0x5A)], ("w", 0))
        done = dict(b.completions())
        assert set(done) == {("r", k) for k in range(8)} | {("odd", 0), ("w", 0)}
        assert all(err is None for err in done.values())
        assert all(bytes(buf) == content[4096 * k :][:4096] for k, buf in enumerate(reads))
        assert bytes(odd) == content[100:1100]
        assert b.aio_requests == 9 and b.buffered_requests == 1
    finally:
        b.close()
    assert img.read_bytes()[8 * 4096 : 9 * 4096] == b"\x5a" * 4096


def test_backend_batch_read_past_the_end_is_an_error_not_a_short_read(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    b = BlockBackend(str(img))
    try:
        b.queue(False, 0, [_aligned(8192)], "past")
        [(tag, err)] = list(b.completions())
        assert tag == "past" and isinstance(err, OSError)
    finally:
        b.close()


def test_backend_without_linux_aio_runs_the_batch_synchronously(tmp_path: Path, monkeypatch) -> None:
    from vmtrace.reference_vmm import block

    def no_aio(*_a, **_k):
        raise OSError(11, "io_setup: Resource temporarily unavailable")

    monkeypatch.setattr(block, "LinuxAio", no_aio)
    img = tmp_path / "e.img"
    img.write_bytes(bytes(range(256)) * 32)
    b = BlockBackend(str(img))
    try:
        buf = _aligned(4096)
        b.queue(False, 4096, [buf], 1)
        assert list(b.completions()) == [(1, None)]
        assert bytes(buf) == (bytes(range(256)) * 32)[4096:] and b.aio_requests == 0
    finally:
        b.close()


def test_backend_write_through_syncs_before_any_write_completes(tmp_path: Path, monkeypatch) -> None:
    import os

    img = tmp_path / "f.img"
    img.write_bytes(bytes(16384))
    b = BlockBackend(str(img))
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    try:
        b.writethrough = True
        b.queue(True, 0, [_aligned(4096, 1)], "w1")
        b.queue(True, 4096, [_aligned(4096, 2)], "w2")
        done = b.completions()
        first = next(done)
        assert synced and first[1] is None  # the batch was stable before the first completion
        assert len(list(done)) == 1 and len(synced) == 1
    finally:
        b.close()
