"""Output files: what every writer (trace, HTML page, Perfetto JSON) does
with the path a user gives, the way ``cp`` and a shell redirection would.

=====================  ======================================================
the path names         what happens
=====================  ======================================================
nothing yet, or a      written to a temporary file beside it, then renamed
regular file           over it: a reader never sees half a file
a symlink              followed (a chain, or a dangling link, too); the
                       temporary file and the rename happen at the file it
                       points to, so the link stays a link
a FIFO                 written directly, as a stream, when a reader has it
                       open; without one, refused at once instead of hanging
the null device        written directly: ``-o /dev/null`` discards the output
a directory            refused, one line
another device node    refused, one line: renaming over ``/dev/sda`` or
or a socket            writing a trace into ``/dev/port`` is never meant
=====================  ======================================================

``/dev/stdout`` follows these rules through its link: a pipe is a FIFO, a
file that stdout was redirected to is a regular file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import OutputError

__all__ = ["OutputTarget", "check_output", "check_output_dir", "open_output"]

#: st_rdev of the null device (Linux major 1, minor 3).
_NULL_DEVICE = os.makedev(1, 3)


@dataclass(frozen=True)
class OutputTarget:
    """Where an output goes: ``path`` is the file to rename over (symlinks
    resolved) or the stream to open; ``stream`` says which."""

    given: Path
    path: Path
    stream: bool


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a FIFO"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_output(path: Path | str, what: str = "output") -> OutputTarget:
    """Decide how ``path`` will be written (see the module's table) without
    writing it; raises ``OutputError`` with one line when it cannot be.

    ``what`` names the output in messages ("trace", "HTML report" ...)."""
    given = Path(path)
    fail = f"cannot write {what} {given}"
    try:
        st = os.stat(given)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise OutputError(f"{fail}: {err.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISFIFO(st.st_mode) or (stat.S_ISCHR(st.st_mode) and st.st_rdev == _NULL_DEVICE):
            return OutputTarget(given, given, True)
        hint = "give a file name" if stat.S_ISDIR(st.st_mode) else "give a regular file (or /dev/null to discard it)"
        raise OutputError(f"{fail}: it is {_kind(st.st_mode)}; {hint}")
    # A link (or a chain, or a dangling one) is written through: the rename
    # happens at the file it names, beside that file.
    real = Path(os.path.realpath(given))
    parent = real.parent
    try:
        parent_ok = parent.is_dir()
    except OSError as err:
        raise OutputError(f"{fail}: {err.strerror}") from None
    if not parent_ok:
        where = f" (the link points to {real})" if real != given.absolute() and given.is_symlink() else ""
        raise OutputError(f"{fail}: directory {parent} does not exist{where}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{fail}: directory {parent} is not writable")
    return OutputTarget(given, real, False)


def check_output_dir(path: Path | str, what: str = "output directory") -> Path:
    """An output directory that exists or can be created (its parent does):
    refuses an existing file, device, FIFO or socket and a missing or
    unwritable parent, before any work starts.  Creates nothing."""
    given = Path(path)
    fail = f"cannot use {what} {given}"
    try:
        st = os.stat(given)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise OutputError(f"{fail}: {err.strerror}") from None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            kind = "a regular file" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)
            raise OutputError(f"{fail}: it is {kind}, not a directory")
        if not os.access(given, os.W_OK | os.X_OK):
            raise OutputError(f"{fail}: it is not writable")
        return given
    parent = Path(os.path.realpath(given)).parent
    if not parent.is_dir():
        raise OutputError(f"{fail}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{fail}: directory {parent} is not writable")
    return given


def _open_stream(target: OutputTarget, fail: str) -> int:
    # O_NONBLOCK: opening a FIFO that nobody reads fails with ENXIO instead
    # of blocking forever; once open, writes block as usual.
    try:
        fd = os.open(target.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise OutputError(f"{fail}: the FIFO has no reader; start the reader first") from None
        raise OutputError(f"{fail}: {err.strerror}") from None
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    return fd


@contextmanager
def open_output(path: Path | str, what: str = "output") -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through, following the module's table.

    A regular file is written to ``.NAME.tmp-PID`` beside it (beside the
    link's target for a symlink) and renamed into place when the block ends
    without an exception; on an exception the temporary file is removed and
    the old file is left as it was.  An ``OSError`` while writing becomes an
    ``OutputError`` naming ``what``."""
    target = check_output(path, what)
    fail = f"cannot write {what} {target.given}"
    if target.stream:
        fd = _open_stream(target, fail)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
        except OSError as err:
            raise OutputError(f"{fail}: {err.strerror or err}") from None
        return
    tmp = target.path.with_name(f".{target.path.name}.tmp-{os.getpid()}")
    try:
        # 0o666 and the umask, as any new file; O_EXCL never follows a planted link.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise OutputError(f"{fail}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target.path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{fail}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
