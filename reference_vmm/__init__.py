"""The reference VMM: a small, real KVM VMM in Python, observed like QEMU.

Layers, bottom up: :mod:`.kvm` (bindings, ioctls, typed exits) ->
:mod:`.memory` (MemoryRegion tree, FlatView, AddressSpace, RCU) ->
:mod:`.devices` -> :mod:`.vcpu` (the KVM_RUN loop) -> :mod:`.machine`
(main loop, IOThreads).  :func:`run_machine` is the library entry point.
"""

from typing import Any

__all__ = ["run_machine", "MachineConfig"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not open /dev/kvm
    if name in __all__:
        from . import machine

        return getattr(machine, name)
    raise AttributeError(name)
