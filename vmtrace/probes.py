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
_buffers: list[bytearray] = []
_local = threading.local()


def _noop(*_args: object) -> None:
    return None


def _name_id(name: str) -> int:
    nid = _names.get(name)
    if nid is None:
        with _names_lock:
            nid = _names.get(name)
            if nid is None:
                nid = len(_names) + 1
                os.write(_names_fd, f"{nid}\t{name}\n".encode())
                _names[name] = nid
    return nid


def _buffer() -> tuple[bytearray, int]:
    """This thread's record buffer and kernel thread id (cached: asking the
    kernel for the tid on every event was a third of a probe's cost)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = bytearray()
        _local.buf = buf
        _local.tid = threading.get_native_id()
        with _names_lock:
            _buffers.append(buf)
    return buf, _local.tid


def _emit(code: int, name: str, addr: int, size: int, write: bool, value: int) -> None:
    buf, tid = _buffer()
    buf += RECORD.pack(
        time.monotonic_ns(),
        tid,
        code,
        (size & 0x7F) | (0x80 if write else 0),
        _name_id(name),
        addr & 0xFFFFFFFFFFFFFFFF,
        value,
    )
    if len(buf) >= _FLUSH_BYTES:
        _write_out(buf)


def _write_out(buf: bytearray) -> None:
    # One write per buffer: O_APPEND keeps records of concurrent threads whole.
    if buf and _fd >= 0:
        os.write(_fd, bytes(buf))
    del buf[:]


def _lock_begin(name: str, addr: int = 0) -> None:
    _emit(1, name, addr, 0, False, 0)


def _lock_acquired(name: str, addr: int = 0) -> None:
    _emit(2, name, addr, 0, False, 0)


def _lock_release(name: str, addr: int = 0) -> None:
    _emit(3, name, addr, 0, False, 0)


def _dispatch_begin(addr: int, size: int, write: bool, region: str) -> None:
    _emit(4, region, addr, size, write, 0)


def _dispatch_end(addr: int, size: int, write: bool, region: str) -> None:
    _emit(5, region, addr, size, write, 0)


def _name_futex(addr: int, name: str) -> None:
    _emit(NAME_FUTEX_CODE, name, addr, 0, False, 0)


lock_begin = _noop
lock_acquired = _noop
lock_release = _noop
dispatch_begin = _noop
dispatch_end = _noop
name_futex = _noop


def flush() -> None:
    """Write every thread's buffered records to the spool file."""
    with _names_lock:
        buffers = list(_buffers)
    for buf in buffers:
        _write_out(buf)


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
