"""The ACPI power-management timer: a free-running 24-bit counter at 3.579545 MHz.

The device of the 2013 talk's benchmark: reading it needs no shared state
beyond a start time, so the region can opt out of the BQL (``--locking
unlocked``) as QEMU's did in 2015 and does again from 10.2.  The guest finds
its port in the FADT (PM_TMR_BLK, 0x608 as on QEMU's pc/q35).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from ..memory.owner import Owner
from ..memory.region import MemoryRegion

__all__ = ["PmTimer", "PM_TIMER_HZ", "PM_TIMER_MASK", "host_clock_ns"]

PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFFFFFF  # 24 bits: the FADT leaves TMR_VAL_EXT clear


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_clock_gettime = _libc.clock_gettime
_clock_gettime.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec)]
_CLOCK_MONOTONIC = 1


def host_clock_ns() -> int:
    """CLOCK_MONOTONIC read through libc, as QEMU's ``qemu_clock_get_ns`` does.

    Through ctypes on purpose: a foreign call releases the GIL, so while one
    vCPU thread is inside the device (holding the BQL in ``bql`` mode) the
    other vCPU threads run, exactly as they would in a VMM written in C.
    With ``time.monotonic_ns`` (which keeps the GIL) the GIL would serialize
    every exit and no other thread could ever find the BQL taken.
    """
    ts = _Timespec()
    _clock_gettime(_CLOCK_MONOTONIC, ts)
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec


class PmTimer(Owner):
    """``acpi-pm-tmr``: a 4-byte I/O region whose reads return the counter.

    Nothing changes after realize (``_t0``, the clock): a read computes from
    them and a fresh ``timespec``, so any number of vCPUs may read at once,
    with or without the GIL -- what lets ``unlocked`` mode drop the BQL.

    ``clock_ns`` returns nanoseconds of a monotonic clock (tests pass a fake).
    """

    def __init__(self, clock_ns: Callable[[], int] = host_clock_ns) -> None:
        super().__init__("acpi-pm-tmr")
        self._clock_ns = clock_ns
        self._t0 = clock_ns()
        self.region = MemoryRegion.io(self, "acpi-pm-tmr", 4, self.read, self.write)

    def ticks(self) -> int:
        """The counter now: elapsed time in 3.579545 MHz ticks, modulo 2**24."""
        return ((self._clock_ns() - self._t0) * PM_TIMER_HZ // 1_000_000_000) & PM_TIMER_MASK

    def read(self, offset: int, size: int) -> int:
        value = self.ticks() >> (8 * offset)
        return value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, value: int, size: int) -> None:
        return None  # read-only register: writes are ignored, as on hardware
