"""``vmtrace record``: run (or attach to) a VMM and write one trace file.

The target is forked and held before ``exec`` until the collector is
attached, so the trace starts with the target's first instruction.  Its
standard streams are inherited untouched.  SIGINT and SIGTERM only ask the
loop to stop; whatever was recorded is then written as a complete trace, and
the collector detaches everything on every path.  SIGHUP does the same.  The
target dies with vmtrace (``procs.die_with_parent``), even on SIGKILL; the
next ``record`` removes what a SIGKILLed recorder left (tracefs instances,
uprobe groups, spool directories).  When the trace cannot be written (a full
disk) the recording stays in its spool for ``vmtrace recover``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from vmtrace.collectors import host
from vmtrace.collectors.base import Collected, Collector, RecordOptions
from vmtrace.collectors.callsites import check_callsites
from vmtrace.collectors.qemu import (
    is_qemu,
    is_reference_vmm,
    process_command,
    qemu_version,
    resolve_binary,
    vmm_binary,
)
from vmtrace.collectors.userspace import read_probe_spool
from vmtrace.validate import DEFAULT_CALLSITE_DUTY, DEFAULT_CALLSITE_PERIOD_S

from . import probes, procs, spool
from .errors import HostError, TargetError, TraceFileError, VmtraceError
from .interpreter import REPORT_ENV
from .interpreter import read_report as read_interpreter_report
from .schema import ROLE_IOTHREAD, ROLE_MAIN, ROLE_OTHER, ROLE_VCPU, ROLE_WORKER
from .trace import check_writable, normalize_events, write_trace

__all__ = ["RecordResult", "record", "choose_backend", "thread_roles", "cleanup_leftovers"]

BACKENDS = ("auto", "bcc", "ftrace")


@dataclass
class RecordResult:
    """What ``record`` produced: the trace path, the target's exit status (as
    a shell reports it: 128+N for signal N, None for an attached PID), the
    number of events, lost events, and whether a signal stopped recording."""

    path: Path
    exit_status: int | None
    events: int
    lost: int
    interrupted: bool
    backend: str
    notes: list[str] = field(default_factory=list)
    signum: int | None = None  # the signal that stopped vmtrace, if one did
    #: What the target reported of its interpreter (the reference VMM does:
    #: see vmtrace.interpreter), also in the trace's ``target.interpreter``.
    interpreter: dict[str, Any] | None = None

    @property
    def status(self) -> int:
        """vmtrace's own exit status, as a shell would give it: 128+N when a
        signal N stopped vmtrace, else the target's status (0 for -p)."""
        if self.signum is not None:
            return 128 + self.signum
        return self.exit_status or 0


def choose_backend(name: str) -> str:
    if name not in BACKENDS:
        raise VmtraceError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    from vmtrace.collectors.bcc_backend import bcc_available

    ok, _why = bcc_available()
    return "bcc" if ok else "ftrace"


def _make_collector(backend: str, options: RecordOptions, aggregate: float | None = None) -> Collector:
    if aggregate is not None:
        from .top.session import AggregateCollector  # imported late: it imports this module

        return AggregateCollector(options, aggregate)
    if backend == "bcc":
        from vmtrace.collectors.bcc_backend import BccCollector, bcc_available

        ok, why = bcc_available()
        if not ok:
            raise HostError(f"{why} (or use --backend ftrace)")
        return BccCollector(options)
    from vmtrace.collectors.ftrace import FtraceCollector

    return FtraceCollector(options)


_VCPU_NAME = re.compile(r"^CPU (\d+)/")


def thread_roles(names: dict[int, str], tgids: dict[int, int], pid: int, run_tids: set[int]) -> list[dict[str, Any]]:
    """Name each thread's role the way QEMU names its threads.

    ``CPU n/KVM`` is vCPU n; the first thread of the VMM process (the process
    whose threads enter KVM_RUN) is QEMU's main loop; ``IO <id>`` is an
    IOThread; ``worker`` threads serve the thread pool.  A thread that entered
    KVM_RUN without a vCPU name is still a vCPU.
    """
    vmm_pids = {tgids.get(t, pid) for t in run_tids} or {pid}
    rows = []
    next_index = 1 + max((int(m.group(1)) for n in names.values() if (m := _VCPU_NAME.match(n))), default=-1)
    for tid in sorted(set(names) | run_tids):
        name = names.get(tid, "")
        m = _VCPU_NAME.match(name)
        vcpu: int | None = None
        if m:
            role, vcpu = ROLE_VCPU, int(m.group(1))
        elif tid in run_tids:
            role, vcpu = ROLE_VCPU, next_index
            next_index += 1
        elif tid in vmm_pids:
            role = ROLE_MAIN
        elif name.startswith("IO "):
            role = ROLE_IOTHREAD
        elif name.startswith("worker"):
            role = ROLE_WORKER
        else:
            role = ROLE_OTHER
        rows.append({"tid": tid, "name": name, "role": role, "vcpu": vcpu, "pid": tgids.get(tid)})
    return rows


