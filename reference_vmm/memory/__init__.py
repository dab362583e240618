"""The memory API, in QEMU's vocabulary: MemoryRegion -> FlatView -> AddressSpace, with RCU."""

from .address_space import AddressSpace
from .flatview import FlatRange, FlatView
from .owner import Owner
from .rcu import call_rcu, drain_call_rcu, rcu_read_lock, rcu_read_unlock, synchronize_rcu
from .region import MemoryRegion, transaction

__all__ = [
    "AddressSpace",
    "FlatRange",
    "FlatView",
    "MemoryRegion",
    "Owner",
    "transaction",
    "call_rcu",
    "drain_call_rcu",
    "rcu_read_lock",
    "rcu_read_unlock",
    "synchronize_rcu",
]
