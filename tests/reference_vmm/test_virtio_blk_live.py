"""Live: virtio-blk on /dev/kvm -- ioeventfd and irqfd for real, tiny guests, both service modes.

The tiny guests are hand-assembled 32-bit code: they drive the legacy
registers (optionally moving BAR0 first), publish requests the test laid out
in guest RAM, kick the notify port with ``outw`` and poll the used ring with
IF=0, then exit with the used index.  What the test checks afterwards: the
image byte for byte, the guest's buffers, the status bytes, that the kick
never exited to userspace (ioeventfd), that GSI 11 was raised in the
in-kernel PIC (irqfd), and where the queue work ran in the probe trace.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.reference_vmm import guests as g
from tests.reference_vmm.conftest import run_vmm
from tests.reference_vmm.virtio_driver import S_IOERR, S_OK, T_FLUSH, T_GET_ID, T_IN, T_OUT, Buf, RingDriver
from vmtrace import probes
from vmtrace.reference_vmm.devices.virtio.blk import VirtIOBlock
from vmtrace.reference_vmm.kvm import exits as x
from vmtrace.reference_vmm.kvm.system import Kvm
from vmtrace.reference_vmm.machine import Machine, MachineConfig

BAR = 0xC000
RING = 0x200000
HDRS = 0x210000
STATUSES = 0x218000
DATA = 0x300000
ISR_SAVE = 0x220000
DISK_SECTORS = 2048  # 1 MiB
GSI = 11
TIMEOUT = 60
_BOUND = 50_000_000  # poll iterations; the machine's timeout is the real guard


# -- a guest in bytes ------------------------------------------------------------------------
def _mov_edx(v: int) -> bytes:
    return b"\xba" + struct.pack("<I", v)


def _mov_eax(v: int) -> bytes:
    return b"\xb8" + struct.pack("<I", v)


def _outb(port: int, v: int) -> bytes:
    return _mov_edx(port) + _mov_eax(v) + b"\xee"


def _outw(port: int, v: int) -> bytes:
    return _mov_edx(port) + _mov_eax(v) + b"\x66\xef"


def _outl(port: int, v: int) -> bytes:
    return _mov_edx(port) + _mov_eax(v) + b"\xef"


def blk_guest(drv: RingDriver, n_avail: int, expect_used: int, move_bar_to: int | None = None) -> bytes:
    """Set up queue 0 at ``drv``'s rings, publish ``n_avail`` requests, kick, wait for ``expect_used``."""
    bar = BAR
    code = b""
    if move_bar_to is not None:  # as a guest that assigns BARs itself: config mechanism #1, 00:02.0 BAR0
        code += _outl(0xCF8, 0x80000000 | 2 << 11 | 0x10) + _outl(0xCFC, move_bar_to | 1)
        bar = move_bar_to
    code += _outb(bar + 0x12, 0) + _outb(bar + 0x12, 3)  # reset; ACKNOWLEDGE | DRIVER
    code += _outl(bar + 0x04, 1 << 9)  # guest features: FLUSH
    code += _outw(bar + 0x0E, 0) + _outl(bar + 0x08, drv.pfn)  # queue 0 at the ring
    code += _outb(bar + 0x12, 7)  # DRIVER_OK
    code += b"\x66\xc7\x05" + struct.pack("<IH", drv.avail + 2, n_avail)  # mov word [avail.idx], n
    code += _outw(bar + 0x10, 0)  # kick queue 0
    code += b"\xb9" + struct.pack("<I", _BOUND)  # mov ecx, bound
    # poll: movzx eax, word [used.idx]; cmp eax, expect; jae done; dec ecx; jnz poll
    code += b"\x0f\xb7\x05" + struct.pack("<I", drv.used + 2) + b"\x3d" + struct.pack("<I", expect_used)
    code += b"\x73\x03" + b"\x49" + b"\x75\xef"
    code += _mov_edx(bar + 0x13) + b"\xec" + b"\xa2" + struct.pack("<I", ISR_SAVE)  # in al, ISR; save it
    code += b"\x0f\xb7\x05" + struct.pack("<I", drv.used + 2)  # exit with the used index
    code += _mov_edx(0xF4) + b"\xef" + g.HANG
    return code


