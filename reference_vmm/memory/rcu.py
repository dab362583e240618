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

Memory ordering, with or without the GIL.  Each side stores one word and
then loads another: a reader stores its snapshot (``ctr``) and then loads the
protected pointer; a writer stores the new pointer and then loads each
reader's ``ctr``.  If both loads could pass the stores before them (a
store buffer does exactly that, on x86 too), the writer could see a reader
as quiescent while that reader took the old pointer, and reclaim it under
it.  Under the GIL every thread switch is a full barrier, so this never
happens; on a free-threaded CPython the threads truly run at once.  The
fix is QEMU's (``util/rcu.c`` with ``CONFIG_MEMBARRIER``): readers pay
nothing, and the writer issues ``smp_mb_global()`` -- the membarrier(2)
system call, which runs a full barrier on every CPU that is running a
thread of this process -- after publishing and after setting ``waiting``.
Where membarrier is unavailable (old kernel, seccomp), readers fence
themselves instead: an acquire and release of a lock of their own, an
atomic read-modify-write (see :data:`READER_FENCE`).

Everything else is per-thread (a reader's ``depth``) or changed under a
lock (``rcu_gp_ctr`` under ``_sync_lock``, the registry under
``_registry_lock``); the ``call_rcu`` queue is a ``deque``, whose append and
popleft are atomic on every CPython build.
"""

from __future__ import annotations

import collections
import ctypes
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "rcu_read_lock",
    "rcu_read_unlock",
    "rcu_read_locked",
    "synchronize_rcu",
    "call_rcu",
    "drain_call_rcu",
    "rcu_register_thread",
    "rcu_unregister_thread",
    "rcu_stats",
    "RcuReader",
    "READER_FENCE",
    "rcu_gp",
]

RCU_GP_LOCKED = 1  # the counter is odd, so a reader snapshot is never 0
RCU_GP_CTR = 2


class _GracePeriod:
    """Holds QEMU's ``rcu_gp_ctr`` (written under ``_sync_lock`` only): an
    object, not a module global, so that an inlined reader loads it fast."""

    __slots__ = ("ctr",)

    def __init__(self) -> None:
        self.ctr = RCU_GP_LOCKED


rcu_gp = _GracePeriod()
_sync_lock = threading.Lock()  # QEMU's rcu_sync_lock: one grace period at a time
_registry_lock = threading.Lock()
_registry: set[RcuReader] = set()
_gp_event = threading.Event()  # QEMU's rcu_gp_event: set by a reader leaving while waited for
_local = threading.local()
# Two counters, each with one writer: grace_periods under _sync_lock,
# callbacks in the call_rcu thread (a dict's item store is atomic).
_stats = {"grace_periods": 0, "callbacks": 0}

# -- smp_mb_global ------------------------------------------------------------
_SYS_MEMBARRIER = 324  # x86-64
_MEMBARRIER_CMD_QUERY = 0
_MEMBARRIER_CMD_PRIVATE_EXPEDITED = 1 << 3
_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 1 << 4


def _membarrier_init() -> Callable[[], None] | None:
    """QEMU's ``smp_mb_global_init``: a process-wide barrier, or None if the kernel has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        cmds = syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_QUERY, 0)
        if cmds < 0 or not cmds & _MEMBARRIER_CMD_PRIVATE_EXPEDITED:
            return None
        if syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0) < 0:
            return None
    except (OSError, AttributeError):
        return None

    def membarrier() -> None:
        # Fails only if the registration above did not happen: never silently.
        if syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0) < 0:
            raise OSError(ctypes.get_errno(), "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed")

    return membarrier


_membarrier = _membarrier_init()
#: True when readers must fence themselves (no membarrier on this host).
READER_FENCE = _membarrier is None
_writer_fence = threading.Lock()


def _smp_mb_global() -> None:
    """A full barrier on every thread of the process (``smp_mb_global``)."""
    if _membarrier is not None:
        _membarrier()
    else:  # the readers fence themselves; this orders the writer's own side
        _writer_fence.acquire()
        _writer_fence.release()


class RcuReader:
    """One thread's reader record (QEMU's ``struct rcu_reader_data``).

    ``depth`` is the thread's own; ``ctr`` is written by the thread and read
    by writers; ``waiting`` is set by a writer and cleared by whichever side
    sees it first.  A hot path that keeps its thread's record (a vCPU's
    dispatch, from :func:`rcu_register_thread`) calls :meth:`lock` and
    :meth:`unlock` on it and skips the thread-local lookup of
    :func:`rcu_read_lock`.
    """

    __slots__ = ("ctr", "depth", "waiting", "thread", "_fence", "__weakref__")

    def __init__(self) -> None:
        self.ctr = 0
        self.depth = 0
        self.waiting = False
        self.thread = threading.current_thread().name
        self._fence = threading.Lock()

    def lock(self) -> None:
        """``rcu_read_lock`` for this record's thread (only that thread may call it)."""
        if self.depth == 0:
            self.ctr = rcu_gp.ctr
            if READER_FENCE:  # the store above before the loads of the section
                self.fence()
        self.depth += 1

    def unlock(self) -> None:
        """``rcu_read_unlock`` for this record's thread."""
        self.depth -= 1
        if self.depth == 0:
            self.ctr = 0
            if READER_FENCE:  # the store above before the load of ``waiting``
                self.fence()
            if self.waiting:
                self.wake_writer()

    def fence(self) -> None:
        """A full barrier, where membarrier is missing: an atomic read-modify-write."""
        self._fence.acquire()
        self._fence.release()

    def wake_writer(self) -> None:
        """A writer waits for this reader, which has just left: wake it."""
        self.waiting = False
        _gp_event.set()


def rcu_register_thread() -> RcuReader:
    """The calling thread's reader record, registered on first use (``rcu_register_thread``)."""
    r = getattr(_local, "reader", None)
    if r is None:
        r = RcuReader()
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
    (getattr(_local, "reader", None) or rcu_register_thread()).lock()
    return _GUARD


def rcu_read_unlock() -> None:
    """Leave a read-side critical section; wake a waiting writer if any."""
    _local.reader.unlock()


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
    assert not rcu_read_locked(), "synchronize_rcu inside a read-side critical section deadlocks"
    with _sync_lock:
        # The caller's publication (a new current_map) before the loads of
        # each reader's ctr below; pairs with the reader's ctr store before
        # its loads (see the module docstring).
        _smp_mb_global()
        gp = rcu_gp.ctr + RCU_GP_CTR
        rcu_gp.ctr = gp
        with _registry_lock:
            pending = list(_registry)
        while pending:
            _gp_event.clear()
            for r in pending:
                r.waiting = True
            # The stores to ``waiting`` before the loads of ``ctr``: a reader
            # leaving now either sees ``waiting`` or is seen with ctr == 0.
            _smp_mb_global()
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
