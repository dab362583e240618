"""What this host offers a tracer: tracefs, tracepoints, KVM flavour, TSC.

Everything here reads the host and changes nothing, except ``ensure_tracefs``
which mounts tracefs when it is not mounted (as ``perf`` and ``trace-cmd`` do).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import re
import subprocess
import time
from pathlib import Path

from vmtrace.errors import HostError

__all__ = [
    "TRACEFS",
    "KERNEL_TRACEPOINTS",
    "ensure_tracefs",
    "tracefs_path",
    "tracepoint_available",
    "available_tracepoints",
    "kvm_flavour",
    "tsc_hz",
    "host_info",
    "require_root",
]

TRACEFS = Path("/sys/kernel/tracing")
_DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")

#: The tracepoints of DESIGN.md's event table, as "system:event".
KERNEL_TRACEPOINTS: tuple[str, ...] = (
    "syscalls:sys_enter_ioctl",
    "syscalls:sys_exit_ioctl",
    "kvm:kvm_entry",
    "kvm:kvm_exit",
    "kvm:kvm_pio",
    "kvm:kvm_mmio",
    "kvm:kvm_msr",
    "kvm:kvm_userspace_exit",
    "syscalls:sys_enter_futex",
    "syscalls:sys_exit_futex",
    "sched:sched_switch",
    "sched:sched_wakeup",
    "task:task_rename",
)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise HostError(f"{what} needs root (tracefs, BPF and uprobes): run it with sudo")


def tracefs_path() -> Path | None:
    """The mounted tracefs directory, or None."""
    for path in (TRACEFS, _DEBUGFS_TRACING):
        if (path / "events").is_dir():
            return path
    return None


def ensure_tracefs() -> Path:
    """Return tracefs, mounting it at /sys/kernel/tracing if needed."""
    path = tracefs_path()
    if path is not None:
        return path
    require_root("mounting tracefs")
    proc = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
        capture_output=True,
        text=True,
    )
    path = tracefs_path()
    if path is None:
        # mount(8) adds a second line about dmesg; the error stays one line.
        detail = (proc.stderr.strip().splitlines() or ["no events directory after mounting"])[0]
        raise HostError(
            f"tracefs is not mounted and mounting it failed ({detail}); "
            "run `mount -t tracefs nodev /sys/kernel/tracing` or enable CONFIG_TRACING"
        )
    return path


def tracepoint_available(tracefs: Path, tracepoint: str) -> bool:
    """Whether ``system:event`` can be traced here.  tracefs is mode 0700:
    to anyone but root nothing in it is available, which is an answer, not an
    error (``vmtrace doctor`` runs as any user)."""
    system, event = tracepoint.split(":")
    try:
        return (tracefs / "events" / system / event / "format").exists()
    except PermissionError:
        return False


def available_tracepoints(tracefs: Path | None = None) -> dict[str, bool]:
    tracefs = tracefs or tracefs_path()
    if tracefs is None:
        return dict.fromkeys(KERNEL_TRACEPOINTS, False)
    return {tp: tracepoint_available(tracefs, tp) for tp in KERNEL_TRACEPOINTS}


def kvm_flavour() -> str:
    """vmx, svm or pvm from the loaded KVM modules; unknown otherwise."""
    try:
        modules = Path("/proc/modules").read_text()
    except OSError:
        modules = ""
    loaded = {line.split()[0] for line in modules.splitlines() if line.strip()}
    for module, flavour in (("kvm_pvm", "pvm"), ("kvm_intel", "vmx"), ("kvm_amd", "svm")):
        if module in loaded or Path(f"/sys/module/{module}").exists():
            return flavour
    return "unknown"


# rdtsc; shl rdx, 32; or rax, rdx; ret
_RDTSC_CODE = bytes.fromhex("0f3148c1e2204809d0c3")
_rdtsc_fn = None


def _rdtsc() -> int:
    global _rdtsc_fn
    if _rdtsc_fn is None:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(_RDTSC_CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        _rdtsc_fn = (ctypes.CFUNCTYPE(ctypes.c_uint64)(addr), buf)
    return int(_rdtsc_fn[0]())


def _tsc_from_kernel_log() -> int | None:
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    hits = re.findall(r"tsc: (?:Refined TSC clocksource calibration|Detected): ([\d.]+) MHz", out)
    return int(float(hits[-1]) * 1e6) if hits else None


def tsc_hz(calibrate_s: float = 0.05) -> tuple[int, str]:
    """The host TSC frequency and how it was found.

    Measured against CLOCK_MONOTONIC by running rdtsc directly; the kernel's
    own calibration (dmesg) is preferred when it is readable because it is
    averaged over a much longer time.
    """
    hz = _tsc_from_kernel_log()
    if hz:
        return hz, "kernel log (tsc: calibration)"
    try:
        t0, c0 = time.monotonic_ns(), _rdtsc()
        time.sleep(calibrate_s)
        t1, c1 = time.monotonic_ns(), _rdtsc()
    except (OSError, ValueError):
        return 0, "unavailable"
    return int((c1 - c0) * 1e9 / (t1 - t0)), f"rdtsc against CLOCK_MONOTONIC over {calibrate_s}s"


def host_info() -> dict[str, object]:
    return {
        "kernel": platform.release(),
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
