"""VcpuThread with a scripted fake vCPU: locking modes, stop paths, register dump."""

from __future__ import annotations

import threading
import time

import pytest

from tests.reference_vmm.test_exit_handler import FakeBus
from vmtrace.reference_vmm.bql import BigLock
from vmtrace.reference_vmm.kvm import bindings as kb
from vmtrace.reference_vmm.kvm import exits as x
from vmtrace.reference_vmm.vcpu import Stop, VcpuThread, dump_registers


class ScriptedVcpu:
    """Returns the scripted exits, then Intr forever; records BQL ownership inside run()."""

    def __init__(self, script: list, bql: BigLock) -> None:
        self.script = list(script)
        self.bql = bql
        self.bql_held_in_run: list[bool] = []
        self.immediate_exit = False

    def run(self):
        self.bql_held_in_run.append(self.bql._owner != 0)
        return self.script.pop(0) if self.script else x.Intr()

    def set_immediate_exit(self, value: bool) -> None:
        self.immediate_exit = value

    def complete_io_in(self, data: bytes) -> None:
        pass

    def complete_mmio_read(self, data: bytes) -> None:
        pass

    def get_regs(self) -> kb.KvmRegs:
        r = kb.KvmRegs()
        r.rip, r.rax = 0x100020, 0x2BADB002
        return r

    def get_sregs(self) -> kb.KvmSregs:
        s = kb.KvmSregs()
        s.cr0 = 0x11
        return s


class LockCheckingBus(FakeBus):
    def __init__(self, bql: BigLock) -> None:
        super().__init__()
        self.bql = bql
        self.held: list[bool] = []

    def pio_read(self, port: int, size: int) -> int:
        self.held.append(self.bql.locked())
        return super().pio_read(port, size)


def _run(script: list, mode: str) -> tuple[ScriptedVcpu, LockCheckingBus, list[Stop]]:
    bql = BigLock("test-bql")
    vcpu = ScriptedVcpu(script, bql)
    bus = LockCheckingBus(bql)
    stops: list[Stop] = []
    t = VcpuThread(vcpu, 3, bus, bql, mode, lambda i, s: stops.append(s))
    t.start()
    t.join(5)
    assert not t.is_alive(), "vCPU thread hung"
    assert t.name == "CPU 3/KVM"
    return vcpu, bus, stops


def test_fail_entry_stops_the_vcpu_with_a_guest_failure() -> None:
    vcpu, bus, stops = _run([x.IoIn(0x608, 4), x.FailEntry(0x21, 0)], "bql")
    assert len(stops) == 1 and stops[0].guest_failure and "FAIL_ENTRY" in stops[0].message
    assert len(bus.calls) == 1


def test_2013_mode_holds_the_bql_except_in_kvm_run() -> None:
    vcpu, bus, stops = _run([x.IoIn(0x608, 4), x.IoIn(0x608, 4), x.Shutdown()], "2013")
    assert vcpu.bql_held_in_run == [False, False, False]
    assert bus.held == [True, True]  # the handler ran with the BQL held


def test_modern_mode_runs_the_exit_path_without_the_bql() -> None:
    vcpu, bus, stops = _run([x.IoIn(0x608, 4), x.Shutdown()], "bql")
    assert bus.held == [False]  # a real bus takes the BQL per region; this fake does not
    assert stops[0].status == 3


def test_kick_ends_the_loop_without_a_stop_report() -> None:
    bql = BigLock("test-bql")
    vcpu = ScriptedVcpu([], bql)
    stops: list[Stop] = []
    t = VcpuThread(vcpu, 0, FakeBus(), bql, "unlocked", lambda i, s: stops.append(s))
    t.start()
    t.kick()
    t.join(5)
    assert not t.is_alive() and vcpu.immediate_exit and stops == []


def test_a_gated_thread_is_set_up_but_enters_the_guest_only_when_released() -> None:
    bql = BigLock("test-bql")
    vcpu = ScriptedVcpu([x.Shutdown()], bql)
    gate = threading.Event()
    stops: list[Stop] = []
    t = VcpuThread(vcpu, 1, FakeBus(), bql, "bql", lambda i, s: stops.append(s), start_gate=gate)
    t.start()
    assert t.ready.wait(5), "the thread never finished its set-up"
    time.sleep(0.05)
    assert vcpu.bql_held_in_run == [] and t.is_alive()  # paused: no KVM_RUN before the gate
    gate.set()
    t.join(5)
    assert not t.is_alive() and len(vcpu.bql_held_in_run) == 1 and stops[0].status == 3


def test_host_error_in_the_loop_becomes_a_status_2_stop() -> None:
    class Broken(FakeBus):
        def pio_read(self, port: int, size: int) -> int:
            raise RuntimeError("device bug")

    bql = BigLock("test-bql")
    stops: list[Stop] = []
    t = VcpuThread(ScriptedVcpu([x.IoIn(1, 1)], bql), 0, Broken(), bql, "bql", lambda i, s: stops.append(s))
    t.start()
    t.join(5)
    assert stops and stops[0].status == 2 and "device bug" in stops[0].message


def test_register_dump_names_the_vcpu_and_registers() -> None:
    dump = dump_registers(ScriptedVcpu([], BigLock("x")), 2)
    assert dump.startswith("CPU#2")
    assert "EIP=00100020" in dump and "EAX=2badb002" in dump and "CR0=00000011" in dump


def test_unknown_locking_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="2013, bql, unlocked"):
        VcpuThread(ScriptedVcpu([], BigLock("x")), 0, FakeBus(), BigLock("x"), "2099", lambda i, s: None)
