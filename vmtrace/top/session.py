"""Attach top's kernel aggregation to a VMM and read it once per interval.

``Monitor`` owns everything attached (the BPF program, its uprobes, the VMM
vmtrace started) and gives it all back on every exit path: leaving the
``with`` block, an exception, SIGINT, SIGTERM or SIGHUP (a closed terminal).
Signal handlers only set ``stop_signal``; the loop that polls notices.
``AggregateCollector`` is the same program behind the ``Collector``
interface, so ``record --aggregate`` writes interval snapshots instead of
events.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vmtrace import probes, procs, spool
from vmtrace.collectors import host
from vmtrace.collectors.base import Collected, Collector, RecordOptions
from vmtrace.collectors.qemu import is_qemu, is_reference_vmm, process_command, qemu_version, resolve_binary, vmm_binary
from vmtrace.collectors.top import KernelCounters, TopProgram
from vmtrace.collectors.userspace import PROBE_DTYPE
from vmtrace.errors import TargetError, VmtraceError

from .aggregate import Snapshot, delta, empty_counters
from .boundaries import COMPONENTS, HBUCKETS, cflags

__all__ = ["Monitor", "AggregateCollector", "STOP_SIGNALS"]

#: What stops top: Ctrl-C, kill, and the terminal going away (as record).
STOP_SIGNALS = procs.STOP_SIGNALS
_VCPU_NAME = re.compile(r"CPU (\d+)/KVM")


class _Names:
    """Thread names and vCPU numbers of a process tree, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.names: dict[int, str] = {}

    def refresh(self) -> None:
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return
        for t in tasks:
            try:
                with open(f"/proc/{self.pid}/task/{t}/comm") as fh:
                    self.names[int(t)] = fh.read().strip()
            except OSError:
                continue

    def vcpus(self) -> dict[int, int]:
        out = {}
        for tid, name in self.names.items():
            m = _VCPU_NAME.match(name)
            if m:
                out[tid] = int(m.group(1))
        return out


