"""The ftrace backend: tracepoints and uprobes through tracefs, no BPF.

Recording happens in a tracefs instance of its own
(``instances/vmtrace-<owner pid>-<n>``) with the ``mono`` trace clock
(CLOCK_MONOTONIC, the time base of the schema), a pid filter
(``set_event_pid`` + ``options/event-fork``: the target's threads and
children join the filter as they are created) and the tracepoints of
``host.KERNEL_TRACEPOINTS`` that this host has.  ``set_ftrace_pid`` is never
used (some hosts refuse it), nor the top-level instance's ``set_event`` or
``tracing_on``.

``poll`` copies the per-CPU binary pages (``per_cpu/cpuN/trace_pipe_raw``)
into spool files unchanged: the kernel formats nothing and the copy is one
read per 4 KiB page, so the recorder costs the target little CPU.  ``stop``
decodes the spool (``ringbuf`` + ``ftrace_events``) into schema rows.

BQL identification (QEMU targets): uprobes on the BQL lock function and on
``qemu_mutex_lock_impl(QemuMutex *mutex)``; the first mutex locked by a
thread right after it entered the BQL lock function is the BQL, and its
address is the futex word (``pthread_mutex_t`` at offset 0).  In default mode
both uprobes are removed as soon as the address is known, or after
``identify_timeout_s``; in precise mode uprobes on the BQL lock (entry and
return), unlock and ``memory_region_dispatch_read/write`` stay for the whole
run and give lock_* and dispatch_* rows.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import time
import weakref
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from vmtrace.errors import HostError, TargetError
from vmtrace.schema import KVM_RUN
from vmtrace.trace import normalize_events

from . import host
from .base import Collected, Collector, LockIdentity, RecordOptions, with_markers
from .callsites import assign_sites
from .ftrace_events import Decoded, assemble, decode_records, identify_lock_word, lost_markers, sched_in_missing
from .qemu import CALLSITE_ROLES
from .ringbuf import gather, walk_pages
from .tracefs import (
    EventFormat,
    Instance,
    add_uprobe,
    cleanup_stale,
    remove_uprobe_group,
    uprobe_names,
)
from .uprobe_pmu import uprobe_einval_hint

__all__ = ["FtraceCollector", "cleanup_stale", "TRACEPOINT_FILTERS"]

#: Kernel-side filters that cut volume without losing a schema row.
TRACEPOINT_FILTERS: dict[str, str] = {"syscalls:sys_enter_ioctl": f"cmd == 0x{KVM_RUN:x}"}
_SCHED = ("sched:sched_switch", "sched:sched_wakeup")
_counter = itertools.count()
_DECODE_CHUNK_PAGES = 8192  # 32 MiB of spool decoded at a time
_PROC_REFRESH_S = 0.25


def _online_cpus() -> list[int]:
    try:
        text = Path("/sys/devices/system/cpu/online").read_text().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _read_stats(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        try:
            out[key.strip()] = int(value.strip())
        except ValueError:
            pass
    return out


class FtraceCollector(Collector):
    """Record a target process tree through a private tracefs instance.

    ``options`` RecordOptions: ``spool_dir`` receives ``ftrace-cpuN.raw``
    (binary ring-buffer pages) and ``ftrace-formats.json``; ``buffer_pages``
    is the per-CPU ring buffer size in pages; ``vmm_binary`` a QEMU binary
    enables BQL identification; ``precise`` keeps lock/dispatch uprobes.
    """

    name = "ftrace"

    def __init__(self, options: RecordOptions) -> None:
        super().__init__(options)
        self._tracefs: Path | None = None
        self._instance: Instance | None = None
        self._group: str | None = None
        self._pid: int | None = None
        self._fds: dict[int, int] = {}
        self._spool: dict[int, BinaryIO] = {}
        self._spool_paths: dict[int, Path] = {}
        self._page_size = 4096
        self._formats: dict[int, EventFormat] = {}
        self._enabled: list[str] = []
        self._uprobe_events: list[str] = []  # "group:name" enabled in the instance
        self._identify_ids: set[int] = set()
        self._identify_hits: list[pd.DataFrame] = []
        self._identifying = False
        self._bql_addr: int | None = None
        self._bql_fn: str | None = None
        self._probes: dict[str, Any] = {"attached": []}
        self._attach_ns = 0
        self._known_tids: set[int] = set()
        self._proc_names: dict[int, str] = {}
        self._last_proc = 0.0
        self._notes: list[str] = []
        self._stats: dict[int, dict[str, int]] = {}
        self._stopped = False
        self._finalizer: Any = None

    # ------------------------------------------------------------------ attach
    def attach(self, pid: int) -> None:
        """Start recording process ``pid`` and its descendants.

        Raises HostError (no root, no tracefs, a refused write) or TargetError
        (no such process); everything done so far is undone first.
        """
        host.require_root("recording with ftrace")
        if self.options.callsites == "sampled":
            raise HostError(
                "sampled call sites need the bcc backend (--backend bcc); "
                "the ftrace backend records them in full (--callsites full)"
            )
        if not Path(f"/proc/{pid}").exists():
            raise TargetError(f"process {pid} does not exist (did the target exit before recording started?)")
        self._pid = pid
        self._known_tids.add(pid)
        try:
            self._attach(pid)
        except BaseException:
            self.detach()
            raise

    def _attach(self, pid: int) -> None:
        tracefs = host.ensure_tracefs()
        self._tracefs = tracefs
        owner = os.getpid()
        n = next(_counter)
        inst = Instance(tracefs, f"vmtrace-{owner}-{n}")
        while inst.exists():
            n = next(_counter)
            inst = Instance(tracefs, f"vmtrace-{owner}-{n}")
        inst.create()
        self._instance = inst
        group = f"vmtrace_{owner}_{n}"
        # Runs at interpreter exit (or collection) if detach() never did.
        self._finalizer = weakref.finalize(self, _emergency_cleanup, tracefs, inst.name, group)
        inst.write("tracing_on", "0")
        clocks = inst.read("trace_clock")
        if "mono" not in clocks.replace("[", " ").replace("]", " ").split():
            raise HostError(f"this kernel's tracefs has no 'mono' trace clock (it offers: {clocks.strip()})")
        inst.write("trace_clock", "mono")
        pagesize = os.sysconf("SC_PAGE_SIZE")
        inst.write("buffer_size_kb", str(max(1, self.options.buffer_pages * pagesize // 1024)))
        try:
            self._page_size = int(inst.read("buffer_subbuf_size_kb").split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            self._page_size = pagesize
        inst.write("options/event-fork", "1")
        self._follow_threads(inst, pid)
        for tp in host.KERNEL_TRACEPOINTS:
            if not host.tracepoint_available(tracefs, tp):
                continue
            if tp in _SCHED and not self.options.sched:
                continue
            inst.enable(tp, TRACEPOINT_FILTERS.get(tp))
            self._enabled.append(tp)
            fmt = inst.format(tp)
            self._formats[fmt.id] = fmt
        if not any(tp.startswith("syscalls:sys_enter_ioctl") for tp in self._enabled):
            self._notes.append("syscalls:sys_enter_ioctl is missing on this host: no KVM_RUN boundaries")
        self._setup_uprobes(group)
        self.options.spool_dir.mkdir(parents=True, exist_ok=True)
        for cpu in _online_cpus():
            raw = inst.path / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw"
            if not raw.exists():
                continue
            self._fds[cpu] = os.open(raw, os.O_RDONLY | os.O_NONBLOCK)
            path = self.options.spool_dir / f"ftrace-cpu{cpu}.raw"
            self._spool_paths[cpu] = path
            self._spool[cpu] = open(path, "wb")
        (self.options.spool_dir / "ftrace-formats.json").write_text(
            json.dumps({"page_size": self._page_size, "formats": [f.to_json() for f in self._formats.values()]})
        )
        self._attach_ns = time.monotonic_ns()
        inst.write("tracing_on", "1")

    def _setup_uprobes(self, group: str) -> None:
        binary = self.options.vmm_binary
        if not binary:
            return
        from . import qemu

        real = binary if os.path.isabs(binary) else qemu.resolve_binary(binary)
        if not real or not qemu.is_qemu(real):
            return
        syms = qemu.qemu_symbols(real)
        if not syms.bql_lock or not syms.mutex_lock:
            self._notes.append(
                f"BQL not identified: {real} lacks {', '.join(syms.missing) or 'symbols'} "
                "(a stripped or non-QEMU binary); futex words are reported unnamed"
            )
            return
        self._bql_fn = syms.bql_lock
        assert self._tracefs is not None and self._instance is not None
        self._group = group
        plan = qemu.uprobe_plan(syms, self.options.precise, self.options.callsites is not None)
        if self.options.precise:
            missing = [m for m in syms.missing if "mutex" not in m]
            if missing:
                self._notes.append(f"precise mode without {', '.join(missing)}: absent from {real}")
        for spec in plan:
            offset = qemu.symbol_file_offset(real, spec.symbol)
            if offset is None:
                self._notes.append(f"no file offset for {spec.symbol} in {real}; uprobe {spec.role} skipped")
                continue
            kind = "r" if spec.is_return else "p"
            tp = add_uprobe(self._tracefs, kind, self._group, spec.role, real, offset, spec.fetch)
            try:
                self._instance.enable(tp)
            except HostError as err:
                cause = err.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.EINVAL:
                    raise HostError(uprobe_einval_hint(real, spec.symbol)) from None
                raise
            self._uprobe_events.append(tp)
            fmt = self._instance.format(tp)
            self._formats[fmt.id] = fmt
            if spec.identify:
                self._identify_ids.add(fmt.id)
            self._probes["attached"].append(("uretprobe:" if spec.is_return else "uprobe:") + spec.symbol)
        self._identifying = len(self._identify_ids) == 2
        self._probes["attached_at_ns"] = time.monotonic_ns()

    # -------------------------------------------------------------------- poll
    def poll(self, timeout_ms: int = 100) -> None:
        """Move buffered pages to the spool, identify the BQL while its probes
        are attached, refresh thread names; returns within ``timeout_ms``."""
        if self._instance is None or self._stopped:
            time.sleep(timeout_ms / 1000)
            return
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            moved = self._drain(max_pages=512)
            if time.monotonic() - self._last_proc >= _PROC_REFRESH_S:
                self._refresh_threads()
            self._identify_step()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not moved:
                time.sleep(min(left, 0.02))

    def _drain(self, max_pages: int | None = None) -> int:
        moved = 0
        for cpu, fd in self._fds.items():
            chunks: list[bytes] = []
            while max_pages is None or len(chunks) < max_pages:
                try:
                    data = os.read(fd, self._page_size)
                except BlockingIOError:
                    break
                except OSError as err:
                    raise HostError(f"reading cpu{cpu} trace_pipe_raw failed: {err.strerror}") from err
                if not data:
                    break
                chunks.append(data)
            if not chunks:
                continue
            blob = b"".join(chunks)
            self._spool[cpu].write(blob)
            moved += len(chunks)
            if self._identifying:
                self._scan_identify(blob)
        return moved

    def _scan_identify(self, blob: bytes) -> None:
        rec = walk_pages(blob, self._page_size)
        if not len(rec.ts):
            return
        buf = np.frombuffer(blob, dtype=np.uint8)
        types = gather(buf, rec.offset, 0, 2, False)
        sel = np.isin(types, list(self._identify_ids))
        if not sel.any():
            return
        formats = {i: self._formats[i] for i in self._identify_ids}
        dec = decode_records(
            buf, rec.ts[sel], rec.offset[sel], np.zeros(int(sel.sum()), np.int16), formats, uprobe_rows=False
        )
        if dec.lock_hits is not None:
            self._identify_hits.append(dec.lock_hits)

    def _identify_step(self) -> None:
        if not self._identifying:
            return
        if self._identify_hits:
            hits = pd.concat(self._identify_hits, ignore_index=True)
            self._identify_hits = [hits]
            addr = identify_lock_word(hits)
            if addr is not None:
                self._bql_addr = addr
                self._identifying = False
        elapsed = (time.monotonic_ns() - self._attach_ns) / 1e9
        if self._identifying and elapsed > self.options.identify_timeout_s:
            self._identifying = False
            self._notes.append(
                f"BQL not identified within {self.options.identify_timeout_s:g}s: no thread of the target "
                f"locked a QemuMutex inside {self._bql_fn} while the probes were attached"
            )
        if not self._identifying and not self.options.precise:
            # Full call sites keep the BQL's probes; only the mutex probe
            # that named it goes.
            self._disable_uprobes(keep=CALLSITE_ROLES if self.options.callsites else ())

    def _disable_uprobes(self, keep: tuple[str, ...] = ()) -> None:
        """Stop the uprobes firing (the kernel takes the breakpoints out of
        the target) but keep their definitions until detach.

        Deleting a uprobe event that was ever enabled in an instance makes
        the kernel reset that instance's ring buffers: every event not yet
        read is dropped, with no overrun or lost count.  On a loaded host
        that was ~100 ms of the target's events per CPU at the moment the
        BQL was identified (seen as whole scheduler slices of a vCPU missing
        from ftrace but present in a bcc recording of the same run).  So the
        group is only removed in ``detach``, after the last drain."""
        if not self._uprobe_events:
            return
        kept = [tp for tp in self._uprobe_events if tp.rsplit(":", 1)[-1] in keep]
        if self._instance is not None and self._instance.exists():
            for tp in self._uprobe_events:
                if tp not in kept:
                    self._instance.disable(tp)
        self._uprobe_events = kept
        if kept:
            return
        if "attached_at_ns" in self._probes and "detached_at_ns" not in self._probes:
            now = time.monotonic_ns()
            self._probes["detached_at_ns"] = now
            self._probes["attached_ns"] = now - self._probes["attached_at_ns"]

    def _remove_uprobes(self) -> None:
        """Disable, then delete the uprobe group (only once nothing is left
        to read: see ``_disable_uprobes``)."""
        self._disable_uprobes()
        if not self._group or self._tracefs is None:
            return
        remove_uprobe_group(self._tracefs, self._group)
        self._group = None

    @staticmethod
    def _follow_threads(inst: Instance, pid: int) -> None:
        """Put every thread of ``pid`` in the instance's pid filter.

        event-fork only adds threads created *after* their creator is in the
        filter, so a VMM attached with ``-p`` has its vCPU threads listed
        here.  A thread born between the listing and the write is caught by
        listing again until nothing new appears."""
        listed: set[int] = set()
        for _ in range(5):
            try:
                tasks = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
            except OSError:
                tasks = {pid}
            if tasks <= listed:
                return
            try:
                listed |= {int(x) for x in inst.read("set_event_pid").split()}
            except (OSError, ValueError):
                pass
            listed |= tasks
            inst.write("set_event_pid", " ".join(str(t) for t in sorted(listed)))

    def _refresh_threads(self) -> None:
        self._last_proc = time.monotonic()
        inst = self._instance
        if inst is not None and inst.exists():
            try:
                self._known_tids.update(int(x) for x in inst.read("set_event_pid").split())
            except (OSError, ValueError):
                pass
        from .qemu import proc_thread_names

        self._proc_names.update(proc_thread_names(list(self._known_tids)))

    # -------------------------------------------------------------------- stop
    def stop(self) -> Collected:
        """Stop tracing, drain every buffer, remove what was attached and
        decode the spool into a ``Collected``."""
        if self._instance is None:
            raise HostError("FtraceCollector.stop() called before a successful attach()")
        if not self._stopped:
            self._stopped = True
            inst = self._instance
            inst.write("tracing_on", "0")
            self._identify_step()
            for _ in range(1000):
                if not self._drain():
                    break
            self._identify_step()
            self._refresh_threads()
            for cpu in self._fds:
                try:
                    self._stats[cpu] = _read_stats(inst.read(f"per_cpu/cpu{cpu}/stats"))
                except OSError:
                    pass
            self.detach()
        return self._decode()

    def _decode(self) -> Collected:
        decoded: list[Decoded] = []
        lost_pages: dict[int, int] = {}
        gaps: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        fired: dict[str, int] = {}
        site_files: dict[int, str] = {}
        for cpu, path in self._spool_paths.items():
            lost_pages[cpu] = 0
            gaps[cpu] = ([], [])
            chunk = _DECODE_CHUNK_PAGES * self._page_size
            with open(path, "rb") as fh:
                while blob := fh.read(chunk):
                    rec = walk_pages(blob, self._page_size)
                    lost_pages[cpu] += rec.lost
                    gaps[cpu][0].append(rec.gap_ts)
                    gaps[cpu][1].append(rec.gap_count)
                    buf = np.frombuffer(blob, dtype=np.uint8)
                    cpus = np.full(len(rec.ts), cpu, dtype=np.int16)
                    dec = decode_records(
                        buf,
                        rec.ts,
                        rec.offset,
                        cpus,
                        self._formats,
                        self._bql_addr,
                        self.options.precise or self.options.callsites is not None,
                        site_files=site_files,
                    )
                    decoded.append(dec)
                    for k, v in dec.fired.items():
                        fired[k] = fired.get(k, 0) + v
        tids = set(self._known_tids)
        names: list[tuple[int, int, str]] = []
        for dec in decoded:
            tids |= dec.own_pids
            names.extend(dec.names)
        rows = pd.concat([d.rows for d in decoded], ignore_index=True) if decoded else None
        markers = lost_markers({cpu: (np.concatenate(t), np.concatenate(c)) for cpu, (t, c) in gaps.items() if t})
        events = normalize_events(assemble(rows, tids)) if rows is not None else _empty()
        meta: dict[str, Any] = {}
        if self.options.precise or self.options.callsites:
            events, sites = assign_sites(events, site_files.get)
            begin = (events["event"] == "lock_begin").to_numpy()
            events.loc[begin, "addr"] = self._bql_addr if self._bql_addr is not None else pd.NA
            meta = {"callsites": sites, "callsite_sampling": {"mode": "full"}}
        # Markers join after the target filter: they belong to no thread.
        events = with_markers(events, markers)
        thread_names = {t: n for t, n in self._proc_names.items() if t in tids}
        for _, tid, name in sorted(names):
            if tid in tids:
                thread_names[tid] = name
        lost: dict[int, int] = {}
        for cpu in self._spool_paths:
            st = self._stats.get(cpu, {})
            # The markers cannot always add up to this.  The page flags report
            # only "overrun" (unread pages overwritten); "commit overrun" and
            # "dropped events" lose events without flagging any page; a page
            # may say "some" without a count (counted as 1 in lost_pages);
            # and flag counts and "overrun" can differ (see ftrace_events.lost_markers).
            # The larger of the two is the honest total.
            from_stats = st.get("overrun", 0) + st.get("commit overrun", 0) + st.get("dropped events", 0)
            lost[cpu] = max(from_stats, lost_pages.get(cpu, 0))
        tracefs = self._tracefs or host.TRACEFS
        tracepoints = {
            tp: {"available": host.tracepoint_available(tracefs, tp), "fired": int(fired.get(tp, 0))}
            for tp in host.KERNEL_TRACEPOINTS
        }
        locks: list[LockIdentity] = []
        if self._bql_fn is not None:
            if self._bql_addr is not None:
                locks.append(
                    LockIdentity("BQL", self._bql_addr, f"uprobe:qemu_mutex_lock_impl inside {self._bql_fn}", True)
                )
            else:
                locks.append(LockIdentity("BQL", None, f"uprobe:qemu_mutex_lock_impl inside {self._bql_fn}", False))
        elif any("BQL not identified" in n for n in self._notes):
            locks.append(LockIdentity("BQL", None, "none: QEMU symbols missing", False))
        notes = list(self._notes)
        if not tracepoints["kvm:kvm_entry"]["fired"] and tracepoints["kvm:kvm_entry"]["available"]:
            notes.append("kvm:kvm_entry/kvm_exit did not fire on this host: guest time is folded into vmexit")
        missing_in = sched_in_missing(events)
        if missing_in:
            notes.append(
                f"{missing_in} sched_out rows are followed by another sched_out of the same thread with no "
                "sched_in between: this kernel did not record some context switches (on the development "
                "host, switches from the idle task on some CPUs never reach the ring buffer)"
            )
        return Collected(
            events=events,
            lost_per_cpu=lost,
            tracepoints=tracepoints,
            thread_names=thread_names,
            locks=locks,
            probes=dict(self._probes),
            notes=notes,
            meta=meta,
        )

    # ------------------------------------------------------------------ detach
    def detach(self) -> None:
        """Disable events, remove uprobes and the instance; idempotent and
        safe after a failed attach.  Spool files stay (stop() decodes them)."""
        errors: list[str] = []
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        for fh in self._spool.values():
            try:
                fh.close()
            except OSError:
                pass
        self._spool.clear()
        inst = self._instance
        if inst is not None and inst.exists():
            try:
                inst.write("tracing_on", "0")
                inst.write("events/enable", "0")
            except HostError as err:
                errors.append(str(err))
        try:
            self._remove_uprobes()
        except HostError as err:
            errors.append(str(err))
        if inst is not None:
            try:
                inst.remove()
            except HostError as err:
                errors.append(str(err))
        if self._finalizer is not None and not errors:
            self._finalizer.detach()
        if errors:
            raise HostError("; ".join(errors))


def _empty() -> pd.DataFrame:
    from vmtrace.trace import empty_events

    return empty_events()


def _emergency_cleanup(tracefs: Path, instance: str, group: str | None) -> None:
    """Last-resort cleanup at interpreter exit or garbage collection."""
    try:
        if group and any(g == group for g, _ in uprobe_names(tracefs)):
            remove_uprobe_group(tracefs, group)
        Instance(tracefs, instance).remove()
    except Exception:
        pass
