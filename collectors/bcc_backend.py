"""The eBPF collector: bcc compiles ``bpf/vmtrace.bpf.c`` and streams records.

Records arrive in per-CPU chunks of ``CHUNK_RECS`` through one BPF ring
buffer; the Python side only appends raw chunk bytes to a spool file while
the target runs (cheap: one callback per ``CHUNK_RECS`` events) and decodes the spool
with numpy once, at ``stop()``.  Chunks that were not full at stop time are
read straight from the per-CPU map, so nothing recorded is left behind.

Lost events: when the ring buffer is full, a chunk is dropped whole and the
BPF side adds its record count to a per-CPU running total that every later
chunk of that CPU carries in its header.  Decoding turns each rise of that
total into a schema ``lost`` marker stamped with the first record of the
chunk after the gap (exact count, exact CPU, and the gap lies between the
last record of the CPU's previous chunk and that record).  The count includes
the odd thread-name record a dropped chunk held.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.errors import HostError
from vmtrace.schema import EVENT_TYPES

from . import host
from .base import Collected, Collector, LockIdentity, RecordOptions, lost_rows, with_markers
from .callsites import SamplingWindows, assign_sites
from .qemu import (
    CALLSITE_ROLES,
    QemuSymbols,
    UprobeSpec,
    is_qemu,
    proc_thread_names,
    qemu_symbols,
    symbol_file_offset,
    uprobe_plan,
)
from .uprobe_pmu import PerfUprobe, attach_uprobe

#: The BPF function in bpf/vmtrace.bpf.c behind each role of ``qemu.uprobe_plan``.
_BPF_FN = {
    "bql_lock": "bql_lock_enter",
    "mutex_lock": "mutex_lock_enter",
    "bql_lock_ret": "bql_lock_return",
    "bql_unlock": "bql_unlock_enter",
    "dispatch_read": "dispatch_read_enter",
    "dispatch_write": "dispatch_write_enter",
    "dispatch_read_ret": "dispatch_return",
    "dispatch_write_ret": "dispatch_return",
}

__all__ = ["BccCollector", "bcc_available", "check_bcc_host", "REC_DTYPE", "decode_chunks"]

_SOURCE = Path(__file__).with_name("bpf") / "vmtrace.bpf.c"
#: Records per chunk.  The recorder pays a Python callback and a spool write
#: per chunk, and on a host with as many CPUs as vCPUs that time is taken
#: from the vCPUs: recording a 2-vCPU QEMU took 2.7-2.8% of a CPU at 128 and
#: 2.0% at 512 (20 KiB, well under the 32 KiB a per-CPU map value may hold).
CHUNK_RECS = 512
EV_COMM = 255

#: Mirror of ``struct rec`` in vmtrace.bpf.c.
REC_DTYPE = np.dtype(
    [
        ("ts", "<u8"),
        ("addr", "<u8"),
        ("value", "<i8"),
        ("tid", "<u4"),
        ("peer", "<i4"),
        ("event", "u1"),
        ("size", "u1"),
        ("write", "u1"),
        ("pad", "V5"),
    ]
)
CHUNK_DTYPE = np.dtype([("n", "<u4"), ("cpu", "<u4"), ("lost", "<u8"), ("recs", REC_DTYPE, (CHUNK_RECS,))])
assert REC_DTYPE.itemsize == 40 and CHUNK_DTYPE.itemsize == 16 + 40 * CHUNK_RECS


def bcc_available() -> tuple[bool, str]:
    """Whether bcc can be imported and kernel headers exist for it."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False, (
            "bcc is not importable: install Debian's python3-bpfcc and use a virtualenv "
            "made with --system-site-packages from /usr/bin/python3"
        )
    release = os.uname().release
    if not Path(f"/lib/modules/{release}/build").exists():
        return False, (
            f"no kernel headers at /lib/modules/{release}/build: bcc compiles BPF against them; "
            "run the README's setup command (it links Debian's linux-headers-amd64)"
        )
    return True, "ok"


