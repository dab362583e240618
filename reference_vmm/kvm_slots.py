"""The KVM memory listener: keeps KVM's memory slots equal to the RAM of a FlatView.

As QEMU's ``kvm_region_add``/``kvm_region_del``: on every FlatView swap of
``address_space_memory``, RAM ranges that disappeared lose their slot and new
ones get one, so the guest reaches RAM without exits and everything else
(MMIO) exits to the VMM.
"""

from __future__ import annotations

from .kvm.system import VmFd
from .memory.flatview import FlatView

__all__ = ["KvmMemoryListener"]

_Slot = tuple[int, int, int]  # guest_phys_addr, size, host address


class KvmMemoryListener:
    """Call with ``(old_view, new_view)``; issues KVM_SET_USER_MEMORY_REGION."""

    def __init__(self, vm: VmFd, max_slots: int = 32) -> None:
        self.vm = vm
        self.slots: dict[_Slot, int] = {}
        self._free = list(range(max_slots - 1, -1, -1))

    @staticmethod
    def _ram_ranges(view: FlatView) -> set[_Slot]:
        return {
            (r.start, r.end - r.start, r.mr.host_addr + r.offset_in_region) for r in view.ranges if r.mr.kind == "ram"
        }

    def __call__(self, old: FlatView | None, new: FlatView) -> None:
        want = self._ram_ranges(new)
        for key in [k for k in self.slots if k not in want]:  # delete first: slots may not overlap
            slot = self.slots.pop(key)
            self.vm.set_user_memory_region(slot, key[0], 0, key[2])
            self._free.append(slot)
        for key in sorted(want - self.slots.keys()):
            slot = self._free.pop()
            self.vm.set_user_memory_region(slot, key[0], key[1], key[2])
            self.slots[key] = slot
