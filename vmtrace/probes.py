"""Userspace probe API: how a VMM written in Python reports its own events.

The reference VMM calls these functions around its locks and device
dispatch, the way QEMU is observed through uprobes on its own functions.  The
module is dependency-free (standard library only) so a target imports it
without pulling in pandas or the rest of vmtrace.

When ``vmtrace record`` runs the target it sets ``VMTRACE_PROBES`` to a spool
file; every event is then appended to that file as one fixed-size record
(``RECORD``) and names are interned into ``<spool>.names``.  When the variable
is unset every probe is a no-op function, so the cost of an unrecorded probe
is one Python call.  Call the probes through the module (``probes.lock_begin``,
never ``from vmtrace.probes import lock_begin``) so that enabling takes effect.

Timestamps are ``time.monotonic_ns()``: CLOCK_MONOTONIC, the clock the kernel
side of the trace uses.
"""

from __future__ import annotations

import atexit
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = [
    "ENV_VAR",
    "RECORD",
    "EVENT_CODES",
    "enabled",
    "enable",
    "disable",
    "flush",
    "lock_begin",
    "lock_acquired",
    "lock_release",
    "dispatch_begin",
    "dispatch_end",
    "name_futex",
]

ENV_VAR: Final = "VMTRACE_PROBES"

#: One record: ts_ns int64, tid int32, code uint8, size|write<<7 uint8,
#: name_id uint16, addr uint64, value int64 (little endian, 32 bytes).
RECORD: Final = struct.Struct("<qiBBHQq")

#: Record codes; the names are the trace schema's event names.
EVENT_CODES: Final[dict[str, int]] = {
    "lock_begin": 1,
    "lock_acquired": 2,
    "lock_release": 3,
    "dispatch_begin": 4,
    "dispatch_end": 5,
}

#: Not an event: names a futex word (``addr``) so the trace can label waits
#: on it; the kernel sees only addresses, the VMM knows which lock each is.
NAME_FUTEX_CODE: Final = 6

_FLUSH_BYTES: Final = 64 * 1024

enabled: bool = False
_fd: int = -1
_names_fd: int = -1
_names: dict[str, int] = {}
_names_lock = threading.Lock()
_buffers: list[_ThreadBuffer] = []
_local = threading.local()


def _noop(*_args: object) -> None:
    return None


def _name_id(name: str) -> int:
    """Intern ``name`` (first use: under a lock, written to the names file)."""
    with _names_lock:
        nid = _names.get(name)
        if nid is None:
            nid = len(_names) + 1
            os.write(_names_fd, f"{nid}\t{name}\n".encode())
            _names[name] = nid
    return nid


class _ThreadBuffer:
    """One thread's records, its kernel thread id, and the lock that guards them.

    Only the owning thread appends, so the lock is uncontended on the hot
    path; it is there for :func:`flush`, which another thread may call
    (``atexit``, :func:`disable`) while the owner records.  Without it a
    record appended between the flusher's copy and its ``del buf[:]`` is
    lost -- under the GIL too, since ``os.write`` releases it -- and on a
    free-threaded CPython a ``bytearray`` resized by one thread while
    another copies it is a use-after-free (3.13's bytearray has no
    per-object lock).  The thread id is cached here because asking the
    kernel on every event was a third of a probe's cost.
    """

    __slots__ = ("buf", "tid", "lock")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.tid = threading.get_native_id()
        self.lock = threading.Lock()


def _new_buffer() -> _ThreadBuffer:
    """This thread's record buffer, made on its first event."""
    mine = _ThreadBuffer()
    _local.mine = mine
    with _names_lock:
        _buffers.append(mine)
    return mine


def _write_out(buf: bytearray) -> None:
    # One write per buffer: O_APPEND keeps records of concurrent threads whole.
    # The caller holds the buffer's lock.
    if buf and _fd >= 0:
        os.write(_fd, bytes(buf))
    del buf[:]


# The enabled probes are flat on purpose: each helper call they made
# (buffer, name id, pack) cost ~60 ns, and the BQL's three probes run while
# the lock is held, so a probe's cost is paid again by every vCPU that waits.
def _lock_probe(code: int) -> Callable[..., None]:
    def probe(name: str, addr: int = 0) -> None:
        try:
            mine = _local.mine
        except AttributeError:
            mine = _new_buffer()
        record = _pack(_monotonic_ns(), mine.tid, code, 0, _names.get(name) or _name_id(name), addr & _U64, 0)
        with mine.lock:
            buf = mine.buf
            buf += record
            if len(buf) >= _FLUSH_BYTES:
                _write_out(buf)

    return probe


def _dispatch_probe(code: int) -> Callable[..., None]:
    def probe(addr: int, size: int, write: bool, region: str) -> None:
        try:
            mine = _local.mine
        except AttributeError:
            mine = _new_buffer()
        record = _pack(
            _monotonic_ns(),
            mine.tid,
            code,
            (size & 0x7F) | (0x80 if write else 0),
            _names.get(region) or _name_id(region),
            addr & _U64,
            0,
        )
        with mine.lock:
            buf = mine.buf
            buf += record
            if len(buf) >= _FLUSH_BYTES:
                _write_out(buf)

    return probe


_pack = RECORD.pack
_monotonic_ns = time.monotonic_ns
_U64: Final = 0xFFFFFFFFFFFFFFFF
_lock_begin = _lock_probe(EVENT_CODES["lock_begin"])
_lock_acquired = _lock_probe(EVENT_CODES["lock_acquired"])
_lock_release = _lock_probe(EVENT_CODES["lock_release"])
_dispatch_begin = _dispatch_probe(EVENT_CODES["dispatch_begin"])
_dispatch_end = _dispatch_probe(EVENT_CODES["dispatch_end"])


_futex_name_record = _lock_probe(NAME_FUTEX_CODE)


def _name_futex(addr: int, name: str) -> None:
    _futex_name_record(name, addr)
    # Names are few and read while the target runs (vmtrace top names the
    # BQL's word from them): out now, not with the next 64 KiB.
    flush()


lock_begin = _noop
lock_acquired = _noop
lock_release = _noop
dispatch_begin = _noop
dispatch_end = _noop
name_futex: Callable[[int, str], None] = _noop


def flush() -> None:
    """Write every thread's buffered records to the spool file (any thread may call it)."""
    with _names_lock:
        buffers = list(_buffers)
    for mine in buffers:
        with mine.lock:
            _write_out(mine.buf)


def enable(path: str) -> None:
    """Start writing events to the spool file ``path`` (appending)."""
    global enabled, _fd, _names_fd, lock_begin, lock_acquired, lock_release
    global dispatch_begin, dispatch_end, name_futex
    _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _names_fd = os.open(path + ".names", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lock_begin, lock_acquired, lock_release = _lock_begin, _lock_acquired, _lock_release
    dispatch_begin, dispatch_end = _dispatch_begin, _dispatch_end
    name_futex = _name_futex
    enabled = True
    atexit.register(flush)


def disable() -> None:
    """Flush, close the spool file and turn every probe back into a no-op."""
    global enabled, _fd, _names_fd, _local, lock_begin, lock_acquired, lock_release
    global dispatch_begin, dispatch_end, name_futex
    if not enabled:
        return
    flush()
    lock_begin = lock_acquired = lock_release = _noop
    dispatch_begin = dispatch_end = name_futex = _noop
    enabled = False
    os.close(_fd)
    os.close(_names_fd)
    _fd = _names_fd = -1
    _names.clear()
    _buffers.clear()
    _local = threading.local()


if os.environ.get(ENV_VAR):
    enable(os.environ[ENV_VAR])
