"""The Big QEMU Lock: one mutex that serializes device emulation by default.

``with bql:`` takes it, ``assert bql_locked()`` documents that a function
needs it.  Every acquisition is reported through vmtrace's probe API with
QEMU's trace-event semantics: ``lock_begin`` when a thread starts waiting
(``qemu_mutex_lock``), ``lock_acquired`` when it owns the lock
(``qemu_mutex_locked``), ``lock_release`` just before it lets go
(``qemu_mutex_unlock``).  The address passed with them is the futex word a
waiter sleeps on, so the trace's futex waits can be tied to the BQL.

The lock is a ``threading.Lock``.  On Linux, CPython up to 3.12 builds it
on a POSIX semaphore: a blocked thread sleeps in ``futex(FUTEX_WAIT)`` on
the semaphore's first word, with the GIL released.  From 3.13 (and so on
the free-threaded build) it is a one-byte ``PyMutex`` whose waiters park on
a semaphore of their own, so no futex word names the lock: the trace still
has the BQL's wait from ``lock_begin``/``lock_acquired``, only the futex
waits inside it stay unnamed.

``_owner`` is written only by the thread that holds the lock, and read by
others only to ask "is it mine?", which no other thread's store can make
true: a plain attribute is enough, with or without the GIL.
"""

from __future__ import annotations

import ctypes
import sys
import threading

from vmtrace import probes

__all__ = ["BigLock", "bql", "bql_locked", "lock_futex_word"]

_get_ident = threading.get_ident
_LOCK_PTR_OFFSET = 16  # lockobject: PyObject_HEAD (refcnt, type), then PyThread_type_lock


def lock_futex_word(lock: object) -> int:
    """The address of the futex word a waiter on ``lock`` (a ``threading.Lock``) sleeps on.

    CPython 3.11's lock object holds a ``sem_t *`` after its object header;
    glibc waits on the semaphore's value word, the first 4 bytes of ``sem_t``
    on 64-bit little-endian.  The layout is checked, not assumed: the word
    must read 1 while the lock is free and 0 while it is held.  Returns 0
    when the check fails (another build of Python): callers then report the
    lock without an address.
    """
    if type(lock) is not type(threading.Lock()):
        return 0
    if sys.version_info >= (3, 13):
        # A PyMutex, not a sem_t pointer, follows the header: reading it as
        # one would dereference a lock byte (see the module docstring).
        return 0
    try:
        sem = ctypes.c_void_p.from_address(id(lock) + _LOCK_PTR_OFFSET).value or 0
        if not sem:
            return 0
        word = ctypes.c_uint32.from_address(sem)
        if lock.locked():
            return 0
        if word.value != 1:
            return 0
        if not lock.acquire(blocking=False):
            return 0
        held = word.value
        lock.release()
        return sem if held == 0 and word.value == 1 else 0
    except (ValueError, OSError):
        return 0


class BigLock:
    """A named mutex that reports its waits, acquisitions and releases."""

    def __init__(self, name: str = "BQL") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._owner = 0  # thread ident of the holder, 0 when free
        self.futex_addr = lock_futex_word(self._lock)

    def lock(self) -> None:
        """Take the lock (``bql_lock``), reporting the wait."""
        if probes.enabled:
            probes.lock_begin(self.name, self.futex_addr)
            self._lock.acquire()
            self._owner = _get_ident()
            probes.lock_acquired(self.name, self.futex_addr)
        else:
            self._lock.acquire()
            self._owner = _get_ident()

    def unlock(self) -> None:
        """Release the lock (``bql_unlock``); only the holder may."""
        assert self._owner == _get_ident(), f"{self.name} released by a thread that does not hold it"
        self._owner = 0
        if probes.enabled:
            probes.lock_release(self.name, self.futex_addr)
        self._lock.release()

    def locked(self) -> bool:
        """True when the *calling* thread holds the lock."""
        return self._owner == _get_ident()

    def __enter__(self) -> BigLock:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()


#: The process's BQL.
bql = BigLock("BQL")


def bql_locked() -> bool:
    """``bql_locked()``: does the calling thread hold the BQL?"""
    return bql.locked()
