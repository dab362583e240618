"""Memory topology state: the topology lock, the transaction depth, and the address spaces.

QEMU keeps these private to ``system/memory.c``: ``memory_region_transaction_depth``,
``memory_region_update_pending`` and the ``address_spaces`` list, all changed
under the BQL.  Here they live apart from both :mod:`.region` (which changes
the tree and marks an update pending) and :mod:`.address_space` (which
registers itself and re-renders on commit), so neither imports the other's
internals and the two modules do not import each other.

Every name here is read and written only with :data:`topology_lock` held:
it is the one lock of the memory API's writers (readers use RCU, never it).
An RLock, because a commit's listeners (KVM slots) may themselves change
regions, and a transaction nests.
"""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = [
    "topology_lock",
    "TopologyListener",
    "memory_region_transaction_begin",
    "memory_region_transaction_commit",
    "memory_region_update_pending",
    "register_address_space",
    "unregister_address_space",
    "transaction",
]


class TopologyListener(Protocol):
    """What a commit re-renders: an AddressSpace (``address_space_update_topology``)."""

    def update_topology(self) -> None: ...


#: Serializes topology changes, as QEMU's BQL does for them.
topology_lock = threading.RLock()
_transaction_depth = 0
_update_pending = False
_address_spaces: list[TopologyListener] = []


def memory_region_transaction_begin() -> None:
    """Start a group of changes: no FlatView is rebuilt until the commit."""
    global _transaction_depth
    topology_lock.acquire()
    _transaction_depth += 1


def memory_region_transaction_commit() -> None:
    """End a group; the outermost commit rebuilds each AddressSpace once."""
    global _transaction_depth, _update_pending
    try:
        assert _transaction_depth > 0, "commit without begin"
        _transaction_depth -= 1
        if _transaction_depth == 0 and _update_pending:
            _update_pending = False
            for space in list(_address_spaces):
                space.update_topology()
    finally:
        topology_lock.release()


def memory_region_update_pending() -> None:
    """Mark the tree changed: the outermost commit re-renders (caller is inside a transaction)."""
    global _update_pending
    assert _transaction_depth > 0, "a region changed outside a transaction"
    _update_pending = True


class transaction:
    """``with transaction():`` around several region changes."""

    def __enter__(self) -> None:
        memory_region_transaction_begin()

    def __exit__(self, *exc: object) -> None:
        memory_region_transaction_commit()


def register_address_space(space: TopologyListener) -> None:
    """Re-render ``space`` on every outermost commit from now on."""
    with topology_lock:
        _address_spaces.append(space)


def unregister_address_space(space: TopologyListener) -> None:
    """Stop re-rendering ``space`` (``address_space_destroy``)."""
    with topology_lock:
        if space in _address_spaces:
            _address_spaces.remove(space)
