"""Errors the reference VMM raises, one base class for the CLI to catch.

Host failures (an ioctl that fails, a missing image, no permission on
/dev/kvm) are exceptions.  Guest failures (a triple fault, an internal KVM
error) stop the machine with a register dump; they are reported through
:class:`GuestError` so the CLI can exit 3 instead of 2.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = ["VmmError", "KvmError", "ImageError", "GuestError"]


class VmmError(Exception):
    """Any error of the reference VMM that the CLI prints as one line."""


class KvmError(VmmError):
    """A KVM ioctl failed: carries the ioctl's name and errno."""

    def __init__(self, ioctl: str, errno: int, hint: str = "") -> None:
        self.ioctl = ioctl
        self.errno = errno
        code = _errno.errorcode.get(errno, str(errno))
        msg = f"{ioctl} failed: {code} ({os.strerror(errno)})"
        super().__init__(msg + (f"; {hint}" if hint else ""))


class ImageError(VmmError):
    """The guest image is missing, unreadable or not a multiboot image."""


class GuestError(VmmError):
    """The guest failed (triple fault, emulation failure, entry failure).

    ``dump`` holds the register dump of the vCPU that failed.
    """

    def __init__(self, message: str, dump: str = "") -> None:
        super().__init__(message)
        self.dump = dump