def check_bcc_host(what: str) -> dict[str, bool]:
    """What a bcc program of vmtrace needs before it loads (bcc importable,
    root, tracefs, the KVM and syscall tracepoints), for ``what`` (record,
    top); returns the tracepoints the host has, or raises HostError."""
    ok, why = bcc_available()
    if not ok:
        raise HostError(why)
    host.require_root(what)
    have = host.available_tracepoints(host.ensure_tracefs())
    needed = ["syscalls:sys_enter_ioctl", "kvm:kvm_pio", "kvm:kvm_userspace_exit"]
    missing = [tp for tp in needed if not have.get(tp)]
    if missing:
        raise HostError(
            f"this kernel lacks tracepoints {', '.join(missing)}: vmtrace needs the kvm "
            "module loaded and CONFIG_FTRACE_SYSCALLS"
        )
    return have


def _cflags(
    precise: bool, sched: bool, have: dict[str, bool], ringbuf_pages: int, callsites: bool = False
) -> list[str]:
    flags = [f"-DEV_{name.upper()}={code}" for code, name in enumerate(EVENT_TYPES)]
    flags += [f"-DEV_COMM={EV_COMM}", f"-DRINGBUF_PAGES={ringbuf_pages}", f"-DCHUNK_RECS={CHUNK_RECS}"]
    if have.get("kvm:kvm_entry"):
        flags.append("-DHAVE_KVM_ENTRY")
    if have.get("kvm:kvm_exit"):
        flags.append("-DHAVE_KVM_EXIT")
    if precise:
        flags.append("-DPRECISE")
    if callsites:
        flags.append("-DCALLSITES")
    if sched:
        flags.append("-DWITH_SCHED")
    return flags


def decode_chunks(
    raw: bytes | bytearray, noticed_ns: int | None = None
) -> tuple[pd.DataFrame, dict[int, str], dict[int, int]]:
    """Spool bytes (whole chunks) -> schema rows, tid -> comm, tid -> tgid.

    The rows include one ``lost`` marker per gap (see the module doc).  A
    chunk may hold no records (``n`` 0: the per-CPU chunks read at stop); a
    loss followed by no record at all is stamped ``noticed_ns`` int (when
    recording stopped; default: the latest record).
    """
    usable = len(raw) - len(raw) % CHUNK_DTYPE.itemsize
    chunks = np.frombuffer(raw[:usable], dtype=CHUNK_DTYPE)
    if len(chunks) == 0:
        return pd.DataFrame({"ts_ns": []}), {}, {}
    counts = np.minimum(chunks["n"], CHUNK_RECS).astype(np.int64)
    valid = np.arange(CHUNK_RECS)[None, :] < counts[:, None]
    recs = chunks["recs"][valid]
    if noticed_ns is None:
        noticed_ns = int(recs["ts"].max()) if len(recs) else 0
    markers = _lost_markers(chunks, counts, noticed_ns)
    cpus = np.repeat(chunks["cpu"], counts)

    is_comm = recs["event"] == EV_COMM
    names: dict[int, str] = {}
    comms = recs[is_comm]
    # Chunks arrive per CPU, not in time order: the latest name must win.
    for rec in comms[np.argsort(comms["ts"], kind="stable")]:
        comm = rec["addr"].tobytes() + rec["value"].tobytes()
        names[int(rec["tid"])] = comm.split(b"\0", 1)[0].decode(errors="replace")
    tgids = {int(r["tid"]): int(r["peer"]) for r in comms}
    keep = ~is_comm
    recs, cpus = recs[keep], cpus[keep]

    codes = recs["event"].astype(np.int64)
    events = pd.Categorical.from_codes(codes, categories=pd.Index(list(EVENT_TYPES)))
    kinds = np.asarray(EVENT_TYPES, dtype=object)[codes]
    access = np.isin(kinds, ("pio", "mmio", "msr"))
    sized = np.isin(kinds, ("pio", "mmio", "dispatch_begin"))
    with_addr = np.isin(
        kinds,
        (
            "kvm_exit",
            "pio",
            "mmio",
            "msr",
            "futex_enter",
            "lock_begin",
            "lock_acquired",
            "lock_release",
            "dispatch_begin",
        ),
    )
    # lock_begin keeps its value: the caller's line when call sites were
    # read (collectors.callsites.assign_sites turns it into a site index).
    with_value = ~np.isin(
        kinds, ("run_enter", "kvm_entry", "sched_in", "wakeup", "lock_acquired", "lock_release", "dispatch_end")
    )
    with_peer = np.isin(kinds, ("sched_out", "sched_in", "wakeup"))
    df = pd.DataFrame(
        {
            "ts_ns": recs["ts"].astype(np.int64),
            "tid": recs["tid"].astype(np.int32),
            "cpu": cpus.astype(np.int16),
            "event": events,
            "addr": pd.array(np.where(with_addr, recs["addr"], 0), dtype="UInt64"),
            "size": pd.array(recs["size"], dtype="UInt8"),
            "write": pd.array(recs["write"].astype(bool), dtype="boolean"),
            "value": pd.array(recs["value"], dtype="Int64"),
            "peer_tid": pd.array(recs["peer"], dtype="Int32"),
        }
    )
    df.loc[~with_addr, "addr"] = pd.NA
    df.loc[~sized, "size"] = pd.NA
    df.loc[~(access | sized), "write"] = pd.NA
    df.loc[~with_value, "value"] = pd.NA
    df.loc[~with_peer, "peer_tid"] = pd.NA
    df["name"] = pd.Series(
        np.where(np.isin(kinds, ("lock_begin", "lock_acquired", "lock_release")), "BQL", np.array(None, dtype=object)),
        dtype="category",
    )
    return with_markers(df, markers), names, tgids


