"""QEMU as a target: its version, and the symbols vmtrace places uprobes on.

The BQL functions were renamed in QEMU 9.0 (``qemu_mutex_lock_iothread_impl``
-> ``bql_lock_impl``); both spellings are looked up in the binary's dynamic
and static symbol tables, and what is absent is reported, never guessed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

__all__ = [
    "QemuSymbols",
    "UprobeSpec",
    "IDENTIFY_TIMEOUT_S",
    "resolve_binary",
    "is_qemu",
    "qemu_version",
    "qemu_symbols",
    "symbol_file_offset",
    "uprobe_plan",
    "CALLSITE_ROLES",
    "proc_thread_names",
]

#: How long the BQL-identification uprobes stay attached when no thread takes
#: the BQL (a QEMU that idles from the start); both backends use it.
IDENTIFY_TIMEOUT_S = 5.0

_BQL_LOCK = ("bql_lock_impl", "qemu_mutex_lock_iothread_impl")
_BQL_UNLOCK = ("bql_unlock", "qemu_mutex_unlock_iothread")


@dataclass(frozen=True)
class QemuSymbols:
    """Names of the functions present in one QEMU binary (None: absent)."""

    binary: str
    bql_lock: str | None
    bql_unlock: str | None
    mutex_lock: str | None  # qemu_mutex_lock_impl(QemuMutex *mutex, ...)
    dispatch_read: str | None
    dispatch_write: str | None

    @property
    def missing(self) -> list[str]:
        names = {
            "BQL lock (" + "/".join(_BQL_LOCK) + ")": self.bql_lock,
            "BQL unlock (" + "/".join(_BQL_UNLOCK) + ")": self.bql_unlock,
            "qemu_mutex_lock_impl": self.mutex_lock,
            "memory_region_dispatch_read": self.dispatch_read,
            "memory_region_dispatch_write": self.dispatch_write,
        }
        return [k for k, v in names.items() if v is None]


def resolve_binary(cmd0: str) -> str | None:
    """The real path of a command name, or None."""
    found = shutil.which(cmd0)
    return os.path.realpath(found) if found else None


def is_qemu(binary: str | None) -> bool:
    return binary is not None and Path(binary).name.startswith("qemu-system")


@lru_cache(maxsize=8)
def _symbols(binary: str) -> dict[str, int]:
    """Function symbol -> virtual address from .dynsym and .symtab."""
    out: dict[str, int] = {}
    try:
        with open(binary, "rb") as fh:
            elf = ELFFile(fh)
            for section in elf.iter_sections():
                if not isinstance(section, SymbolTableSection):
                    continue
                for sym in section.iter_symbols():
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
                        out.setdefault(sym.name, sym["st_value"])
    except (OSError, ELFError):
        return {}
    return out


def symbol_file_offset(binary: str, name: str) -> int | None:
    """File offset of function ``name`` (what tracefs ``uprobe_events`` takes)."""
    vaddr = _symbols(binary).get(name)
    if vaddr is None:
        return None
    with open(binary, "rb") as fh:
        elf = ELFFile(fh)
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]:
                return vaddr - seg["p_vaddr"] + seg["p_offset"]
    return None


def qemu_symbols(binary: str) -> QemuSymbols:
    syms = _symbols(binary)

    def first(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in syms), None)

    return QemuSymbols(
        binary=binary,
        bql_lock=first(_BQL_LOCK),
        bql_unlock=first(_BQL_UNLOCK),
        mutex_lock=first(("qemu_mutex_lock_impl",)),
        dispatch_read=first(("memory_region_dispatch_read",)),
        dispatch_write=first(("memory_region_dispatch_write",)),
    )


@lru_cache(maxsize=8)
def qemu_version(binary: str) -> str | None:
    """'7.2.22' from ``qemu-system-x86_64 --version``, or None."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return m.group(1) if m else None


