"""KVM memory slots follow the RAM ranges of the FlatView (fake VmFd, no KVM)."""

from __future__ import annotations

from vmtrace.reference_vmm.kvm_slots import KvmMemoryListener
from vmtrace.reference_vmm.memory import AddressSpace, MemoryRegion, drain_call_rcu, transaction


class FakeVm:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        self.slots: dict[int, tuple[int, int, int]] = {}

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host: int, flags: int = 0) -> None:
        self.calls.append((slot, gpa, size, host))
        for other, (ogpa, osize, _) in self.slots.items():
            if size and other != slot and gpa < ogpa + osize and ogpa < gpa + size:
                raise AssertionError("overlapping KVM memory slots")
        if size:
            self.slots[slot] = (gpa, size, host)
        else:
            self.slots.pop(slot)


def test_ram_gets_slots_and_mmio_holes_split_them() -> None:
    root = MemoryRegion.io(None, "system", 1 << 24, lambda o, s: 0, lambda o, v, s: None)
    ram = MemoryRegion.ram_region(None, "ram", 1 << 20)
    root.add_subregion(0, ram)
    space = AddressSpace(root, "slots")
    vm = FakeVm()
    space.add_listener(KvmMemoryListener(vm))  # type: ignore[arg-type]  # a fake VmFd: records the slots it is given
    try:
        assert list(vm.slots.values()) == [(0, 1 << 20, ram.host_addr)]
        # An MMIO region over the middle of RAM punches a hole: two slots.
        hole = MemoryRegion.io(None, "mmio", 0x1000, lambda o, s: 0, lambda o, v, s: None)
        root.add_subregion_overlap(0x80000, hole, 1)
        assert sorted(vm.slots.values()) == [
            (0, 0x80000, ram.host_addr),
            (0x81000, (1 << 20) - 0x81000, ram.host_addr + 0x81000),
        ]
        # An alias maps the same host memory at a second address.
        with transaction():
            root.del_subregion(hole)
            root.add_subregion(0x200000, MemoryRegion.alias_region(None, "ram-alias", ram, 0x1000, 0x2000))
        assert sorted(vm.slots.values()) == [(0, 1 << 20, ram.host_addr), (0x200000, 0x2000, ram.host_addr + 0x1000)]
    finally:
        space.destroy()
        drain_call_rcu()