def _lost_markers(chunks: np.ndarray, counts: np.ndarray, noticed_ns: int) -> pd.DataFrame:
    """One ``lost`` row wherever a CPU's running lost total rose between two
    of its chunks.  ``chunks`` CHUNK_DTYPE array in any order, ``counts``
    int64 valid records per chunk, ``noticed_ns`` the stamp of a loss that
    no record followed."""
    cpu = chunks["cpu"].astype(np.int64)
    total = chunks["lost"].astype(np.int64)
    never = np.iinfo(np.int64).max
    first = np.where(counts > 0, chunks["recs"][:, 0]["ts"].astype(np.int64), never)
    # A CPU's chunks in the order it filled them: its total never falls and
    # its first records rise.  Sorting, rather than trusting the spool's
    # order, keeps the answer a function of the chunks alone.
    order = np.lexsort((first, total, cpu))
    cpu, total, first = cpu[order], total[order], first[order]
    prev = np.concatenate(([0], total[:-1]))
    prev[np.concatenate(([True], cpu[1:] != cpu[:-1]))] = 0
    grew = total > prev
    ts = np.where(first[grew] == never, noticed_ns, first[grew])
    return lost_rows(ts, cpu[grew], (total - prev)[grew])


class BccCollector(Collector):
    """Tracepoints (and, for QEMU, uprobes) through bcc; see the module doc."""

    name = "bcc"

    def __init__(self, options: RecordOptions) -> None:
        super().__init__(options)
        self._bpf: Any = None
        self._spool: Any = None
        self._spool_path = options.spool_dir / "bcc.chunks"
        self._pid = 0
        self._have: dict[str, bool] = {}
        self._syms: QemuSymbols | None = None
        self._uprobes: list[PerfUprobe] = []
        self._roles: list[str] = []  # role of each of _uprobes (qemu.uprobe_plan)
        self._plan: list[UprobeSpec] = []
        self._sampling = (
            SamplingWindows(options.callsite_duty, options.callsite_period_s)
            if options.callsites == "sampled"
            else None
        )
        self._uprobes_since = 0
        self._uprobes_detached_ns: int | None = None
        self._bql_addr: int | None = None
        self._notes: list[str] = []
        self._names: dict[int, str] = {}
        self._tgids: dict[int, int] = {}
        self._start_ns = 0

    # -- attach ----------------------------------------------------------
    def attach(self, pid: int) -> None:
        self._have = check_bcc_host("recording with bcc")
        from bcc import BPF  # imported late: bcc is a system package

        self._pid = pid
        ring_pages = 1 << max(6, (self.options.buffer_pages * 16).bit_length() - 1)
        flags = _cflags(
            self.options.precise,
            self.options.sched,
            self._have,
            ring_pages,
            callsites=self.options.callsites is not None,
        )
        try:
            self._bpf = BPF(src_file=str(_SOURCE).encode(), cflags=flags)
        except Exception as err:  # bcc raises bare Exception on compile/load errors
            raise HostError(f"bcc could not load the BPF program: {str(err).splitlines()[0]}") from None
        self._bpf[b"targets"][ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        slots = self._bpf[b"slots"]
        slot = slots[ctypes.c_int(pid & 0xFFFF)]
        slot.target = pid
        slots[ctypes.c_int(pid & 0xFFFF)] = slot
        self._bpf[b"bql_word"][ctypes.c_int(0)] = ctypes.c_uint64(0)
        if self._records_sites():
            # Full call sites from the start; sampled ones only in windows.
            self._set_sites_on(self._sampling is None)
        self._spool = open(self._spool_path, "wb")
        self._bpf[b"rb"].open_ring_buffer(self._on_chunk)
        self._attach_uprobes()
        self._start_ns = time.monotonic_ns()

    def _attach_uprobes(self) -> None:
        binary = self.options.vmm_binary
        if not binary or not is_qemu(binary):
            return

        syms = qemu_symbols(binary)
        self._syms = syms
        plan = uprobe_plan(syms, self.options.precise, self.options.callsites is not None)
        self._plan = plan
        if self._sampling is not None:
            # The call-site probes other than the lock's entry (which names
            # the BQL) wait for the first window.
            plan = [p for p in plan if p.identify]
        if not plan:
            self._notes.append(f"{binary} lacks {', '.join(syms.missing)}: the BQL cannot be identified by uprobes")
            return
        self._attach_specs(plan)
        self._uprobes_since = time.monotonic_ns()

    def _attach_specs(self, plan: list[UprobeSpec]) -> None:
        from bcc import BPF

        binary = self.options.vmm_binary
        assert binary is not None
        for spec in plan:
            offset = symbol_file_offset(binary, spec.symbol)
            if offset is None:
                self._notes.append(f"no file offset for {spec.symbol} in {binary}; uprobe {spec.role} skipped")
                continue
            prog = self._bpf.load_func(_BPF_FN[spec.role].encode(), BPF.KPROBE)
            # Our own perf_event_open, not bcc's attach_uprobe: see
            # uprobe_pmu (ref_ctr_offset 0, nothing left in tracefs on
            # SIGKILL).  Not pid-filtered: the VMM may be a child of the
            # command vmtrace started; the BPF side filters on the traced
            # process tree.
            self._uprobes.append(attach_uprobe(prog.fd, binary, offset, spec.symbol, spec.is_return))
            self._roles.append(spec.role)

    def _detach_uprobes(self, keep: tuple[str, ...] = ()) -> None:
        """Close every uprobe whose role is not in ``keep``."""
        kept = [(p, r) for p, r in zip(self._uprobes, self._roles, strict=True) if r in keep]
        for probe, role in zip(self._uprobes, self._roles, strict=True):
            if role not in keep:
                probe.close()
        if self._uprobes and not kept:
            self._uprobes_detached_ns = time.monotonic_ns()
        self._uprobes = [p for p, _ in kept]
        self._roles = [r for _, r in kept]

    def _records_sites(self) -> bool:
        return self.options.precise or self.options.callsites is not None

    def _set_sites_on(self, on: bool) -> None:
        self._bpf[b"sites_on"][ctypes.c_int(0)] = ctypes.c_uint32(1 if on else 0)

    def _sample_step(self) -> None:
        """Open or close a sampling window (sampled call sites, once the
        BQL is named)."""
        sampling = self._sampling
        if sampling is None or self._bql_addr is None or self._bpf is None:
            return
        want = sampling.want_on()
        is_on = "bql_lock_ret" in self._roles
        if want and not is_on:
            # The window is when lock_begin is emitted (sites_on), not when
            # the probes are attached: attaching and detaching take time.
            self._attach_specs([p for p in self._plan if p.role in CALLSITE_ROLES])
            sampling.opened()
            self._set_sites_on(True)
        elif not want and is_on:
            self._set_sites_on(False)
            sampling.closed()
            self._detach_uprobes()

    # -- run -------------------------------------------------------------
    def _on_chunk(self, _ctx: Any, data: Any, size: int) -> None:
        # Written straight from the ring buffer's memory: no bytes object.
        self._spool.write((ctypes.c_char * size).from_address(data))

    def _check_bql(self) -> None:
        if self._bql_addr is not None or self._bpf is None:
            return
        word = self._bpf[b"bql_word"][ctypes.c_int(0)].value
        if word:
            self._bql_addr = int(word)
            if not self.options.precise:
                # Default mode: the uprobes were only for naming the BQL;
                # full call sites keep theirs, sampled ones reattach in windows.
                self._detach_uprobes(CALLSITE_ROLES if self.options.callsites == "full" else ())
        elif self._uprobes and time.monotonic_ns() - self._uprobes_since > self.options.identify_timeout_s * 1e9:
            if not self.options.precise:
                self._detach_uprobes()
            self._notes.append(
                f"the BQL was not taken within {self.options.identify_timeout_s}s of start: not identified"
            )
            self._uprobes_since = 1 << 62

    def poll(self, timeout_ms: int = 100) -> None:
        if self._bpf is None:
            time.sleep(timeout_ms / 1000)
            return
        # The BPF side never wakes us (see flush_chunk): sleep, then drain.
        # A sampling window opens and closes on time, not a poll later.
        sleep_s = timeout_ms / 1000
        if self._sampling is not None and self._bql_addr is not None:
            sleep_s = min(sleep_s, self._sampling.until_change_s())
        time.sleep(sleep_s)
        self._sample_step()
        self._bpf.ring_buffer_consume()
        self._check_bql()
        self._read_proc_names()

    def _read_proc_names(self) -> None:
        if self._bpf is None:
            return
        for key, _v in self._bpf[b"targets"].items():
            tgid = int(key.value)
            if not _is_process(tgid):
                continue  # sched_process_fork also adds threads
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{tgid}/task")]
            except OSError:
                continue
            names = proc_thread_names(tids)
            self._names.update(names)
            self._tgids.update(dict.fromkeys(names, tgid))

    # -- stop ------------------------------------------------------------
    def stop(self) -> Collected:
        bpf = self._bpf
        bpf.ring_buffer_consume()
        self._check_bql()
        # Detach the programs (maps stay) before the last drain: a chunk
        # flushed between that drain and the map read below would otherwise
        # vanish uncounted.
        self._quiesce()
        noticed_ns = time.monotonic_ns()
        bpf.ring_buffer_consume()
        # Partial chunks still in the per-CPU map are events too, and their
        # headers hold each CPU's final lost total, even with no records.
        partial = bpf[b"chunks"][ctypes.c_int(0)]
        tail = np.frombuffer(b"".join(bytes(c) for c in partial), dtype=CHUNK_DTYPE).copy()
        tail["cpu"] = np.arange(len(tail))  # a CPU that never recorded has 0 there
        lost = {int(c): int(v) for c, v in zip(tail["cpu"], tail["lost"], strict=True) if v}
        self._spool.write(tail.tobytes())
        self._spool.close()
        raw = self._spool_path.read_bytes()
        events, names, tgids = decode_chunks(raw, noticed_ns)
        # Names read from /proc while the target ran are the freshest.
        self._names = {**names, **self._names}
        meta: dict[str, Any] = {}
        if self._records_sites() and len(events):
            files = self._site_files()
            events, sites = assign_sites(events, files.get)
            meta["callsites"] = sites
            meta["callsite_sampling"] = {"mode": "sampled" if self._sampling else "full"}
            if self._sampling is not None:
                self._sampling.closed()
                meta["callsite_sampling"].update(
                    duty=self._sampling.duty,
                    period_ns=self._sampling.period_ns,
                    windows=[w for w in self._sampling.windows if w[1] >= 0],
                )
        bql = self._bql_addr
        if "addr" in events:
            locked = events["event"].isin(["lock_begin", "lock_acquired", "lock_release"])
            events.loc[locked, "addr"] = bql if bql is not None else pd.NA
        fired = {str(k): int(v) for k, v in events["event"].value_counts().items()} if len(events) else {}
        tracepoints = _tracepoint_report(self._have, fired)
        probes = {
            "attached": sorted({u.symbol for u in self._uprobes} | set(self._probe_names())),
            "attached_ns": self._uprobes_since if self._uprobes_since < 1 << 62 else None,
            "detached_ns": self._uprobes_detached_ns,
        }
        locks: list[LockIdentity] = []
        if self._syms is not None:
            method = f"uprobe: first {self._syms.mutex_lock} inside {self._syms.bql_lock}"
            locks.append(LockIdentity("BQL", bql, method, bql is not None))
        return Collected(
            events=events,
            lost_per_cpu=lost,
            tracepoints=tracepoints,
            thread_names=self._names,
            thread_tgids={**tgids, **self._tgids},
            locks=locks,
            probes=probes,
            notes=self._notes,
            meta=meta,
        )

    def _site_files(self) -> dict[int, str]:
        """File pointer -> the string QEMU passed as ``__FILE__``."""
        out: dict[int, str] = {}
        try:
            table = self._bpf[b"site_files"]
        except KeyError:
            return out
        for k, v in table.items():
            out[int(k.value)] = bytes(v.name).split(b"\0", 1)[0].decode(errors="replace")
        return out

    def _quiesce(self) -> None:
        """Stop every BPF program from running; the maps stay readable."""
        bpf = self._bpf
        self._detach_uprobes()
        for tp in list(bpf.tracepoint_fds):
            bpf.detach_tracepoint(tp)
        for tp in list(bpf.raw_tracepoint_fds):
            bpf.detach_raw_tracepoint(tp)

    def _probe_names(self) -> list[str]:
        if self._syms is None:
            return []
        names = [self._syms.bql_lock, self._syms.mutex_lock]
        if self.options.precise:
            names += [self._syms.bql_unlock, self._syms.dispatch_read, self._syms.dispatch_write]
        return [n for n in names if n]

    def detach(self) -> None:
        self._detach_uprobes()
        if self._bpf is not None:
            try:
                self._bpf.cleanup()
            finally:
                self._bpf = None
        if self._spool is not None and not self._spool.closed:
            self._spool.close()


def _is_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Tgid:"):
                    return int(line.split()[1]) == pid
    except OSError:
        pass
    return False


# Which schema events come from which tracepoint, for "which tracepoints fired".
_TP_EVENTS = {
    "syscalls:sys_enter_ioctl": "run_enter",
    "syscalls:sys_exit_ioctl": "run_exit",
    "kvm:kvm_entry": "kvm_entry",
    "kvm:kvm_exit": "kvm_exit",
    "kvm:kvm_pio": "pio",
    "kvm:kvm_mmio": "mmio",
    "kvm:kvm_msr": "msr",
    "kvm:kvm_userspace_exit": "userspace_exit",
    "syscalls:sys_enter_futex": "futex_enter",
    "syscalls:sys_exit_futex": "futex_exit",
    "sched:sched_switch": "sched_out",
    "sched:sched_wakeup": "wakeup",
}


def _tracepoint_report(have: dict[str, bool], fired: dict[str, int]) -> dict[str, dict[str, Any]]:
    return {tp: {"available": bool(have.get(tp)), "fired": int(fired.get(ev, 0))} for tp, ev in _TP_EVENTS.items()}
