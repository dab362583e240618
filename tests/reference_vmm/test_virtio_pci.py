"""Legacy virtio-pci without KVM: configuration space, BAR0 and its registers, notifications.

The function sits on a PciBus whose I/O BARs land in a real I/O AddressSpace;
the guest's side is played through ports 0xcf8/0xcfc and BAR0.  With no VM
the notify port is not an ioeventfd and the interrupt eventfd is injected
nowhere; ``test_virtio_blk_live.py`` runs the same paths on /dev/kvm.
"""

from __future__ import annotations

import os
import select
import struct
from pathlib import Path

import pytest

from tests.reference_vmm.test_virtio_blk import DATA, RING, SECTORS, STATUS, Rig
from tests.reference_vmm.virtio_driver import S_OK, T_IN, Buf, RingDriver
from vmtrace.reference_vmm.devices.pci import PciBus
from vmtrace.reference_vmm.devices.virtio import VirtIOPCIProxy
from vmtrace.reference_vmm.iothread import AioContext
from vmtrace.reference_vmm.memory import AddressSpace, MemoryRegion, transaction

SLOT = 2
BAR = 0xC000


class PciRig:
    def __init__(self, tmp: Path) -> None:
        self.blk = Rig(tmp)
        self.blk.dev.reset()  # the guest drives it from scratch through the registers
        self.io_root = MemoryRegion.io(None, "io", 1 << 16, lambda o, s: (1 << (8 * s)) - 1, lambda o, v, s: None)
        self.bus = PciBus(self.io_root)
        with transaction():
            self.io_root.add_subregion(0xCF8, self.bus.index_region)
            self.io_root.add_subregion(0xCFC, self.bus.data_region)
        self.io = AddressSpace(self.io_root, "I/O")
        self.proxy = VirtIOPCIProxy(self.blk.dev, 0x1001, 0x010000, io_base=BAR, gsi=11)
        self.bus.plug(SLOT, 0, self.proxy)
        self.ctx = AioContext()
        self.proxy.attach(self.ctx, "test")

    def cfg_read(self, reg: int, size: int = 4) -> int:
        self.io.write(0xCF8, 0x80000000 | SLOT << 11 | (reg & 0xFC), 4)
        return self.io.read(0xCFC + (reg & 3), size)

    def cfg_write(self, reg: int, value: int, size: int = 4) -> None:
        self.io.write(0xCF8, 0x80000000 | SLOT << 11 | (reg & 0xFC), 4)
        self.io.write(0xCFC + (reg & 3), value, size)

    def setup_queue(self, base: int = BAR, features: int = 1 << 9) -> RingDriver:
        io = self.io
        io.write(base + 0x12, 0, 1)
        io.write(base + 0x12, 3, 1)
        io.write(base + 0x04, features, 4)
        io.write(base + 0x0E, 0, 2)
        drv = RingDriver(self.blk.mem.read, self.blk.mem.write, RING)
        io.write(base + 0x08, drv.pfn, 4)
        return drv

    def close(self) -> None:
        self.proxy.close()
        self.ctx.close()
        self.io.destroy()
        self.blk.close()


@pytest.fixture
def pci(tmp_path: Path):
    r = PciRig(tmp_path)
    yield r
    r.close()


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_configuration_space_identifies_a_legacy_virtio_blk(pci: PciRig) -> None:
    assert pci.cfg_read(0x00) == 0x10011AF4
    assert pci.cfg_read(0x08) == 0x01000000  # class 0x010000 (SCSI storage controller), revision 0
    assert pci.cfg_read(0x0E, 1) == 0  # header type 0
    assert pci.cfg_read(0x2C) == 0x00021AF4  # subsystem: vendor 0x1af4, id 2 (block)
    assert pci.cfg_read(0x3D, 1) == 1 and pci.cfg_read(0x3C, 1) == 11  # INTA#, GSI 11
    assert pci.cfg_read(0x10) == BAR | 1  # assigned as firmware would, I/O space
    assert pci.cfg_read(0x04, 2) & 1  # I/O decoding on
    assert pci.cfg_read(0x14) == 0 and pci.cfg_read(0x30) == 0  # no other BAR, no ROM


def test_bar_sizing_moving_and_io_decoding(pci: PciRig) -> None:
    assert pci.io.read(BAR + 0x0C, 2) == 256  # QUEUE_NUM through the pre-assigned BAR
    pci.cfg_write(0x10, 0xFFFFFFFF)
    assert pci.cfg_read(0x10) == 0xFFFFFFC1  # 64 bytes of I/O space
    assert pci.io.read(BAR + 0x0C, 2) == 0xFFFF  # unmapped while sized
    pci.cfg_write(0x10, 0xD001)
    assert pci.io.read(0xD00C, 2) == 256 and pci.io.read(BAR + 0x0C, 2) == 0xFFFF
    assert pci.proxy.bars[0].mapped_at == 0xD000
    pci.cfg_write(0x04, 0, 2)  # COMMAND.IO off: the BAR decodes nothing
    assert pci.io.read(0xD00C, 2) == 0xFFFF
    pci.cfg_write(0x04, 1, 2)
    assert pci.io.read(0xD00C, 2) == 256
    pci.cfg_write(0x3C, 5, 1)  # INTERRUPT_LINE is a scratch register
    assert pci.cfg_read(0x3C, 1) == 5 and pci.cfg_read(0x3D, 1) == 1