class LiveRig:
    """A Machine with a disk, its RAM filled with requests before the vCPU starts."""

    def __init__(self, tmp: Path, blk: str, serial: str = "live-disk") -> None:
        self.tmp = tmp
        self.disk = tmp / "disk.img"
        self.content = os.urandom(DISK_SECTORS * 512)
        self.disk.write_bytes(self.content)
        self.blk = blk
        self.serial = serial
        self.machine: Machine | None = None

    def boot(self, build, n_avail: int, expect_used: int, move_bar_to: int | None = None) -> int:
        """Lay out requests with ``build(drv, write)``, boot the guest that publishes ``n_avail`` of them."""
        layout = RingDriver(lambda a, n: bytes(n), lambda a, d: None, RING)  # only the ring addresses matter
        img = g.write(self.tmp, "blk-guest", blk_guest(layout, n_avail, expect_used, move_bar_to))
        self.machine = m = Machine(
            MachineConfig(
                image=str(img),
                mem_mb=16,
                timeout_s=TIMEOUT,
                disk=str(self.disk),
                blk=self.blk,
                disk_serial=self.serial,
                serial_out=lambda b: None,
            )
        )
        self.drv = RingDriver(m.address_space_memory.read_bytes, m.address_space_memory.write_bytes, RING)
        build(self.drv, m.address_space_memory.write_bytes)
        return m.run()

    def read(self, addr: int, n: int) -> bytes:
        assert self.machine is not None
        return self.machine.address_space_memory.read_bytes(addr, n)

    def close(self) -> None:
        if self.machine is not None:
            self.machine.close()
            self.machine = None


@pytest.fixture(params=["bql", "dataplane"])
def live(request, kvm, tmp_path: Path):
    rig = LiveRig(tmp_path, request.param)
    yield rig
    rig.close()


def _round_trip_requests(rig: LiveRig, payload: bytes):
    def build(drv: RingDriver, write) -> None:
        write(DATA, payload)
        reqs = [
            (T_OUT, 16, [Buf(DATA, 4096), Buf(DATA + 4096, 4096)]),  # write 8 KiB at sector 16
            (T_FLUSH, 0, []),
            (T_IN, 0, [Buf(DATA + 0x10000, 4096, True)]),  # read the first 4 KiB
            (T_IN, 16, [Buf(DATA + 0x20000, 8192, True)]),  # read back what was just written
            (T_GET_ID, 0, [Buf(DATA + 0x30000, 20, True)]),
            (T_IN, DISK_SECTORS, [Buf(DATA + 0x40000, 512, True)]),  # past the end
        ]
        for k, (t, sector, data) in enumerate(reqs):
            drv.offer(drv.blk_request(HDRS + 16 * k, t, sector, data, STATUSES + k), publish=False)

    return build


def test_guest_round_trip_through_ioeventfd_and_irqfd(live: LiveRig) -> None:
    payload = os.urandom(8192)
    status = live.boot(_round_trip_requests(live, payload), n_avail=6, expect_used=6)
    assert status == (6 << 1) | 1, status  # the guest saw all six completions
    assert [live.read(STATUSES + k, 1)[0] for k in range(6)] == [S_OK] * 5 + [S_IOERR]
    assert live.read(DATA + 0x10000, 4096) == live.content[:4096]
    assert live.read(DATA + 0x20000, 8192) == payload
    assert live.read(DATA + 0x30000, 10) == b"live-disk\0"
    assert live.read(ISR_SAVE, 1) == b"\x01"
    m = live.machine
    assert m is not None and m.virtio_blk is not None
    proxy = m.virtio_blk
    assert proxy.notify_exits == 0, "the kick exited to userspace instead of signalling the ioeventfd"
    assert proxy.notifications >= 2  # DRIVER_OK's own look at the queue, then the guest's kick
    assert proxy.vdev.interrupts >= 1
    assert m.vm.get_irqchip(1).chip[1] & (1 << (GSI - 8)), "GSI 11 not pending in the slave PIC's IRR"
    assert isinstance(proxy.vdev, VirtIOBlock)
    assert proxy.vdev.requests == {"write": 1, "flush": 1, "read": 2, "get-id": 1, "ioerr-range": 1}
    live.close()  # a clean stop: everything the guest wrote is on the image
    disk = live.disk.read_bytes()
    assert disk[16 * 512 : 16 * 512 + 8192] == payload
    assert disk[: 16 * 512] == live.content[: 16 * 512] and disk[16 * 512 + 8192 :] == live.content[16 * 512 + 8192 :]


def test_guest_moves_the_bar_and_the_ioeventfd_follows(kvm, tmp_path: Path) -> None:
    rig = LiveRig(tmp_path, "dataplane")
    try:

        def build(drv: RingDriver, write) -> None:
            drv.offer(drv.blk_request(HDRS, T_IN, 1, [Buf(DATA, 512, True)], STATUSES), publish=False)

        assert rig.boot(build, n_avail=1, expect_used=1, move_bar_to=0xD000) == 3
        m = rig.machine
        assert m is not None and m.virtio_blk is not None
        assert m.virtio_blk.bars[0].mapped_at == 0xD000 and m.virtio_blk._ioeventfd_port == 0xD010
        assert m.virtio_blk.notify_exits == 0
        assert rig.read(DATA, 512) == rig.content[512:1024]
    finally:
        rig.close()


