"""The exit handler with a fake vCPU and a fake bus: no KVM needed."""

from __future__ import annotations

import pytest

from vmtrace.reference_vmm.dispatch import Bus
from vmtrace.reference_vmm.kvm import exits as x
from vmtrace.reference_vmm.vcpu import Stop, handle_exit


class FakeBus(Bus):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def pio_read(self, port: int, size: int) -> int:
        self.calls.append(("pio_read", port, size))
        return 0x11223344 & ((1 << (8 * size)) - 1)

    def pio_write(self, port: int, value: int, size: int) -> None:
        self.calls.append(("pio_write", port, value, size))

    def mmio_read(self, addr: int, size: int) -> int:
        self.calls.append(("mmio_read", addr, size))
        return 0xAABBCCDD

    def mmio_write(self, addr: int, value: int, size: int) -> None:
        self.calls.append(("mmio_write", addr, value, size))


class FakeVcpu:
    def __init__(self) -> None:
        self.io_in: list[bytes] = []
        self.mmio_in: list[bytes] = []

    def complete_io_in(self, data: bytes) -> None:
        self.io_in.append(data)

    def complete_mmio_read(self, data: bytes) -> None:
        self.mmio_in.append(data)


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


@pytest.fixture
def vcpu() -> FakeVcpu:
    return FakeVcpu()


def test_io_in_completes_with_little_endian_data(bus: FakeBus, vcpu: FakeVcpu) -> None:
    assert handle_exit(x.IoIn(0x608, 4), vcpu, bus) is None
    assert bus.calls == [("pio_read", 0x608, 4)]
    assert vcpu.io_in == [bytes.fromhex("44332211")]


def test_string_io_in_reads_every_item(bus: FakeBus, vcpu: FakeVcpu) -> None:
    handle_exit(x.IoIn(0x60, 1, count=3), vcpu, bus)
    assert len(bus.calls) == 3
    assert vcpu.io_in == [b"\x44\x44\x44"]


def test_io_out_decodes_value(bus: FakeBus, vcpu: FakeVcpu) -> None:
    handle_exit(x.IoOut(0xF4, 4, bytes.fromhex("07000000")), vcpu, bus)
    assert bus.calls == [("pio_write", 0xF4, 7, 4)]


def test_string_io_out_writes_each_item(bus: FakeBus, vcpu: FakeVcpu) -> None:
    handle_exit(x.IoOut(0x3F8, 1, b"hi!", count=3), vcpu, bus)
    assert [c[2] for c in bus.calls] == [ord("h"), ord("i"), ord("!")]


def test_mmio_read_and_write(bus: FakeBus, vcpu: FakeVcpu) -> None:
    handle_exit(x.MmioRead(0xFED00000, 2), vcpu, bus)
    handle_exit(x.MmioWrite(0xFED00010, b"\x01\x02"), vcpu, bus)
    assert vcpu.mmio_in == [b"\xdd\xcc"]
    assert bus.calls[1] == ("mmio_write", 0xFED00010, 0x0201, 2)


def test_intr_just_continues(bus: FakeBus, vcpu: FakeVcpu) -> None:
    assert handle_exit(x.Intr(), vcpu, bus) is None
    assert bus.calls == []


@pytest.mark.parametrize(
    "ex,status,failure,words",
    [
        (x.Shutdown(), 3, True, "triple fault"),
        (x.InternalError(1, (0x10, 0x20)), 3, True, "KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure)"),
        (x.FailEntry(0x80000021, 1), 3, True, "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x80000021"),
        (x.SystemEvent(x.SYSTEM_EVENT_SHUTDOWN, ()), 0, False, "power off"),
        (x.SystemEvent(x.SYSTEM_EVENT_RESET, ()), 0, False, "reset"),
        (x.SystemEvent(x.SYSTEM_EVENT_CRASH, ()), 3, True, "crash"),
        (x.Unknown(99), 3, True, "reason 99"),
    ],
)
def test_stopping_exits(bus: FakeBus, vcpu: FakeVcpu, ex, status: int, failure: bool, words: str) -> None:
    stop = handle_exit(ex, vcpu, bus)
    assert isinstance(stop, Stop)
    assert (stop.status, stop.guest_failure) == (status, failure)
    assert words in stop.message
    assert stop.machine


def test_hlt_stops_only_the_vcpu(bus: FakeBus, vcpu: FakeVcpu) -> None:
    stop = handle_exit(x.Hlt(), vcpu, bus)
    assert stop is not None and not stop.machine and not stop.guest_failure
