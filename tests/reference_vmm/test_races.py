"""Shared state that the GIL used to protect, and the per-vCPU exit path.

Each race found by review has a test here.  Where the bad interleaving can
be forced (an injected yield point inside the window), the test fails on
the unfixed code under any interpreter.  Where it cannot (a lost ``+= 1``
needs two threads inside one bytecode, which only happens without the
GIL), the test runs enough threads to lose counts on the free-threaded
interpreter (test_free_threaded.py runs this file there) and passes
trivially under the GIL.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from vmtrace import probes
from vmtrace.reference_vmm.bql import BigLock, lock_futex_word
from vmtrace.reference_vmm.dispatch import AddressSpaceBus, VcpuBus
from vmtrace.reference_vmm.memory import AddressSpace, FlatView, MemoryRegion, Owner, drain_call_rcu
from vmtrace.reference_vmm.memory.flatview import render
from vmtrace.reference_vmm.memory.rcu import rcu_read_lock, rcu_read_locked, rcu_unregister_thread

SCALE = max(1, int(os.environ.get("VMTRACE_STRESS_SCALE", "1")))


def run_threads(n: int, target, timeout: float = 60) -> None:
    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"


# -- the probe recorder's per-thread buffers --------------------------------------------
def test_probe_flush_from_another_thread_loses_no_record(tmp_path: Path, monkeypatch) -> None:
    """flush() (atexit, disable) writes other threads' buffers.  A record the
    owner appends while the flusher is inside os.write (which releases the
    GIL) must not be wiped by the flusher's ``del buf[:]``: the buffer's own
    lock keeps the owner out until the flush is done.  Unfixed, one of the
    two records is lost."""
    spool = tmp_path / "spool"
    probes.enable(str(spool))
    spool_fd = probes._fd
    recorded, in_write, appended = threading.Event(), threading.Event(), threading.Event()
    real_write = os.write

    def owner() -> None:
        probes.lock_begin("race", 1)  # the thread's buffer now exists and holds one record
        recorded.set()
        in_write.wait(5)
        probes.lock_begin("race", 2)  # while the other thread is inside its write
        appended.set()

    def write(fd: int, data: bytes) -> int:
        n = real_write(fd, data)
        if fd == spool_fd and not in_write.is_set():
            in_write.set()
            appended.wait(0.5)  # the injected yield point: let the owner run inside the window
        return n

    t = threading.Thread(target=owner)
    try:
        t.start()
        assert recorded.wait(5)
        monkeypatch.setattr(os, "write", write)
        probes.flush()
        monkeypatch.setattr(os, "write", real_write)
        t.join(5)
    finally:
        monkeypatch.setattr(os, "write", real_write)
        probes.disable()
    records = spool.stat().st_size // probes.RECORD.size
    assert records == 2, f"{2 - records} record(s) lost by a flush from another thread"


def test_probe_records_of_many_threads_are_all_written(tmp_path: Path) -> None:
    """Threads record while another flushes again and again: every record arrives, whole."""
    spool = tmp_path / "spool"
    per_thread = 2000 * SCALE
    probes.enable(str(spool))
    done = threading.Event()

    def flusher() -> None:
        while not done.is_set():
            probes.flush()

    f = threading.Thread(target=flusher)
    f.start()
    try:
        run_threads(4, lambda k: [probes.dispatch_begin(i, 4, False, f"dev{k}") for i in range(per_thread)])
    finally:
        done.set()
        f.join(10)
        probes.disable()
    data = spool.read_bytes()
    assert len(data) == 4 * per_thread * probes.RECORD.size
    seen: dict[int, list[int]] = {}
    for _ts, tid, code, _size, _name, addr, _value in probes.RECORD.iter_unpack(data):
        assert code == probes.EVENT_CODES["dispatch_begin"]
        seen.setdefault(tid, []).append(addr)
    assert sorted(len(v) for v in seen.values()) == [per_thread] * 4
    assert all(sorted(v) == list(range(per_thread)) for v in seen.values())


# -- counters and lazily numbered objects ----------------------------------------------------
def test_unassigned_counts_of_an_address_space_are_exact_across_threads() -> None:
    """AddressSpace.read/write count unclaimed accesses in a Counter: ``+= 1``
    is a load and a store, and two threads without the GIL lose counts."""
    space = AddressSpace(MemoryRegion.container_region(None, "empty", 0x1000), "unassigned")
    n = 20000 * SCALE
    run_threads(4, lambda k: [space.read(0x10, 4) for _ in range(n)])
    space.destroy()
    assert space.unassigned[(0x10, "read")] == 4 * n


def test_flatview_generations_are_unique_across_threads() -> None:
    root = MemoryRegion.container_region(None, "root", 0x100)
    ranges = render(root)
    per_thread: list[list[int]] = [[] for _ in range(4)]
    n = 5000 * SCALE

    def build(k: int) -> None:
        for _ in range(n):
            per_thread[k].append(FlatView(ranges).generation)

    run_threads(4, build)
    numbers = [g for gens in per_thread for g in gens]
    assert len(set(numbers)) == len(numbers), "two FlatViews got one generation number"


def test_bql_futex_word_is_not_guessed_where_the_lock_is_a_pymutex() -> None:
    word = lock_futex_word(threading.Lock())
    if sys.version_info >= (3, 13):
        assert word == 0  # reading a PyMutex as a sem_t pointer would dereference a lock byte
    else:
        assert word != 0


# -- VcpuBus: the exit path's per-thread dispatch ----------------------------------------------
class Rig:
    """An I/O space with a locked device, an unlocked one and a root that answers the rest."""

    def __init__(self) -> None:
        self.bql = BigLock("test-bql")
        self.calls: list[tuple] = []
        self.root = self.region(None, "io-root", 0x1000, 0xAB)
        self.locked = self.region(Owner("locked-dev"), "locked", 8, 0x11)
        self.unlocked = self.region(Owner("unlocked-dev"), "unlocked", 8, 0x22)
        self.unlocked.clear_global_locking()
        self.root.add_subregion(0x10, self.locked)
        self.root.add_subregion(0x20, self.unlocked)
        self.space = AddressSpace(self.root, "io")
        self.mem = AddressSpace(self.region(None, "mem-root", 0x1000, 0xCD), "memory")
        self.bus = AddressSpaceBus(self.space, self.mem, self.bql)

    def region(self, owner, name: str, size: int, tag: int) -> MemoryRegion:
        def read(offset: int, size: int) -> int:
            self.calls.append(("r", name, offset, size, self.bql.locked(), rcu_read_locked()))
            return tag << 8 | offset

        def write(offset: int, value: int, size: int) -> None:
            self.calls.append(("w", name, offset, value, size, self.bql.locked(), rcu_read_locked()))

        return MemoryRegion.io(owner, name, size, read, write)

    def close(self) -> None:
        self.space.destroy()
        self.mem.destroy()
        drain_call_rcu()


ACCESSES = [0x10, 0x13, 0x17, 0x20, 0x26, 0x0, 0x500, 0xFFF, 0x1000, 0x5000]


def exercise(bus) -> list[int]:
    values = []
    for addr in ACCESSES:
        for size in (1, 2, 4):
            values.append(bus.pio_read(addr, size))
            bus.pio_write(addr, addr ^ 0x5A, size)
            values.append(bus.mmio_read(addr, size))
            bus.mmio_write(addr, addr, size)
    return values


def test_vcpu_bus_dispatches_exactly_as_the_shared_bus() -> None:
    rig = Rig()
    try:
        shared_values = exercise(rig.bus)
        shared_calls, rig.calls = rig.calls, []
        vbus = rig.bus.for_thread()
        assert isinstance(vbus, VcpuBus)
        vcpu_values = exercise(vbus) + exercise(vbus)  # the second pass runs from the memo
        assert vcpu_values == shared_values * 2
        assert rig.calls == shared_calls * 2
        # The locked device ran under the BQL, the unlocked one and the root
        # as their global_locking says; every callback inside an RCU section.
        assert {c[4 if c[0] == "r" else 5] for c in rig.calls if c[1] == "locked"} == {True}
        assert {c[4 if c[0] == "r" else 5] for c in rig.calls if c[1] == "unlocked"} == {False}
        assert all(c[-1] for c in rig.calls)
        assert not rcu_read_locked() and vbus.rcu.ctr == 0 and vbus.rcu.depth == 0
        assert not rig.bql.locked()
    finally:
        rcu_unregister_thread()
        rig.close()


def test_vcpu_bus_sees_a_topology_change_at_once() -> None:
    rig = Rig()
    try:
        vbus = rig.bus.for_thread()
        assert vbus.pio_read(0x10, 1) == 0x1100
        rig.locked.set_address(0x40)  # a new FlatView: the memo of the old one must not answer
        assert vbus.pio_read(0x10, 1) == 0xAB10
        assert vbus.pio_read(0x40, 1) == 0x1100
        rig.root.del_subregion(rig.unlocked)
        assert vbus.pio_read(0x20, 1) == 0xAB20
        for addr in range(0x100, 0x100 + 600):  # more addresses than the memo keeps
            assert vbus.pio_read(addr, 1) == 0xAB << 8 | addr
        assert len(vbus.io.hits) <= 256
    finally:
        rcu_unregister_thread()
        rig.close()


def test_vcpu_bus_does_not_take_the_bql_twice_nor_nest_rcu_wrongly() -> None:
    """The 2013 loop calls the bus with the BQL held; a device may dispatch
    again from inside a read-side section.  Neither may deadlock or leave
    the thread's RCU state behind."""
    rig = Rig()
    results: list[int] = []

    def vcpu(_k: int) -> None:
        vbus = rig.bus.for_thread()
        with rig.bql:
            results.append(vbus.pio_read(0x10, 1))
        with rcu_read_lock():
            results.append(vbus.pio_read(0x10, 1))
            assert vbus.rcu.depth == 1
        results.append(int(rcu_read_locked()))
        rcu_unregister_thread()

    try:
        run_threads(1, vcpu, timeout=10)
        assert results == [0x1100, 0x1100, 0]
    finally:
        rig.close()