def test_malformed_request_is_counted_and_the_vmm_keeps_running(live: LiveRig, capsys) -> None:
    def build(drv: RingDriver, write) -> None:
        drv.offer(drv.blk_request(HDRS, T_IN, 0, [Buf(DATA, 512, True)], STATUSES), publish=False)
        write(HDRS + 16, struct.pack("<IIQ", T_IN, 0, 0))
        a = drv.next_desc
        drv.put_desc(a, HDRS + 16, 16, 1, a + 1)  # header -> data -> status -> data ...: a loop
        drv.put_desc(a + 1, DATA + 0x1000, 512, 3, a + 2)
        drv.put_desc(a + 2, STATUSES + 1, 1, 3, a + 1)
        drv.next_desc = a + 3
        drv.offer(a, publish=False)
        drv.offer(drv.blk_request(HDRS + 32, T_IN, 0, [Buf(DATA + 0x2000, 512, True)], STATUSES + 2), publish=False)

    assert live.boot(build, n_avail=3, expect_used=1) == 3
    m = live.machine
    assert m is not None and m.virtio_blk is not None
    vdev = m.virtio_blk.vdev
    assert isinstance(vdev, VirtIOBlock)
    assert vdev.broken and vdev.guest_errors == {"looped-descriptor": 1}
    assert vdev.requests == {"read": 1}  # the request after the bad one was never looked at
    err = capsys.readouterr().err
    assert "guest error: Looped descriptor" in err and "Traceback" not in err
    stats = m.stats_text()
    assert "guest errors that broke the device: 1 (last: Looped descriptor)" in stats
    assert "looped-descriptor: 1" in stats


# -- what the probe trace shows ----------------------------------------------------------------
def _recorded_run(tmp_path: Path, blk: str):
    spool = tmp_path / f"spool-{blk}"
    rig = LiveRig(tmp_path, blk)

    def build(drv: RingDriver, write) -> None:
        for k in range(8):
            drv.offer(
                drv.blk_request(HDRS + 16 * k, T_IN, 8 * k, [Buf(DATA + 4096 * k, 4096, True)], STATUSES + k),
                publish=False,
            )

    probes.enable(str(spool))
    try:
        assert rig.boot(build, n_avail=8, expect_used=8) == 17
    finally:
        probes.disable()
        m = rig.machine
        main_tid = threading.get_native_id()
        io_tids = {t.native_id for t in m.iothreads} if m is not None else set()
        rig.close()
    names = {int(i): n for i, n in (line.rstrip("\n").split("\t", 1) for line in open(str(spool) + ".names"))}
    records = [
        (ts, tid, code, names[nid], addr)
        for ts, tid, code, _sw, nid, addr, _v in probes.RECORD.iter_unpack(spool.read_bytes())
    ]
    return records, main_tid, io_tids


def _spans(records, name: str):
    return [(tid, ts) for ts, tid, code, n, _a in records if n == name and code == probes.EVENT_CODES["dispatch_begin"]]


def test_trace_bql_mode_takes_the_bql_for_queue_work(kvm, tmp_path: Path) -> None:
    records, main_tid, _ = _recorded_run(tmp_path, "bql")
    work = _spans(records, "virtio-blk")
    assert work and {tid for tid, _ in work} == {main_tid}  # the main loop services the queue
    held = collections.defaultdict(bool)
    waited_before = 0
    last_begin: dict[int, int] = {}
    for ts, tid, code, name, _a in records:
        if name == "BQL" and code == probes.EVENT_CODES["lock_begin"]:
            last_begin[tid] = ts
        elif name == "BQL":
            held[tid] = code == probes.EVENT_CODES["lock_acquired"]
        elif name == "virtio-blk" and code == probes.EVENT_CODES["dispatch_begin"]:
            assert held[tid], "queue work outside the BQL in bql mode"
            waited_before += tid in last_begin
    assert waited_before == len(work)  # each batch first waited for (took) the BQL
    assert len(_spans(records, "virtio-blk-read")) == 8 and _spans(records, "virtio-blk-irq")


def test_trace_dataplane_mode_has_no_bql_on_the_request_path(kvm, tmp_path: Path) -> None:
    records, main_tid, io_tids = _recorded_run(tmp_path, "dataplane")
    work = _spans(records, "virtio-blk")
    assert work and {tid for tid, _ in work} <= io_tids  # IO iothread0
    io_events = [r for r in records if r[1] in io_tids]
    assert not [r for r in io_events if r[3] == "BQL"], "the IOThread touched the BQL"
    assert {tid for tid, _ in _spans(records, "virtio-blk-read")} <= io_tids
    assert {tid for tid, _ in _spans(records, "virtio-blk-irq")} <= io_tids
    # No vCPU dispatched the notify port: the kick never left the kernel.
    assert not [r for r in records if r[3] == "virtio-pci" and r[4] == BAR + 0x10]


