"""``vmtrace record``, ``top`` and ``recover``: the commands that watch a
running VMM, and the one that finishes a trace a recording left behind.

Heavy imports wait until a command runs, so ``vmtrace --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from ..errors import VmtraceError
from ..validate import DEFAULT_CALLSITE_DUTY, DEFAULT_CALLSITE_PERIOD_S, check_command, check_duration
from .common import err_console, friendly

__all__ = ["RecordCommand", "record", "recover", "top"]


class RecordCommand(TyperCommand):
    """``record``'s options end at ``--``: an unknown option before it is a
    usage error, not the name of a command to run.  Without ``--`` the
    first word that is not an option starts the command, as before."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" not in args:
            return super().parse_args(ctx, args)
        cut = args.index("--")
        ctx.ignore_unknown_options = False
        ctx.allow_extra_args = False
        super().parse_args(ctx, args[:cut])
        rest: list[str] = args[cut + 1 :]
        ctx.args = rest
        return rest


@friendly
def record(
    ctx: typer.Context,
    output: Path = typer.Option(..., "-o", "--output", help="Trace file to write (Parquet)."),
    pid: int | None = typer.Option(None, "-p", "--pid", help="Attach to a running VMM instead of starting one."),
    duration: float | None = typer.Option(
        None, "--duration", help="Stop after S seconds (default: until the target exits or Ctrl-C)."
    ),
    backend: str = typer.Option(
        "auto", "--backend", help="auto (bcc where it works), bcc (eBPF) or ftrace (tracefs only)."
    ),
    precise: bool = typer.Option(
        False,
        "--precise",
        help="Keep uprobes on the BQL and memory_region_dispatch_* for the whole run: splits device time from dispatch, at a higher observer effect.",
    ),
    callsites: str | None = typer.Option(
        None,
        "--callsites",
        help="QEMU: read the BQL's call sites (file:line) at its uprobes: full (every acquisition) or sampled (uprobes on in windows, see --callsite-duty). Shown by report --callsites.",
    ),
    callsite_duty: float = typer.Option(
        DEFAULT_CALLSITE_DUTY,
        "--callsite-duty",
        help="--callsites=sampled: share of each period the call-site uprobes are on.",
    ),
    callsite_period: float = typer.Option(
        DEFAULT_CALLSITE_PERIOD_S,
        "--callsite-period",
        help="--callsites=sampled: seconds from one window to the next.  Each window also pays a fixed ~0.35 s of uprobe removal on this kind of host, so short periods cost more than the duty says.",
    ),
    aggregate: float | None = typer.Option(
        None,
        "--aggregate",
        help="Record no events: one snapshot of the exit breakdown, aggregated in the kernel, every S seconds (a tiny time series; see vmtrace top).",
    ),
) -> None:
    """Record a VMM: KVM exits, KVM_RUN boundaries, futex waits, scheduling.

    Start the VMM under vmtrace (its output passes through, and vmtrace exits
    with its status):

      vmtrace record -o run.vmtrace -- qemu-system-x86_64 -enable-kvm -cpu max,-arch-capabilities ...

    or attach to a running one: vmtrace record -o run.vmtrace -p PID --duration 5

    Only the target's threads are recorded.  By default only tracepoints stay
    attached (the BQL is named by uprobes during a short window at start);
    Ctrl-C stops recording and still writes a complete trace.
    """
    from ..record import record as do_record

    cmd = _target(ctx, pid, "record")
    if pid is not None and pid < 1:
        raise VmtraceError(f"-p takes a process ID, not {pid}")
    check_duration(duration)
    if cmd:
        check_command(cmd[0])
    result = do_record(
        output,
        cmd=cmd or None,
        pid=pid,
        backend=backend,
        precise=precise,
        duration=duration,
        callsites=callsites,
        callsite_duty=callsite_duty,
        callsite_period_s=callsite_period,
        aggregate=aggregate,
    )
    lost = f", {result.lost} events LOST" if result.lost else ", no events lost"
    stop = " (stopped by signal)" if result.interrupted else ""
    err_console.print(f"vmtrace: wrote {result.path} ({result.events:,} events, backend {result.backend}{lost}){stop}")
    raise typer.Exit(result.status)


@friendly
def top(
    ctx: typer.Context,
    pid: int | None = typer.Option(None, "-p", "--pid", help="Watch a running VMM instead of starting one."),
    interval: float = typer.Option(1.0, "-d", "--interval", help="Seconds between refreshes."),
    once: bool = typer.Option(False, "-1", "--once", help="Print one snapshot as a table and exit (like kvm_stat -1)."),
    batch: int | None = typer.Option(None, "-b", "--batch", help="Print N snapshots as tables and exit."),
    log: Path | None = typer.Option(
        None, "-l", "--log", help="Also write one JSON line (or, for a .csv file, one CSV row) per interval."
    ),
    log_format: str | None = typer.Option(
        None, "--log-format", help="json or csv (default: from the --log file's suffix)."
    ),
) -> None:
    """A live view of exits and lock waits, aggregated in the kernel.

    Rows per vCPU and exit kind and port; mean and p99 cycles per component
    and the share of time in each; the BQL's share of wait and the top futex
    words.  Keys: s sort, g group, v vCPU, k kind, d drill, c clear, f freeze,
    q quit.

      vmtrace top -p "$(pgrep -f qemu-system)"

      vmtrace top --batch 5 --log run.csv -- qemu-system-x86_64 -enable-kvm ...
    """
    from ..top.cli_run import top as run_top

    cmd = _target(ctx, pid, "watch")
    if once and batch is not None:
        raise VmtraceError("give --once or --batch N, not both")
    raise typer.Exit(run_top(cmd or None, pid, interval, 1 if once else batch, log, log_format))


@friendly
def recover(
    spool: Path = typer.Argument(..., help="The spool directory a failed `vmtrace record` kept (it names it)."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Trace file to write (default: the one record was given)."
    ),
) -> None:
    """Finish writing a trace that `record` could not write (a full disk).

    vmtrace recover /tmp/vmtrace-spool-1234-abcd -o run.vmtrace
    """
    from ..spool import recover as do_recover

    err_console.print(f"vmtrace: wrote {do_recover(spool, output)}")


def _target(ctx: typer.Context, pid: int | None, verb: str) -> list[str]:
    """The command line to start (empty with ``-p``): the words after
    ``--``; one of the two, never both nor neither."""
    cmd = list(ctx.args)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if pid is not None and cmd:
        raise VmtraceError("give either -p PID or a command after --, not both")
    if pid is None and not cmd:
        raise VmtraceError(f"nothing to {verb}: give a command after -- or -p PID")
    return cmd