class _SpoolNames:
    """The futex words a target names through ``vmtrace.probes``, read
    from its spool as it grows (only the naming records are kept)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.words: dict[int, str] = {}

    def refresh(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                raw = fh.read()
        except OSError:
            return
        usable = len(raw) - len(raw) % PROBE_DTYPE.itemsize
        self.offset += usable
        recs = np.frombuffer(raw[:usable], dtype=PROBE_DTYPE)
        named = recs[recs["code"] == probes.NAME_FUTEX_CODE]
        if not len(named):
            return
        ids: dict[int, str] = {}
        try:
            for line in Path(str(self.path) + ".names").read_text(errors="replace").splitlines():
                nid, _, name = line.partition("\t")
                if nid.isdigit():
                    ids[int(nid)] = name
        except OSError:
            pass
        for a, n in zip(named["addr"], named["name_id"], strict=False):
            self.words[int(a)] = ids.get(int(n), f"#{n}")


class Monitor:
    """``with Monitor(cmd=[...]) as m: snap = m.snapshot()``, or ``pid=``.

    ``snapshot()`` returns what happened since the previous call (the first
    one: since attach).  ``done`` is True once the target is gone.
    """

    def __init__(self, cmd: list[str] | None = None, pid: int | None = None, identify_timeout_s: float = 5.0) -> None:
        if (cmd is None) == (pid is None):
            raise VmtraceError("give either a command after -- or -p PID")
        self.cmd = cmd
        self.pid = pid
        self._timeout = identify_timeout_s
        self.child: int | None = None
        self.exit_status: int | None = None
        self.stop_signal: int | None = None
        self._old: dict[int, Any] = {}
        self._program: TopProgram | None = None
        self._spool_dir: Path | None = None
        self._spool: _SpoolNames | None = None
        self._names: _Names | None = None
        self._last = empty_counters(len(COMPONENTS), HBUCKETS)
        self._last_ns = 0
        self.header: dict[str, Any] = {}

    # -- life cycle ----------------------------------------------------------
    def __enter__(self) -> Monitor:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signum

    def _start(self) -> None:
        host.require_root("vmtrace top")
        if not os.path.exists("/dev/kvm"):
            raise VmtraceError("no /dev/kvm on this host: load the kvm module (modprobe kvm_intel or kvm_amd)")
        if self.cmd is not None:
            if not self.cmd or resolve_binary(self.cmd[0]) is None:
                raise TargetError(f"command not found: {self.cmd[0] if self.cmd else '(none)'}")
            binary = vmm_binary(self.cmd)
        else:
            assert self.pid is not None
            if not os.path.exists(f"/proc/{self.pid}"):
                raise TargetError(f"no process with PID {self.pid} (it may have exited)")
            try:
                binary = os.path.realpath(f"/proc/{self.pid}/exe")
            except OSError:
                binary = None
        self._old = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        self._program = TopProgram(cflags(), len(COMPONENTS), HBUCKETS, self._timeout)
        go_w = -1
        if self.cmd is not None:
            # A spool directory like record's: removed if top is SIGKILLed.
            self._spool_dir = spool.new_spool()
            probe_file = self._spool_dir / "probes.bin"
            self._spool = _SpoolNames(probe_file)
            env = dict(os.environ)
            env[probes.ENV_VAR] = str(probe_file)
            devnull = open(os.devnull, "w")
            try:
                # The VMM's console must not scribble over the view.
                self.child, go_w, err_r = procs.spawn_held(self.cmd, env, devnull)
            finally:
                devnull.close()
            self.pid = self.child
        assert self.pid is not None
        try:
            self._program.attach(self.pid, binary)
            if self.child is not None and self.stop_signal is None:
                os.write(go_w, b"g")
        finally:
            if self.child is not None:
                os.close(go_w)
        if self.child is not None:
            failed = os.read(err_r, 16)
            os.close(err_r)
            if failed:
                os.waitpid(self.child, 0)
                self.child = None
                raise TargetError(f"cannot run {self.cmd[0]}: {os.strerror(int(failed))}")  # type: ignore[index]
        self._names = _Names(self.pid)
        named_by = self.cmd if self.cmd else process_command(self.pid)
        vmm = "qemu" if is_qemu(binary) else ("reference" if is_reference_vmm(named_by) else "other")
        tsc, _src = host.tsc_hz()
        self.header = {
            "vmm": vmm,
            "vmm_version": qemu_version(binary) if binary and vmm == "qemu" else None,
            "binary": binary,
            "pid": self.pid,
            "kvm_flavour": host.kvm_flavour(),
            "tsc_hz": tsc,
        }
        self._last_ns = time.monotonic_ns()

    def close(self) -> None:
        """Detach everything and stop the VMM vmtrace started; idempotent."""
        try:
            if self._program is not None:
                self._program.detach()
                self._program = None
        finally:
            if self.child is not None:
                self.exit_status = procs.terminate(self.child)
                self.child = None
            for s, h in self._old.items():
                signal.signal(s, h)
            self._old = {}
            if self._spool_dir is not None:
                shutil.rmtree(self._spool_dir, ignore_errors=True)
                self._spool_dir = None

    # -- reading -------------------------------------------------------------
    @property
    def done(self) -> bool:
        if self.stop_signal is not None:
            return True
        if self.child is not None:
            got, status = os.waitpid(self.child, os.WNOHANG)
            if got:
                self.exit_status = procs.exit_status(status)
                self.child = None
                return True
            return False
        return self.pid is None or not os.path.exists(f"/proc/{self.pid}")

    def counters(self) -> KernelCounters:
        """The cumulative counters now."""
        assert self._program is not None
        if self._spool is not None:
            self._spool.refresh()
            bql = [w for w, n in self._spool.words.items() if n == "BQL"]
            if bql:
                self._program.name_bql(bql[0])
        return self._program.read()

    def snapshot(self) -> Snapshot:
        """The interval since the previous snapshot."""
        now = self.counters()
        d = delta(self._last, now)
        start = self._last_ns
        self._last, self._last_ns = now, now.read_ns
        assert self._names is not None
        self._names.refresh()
        words = dict(self._spool.words) if self._spool is not None else {}
        if now.bql_word and now.bql_word not in words:
            words[now.bql_word] = "BQL"
        # kvm_exit can exist and never fire (PVM): then guest time is in vmexit.
        folded = not (len(now.sums) and now.sums[:, COMPONENTS.index("guest")].sum() > 0)
        header = dict(
            self.header, dropped=int(now.dropped), bql_word=now.bql_word, notes=list(now.notes), guest_folded=folded
        )
        return Snapshot(start, now.read_ns, d, self._names.vcpus(), dict(self._names.names), words, header)

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when the target is done."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.done:
            time.sleep(min(0.05, max(end - time.monotonic(), 0)))

    def snapshots(self, interval: float, count: int | None = None) -> Iterator[Snapshot]:
        """One snapshot per ``interval`` seconds until the target is gone, a
        stop signal came or ``count`` were given (the last is partial)."""
        n = 0
        while count is None or n < count:
            self.wait(interval)
            yield self.snapshot()
            n += 1
            if self.done:
                return


class AggregateCollector(Collector):
    """``record --aggregate SECONDS``: no events, one snapshot per interval.

    ``stop()`` returns an empty event table and the snapshots (JSON form)
    in ``probes["aggregate"]``, which ``record`` stores in the trace's
    metadata under ``aggregate``.
    """

    name = "bcc-aggregate"

    def __init__(self, options: RecordOptions, interval_s: float) -> None:
        super().__init__(options)
        self.interval_s = interval_s
        self._program = TopProgram(cflags(), len(COMPONENTS), HBUCKETS, options.identify_timeout_s)
        self._last = empty_counters(len(COMPONENTS), HBUCKETS)
        self._last_ns = 0
        self._next_ns = 0
        self._names: _Names | None = None
        self.series: list[dict[str, Any]] = []

    def attach(self, pid: int) -> None:
        self._program.attach(pid, self.options.vmm_binary)
        self._names = _Names(pid)
        self._last_ns = time.monotonic_ns()
        self._next_ns = self._last_ns + int(self.interval_s * 1e9)

    def _take(self) -> None:
        now = self._program.read()
        d = delta(self._last, now)
        assert self._names is not None
        self._names.refresh()
        snap = Snapshot(self._last_ns, now.read_ns, d, self._names.vcpus(), {})
        self._last, self._last_ns = now, now.read_ns
        self.series.append(snap.to_json())

    def poll(self, timeout_ms: int = 100) -> None:
        time.sleep(timeout_ms / 1000)
        if self._names is not None:
            self._names.refresh()
        if time.monotonic_ns() >= self._next_ns:
            self._take()
            self._next_ns += int(self.interval_s * 1e9)

    def stop(self) -> Collected:
        # The tail since the last snapshot, unless it is only the poll's
        # rounding (a few ms with nothing in it).
        if time.monotonic_ns() - self._last_ns > 0.1e9 * self.interval_s or not self.series:
            self._take()
        names = dict(self._names.names) if self._names else {}
        have = self._program.have
        tracepoints = {
            tp: {"available": bool(have.get(tp)), "fired": None}
            for tp in ("kvm:kvm_entry", "kvm:kvm_exit", "kvm:kvm_pio", "kvm:kvm_userspace_exit")
        }
        bql = self._last.bql_word
        self._program.detach()
        return Collected(
            events=pd.DataFrame(
                {
                    "ts_ns": pd.Series([], dtype="int64"),
                    "tid": pd.Series([], dtype="int32"),
                    "cpu": pd.Series([], dtype="int16"),
                    "event": pd.Series([], dtype=object),
                }
            ),
            lost_per_cpu={},
            tracepoints=tracepoints,
            thread_names=names,
            thread_tgids=dict.fromkeys(names, self._names.pid) if self._names else {},
            probes={"aggregate": {"interval_s": self.interval_s, "bql_word": bql, "snapshots": self.series}},
            notes=list(self._program.notes)
            + [f"aggregate mode: one snapshot of in-kernel counters every {self.interval_s:g}s, no events"],
        )

    def detach(self) -> None:
        self._program.detach()
