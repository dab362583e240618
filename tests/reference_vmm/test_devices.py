"""Devices in isolation: PM timer, serial, isa-debug-exit, PCI configuration space."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from vmtrace.reference_vmm.devices import DebugExit, PciBus, PmTimer, Serial16550
from vmtrace.reference_vmm.devices.pm_timer import PM_TIMER_HZ


class FakeClock:
    def __init__(self) -> None:
        self.ns = 1_000_000

    def __call__(self) -> int:
        return self.ns


def test_pm_timer_counts_at_3_579545_mhz() -> None:
    clock = FakeClock()
    pm = PmTimer(clock)
    assert pm.read(0, 4) == 0
    clock.ns += 1_000_000_000
    assert pm.read(0, 4) == PM_TIMER_HZ & 0xFFFFFF
    clock.ns += 1000  # 1 us is 3.58 ticks
    assert pm.read(0, 4) - (PM_TIMER_HZ & 0xFFFFFF) in (3, 4)


@given(st.integers(0, 10**13))
def test_pm_timer_is_24_bit_and_wraps(elapsed_ns: int) -> None:
    clock = FakeClock()
    pm = PmTimer(clock)
    clock.ns += elapsed_ns
    value = pm.read(0, 4)
    assert 0 <= value <= 0xFFFFFF
    assert value == (elapsed_ns * PM_TIMER_HZ // 10**9) % (1 << 24)


def test_pm_timer_real_clock_is_monotonic_modulo_wrap() -> None:
    pm = PmTimer()
    prev = pm.read(0, 4)
    for _ in range(1000):
        now = pm.read(0, 4)
        assert (now - prev) & 0xFFFFFF < 1 << 23  # never goes backwards (mod 2**24)
        prev = now
    time.sleep(0.01)
    assert (pm.read(0, 4) - prev) & 0xFFFFFF >= 0.009 * PM_TIMER_HZ


def test_serial_transmits_bytes_and_reports_empty_transmitter() -> None:
    out: list[bytes] = []
    uart = Serial16550(out.append)
    for ch in b"ok\n":
        uart.write(0, ch, 1)
    assert b"".join(out) == b"ok\n"
    assert uart.read(5, 1) & 0x60 == 0x60  # LSR: THR empty, transmitter empty
    uart.write(3, 0x80, 1)  # DLAB: offsets 0/1 are the divisor latch
    uart.write(0, 0x01, 1)
    uart.write(1, 0x00, 1)
    assert uart.divisor == 1 and b"".join(out) == b"ok\n"


def test_debug_exit_uses_qemu_status_convention() -> None:
    seen: list[int] = []
    dev = DebugExit(seen.append)
    dev.write(0, 0, 4)
    dev.write(0, 3, 4)
    assert seen == [1, 7]


def _cfg(bus: PciBus, dev: int, reg: int, size: int = 4, offset: int = 0) -> int:
    bus._index_write(0, 0x80000000 | (dev << 11) | reg, 4)
    return bus._data_read(offset, size)


def test_pci_host_bridge_and_empty_slots() -> None:
    bus = PciBus()
    assert _cfg(bus, 0, 0) == 0x12378086  # vendor 8086, device 1237
    assert _cfg(bus, 0, 8) >> 8 == 0x060000  # class: host bridge
    assert _cfg(bus, 0, 0, size=2, offset=2) == 0x1237
    assert _cfg(bus, 5, 0) == 0xFFFFFFFF  # nobody there
    bus._index_write(0, 0x00000000, 4)  # enable bit clear
    assert bus._data_read(0, 4) == 0xFFFFFFFF
    assert bus._index_read(0, 4) == 0


def test_pci_only_command_register_is_writable() -> None:
    bus = PciBus()
    bus._index_write(0, 0x80000004, 4)
    bus._data_write(0, 0xFFFF0007, 4)
    assert _cfg(bus, 0, 4) & 0xFFFF == 0x0007
    bus._index_write(0, 0x80000000, 4)
    bus._data_write(0, 0, 4)
    assert _cfg(bus, 0, 0) == 0x12378086