class _StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        # A signal handler only asks the loop to stop (STYLE principle 9).
        self.signum = signum


def cleanup_leftovers() -> list[str]:
    """Remove what recorders killed by SIGKILL left behind: tracefs
    instances and uprobe groups, and spool directories, whose owner process
    is gone.  Returns what was removed (see ``tracefs.cleanup_stale``)."""
    from vmtrace.collectors.tracefs import cleanup_stale

    removed = spool.cleanup_stale_spools()
    try:
        removed = cleanup_stale() + removed
    except HostError as err:
        removed.append(f"(could not remove everything: {err})")
    return removed


def _say(line: str) -> None:
    print(f"vmtrace: {line}", file=sys.stderr, flush=True)


def record(
    output: Path,
    cmd: list[str] | None = None,
    pid: int | None = None,
    backend: str = "auto",
    precise: bool = False,
    duration: float | None = None,
    stdout: TextIO | None = None,
    callsites: str | None = None,
    callsite_duty: float = DEFAULT_CALLSITE_DUTY,
    callsite_period_s: float = DEFAULT_CALLSITE_PERIOD_S,
    extra_meta: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    on_tick: Callable[[float], None] | None = None,
    say: Callable[[str], None] | None = _say,
    aggregate: float | None = None,
) -> RecordResult:
    """Record ``cmd`` (started by vmtrace) or the running process ``pid``.

    Raises ``VmtraceError`` subclasses for everything a user can fix: not
    root, no /dev/kvm, no tracefs, command not found, PID gone, unwritable
    output, and a trace that could not be written (the message then names
    the kept spool, the ``vmtrace recover`` command and the target's status).
    ``duration`` limits the recording in seconds (finite, > 0); ``stdout``
    sends the target's standard output elsewhere (``bench`` parses it);
    ``say`` gets one-line notices (leftovers removed, an attached PID that
    never entered KVM_RUN), on stderr by default.  ``callsites`` ("full"
    or "sampled", QEMU only) reads the BQL function's file and line at a
    uprobe; sampled keeps the uprobes on for ``callsite_duty`` of every
    ``callsite_period_s`` seconds.
    ``aggregate`` records no events: one snapshot of top's in-kernel
    counters every that many seconds, in the metadata's ``aggregate``.
    """
    if (cmd is None) == (pid is None):
        raise VmtraceError("give either a command after -- or -p PID")
    if duration is not None and not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
        raise VmtraceError(f"--duration takes a finite number of seconds above 0, not {duration!r}")
    callsite_mode = check_callsites(callsites, callsite_duty, callsite_period_s)
    say = say or (lambda _line: None)
    output = Path(output)
    host.require_root("vmtrace record")
    check_writable(output)
    if not os.path.exists("/dev/kvm"):
        raise HostError("no /dev/kvm on this host: load the kvm module (modprobe kvm_intel or kvm_amd)")
    if cmd is not None:
        if not cmd:
            raise TargetError("no command given after --")
        if resolve_binary(cmd[0]) is None:
            raise TargetError(f"command not found: {cmd[0]}")
        binary = vmm_binary(cmd)
    else:
        assert pid is not None
        if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
            raise TargetError(f"no process with PID {pid} (it may have exited)")
        if procs.is_zombie(pid):
            raise TargetError(f"process {pid} has exited (a zombie waiting for its parent): nothing to record")
        # Read now: the target may be gone by the time the trace is assembled.
        attached_cmd = process_command(pid)
        try:
            binary = os.path.realpath(f"/proc/{pid}/exe")
        except OSError:
            binary = None
    host.ensure_tracefs()
    removed = cleanup_leftovers()
    if removed:
        say("removed leftovers of a recorder that was killed: " + ", ".join(removed))
    chosen = choose_backend(backend)
    if aggregate is not None and (aggregate <= 0 or chosen != "bcc" or precise or callsites):
        raise VmtraceError("--aggregate needs a positive interval, the bcc backend, and no --precise or --callsites")
    spool_dir = spool.new_spool()
    options = RecordOptions(
        spool_dir=spool_dir,
        precise=precise,
        vmm_binary=binary,
        callsites=callsite_mode,
        callsite_duty=callsite_duty,
        callsite_period_s=callsite_period_s,
    )
    probe_spool = spool_dir / "probes.bin"
    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in procs.STOP_SIGNALS}
    child = None
    exit_status: int | None = None
    start_ns = time.monotonic_ns()
    keep_spool = False
    try:
        with _make_collector(chosen, options, aggregate) as collector:
            if cmd is not None:
                env = dict(os.environ)
                env[probes.ENV_VAR] = str(probe_spool)
                env[REPORT_ENV] = str(spool_dir / "interpreter.json")
                child, go_w, err_r = procs.spawn_held(cmd, env, stdout)
                target_pid, program = child, cmd[0]
            else:
                assert pid is not None  # checked above: a command or a PID
                target_pid = pid
            try:
                collector.attach(target_pid)
                if child is not None and stop.signum is None:
                    os.write(go_w, b"g")
            finally:
                if child is not None:
                    # Closing without a "g" makes the held child exit unexec'd.
                    os.close(go_w)
            if child is not None:
                failed = os.read(err_r, 16)
                os.close(err_r)
                if failed:
                    os.waitpid(child, 0)
                    child = None
                    raise TargetError(f"cannot run {program}: {os.strerror(int(failed))}")
            start_ns = time.monotonic_ns()
            if say is not None:
                # perf record's "Ctrl-C to stop"; scripts and tests wait for it
                # before they signal, instead of guessing how long bcc compiles.
                say(f"recording PID {target_pid} with {chosen}; Ctrl-C stops and writes the trace")
            while stop.signum is None:
                if child is not None:
                    done, status = os.waitpid(child, os.WNOHANG)
                    if done:
                        exit_status = procs.exit_status(status)
                        child = None
                        break
                elif procs.is_zombie(target_pid):
                    # Exited: a zombie has no threads left to record.
                    break
                elapsed = (time.monotonic_ns() - start_ns) / 1e9
                if duration is not None and elapsed >= duration:
                    break
                if on_tick:
                    on_tick(elapsed)
                collector.poll(100)
            if child is not None:
                # Stopped by a signal or --duration: the VMM we started must
                # not outlive us.
                exit_status = procs.terminate(child)
                child = None
            collected = collector.stop()
        if aggregate is not None:
            extra_meta = {
                **(extra_meta() if callable(extra_meta) else extra_meta or {}),
                "aggregate": collected.probes.pop("aggregate"),
                "mode": "aggregate",
            }
        end_ns = time.monotonic_ns()
        events, meta, notes = _assemble(
            collected,
            chosen,
            precise,
            cmd if cmd is not None else attached_cmd,
            target_pid,
            binary,
            exit_status,
            stop.signum is not None,
            start_ns,
            end_ns,
            probe_spool,
            extra_meta or {},
        )
        if pid is not None and aggregate is None and not (events["event"] == "run_enter").any():
            note = (
                f"no thread of process {pid} entered KVM_RUN while it was recorded: "
                "it is not a KVM VMM, or its vCPUs were idle"
            )
            notes.append(note)
            say(f"warning: {note}")
        try:
            write_trace(output, events, meta)
        except TraceFileError as err:
            keep_spool = _keep_for_recovery(spool_dir, output, events, meta)
            raise TraceFileError(
                _write_failure(str(err), spool_dir if keep_spool else None, output, exit_status, stop.signum)
            ) from None
        lost = int(meta["lost_events"]["total"])
        return RecordResult(
            output,
            exit_status,
            len(events),
            lost,
            stop.signum is not None,
            chosen,
            notes,
            stop.signum,
            meta["target"]["interpreter"],
        )
    finally:
        if child is not None:
            procs.terminate(child)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if not keep_spool:
            shutil.rmtree(spool_dir, ignore_errors=True)