def test_legacy_registers(pci: PciRig) -> None:
    io, dev = pci.io, pci.blk.dev
    host = io.read(BAR, 4)
    assert host & (1 << 9) and host & (1 << 28)  # FLUSH, INDIRECT_DESC
    io.write(BAR + 0x04, 0xFFFFFFFF, 4)
    assert io.read(BAR + 0x04, 4) == host  # the driver gets what was offered, nothing more
    io.write(BAR + 0x0E, 1, 2)
    assert io.read(BAR + 0x0C, 2) == 0 and io.read(BAR + 0x0E, 2) == 1  # no queue 1
    io.write(BAR + 0x0E, 0, 2)
    io.write(BAR + 0x08, RING >> 12, 4)
    assert io.read(BAR + 0x08, 4) == RING >> 12 and dev.queues[0].ready
    assert io.read(BAR + 0x14, 4) | io.read(BAR + 0x18, 4) << 32 == SECTORS  # capacity
    assert io.read(BAR + 0x14 + 36, 4) == 0xFFFFFFFF  # past the config
    assert io.read(BAR + 0x10, 2) == 0xFFFF and io.read(BAR + 0x01, 1) == 0xFF
    io.write(BAR + 0x12, 3, 1)
    assert io.read(BAR + 0x12, 1) == 3 and pci.cfg_read(0x04, 2) & 0x4  # bus master set for the driver
    io.write(BAR + 0x12, 0, 1)  # reset
    queue = dev.queues[0]  # a fresh name: mypy still holds ready == True from before the reset
    assert io.read(BAR + 0x12, 1) == 0 and not queue.ready and io.read(BAR + 0x04, 4) == 0


def test_request_through_the_registers_and_the_host_notifier(pci: PciRig) -> None:
    drv = pci.setup_queue()
    blk = pci.blk
    head = drv.blk_request(0x30000, T_IN, 2, [Buf(DATA, 1024, True)], STATUS)
    drv.offer(head)
    pci.io.write(BAR + 0x12, 7, 1)  # DRIVER_OK looks at the queue once, even before a kick
    pci.ctx.poll(1)
    assert drv.take_used() == [(head, 1025)]
    assert blk.status() == S_OK and blk.mem.read(DATA, 1024) == blk.content[1024:2048]
    assert os.eventfd_read(pci.proxy.irq_notifier) == 1  # the irqfd would inject GSI 11
    assert pci.io.read(BAR + 0x13, 1) == 1 and pci.io.read(BAR + 0x13, 1) == 0  # ISR, cleared by the read
    head = drv.blk_request(0x30000, T_IN, 3, [Buf(DATA, 512, True)], STATUS)
    drv.offer(head)
    pci.io.write(BAR + 0x10, 0, 2)  # no ioeventfd without KVM: the write exits and signals the notifier
    assert _readable(pci.proxy.host_notifier)
    pci.ctx.poll(1)
    assert drv.take_used() == [(head, 513)]
    assert pci.proxy.notify_exits == 1 and pci.proxy.notifications == 2


def test_notify_for_a_missing_queue_or_a_broken_device_is_dropped(pci: PciRig) -> None:
    drv = pci.setup_queue()
    pci.io.write(BAR + 0x12, 7, 1)
    pci.ctx.poll(1)
    pci.io.write(BAR + 0x10, 5, 2)
    assert not _readable(pci.proxy.host_notifier)
    drv.offer(256)
    pci.io.write(BAR + 0x10, 0, 2)
    pci.ctx.poll(1)
    assert pci.blk.dev.broken
    pci.io.write(BAR + 0x10, 0, 2)
    assert not _readable(pci.proxy.host_notifier)
    pci.io.write(BAR + 0x08, 0, 4)  # legacy: PFN 0 resets the device
    dev = pci.blk.dev  # a fresh name: mypy still holds broken == True from before the reset
    assert not dev.broken and pci.io.read(BAR + 0x12, 1) == 0


def test_detach_stops_queue_work(pci: PciRig) -> None:
    drv = pci.setup_queue()
    pci.io.write(BAR + 0x12, 7, 1)
    pci.proxy.detach()
    drv.offer(drv.blk_request(0x30000, T_IN, 0, [Buf(DATA, 512, True)], STATUS))
    pci.io.write(BAR + 0x10, 0, 2)
    pci.proxy._host_notifier_read()  # as if the loop had already picked the event up
    assert drv.take_used() == []
    pci.proxy.attach(pci.ctx, "test")


def test_stats_lines_show_requests_and_guest_errors(pci: PciRig) -> None:
    drv = pci.setup_queue()
    pci.io.write(BAR + 0x12, 7, 1)
    drv.offer(drv.blk_request(0x30000, T_IN, SECTORS, [Buf(DATA, 512, True)], STATUS))
    drv.offer(256)
    pci.ctx.poll(1)
    text = "\n".join(pci.proxy.stats_lines())
    assert "requests: 1 (read 0, write 0, flush 0, get-id 0, unsupported 0, ioerr-range 1, ioerr-host 0)" in text
    assert "guest errors that broke the device: 1 (last: Guest says index 256 is available)" in text
    assert "head-out-of-range: 1" in text
    assert struct.unpack("<H", pci.blk.mem.read(drv.used + 2, 2))[0] == 1