# -- KVM's ioeventfd and irqfd on their own, with a real-mode blob --------------------------------
def test_ioeventfd_outw_signals_the_eventfd_without_an_exit(kvm) -> None:
    k = Kvm()
    vm = k.create_vm()
    mem = mmap.mmap(-1, 0x10000)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    vcpu = None
    try:
        vm.set_tss_addr(0xFFFBD000)
        vm.set_user_memory_region(0, 0, 0x10000, ctypes.addressof(ctypes.c_char.from_buffer(mem)))
        # mov dx, 0xc010; xor ax, ax; out dx, ax; mov ax, 1; out dx, ax; hlt   (16-bit real mode)
        code = bytes.fromhex("BA10C031C0EFB80100EFF4")
        mem[0x1000 : 0x1000 + len(code)] = code
        vm.ioeventfd(efd, 0xC010, 2, pio=True, datamatch=0)
        vcpu = vm.create_vcpu(0)
        s = vcpu.get_sregs()
        s.cs.base, s.cs.selector = 0, 0
        vcpu.set_sregs(s)
        r = vcpu.get_regs()
        r.rip, r.rflags = 0x1000, 2
        vcpu.set_regs(r)
        first = vcpu.run()
        # The matching write (0) never reached userspace; the other value (1) did.
        assert first == x.IoOut(0xC010, 2, b"\x01\x00", 1), first
        assert os.eventfd_read(efd) == 1
        assert vcpu.run() == x.Hlt()
        vm.ioeventfd(efd, 0xC010, 2, pio=True, deassign=True, datamatch=0)
    finally:
        if vcpu is not None:
            vcpu.close()
        vm.close()
        k.close()
        os.close(efd)
        mem.close()


def test_irqfd_raises_the_gsi_in_the_kernel_irqchip(kvm) -> None:
    k = Kvm()
    vm = k.create_vm()
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        vm.create_irqchip()
        vm.irqfd(efd, GSI)
        assert not vm.get_irqchip(1).chip[1] & (1 << (GSI - 8))
        os.eventfd_write(efd, 1)
        deadline = time.monotonic() + 5  # KVM injects a PIC/IOAPIC route from a work item
        while not vm.get_irqchip(1).chip[1] & (1 << (GSI - 8)):
            assert time.monotonic() < deadline, "irqfd signal never reached the PIC"
            time.sleep(0.005)
        vm.irqfd(efd, GSI, deassign=True)
    finally:
        vm.close()
        k.close()
        os.close(efd)


# -- the CLI ------------------------------------------------------------------------------------------
def test_benchmark_guest_boots_with_a_disk_in_both_modes(kvm, guest_image: Path, tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    for blk in ("bql", "dataplane"):
        r = run_vmm(
            [
                "run",
                "--image",
                str(guest_image),
                "--disk",
                str(disk),
                "--blk",
                blk,
                "--stats",
                "--timeout",
                "60",
                "--append",
                "bench=inl_pmtimer iterations=100",
            ],
            timeout=90,
        )
        assert r.returncode == 1, r.stderr
        assert "VMTRACE-BENCH end status=0" in r.stdout
        assert "virtio-blk (" + ("IO iothread0" if blk == "dataplane" else "main loop, BQL") in r.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--blk", "dataplane"], "--blk needs --disk"),
        (["--disk", "/nonexistent/disk.img"], "disk image not found"),
        (["--disk", "/tmp"], "disk image not found (or not a file): /tmp"),
        (["--disk", "/etc/hostname", "--blk", "iothread"], "argument --blk: invalid choice"),
    ],
)
def test_bad_disk_arguments_are_one_line_errors(guest_image: Path, args: list[str], message: str) -> None:
    r = run_vmm(["run", "--image", str(guest_image), *args], timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reference-vmm: error: ") and message in lines[0], r.stderr


def test_disk_that_cannot_be_opened_is_a_one_line_error(kvm, guest_image: Path) -> None:
    notes = "/sys/kernel/notes"  # a regular file nobody, root included, may open for writing
    if not os.path.isfile(notes):
        pytest.skip(f"needs {notes}")
    r = run_vmm(["run", "--image", str(guest_image), "--disk", notes, "--timeout", "10"], timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip() == f"reference-vmm: error: cannot open disk image {notes}: Permission denied"