def _keep_for_recovery(spool_dir: Path, output: Path, events: pd.DataFrame, meta: dict[str, Any]) -> bool:
    try:
        spool.save_for_recovery(spool_dir, output, events, meta)
    except OSError:
        return False
    return True


def _write_failure(err: str, kept: Path | None, output: Path, exit_status: int | None, signum: int | None) -> str:
    if kept is not None:
        what = f"the recording is kept in {kept}: free some space and run `vmtrace recover {kept} -o {output}`"
    else:
        what = "the recording could not be kept either (the spool's file system is full too)"
    if signum is not None:
        target = f"recording was stopped by {signal.Signals(signum).name}"
    elif exit_status is None:
        target = "the target was attached by PID and left running"
    else:
        target = f"the target exited with status {exit_status}"
    return f"{err}; {what}; {target}"


def _assemble(
    collected: Collected,
    backend: str,
    precise: bool,
    cmd: list[str] | None,
    pid: int,
    binary: str | None,
    exit_status: int | None,
    interrupted: bool,
    start_ns: int,
    end_ns: int,
    probe_spool: Path,
    extra_meta: dict[str, Any] | Callable[[], dict[str, Any]],
) -> tuple[pd.DataFrame, dict[str, Any], list[str]]:
    """The trace's rows and metadata from what the collector and the
    target's probe spool saw."""
    user_spool = read_probe_spool(probe_spool)
    user = user_spool.events
    frames = [f for f in (collected.events, user) if len(f)]
    events = (
        normalize_events(pd.concat(frames, ignore_index=True))
        if frames
        else normalize_events(pd.DataFrame({"ts_ns": [], "tid": [], "cpu": [], "event": []}))
    )
    run_tids = set(events.loc[events["event"] == "run_enter", "tid"].astype(int))
    names = dict(collected.thread_names)
    threads = thread_roles(names, collected.thread_tgids, pid, run_tids)
    locks = [lock.to_json() for lock in collected.locks]
    named_bql = [a for a, n in user_spool.futex_names.items() if n == "BQL"]
    if not any(lock.get("name") == "BQL" for lock in locks) and (
        named_bql or (len(user) and (user["name"] == "BQL").any())
    ):
        locks.append(
            {
                "name": "BQL",
                "futex_uaddr": named_bql[0] if named_bql else None,
                "method": "probe API (the VMM reports its own lock)",
                "identified": True,
            }
        )
    tsc, tsc_source = host.tsc_hz()
    vmm = "qemu" if is_qemu(binary) else ("reference" if len(user) or is_reference_vmm(cmd) else "other")
    notes = list(collected.notes)
    have_exit = collected.tracepoints.get("kvm:kvm_exit", {})
    if not have_exit.get("fired"):
        notes.append(
            "kvm_entry/kvm_exit did not fire on this host (available: "
            f"{bool(have_exit.get('available'))}): guest time is folded into vmexit"
        )
    lost_total = sum(collected.lost_per_cpu.values())
    meta: dict[str, Any] = {
        "host": host.host_info(),
        "kvm_flavour": host.kvm_flavour(),
        "tracepoints": collected.tracepoints,
        "backend": backend,
        "mode": "precise" if precise else "default",
        "clock": "CLOCK_MONOTONIC",
        "tsc_hz": tsc,
        "tsc_hz_source": tsc_source,
        "target": {
            "command": cmd,
            "pid": pid,
            "exit_status": exit_status,
            "vmm": vmm,
            "binary": binary,
            "vmm_version": qemu_version(binary) if binary and vmm == "qemu" else None,
            "interpreter": read_interpreter_report(probe_spool.parent / "interpreter.json"),
        },
        "threads": threads,
        "lost_events": {"total": lost_total, "per_cpu": {str(k): v for k, v in collected.lost_per_cpu.items()}},
        "locks": locks,
        # Futex words the target named (the reference VMM names its BQL and
        # the interpreter's GIL); keys are hex strings because JSON has no ints.
        "futex_names": {hex(a): n for a, n in sorted(user_spool.futex_names.items())},
        "probes": collected.probes,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "interrupted": interrupted,
        "bench": None,
        "notes": notes,
    }
    meta.update(collected.meta)
    meta.update(extra_meta() if callable(extra_meta) else extra_meta)
    return events, meta, notes