@dataclass(frozen=True)
class UprobeSpec:
    """One uprobe both backends place on QEMU.

    ``role``: what it marks (``bql_lock``, ``mutex_lock``, ``bql_lock_ret``,
    ``bql_unlock``, ``dispatch_read``/``_ret``, ``dispatch_write``/``_ret``);
    ``symbol``: the function; ``is_return``: a uretprobe; ``fetch``: the
    arguments in tracefs ``uprobe_events`` syntax (the BPF programs read the
    same registers themselves); ``identify``: used to name the BQL.
    """

    role: str
    symbol: str
    is_return: bool = False
    fetch: str = ""
    identify: bool = False


#: Roles of the uprobes that record call sites (``--callsites``), which the
#: sampled mode attaches only inside its windows.
CALLSITE_ROLES = ("bql_lock", "bql_lock_ret", "bql_unlock")


def uprobe_plan(syms: QemuSymbols, precise: bool, callsites: bool = False) -> list[UprobeSpec]:
    """The uprobes to place on a QEMU binary: the two that name the BQL's
    futex word (the first ``qemu_mutex_lock_impl(QemuMutex *mutex)`` inside
    the BQL lock function); with ``callsites`` or ``precise`` the lock's
    return and the unlock too, the lock's entry then reading the caller's
    file and line (``bql_lock_impl(const char *file, int line)``, and
    ``qemu_mutex_lock_iothread_impl`` alike before 9.0); in precise mode
    ``memory_region_dispatch_read/write`` (entry and return).  Empty when
    the BQL functions are absent."""
    if not syms.bql_lock or not syms.mutex_lock:
        return []
    sites = precise or callsites
    plan = [
        UprobeSpec("bql_lock", syms.bql_lock, identify=True, fetch="file=+0(%di):string line=%si:s32" if sites else ""),
        UprobeSpec("mutex_lock", syms.mutex_lock, fetch="mutex=%di:x64", identify=True),
    ]
    if sites:
        plan.append(UprobeSpec("bql_lock_ret", syms.bql_lock, is_return=True))
        if syms.bql_unlock:
            plan.append(UprobeSpec("bql_unlock", syms.bql_unlock))
    if precise:
        # memory_region_dispatch_read(mr, addr, *pval, op, attrs) and
        # _write(mr, addr, data, op, attrs): System V argument registers.
        if syms.dispatch_read:
            plan.append(UprobeSpec("dispatch_read", syms.dispatch_read, fetch="addr=%si:x64 op=%cx:x32"))
            plan.append(UprobeSpec("dispatch_read_ret", syms.dispatch_read, is_return=True))
        if syms.dispatch_write:
            plan.append(UprobeSpec("dispatch_write", syms.dispatch_write, fetch="addr=%si:x64 data=%dx:x64 op=%cx:x32"))
            plan.append(UprobeSpec("dispatch_write_ret", syms.dispatch_write, is_return=True))
    return plan


def proc_thread_names(tids: set[int] | list[int]) -> dict[int, str]:
    """tid -> name from ``/proc/TID/comm`` (QEMU names vCPU threads ``CPU
    n/KVM`` with ``debug-threads=on``); threads that are gone are left out."""
    out: dict[int, str] = {}
    for tid in tids:
        try:
            with open(f"/proc/{tid}/comm") as fh:
                out[tid] = fh.read().rstrip("\n")
        except OSError:
            continue
    return out


def vmm_binary(cmd: list[str]) -> str | None:
    """The VMM executable in ``cmd``: the first word naming a QEMU binary
    (``timeout 10 qemu-system-x86_64 ...`` and ``taskset -c 1 qemu...`` both
    work), else the command itself."""
    for word in cmd:
        if word.startswith("-"):
            continue
        path = resolve_binary(word) if "/" not in word else os.path.realpath(word)
        if path and is_qemu(path):
            return path
    return resolve_binary(cmd[0])


def is_reference_vmm(cmd: list[str] | None) -> bool:
    """Whether ``cmd`` runs vmtrace's reference VMM (``python -m
    vmtrace.reference_vmm``, or its launcher on another interpreter)."""
    return cmd is not None and any("reference_vmm" in part for part in cmd)


def process_command(pid: int) -> list[str] | None:
    """The command line of the running process ``pid`` (``/proc/PID/cmdline``),
    for naming a VMM attached by PID; None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [w.decode(errors="replace") for w in raw.split(b"\0") if w] or None
