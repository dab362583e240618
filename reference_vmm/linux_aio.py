"""Linux native AIO (``io_setup``/``io_submit``/``io_getevents``) through ctypes.

QEMU's ``aio=native`` (``block/linux-aio.c``): a batch of reads and writes on
an O_DIRECT descriptor goes to the kernel in one ``io_submit`` and the
thread waits once for all of them, instead of sleeping in one ``preadv``
after another.  On a host whose CPUs are all busy (vCPU threads polling the
used ring), every sleep costs a wakeup and a wait for a CPU; one per batch
instead of one per request is most of a request's cost.

The structures are the kernel's ``include/uapi/linux/aio_abi.h`` (x86-64,
little endian); the syscalls go through libc's ``syscall()`` because glibc
wraps only the POSIX AIO emulation, not these.  Errors are ``OSError``.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from typing import Generic, TypeVar

__all__ = ["LinuxAio", "IOCB_CMD_PREADV", "IOCB_CMD_PWRITEV"]

_SYS_IO_SETUP = 206
_SYS_IO_DESTROY = 207
_SYS_IO_GETEVENTS = 208
_SYS_IO_SUBMIT = 209

IOCB_CMD_PREADV = 7
IOCB_CMD_PWRITEV = 8

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _IoCb(ctypes.Structure):
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


assert ctypes.sizeof(_IoCb) == 64 and ctypes.sizeof(_IoEvent) == 32


def _address(buf: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


#: What the caller hands in with a request and gets back with its result.
TagT = TypeVar("TagT")


class LinuxAio(Generic[TagT]):
    """One kernel AIO context of ``depth`` slots, used by one thread at a time."""

    def __init__(self, depth: int = 256) -> None:
        self.depth = depth
        ctx = ctypes.c_ulong(0)
        if _syscall(_SYS_IO_SETUP, ctypes.c_uint(depth), ctypes.byref(ctx)) < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_setup: {os.strerror(e)}")
        self._ctx = ctx
        self._events = (_IoEvent * depth)()
        self._zero = _Timespec(0, 0)
        self._next = 1
        self._queued: list[tuple[int, _IoCb, ctypes.Array, TagT]] = []
        self._inflight: dict[int, tuple[_IoCb, ctypes.Array, TagT]] = {}
        self._done: list[tuple[TagT, int]] = []

    def queue(self, fd: int, opcode: int, offset: int, bufs: Sequence[memoryview], tag: TagT) -> None:
        """Queue one read or write of ``bufs`` at ``offset`` on ``fd``; it goes
        to the kernel at the next :meth:`submit` (QEMU's plugged queue)."""
        iov = (_IoVec * len(bufs))(*[_IoVec(_address(b), len(b)) for b in bufs])
        cb = _IoCb(
            aio_data=self._next,
            aio_lio_opcode=opcode,
            aio_fildes=fd,
            aio_buf=ctypes.addressof(iov),
            aio_nbytes=len(bufs),
            aio_offset=offset,
        )
        # The kernel reads the iocb and iovec at io_submit and writes the
        # buffers until completion: keep all three alive until then.
        self._queued.append((self._next, cb, iov, tag))
        self._next += 1

    @property
    def in_flight(self) -> int:
        return len(self._inflight) + len(self._queued)

    def submit(self) -> None:
        """``io_submit`` everything queued (QEMU's ``laio_io_unplug``)."""
        while self._queued:
            batch = self._queued[: self.depth - len(self._inflight)]
            if not batch:  # every slot busy: wait for one
                self._reap(1, None)
                continue
            ptrs = (ctypes.POINTER(_IoCb) * len(batch))(*[ctypes.pointer(cb) for _, cb, _, _ in batch])
            got = _syscall(_SYS_IO_SUBMIT, self._ctx, ctypes.c_long(len(batch)), ptrs)
            if got < 0:
                e = ctypes.get_errno()
                if e == errno.EAGAIN and self._inflight:
                    self._reap(1, 0)
                    continue
                raise OSError(e, f"io_submit: {os.strerror(e)}")
            for key, cb, iov, tag in batch[:got]:
                self._inflight[key] = (cb, iov, tag)
            del self._queued[:got]

    def reap(self, block: bool) -> list[tuple[TagT, int]]:
        """Completed requests as ``(tag, result)`` (bytes moved, or a negative
        errno), submitting what is queued first.  ``block``: wait for at
        least one when any is in flight; else only look."""
        self.submit()
        if self._inflight:
            self._reap(1 if block else 0, None if block else 0)
        done, self._done = self._done, []
        return done

    def _reap(self, min_nr: int, timeout: int | None) -> None:
        got = _syscall(
            _SYS_IO_GETEVENTS,
            self._ctx,
            ctypes.c_long(min_nr),
            ctypes.c_long(self.depth),
            self._events,
            ctypes.byref(self._zero) if timeout == 0 else None,
        )
        if got < 0:
            e = ctypes.get_errno()
            if e == errno.EINTR:
                return
            raise OSError(e, f"io_getevents: {os.strerror(e)}")
        for ev in self._events[:got]:
            _cb, _iov, tag = self._inflight.pop(ev.data)
            self._done.append((tag, ev.res))

    def close(self) -> None:
        if self._ctx.value:
            _syscall(_SYS_IO_DESTROY, self._ctx)
            self._ctx = ctypes.c_ulong(0)
