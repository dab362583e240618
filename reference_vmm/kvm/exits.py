"""Typed VM exits: what :meth:`VcpuFd.run` returns.

Decoding ``kvm_run`` happens once, in :mod:`.system`; everything after it
(the vCPU loop, the exit handler, tests with a fake bus) sees these values.
They are NamedTuples: cheap to build on the hot path, immutable, comparable
in tests.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "IoIn",
    "IoOut",
    "MmioRead",
    "MmioWrite",
    "Hlt",
    "Shutdown",
    "Intr",
    "InternalError",
    "FailEntry",
    "SystemEvent",
    "Unknown",
    "VcpuExit",
    "SYSTEM_EVENT_SHUTDOWN",
    "SYSTEM_EVENT_RESET",
    "SYSTEM_EVENT_CRASH",
]


class IoIn(NamedTuple):
    """The guest reads ``count`` items of ``size`` bytes from ``port``."""

    port: int
    size: int
    count: int = 1  # type: ignore[assignment]  # kvm_run.io.count; shadows tuple.count


class IoOut(NamedTuple):
    """The guest writes ``data`` (``count`` items of ``size`` bytes) to ``port``."""

    port: int
    size: int
    data: bytes
    count: int = 1  # type: ignore[assignment]  # kvm_run.io.count; shadows tuple.count


class MmioRead(NamedTuple):
    """The guest reads ``size`` bytes at guest-physical ``addr``."""

    addr: int
    size: int


class MmioWrite(NamedTuple):
    """The guest writes ``data`` at guest-physical ``addr``."""

    addr: int
    data: bytes


class Hlt(NamedTuple):
    """The vCPU executed HLT (only exits to userspace without an in-kernel LAPIC)."""


class Shutdown(NamedTuple):
    """KVM_EXIT_SHUTDOWN: on x86, a triple fault."""


class Intr(NamedTuple):
    """KVM_RUN returned EINTR: a signal (a kick) interrupted the vCPU."""


class InternalError(NamedTuple):
    """KVM_EXIT_INTERNAL_ERROR: ``suberror`` (1 = emulation failure) and data words."""

    suberror: int
    data: tuple[int, ...]


class FailEntry(NamedTuple):
    """KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest."""

    reason: int
    cpu: int


class SystemEvent(NamedTuple):
    """KVM_EXIT_SYSTEM_EVENT: ``type`` is one of the SYSTEM_EVENT_* values."""

    type: int
    data: tuple[int, ...]


class Unknown(NamedTuple):
    """Any exit reason the VMM does not handle."""

    reason: int


SYSTEM_EVENT_SHUTDOWN = 1
SYSTEM_EVENT_RESET = 2
SYSTEM_EVENT_CRASH = 3

VcpuExit = (
    IoIn | IoOut | MmioRead | MmioWrite | Hlt | Shutdown | Intr | InternalError | FailEntry | SystemEvent | Unknown
)