def test_vcpu_bus_reports_through_probes_when_recording(tmp_path: Path) -> None:
    rig = Rig()
    spool = tmp_path / "spool"
    probes.enable(str(spool))
    try:
        vbus = rig.bus.for_thread()
        vbus.pio_read(0x10, 4)
        vbus.pio_write(0x20, 1, 1)
    finally:
        probes.disable()
        rcu_unregister_thread()
        rig.close()
    codes = [rec[2] for rec in probes.RECORD.iter_unpack(spool.read_bytes())]
    c = probes.EVENT_CODES
    assert codes == [
        c["lock_begin"],
        c["lock_acquired"],
        c["dispatch_begin"],
        c["dispatch_end"],
        c["lock_release"],
        c["dispatch_begin"],
        c["dispatch_end"],
    ]


def test_vcpu_buses_never_call_a_device_after_it_is_finalized() -> None:
    """vCPU threads dispatch through their own VcpuBus (memo included) while
    the main thread plugs and unplugs devices: no callback may run on a
    finalized owner, and every read answers from a device that was mapped."""
    bql = BigLock("stress-bql")
    root = MemoryRegion.io(None, "io-root", 0x100, lambda o, s: 0xFF, lambda o, v, s: None)
    space = AddressSpace(root, "stress-io")
    mem = AddressSpace(MemoryRegion.io(None, "mem-root", 0x100, lambda o, s: 0, lambda o, v, s: None), "stress-mem")
    bus = AddressSpaceBus(space, mem, bql)
    errors: list[str] = []
    stop = threading.Event()
    reads = [0] * 3

    def device(n: int, locked: bool) -> tuple[Owner, MemoryRegion]:
        owner = Owner(f"dev{n}")

        def read(offset: int, size: int) -> int:
            if owner.finalized:
                errors.append(f"{owner.name} called after finalize")
            return n & 0xFF

        mr = MemoryRegion.io(owner, f"dev{n}", 4, read, lambda o, v, s: None)
        if not locked:
            mr.clear_global_locking()
        return owner, mr

    def vcpu(k: int) -> None:
        vbus = bus.for_thread()
        try:
            while not stop.is_set():
                vbus.pio_read(0x10, 1)
                vbus.pio_read(0x10 + (reads[k] & 3), 1)
                reads[k] += 1
        finally:
            rcu_unregister_thread()

    threads = [threading.Thread(target=vcpu, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(300 * SCALE):
            owner, mr = device(n, locked=n % 2 == 0)
            root.add_subregion(0x10, mr)
            owner.unref()  # only the memory map holds it now
            root.del_subregion(mr)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        space.destroy()
        mem.destroy()
        drain_call_rcu()
    assert not errors, errors[:3]
    assert min(reads) > 0


def test_membarrier_or_reader_fence_is_in_place() -> None:
    """One of the two orderings of module rcu must be active (the docstring says why)."""
    from vmtrace.reference_vmm.memory import rcu

    assert (rcu._membarrier is not None) != rcu.READER_FENCE
    rcu.synchronize_rcu()  # issues the barrier: must not fail
