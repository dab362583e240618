"""Measure what the probe API costs the reference VMM, disabled and enabled.

Run: ``python tests/reference_vmm/probe_cost.py`` (prints nanoseconds per call).
The test ``test_probe_cost.py`` runs a short version and checks the ordering.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

from vmtrace import probes
from vmtrace.reference_vmm.bql import BigLock
from vmtrace.reference_vmm.devices.pm_timer import PmTimer
from vmtrace.reference_vmm.dispatch import AddressSpaceBus
from vmtrace.reference_vmm.memory import AddressSpace, MemoryRegion


def _per_call_ns(fn: Callable[[], None], n: int) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def measure(n: int = 200_000) -> dict[str, float]:
    """Nanoseconds per call of a probe, a BQL cycle and a PM-timer dispatch, probes off and on."""
    bql = BigLock("BQL-cost")
    io = MemoryRegion.io(None, "io", 0x10000, lambda o, s: 0xFFFFFFFF, lambda o, v, s: None)
    pm = PmTimer()
    io.add_subregion(0x608, pm.region)
    space = AddressSpace(io, "cost-io")
    mem = AddressSpace(MemoryRegion.io(None, "mem", 0x1000, lambda o, s: 0, lambda o, v, s: None), "cost-mem")
    bus = AddressSpaceBus(space, mem, bql)

    def empty() -> None:
        pass

    def probe() -> None:
        probes.lock_begin("BQL", 0x1234)

    def bql_cycle() -> None:
        bql.lock()
        bql.unlock()

    def dispatch() -> None:
        bus.pio_read(0x608, 4)

    out: dict[str, float] = {"empty_call": _per_call_ns(empty, n)}
    assert not probes.enabled, "run without VMTRACE_PROBES set"
    out["probe_disabled"] = _per_call_ns(probe, n)
    out["bql_cycle_disabled"] = _per_call_ns(bql_cycle, n // 4)
    out["pm_dispatch_disabled"] = _per_call_ns(dispatch, n // 4)
    with tempfile.TemporaryDirectory() as tmp:
        probes.enable(os.path.join(tmp, "spool"))
        try:
            out["probe_enabled"] = _per_call_ns(probe, n)
            out["bql_cycle_enabled"] = _per_call_ns(bql_cycle, n // 4)
            out["pm_dispatch_enabled"] = _per_call_ns(dispatch, n // 4)
        finally:
            probes.disable()
    space.destroy()
    mem.destroy()
    return out


if __name__ == "__main__":
    for name, ns in measure().items():
        print(f"{name:24} {ns:8.0f} ns")
