"""Uprobes for BPF programs through the kernel's uprobe PMU (perf_event_open).

Why not bcc's ``attach_uprobe``: Debian's bcc 0.26 Python binding declares
``bpf_attach_uprobe`` without its last C argument (``uint32_t
ref_ctr_offset``, added in bcc 0.17; upstream bcc issue 5236), so libbcc reads
whatever is left in a register as the USDT semaphore offset.  The kernel then
registers the uprobe with that offset; a later uprobe at the same place with
offset 0 (the ftrace backend's) is refused with EINVAL ("ref_ctr_offset
mismatch" in the kernel log), and when the garbage made libbcc fall back to
``uprobe_events``, a SIGKILL left the definition behind.

Here a uprobe is one perf event with ``ref_ctr_offset`` 0, owned by a file
descriptor: the kernel removes it when the descriptor closes, so a SIGKILLed
recorder leaves nothing in tracefs.  The BPF program runs on every CPU
whatever CPU the event was opened on (BPF programs on trace events are
called from the probe handler), as bcc itself relies on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from pathlib import Path

from vmtrace.errors import HostError

__all__ = ["PerfUprobe", "attach_uprobe", "uprobe_einval_hint"]

_PMU = Path("/sys/bus/event_source/devices/uprobe")
_NR_PERF_EVENT_OPEN = 298  # x86_64
_PERF_FLAG_FD_CLOEXEC = 1 << 3
# _IO('$', 0), _IO('$', 1), _IOW('$', 8, __u32) from <linux/perf_event.h>.
_IOC_ENABLE = 0x2400
_IOC_DISABLE = 0x2401
_IOC_SET_BPF = 0x40042408


class _PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` up to PERF_ATTR_SIZE_VER5 (112 bytes); the
    kernel accepts any published size and zero-fills the rest."""

    # Field by field as include/uapi/linux/perf_event.h declares it: the runs
    # of alike lines are the kernel's layout, kept literal so it can be
    # checked against the header line by line.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),  # bit 0 retprobe; bits 32-63 ref_ctr_offset
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),  # uprobe_path: a pointer to the path
        ("config2", ctypes.c_uint64),  # probe_offset: file offset
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("reserved_2", ctypes.c_uint16),
    ]


assert ctypes.sizeof(_PerfEventAttr) == 112

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _pmu_type() -> int:
    try:
        return int((_PMU / "type").read_text())
    except (OSError, ValueError):
        raise HostError(
            "this kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe): "
            "the bcc backend needs Linux 4.17 or later; record with --backend ftrace"
        ) from None


def _retprobe_bit() -> int:
    try:
        spec = (_PMU / "format" / "retprobe").read_text().strip()  # "config:0"
        return int(spec.split(":")[1])
    except (OSError, ValueError, IndexError):
        return 0


def uprobe_einval_hint(binary: str, symbol: str) -> str:
    """What an EINVAL on a uprobe at ``symbol`` in ``binary`` most likely
    means, and what to do about it."""
    cause = "a uprobe with a different ref_ctr_offset is registered at the same place"
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
        if "ref_ctr_offset mismatch" in log:
            cause += " (the kernel log says: ref_ctr_offset mismatch)"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return (
        f"the kernel refused a uprobe on {symbol} in {binary} (EINVAL): {cause}, most likely left by a "
        "bcc 0.26 tool (its Python binding passes a garbage ref_ctr_offset; bcc issue 5236) that was "
        "killed while attached. Remove it from /sys/kernel/tracing/uprobe_events if it is listed there "
        "(echo '-:GROUP/NAME' >> /sys/kernel/tracing/uprobe_events); if it is not listed the kernel "
        "holds it until reboot"
    )


class PerfUprobe:
    """One uprobe (or uretprobe) running BPF program ``prog_fd``, held by a
    perf event file descriptor; ``close()`` removes it."""

    def __init__(self, fd: int, binary: str, symbol: str, is_return: bool) -> None:
        self.fd = fd
        self.binary = binary
        self.symbol = symbol
        self.is_return = is_return

    def close(self) -> None:
        """Remove the uprobe.  This blocks ~90-160 ms on this host (the kernel
        waits for grace periods, holding one mutex, so closes never overlap:
        three take ~350 ms, from one thread or three), and the breakpoint
        keeps trapping until it returns; PERF_EVENT_IOC_DISABLE does not
        take it out sooner."""
        if self.fd < 0:
            return
        try:
            _libc.ioctl(self.fd, _IOC_DISABLE, 0)
        finally:
            os.close(self.fd)
            self.fd = -1


def attach_uprobe(
    prog_fd: int, binary: str, offset: int, symbol: str, is_return: bool = False, ref_ctr_offset: int = 0
) -> PerfUprobe:
    """Attach BPF program ``prog_fd`` (type kprobe) to file ``offset`` of
    ``binary`` (every process that maps it).  vmtrace always leaves
    ``ref_ctr_offset`` 0; the tests set it to stand for the probe a bcc 0.26
    tool leaves.

    Raises ``HostError`` naming the cause; EINVAL gets ``uprobe_einval_hint``.
    """
    attr = _PerfEventAttr()
    attr.type = _pmu_type()
    attr.size = ctypes.sizeof(_PerfEventAttr)
    # ref_ctr_offset (bits 32-63) is 0 for vmtrace: it probes functions, never
    # USDT semaphores, and 0 is what the ftrace backend registers too.
    attr.config = ((1 << _retprobe_bit()) if is_return else 0) | (ref_ctr_offset << 32)
    attr.sample_period = 1
    attr.wakeup_events = 1
    # Safe because ``path`` outlives the syscall, which copies the string.
    path = ctypes.create_string_buffer(binary.encode())
    attr.config1 = ctypes.addressof(path)
    attr.config2 = offset
    # Safe because ``attr`` is a complete, initialised perf_event_attr of the
    # size it declares, and lives until the call returns.
    fd = _libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            raise HostError(uprobe_einval_hint(binary, symbol))
        raise HostError(f"perf_event_open of a uprobe on {symbol} in {binary} failed: {os.strerror(err)}")
    probe = PerfUprobe(int(fd), binary, symbol, is_return)
    for request, arg, what in (
        (_IOC_SET_BPF, prog_fd, "PERF_EVENT_IOC_SET_BPF"),
        (_IOC_ENABLE, 0, "PERF_EVENT_IOC_ENABLE"),
    ):
        if _libc.ioctl(probe.fd, request, ctypes.c_int(arg)) != 0:
            err = ctypes.get_errno()
            probe.close()
            raise HostError(f"{what} on a uprobe on {symbol} in {binary} failed: {os.strerror(err)}")
    return probe
