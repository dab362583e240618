"""A raw disk image: ``preadv``/``pwritev`` at byte offsets, ``fdatasync`` to flush.

The sliver of QEMU's block layer a virtio-blk device needs (``blk_aio_preadv``
on a ``raw`` image with ``cache=none``).  The image is opened with O_DIRECT
where the file system allows it, so guest data does not sit in the host page
cache and the numbers measure the device path, not memcpy.  O_DIRECT wants
buffers, lengths and offsets aligned to the device's logical block; a request
whose guest buffers are not aligned goes through a second, buffered
descriptor of the same file instead (Linux keeps the two coherent), as QEMU
would bounce it.

Reads and writes can also go in batches (:meth:`BlockBackend.queue`, then
:meth:`BlockBackend.completions`): those O_DIRECT takes are submitted together
through Linux AIO (QEMU's ``aio=native``) and the caller sleeps once for the
lot; the rest, and any that AIO refuses or cuts short, run synchronously.

Nothing is lost on a clean stop: :meth:`close` calls ``fdatasync`` before it
closes, and :meth:`flush` (the guest's VIRTIO_BLK_T_FLUSH) does the same at
the guest's request.  Errors are ``OSError``: the device turns them into a
status for the guest.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence

from .linux_aio import IOCB_CMD_PREADV, IOCB_CMD_PWRITEV, LinuxAio

__all__ = ["BlockBackend", "SECTOR_SIZE"]

SECTOR_SIZE = 512
_ALIGN = 512
_IOV_MAX = 1024

Buffers = Sequence[memoryview]
#: An AIO request's tag: the caller's tag, is_write, offset, buffers and the bytes it should move.
_AioTag = tuple[object, bool, int, list[memoryview], int]


def _host_address(buf: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class BlockBackend:
    """An open image file.  ``sectors`` is its size in 512-byte sectors (rounded down)."""

    def __init__(self, path: str, direct: bool = True) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC
        self.direct = False
        self._direct_fd = -1
        if direct:
            try:
                self._direct_fd = os.open(path, flags | os.O_DIRECT)
                self.direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: the file system has no O_DIRECT (tmpfs)
                    raise
        self._fd = os.open(path, flags)
        try:
            st = os.fstat(self._fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            size = os.lseek(self._fd, 0, os.SEEK_END)  # also right for block devices
        except BaseException:
            self.close()
            raise
        self.size = size
        self.sectors = size // SECTOR_SIZE
        self.writethrough = False  # set when the driver did not negotiate a flush command
        self.buffered_requests = 0  # requests that could not use O_DIRECT
        self.aio_requests = 0  # requests that went through Linux AIO
        self._aio: LinuxAio[_AioTag] | None = None
        self._aio_broken = False
        self._sync: list[tuple[object, bool, int, list[memoryview]]] = []

    def _fd_for(self, offset: int, bufs: Buffers) -> int:
        if self.direct and offset % _ALIGN == 0:
            try:
                if all(len(b) % _ALIGN == 0 and _host_address(b) % _ALIGN == 0 for b in bufs):
                    return self._direct_fd
            except TypeError:  # a read-only buffer cannot be O_DIRECT-checked; use the page cache
                pass
        self.buffered_requests += 1
        return self._fd

    def preadv(self, offset: int, bufs: Buffers) -> None:
        """Fill ``bufs`` from the image at ``offset``; raises OSError (EIO when past the end)."""
        self._transfer(os.preadv, offset, bufs)

    def pwritev(self, offset: int, bufs: Buffers) -> None:
        """Write ``bufs`` to the image at ``offset``; raises OSError."""
        self._transfer(os.pwritev, offset, bufs)
        if self.writethrough:
            os.fdatasync(self._fd)

    def _transfer(self, op: Callable[[int, Buffers, int], int], offset: int, bufs: Buffers) -> None:
        todo = [b for b in bufs if len(b)]
        if not todo:
            return
        fd = self._fd_for(offset, todo)
        while todo:
            try:
                n = op(fd, todo[:_IOV_MAX], offset)
            except OSError as e:
                if e.errno == errno.EINVAL and fd == self._direct_fd:
                    # The device wants a larger alignment than 512 bytes: use the page cache.
                    fd = self._fd
                    self.buffered_requests += 1
                    continue
                raise
            if n <= 0:
                raise OSError(errno.EIO, "short transfer at the end of the image")
            offset += n
            while n and todo:  # drop what was transferred; a short transfer resumes mid-buffer
                first = todo[0]
                if n >= len(first):
                    n -= len(first)
                    todo.pop(0)
                else:
                    todo[0] = first[n:]
                    n = 0
                    fd = self._fd  # the rest is no longer aligned

    # -- batches -------------------------------------------------------------------------
    def queue(self, is_write: bool, offset: int, bufs: Buffers, tag: object) -> None:
        """Queue a read (or write) of ``bufs`` at ``offset`` for the next :meth:`wait`."""
        todo = [b for b in bufs if len(b)]
        aio = self._aio_for(offset, todo)
        if aio is None:
            self._sync.append((tag, is_write, offset, todo))
            return
        aio.queue(
            self._direct_fd,
            IOCB_CMD_PWRITEV if is_write else IOCB_CMD_PREADV,
            offset,
            todo,
            (tag, is_write, offset, todo, sum(len(b) for b in todo)),
        )

    def submit(self) -> None:
        """Start what is queued for AIO now, without waiting for it."""
        if self._aio is not None:
            self._aio.submit()

    def completions(self) -> Iterator[tuple[object, OSError | None]]:
        """Run everything queued, yielding ``(tag, None or the OSError)`` per
        request as it completes.  In write-through mode nothing is yielded
        before the ``fdatasync`` that makes the batch's writes stable."""
        if self.writethrough:
            done = list(self._completions())
            if any(is_write for _, _, is_write in done):
                try:
                    os.fdatasync(self._fd)
                except OSError as e:
                    done = [(tag, err or e, w) for tag, err, w in done]
            yield from ((tag, err) for tag, err, _ in done)
        else:
            yield from ((tag, err) for tag, err, _ in self._completions())

    def _completions(self) -> Iterator[tuple[object, OSError | None, bool]]:
        aio = self._aio
        retry = []
        while aio is not None and aio.in_flight:
            for (tag, is_write, offset, bufs, size), res in aio.reap(block=True):
                if res == size:
                    self.aio_requests += 1
                    yield tag, None, is_write
                elif res < 0 and res != -errno.EINVAL:
                    yield tag, OSError(-res, os.strerror(-res)), is_write
                else:  # cut short, or an alignment the device refuses: the slow way
                    retry.append((tag, is_write, offset, bufs))
        sync, self._sync = self._sync + retry, []
        for tag, is_write, offset, bufs in sync:
            try:
                self._transfer(os.pwritev if is_write else os.preadv, offset, bufs)
                yield tag, None, is_write
            except OSError as e:
                yield tag, e, is_write

    def _aio_for(self, offset: int, bufs: list[memoryview]) -> LinuxAio[_AioTag] | None:
        if not self.direct or self._aio_broken or not bufs or offset % _ALIGN:
            return None
        try:
            if not all(len(b) % _ALIGN == 0 and _host_address(b) % _ALIGN == 0 for b in bufs):
                return None
        except TypeError:
            return None
        if len(bufs) > _IOV_MAX:
            return None
        if self._aio is None:
            try:
                self._aio = LinuxAio()
            except OSError:  # no AIO on this host (aio-max-nr, seccomp): synchronous, as before
                self._aio_broken = True
                return None
        return self._aio

    def flush(self) -> None:
        """``fdatasync``: everything written so far is on stable storage."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Flush (best effort) and close the image."""
        if self._aio is not None:
            for _ in self.completions():
                pass
            self._aio.close()
            self._aio = None
        if self._fd >= 0:
            try:
                os.fdatasync(self._fd)  # one inode: this covers what went through O_DIRECT too
            except OSError:
                pass
        for fd in (self._direct_fd, self._fd):
            if fd >= 0:
                os.close(fd)
        self._direct_fd = self._fd = -1
