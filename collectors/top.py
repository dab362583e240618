"""The kernel side of ``vmtrace top``: load ``bpf/top.bpf.c``, read its maps.

The program aggregates each vCPU exit's components per (tid, exit kind,
port or address) in the kernel; nothing is streamed.  ``read()`` copies the
cumulative counters out; the caller subtracts two reads to get an interval.
The BQL's futex word is named as ``record`` names it (``qemu.py``: two
uprobes, detached once the word is known), or set by the caller when the
target names it itself (the reference VMM through ``vmtrace.probes``).

The compile-time constants come from the caller (``vmtrace.top.boundaries.
cflags``): a collector never imports an analysis, and the boundaries are
defined once, on the vmtrace side.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmtrace.errors import HostError

from .bcc_backend import check_bcc_host
from .qemu import QemuSymbols, is_qemu, qemu_symbols, symbol_file_offset, uprobe_plan
from .uprobe_pmu import PerfUprobe, attach_uprobe

__all__ = ["KernelCounters", "TopProgram"]

_SOURCE = Path(__file__).with_name("bpf") / "top.bpf.c"
#: The BPF function in bpf/top.bpf.c behind each identifying role of
#: ``qemu.uprobe_plan`` (the same names as vmtrace.bpf.c's).
_BPF_FN = {"bql_lock": "bql_lock_enter", "mutex_lock": "mutex_lock_enter"}


@dataclass
class KernelCounters:
    """One read of the maps: cumulative since attach.

    Exits, one element per key: ``tid`` int64, ``kind`` int64, ``addr``
    uint64, ``count`` int64, ``sums`` int64 [n, ncomp] ns, ``hist`` int64
    [n, ncomp, nbuckets].  Futex words: ``word`` uint64, ``waits`` int64,
    ``wait_ns`` int64.  ``dropped``: cycles or waits a full map refused.
    ``read_ns``: CLOCK_MONOTONIC of the read.
    """

    tid: np.ndarray
    kind: np.ndarray
    addr: np.ndarray
    count: np.ndarray
    sums: np.ndarray
    hist: np.ndarray
    word: np.ndarray
    waits: np.ndarray
    wait_ns: np.ndarray
    dropped: int
    read_ns: int
    bql_word: int | None = None
    notes: list[str] = field(default_factory=list)


class TopProgram:
    """The loaded program.  ``with TopProgram(flags, ncomp, nbuckets) as p:
    p.attach(pid, binary); ... p.read() ...``; leaving the block detaches
    everything, on every path."""

    def __init__(self, cflags: list[str], ncomp: int, nbuckets: int, identify_timeout_s: float = 5.0) -> None:
        self._cflags = cflags
        self._ncomp = ncomp
        self._nbuckets = nbuckets
        self._timeout_s = identify_timeout_s
        self._bpf: Any = None
        self._binary: str | None = None
        self._syms: QemuSymbols | None = None
        self._uprobes: list[PerfUprobe] = []
        self._uprobes_since = 0
        self._bql: int | None = None
        self.have: dict[str, bool] = {}
        self.notes: list[str] = []

    def attach(self, pid: int, binary: str | None) -> None:
        """Load the program and follow the process tree of ``pid``."""
        self.have = check_bcc_host("vmtrace top")
        from bcc import BPF  # imported late: bcc is a system package

        flags = list(self._cflags)
        if self.have.get("kvm:kvm_entry"):
            flags.append("-DHAVE_KVM_ENTRY")
        if self.have.get("kvm:kvm_exit"):
            flags.append("-DHAVE_KVM_EXIT")
        try:
            self._bpf = BPF(src_file=str(_SOURCE).encode(), cflags=flags)
        except Exception as err:  # bcc raises bare Exception on compile/load errors
            raise HostError(f"bcc could not load the top BPF program: {str(err).splitlines()[0]}") from None
        slots = self._bpf[b"slots"]
        slot = slots[ctypes.c_int(pid & 0xFFFF)]
        slot.target = pid
        slots[ctypes.c_int(pid & 0xFFFF)] = slot
        self._binary = binary
        if binary and is_qemu(binary):
            self._attach_uprobes(binary)

    def _attach_uprobes(self, binary: str) -> None:
        from bcc import BPF

        syms = qemu_symbols(binary)
        self._syms = syms
        # The identification half of record's plan, attached as record
        # attaches it (uprobe_pmu: ref_ctr_offset 0, so top and record can
        # probe the same QEMU at once).
        plan = [spec for spec in uprobe_plan(syms, precise=False) if spec.identify]
        if not plan:
            self.notes.append(f"{binary} lacks {', '.join(syms.missing)}: the BQL cannot be identified")
            return
        # Deliberately the same loop as BccCollector's: the uprobe plan and its
        # attach are shared (qemu.uprobe_plan, uprobe_pmu.attach_uprobe); only
        # the program functions differ, and each collector owns its program.
        for spec in plan:
            offset = symbol_file_offset(binary, spec.symbol)
            if offset is None:
                self.notes.append(f"no file offset for {spec.symbol} in {binary}: the BQL cannot be identified")
                continue
            prog = self._bpf.load_func(_BPF_FN[spec.role].encode(), BPF.KPROBE)
            self._uprobes.append(attach_uprobe(prog.fd, binary, offset, spec.symbol, spec.is_return))
        self._uprobes_since = time.monotonic_ns()

    def _detach_uprobes(self) -> None:
        for probe in self._uprobes:
            probe.close()
        self._uprobes = []

    def name_bql(self, word: int) -> None:
        """The target named its BQL's futex word itself."""
        if self._bpf is not None and not self._bql:
            self._bpf[b"bql_word"][ctypes.c_int(0)] = ctypes.c_uint64(word)
            self._bql = word

    @property
    def bql_word(self) -> int | None:
        return self._bql

    @property
    def uprobes_attached(self) -> bool:
        return bool(self._uprobes)

    def _check_bql(self) -> None:
        if self._bql is not None:
            return
        word = int(self._bpf[b"bql_word"][ctypes.c_int(0)].value)
        if word:
            self._bql = word
            self._detach_uprobes()
        elif self._uprobes and time.monotonic_ns() - self._uprobes_since > self._timeout_s * 1e9:
            self._detach_uprobes()
            self.notes.append(f"the BQL was not taken within {self._timeout_s}s of start: not identified")

    def read(self) -> KernelCounters:
        """Copy the cumulative counters out of the maps."""
        bpf = self._bpf
        self._check_bql()
        now = time.monotonic_ns()
        table = bpf[b"aggs"]
        n_bytes = 8 + 8 * self._ncomp + 4 * self._ncomp * self._nbuckets
        if ctypes.sizeof(table.Leaf) != n_bytes:
            raise HostError(f"top's BPF map value is {ctypes.sizeof(table.Leaf)} bytes, expected {n_bytes}")
        items = list(table.items())
        n, c, b = len(items), self._ncomp, self._nbuckets
        tid = np.zeros(n, dtype=np.int64)
        kind = np.zeros(n, dtype=np.int64)
        addr = np.zeros(n, dtype=np.uint64)
        count = np.zeros(n, dtype=np.int64)
        sums = np.zeros((n, c), dtype=np.int64)
        hist = np.zeros((n, c, b), dtype=np.int64)
        for i, (k, v) in enumerate(items):
            tid[i], kind[i], addr[i] = k.tid, k.kind, k.addr
            raw = np.frombuffer(bytes(v), dtype=np.uint8)
            count[i] = raw[:8].view(np.uint64)[0]
            sums[i] = raw[8 : 8 + 8 * c].view(np.uint64)
            hist[i] = raw[8 + 8 * c : 8 + 8 * c + 4 * c * b].view(np.uint32).reshape(c, b)
        words = list(bpf[b"words"].items())
        word = np.array([int(k.value) for k, _v in words], dtype=np.uint64)
        waits = np.array([int(v.waits) for _k, v in words], dtype=np.int64)
        wait_ns = np.array([int(v.ns) for _k, v in words], dtype=np.int64)
        dropped = int(bpf[b"dropped"][ctypes.c_int(0)].value)
        return KernelCounters(
            tid, kind, addr, count, sums, hist, word, waits, wait_ns, dropped, now, self._bql, list(self.notes)
        )

    def detach(self) -> None:
        """Remove every program and probe; idempotent."""
        if self._bpf is not None:
            try:
                self._detach_uprobes()
                self._bpf.cleanup()
            finally:
                self._bpf = None

    def __enter__(self) -> TopProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()
