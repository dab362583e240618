"""``vmtrace record``: run (or attach to) a VMM and write one trace file.

The target is forked and held before ``exec`` until the collector is
attached, so the trace starts with the target's first instruction.  Its
standard streams are inherited untouched.  SIGINT and SIGTERM only ask the
loop to stop; whatever was recorded is then written as a complete trace, and
the collector detaches everything on every path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import pandas as pd

from vmtrace.collectors import host
from vmtrace.collectors.base import Collected, Collector, RecordOptions
from vmtrace.collectors.qemu import is_qemu, qemu_version, resolve_binary
from vmtrace.collectors.userspace import read_probe_spool

from . import probes
from .errors import HostError, TargetError, VmtraceError
from .schema import ROLE_IOTHREAD, ROLE_MAIN, ROLE_OTHER, ROLE_VCPU, ROLE_WORKER
from .trace import check_writable, normalize_events, write_trace

__all__ = ["RecordResult", "record", "choose_backend", "thread_roles"]

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


def thread_roles(
    names: dict[int, str], tgids: dict[int, int], pid: int, run_tids: set[int]
) -> list[dict[str, Any]]:
    """Name each thread's role the way QEMU names its threads.

    ``CPU n/KVM`` is vCPU n; the first thread of the VMM process (the process
    whose threads enter KVM_RUN) is QEMU's main loop; ``IO <id>`` is an
    IOThread; ``worker`` threads serve the thread pool.  A thread that entered
    KVM_RUN without a vCPU name is still a vCPU.
    """
    vmm_pids = {tgids.get(t, pid) for t in run_tids} or {pid}
    rows = []
    next_index = 1 + max(
        (int(m.group(1)) for n in names.values() if (m := _VCPU_NAME.match(n))), default=-1
    )
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


def _spawn_held(cmd: list[str], env: dict[str, str], stdout: TextIO | None) -> tuple[int, int, int]:
    """Fork ``cmd`` held before exec; returns (pid, fd to write "g" to
    release it, fd that yields an errno if exec failed).

    Exec failures come back through a close-on-exec pipe as an errno.
    """
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(go_w)
            os.close(err_r)
            if os.read(go_r, 1) != b"g":
                os._exit(126)  # the recorder gave up before releasing us
            os.close(go_r)
            if stdout is not None:
                os.dup2(stdout.fileno(), 1)
            # Ctrl-C reaches the target through the terminal; the target
            # must not inherit vmtrace's handlers.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.execvpe(cmd[0], cmd, env)
        except OSError as err:
            os.write(err_w, str(err.errno).encode())
        finally:
            os._exit(127)
    os.close(go_r)
    os.close(err_w)
    return pid, go_w, err_r


def _exit_status(status: int) -> int:
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def record(
    output: Path,
    cmd: list[str] | None = None,
    pid: int | None = None,
    backend: str = "auto",
    precise: bool = False,
    duration: float | None = None,
    stdout: TextIO | None = None,
    extra_meta: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    on_tick: Callable[[float], None] | None = None,
    aggregate: float | None = None,
) -> RecordResult:
    """Record ``cmd`` (started by vmtrace) or the running process ``pid``.

    Raises ``VmtraceError`` subclasses for everything a user can fix: not
    root, no /dev/kvm, no tracefs, command not found, PID gone, unwritable
    output.  ``duration`` limits the recording in seconds; ``stdout`` sends
    the target's standard output elsewhere (``bench`` parses it).
    ``aggregate`` records no events: one snapshot of top's in-kernel
    counters every that many seconds, in the metadata's ``aggregate``.
    """
    if (cmd is None) == (pid is None):
        raise VmtraceError("give either a command after -- or -p PID")
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
        binary = _vmm_binary(cmd)
    else:
        assert pid is not None
        if not os.path.exists(f"/proc/{pid}"):
            raise TargetError(f"no process with PID {pid} (it may have exited)")
        try:
            binary = os.path.realpath(f"/proc/{pid}/exe")
        except OSError:
            binary = None
    host.ensure_tracefs()
    chosen = choose_backend(backend)
    if aggregate is not None and (aggregate <= 0 or chosen != "bcc" or precise):
        raise VmtraceError("--aggregate needs a positive interval, the bcc backend and no --precise")
    spool_dir = Path(tempfile.mkdtemp(prefix="vmtrace-spool-"))
    options = RecordOptions(spool_dir=spool_dir, precise=precise, vmm_binary=binary)
    probe_spool = spool_dir / "probes.bin"
    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    child = None
    exit_status: int | None = None
    start_ns = time.monotonic_ns()
    try:
        with _make_collector(chosen, options, aggregate) as collector:
            if cmd is not None:
                env = dict(os.environ)
                env[probes.ENV_VAR] = str(probe_spool)
                child, go_w, err_r = _spawn_held(cmd, env, stdout)
                target_pid = child
            else:
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
                    raise TargetError(f"cannot run {cmd[0]}: {os.strerror(int(failed))}")
            start_ns = time.monotonic_ns()
            while stop.signum is None:
                if child is not None:
                    done, status = os.waitpid(child, os.WNOHANG)
                    if done:
                        exit_status = _exit_status(status)
                        child = None
                        break
                elif not os.path.exists(f"/proc/{target_pid}"):
                    break
                elapsed = (time.monotonic_ns() - start_ns) / 1e9
                if duration is not None and elapsed >= duration:
                    break
                if on_tick:
                    on_tick(elapsed)
                collector.poll(100)
            if child is not None and stop.signum is not None:
                # Stopped by a signal: the VMM we started must not outlive us.
                exit_status = _terminate(child)
                child = None
            collected = collector.stop()
        if aggregate is not None:
            extra_meta = {**(extra_meta() if callable(extra_meta) else extra_meta or {}),
                          "aggregate": collected.probes.pop("aggregate"), "mode": "aggregate"}
        end_ns = time.monotonic_ns()
        return _write(
            output, collected, chosen, precise, cmd, target_pid, binary, exit_status,
            stop.signum is not None, start_ns, end_ns, probe_spool, extra_meta or {},
        )
    finally:
        if child is not None:
            _terminate(child)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        shutil.rmtree(spool_dir, ignore_errors=True)


def _terminate(pid: int, grace_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``; reap and return the exit status."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return _exit_status(status)
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return _exit_status(os.waitpid(pid, 0)[1])


def _write(
    output: Path,
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
) -> RecordResult:
    spool = read_probe_spool(probe_spool)
    user = spool.events
    frames = [f for f in (collected.events, user) if len(f)]
    events = normalize_events(pd.concat(frames, ignore_index=True)) if frames else normalize_events(
        pd.DataFrame({"ts_ns": [], "tid": [], "cpu": [], "event": []})
    )
    run_tids = set(events.loc[events["event"] == "run_enter", "tid"].astype(int))
    names = dict(collected.thread_names)
    threads = thread_roles(names, collected.thread_tgids, pid, run_tids)
    locks = [lock.to_json() for lock in collected.locks]
    named_bql = [a for a, n in spool.futex_names.items() if n == "BQL"]
    if not any(lock.get("name") == "BQL" for lock in locks) and (named_bql or (len(user) and (user["name"] == "BQL").any())):
        locks.append({"name": "BQL", "futex_uaddr": named_bql[0] if named_bql else None,
                      "method": "probe API (the VMM reports its own lock)", "identified": True})
    tsc, tsc_source = host.tsc_hz()
    vmm = "qemu" if is_qemu(binary) else ("reference" if len(user) or _is_reference(cmd) else "other")
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
        },
        "threads": threads,
        "lost_events": {"total": lost_total, "per_cpu": {str(k): v for k, v in collected.lost_per_cpu.items()}},
        "locks": locks,
        # Futex words the target named (the reference VMM names its BQL and
        # the interpreter's GIL); keys are hex strings because JSON has no ints.
        "futex_names": {hex(a): n for a, n in sorted(spool.futex_names.items())},
        "probes": collected.probes,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "interrupted": interrupted,
        "bench": None,
        "notes": notes,
    }
    meta.update(extra_meta() if callable(extra_meta) else extra_meta)
    write_trace(output, events, meta)
    return RecordResult(output, exit_status, len(events), lost_total, interrupted, backend, notes)


def _vmm_binary(cmd: list[str]) -> str | None:
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


def _is_reference(cmd: list[str] | None) -> bool:
    return bool(cmd) and any("reference_vmm" in part for part in cmd)

