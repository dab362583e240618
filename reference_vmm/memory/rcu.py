"""Read-copy-update, in the shape of QEMU's ``util/rcu.c``.

Readers never block: :func:`rcu_read_lock` copies the global grace-period
counter into the thread's reader record, :func:`rcu_read_unlock` clears it.
A writer publishes a new version of a structure (a plain attribute store,
atomic under the GIL), then either waits for a grace period with
:func:`synchronize_rcu` or hands the old version to :func:`call_rcu`, whose
reclamation thread (named ``call_rcu`` as in QEMU) frees it once every reader
that might still see it has left its critical section.

Grace periods work as in QEMU's 64-bit variant: ``synchronize_rcu`` advances
``rcu_gp_ctr``; a reader is *ongoing* (may hold an old pointer) while its
snapshot is non-zero and differs from the new counter.  Readers that enter
after the advance take the new value and are not waited for.

Usage::

    with rcu_read_lock():
        view = address_space.current_map   # take the pointer once
        ...                                 # use view; it stays alive

Python's GIL makes the plain loads and stores here sequentially consistent,
which is what QEMU gets from ``qatomic_*`` and memory barriers.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any, Callable

__all__ = [
    "rcu_read_lock",
    "rcu_read_unlock",
    "rcu_read_locked",
    "synchronize_rcu",
    "call_rcu",
    "drain_call_rcu",
    "rcu_unregister_thread",
    "rcu_stats",
]

RCU_GP_LOCKED = 1  # the counter is odd, so a reader snapshot is never 0
RCU_GP_CTR = 2

_gp_ctr = RCU_GP_LOCKED
_sync_lock = threading.Lock()  # QEMU's rcu_sync_lock: one grace period at a time
_registry_lock = threading.Lock()
_registry: set["_Reader"] = set()
_gp_event = threading.Event()  # QEMU's rcu_gp_event: set by a reader leaving while waited for
_local = threading.local()
_stats = {"grace_periods": 0, "callbacks": 0}


class _Reader:
    """Per-thread reader state (QEMU's ``struct rcu_reader_data``)."""

    __slots__ = ("ctr", "depth", "waiting", "thread", "__weakref__")

    def __init__(self) -> None:
        self.ctr = 0
        self.depth = 0
        self.waiting = False
        self.thread = threading.current_thread().name


def _reader() -> _Reader:
    r = getattr(_local, "reader", None)
    if r is None:
        r = _Reader()
        _local.reader = r
        with _registry_lock:
            _registry.add(r)
    return r


class _Guard:
    """Returned by :func:`rcu_read_lock` so it also works as ``with``."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        rcu_read_unlock()


_GUARD = _Guard()


def rcu_read_lock() -> _Guard:
    """Enter a read-side critical section (nests).  Never blocks."""
    r = getattr(_local, "reader", None) or _reader()
    if r.depth == 0:
        r.ctr = _gp_ctr
    r.depth += 1
    return _GUARD


def rcu_read_unlock() -> None:
    """Leave a read-side critical section; wake a waiting writer if any."""
    r = _local.reader
    r.depth -= 1
    if r.depth == 0:
        r.ctr = 0
        if r.waiting:
            r.waiting = False
            _gp_event.set()


def rcu_read_locked() -> bool:
    """True inside a read-side critical section of the calling thread."""
    r = getattr(_local, "reader", None)
    return r is not None and r.depth > 0


def rcu_unregister_thread() -> None:
    """Forget the calling thread's reader (call when a reader thread ends)."""
    r = getattr(_local, "reader", None)
    if r is not None:
        assert r.depth == 0, "thread exits inside an RCU read-side critical section"
        with _registry_lock:
            _registry.discard(r)
        del _local.reader


def synchronize_rcu() -> None:
    """Wait until every reader that entered before this call has left."""
    global _gp_ctr
    assert not rcu_read_locked(), "synchronize_rcu inside a read-side critical section deadlocks"
    with _sync_lock:
        _gp_ctr += RCU_GP_CTR
        gp = _gp_ctr
        with _registry_lock:
            pending = list(_registry)
        while pending:
            _gp_event.clear()
            for r in pending:
                r.waiting = True
            still = []
            for r in pending:
                ctr = r.ctr
                if ctr and ctr != gp:
                    still.append(r)
                else:
                    r.waiting = False
            pending = still
            if pending:
                # The timeout only bounds a missed wake-up; readers set the event.
                _gp_event.wait(0.01)
        _stats["grace_periods"] += 1


# -- call_rcu ---------------------------------------------------------------
_queue: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
_queue_event = threading.Event()
_thread: threading.Thread | None = None
_thread_lock = threading.Lock()
_BATCH_WAIT_S = 0.002  # gather a few callbacks per grace period, as QEMU does


def _call_rcu_thread() -> None:
    while True:
        _queue_event.wait()
        _queue_event.clear()
        if not _queue:
            continue
        time.sleep(_BATCH_WAIT_S)
        n = len(_queue)
        synchronize_rcu()
        for _ in range(n):
            func, args = _queue.popleft()
            try:
                func(*args)
            except Exception as e:  # a failing callback must not stop reclamation
                print(f"reference-vmm: call_rcu callback {func!r} failed: {e!r}", file=sys.stderr)
            _stats["callbacks"] += 1


def call_rcu(func: Callable[..., Any], *args: Any) -> None:
    """Run ``func(*args)`` on the ``call_rcu`` thread after a grace period."""
    global _thread
    if _thread is None:
        with _thread_lock:
            if _thread is None:
                _thread = threading.Thread(target=_call_rcu_thread, name="call_rcu", daemon=True)
                _thread.start()
    _queue.append((func, args))
    _queue_event.set()


def drain_call_rcu(timeout: float = 10.0) -> None:
    """Wait until every callback queued before this call has run."""
    done = threading.Event()
    call_rcu(done.set)
    if not done.wait(timeout):
        raise TimeoutError("call_rcu callbacks did not drain (a reader never left its critical section?)")


def rcu_stats() -> dict[str, int]:
    """Counters: grace periods completed and callbacks run."""
    return dict(_stats)
