"""The ``vmtrace`` command: a thin shell over the library.

Each command checks its arguments, calls one library function, renders the
result, and turns a ``VmtraceError`` into one line on stderr and status 2.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from .errors import TraceWarning, VmtraceError
from .fleet.cli import app as fleet_app
from .report import CLI_VIEWS, option_users, view
from .validate import U32_MAX, check_command, check_duration, check_locking, parse_address, parse_counts
from .validate import parse_int as _checked_int
from .validate import parse_lock as _checked_lock


def _usage_line(err: Any) -> str | None:
    """One line for a click usage error (typer vendors click or imports it,
    depending on its version), or None for anything else."""
    if getattr(err, "exit_code", None) != 2 or not hasattr(err, "format_message"):
        return None
    ctx = getattr(err, "ctx", None)
    words = ctx.command_path.split()[1:] if ctx is not None else []
    message = " ".join(str(err.format_message()).split())
    return f"vmtrace: error: {message} (see {' '.join(['vmtrace', *words, '--help'])})"


class _OneLineGroup(TyperGroup):
    """The top-level command: a usage error anywhere (unknown command or
    option, bad value, missing argument) is one line on stderr and status 2,
    never typer's multi-line box."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except Exception as err:
            if type(err).__name__ == "NoArgsIsHelpError":
                # As typer does: the help on stdout, status 2 (nothing was done).
                print(err.ctx.get_help())  # type: ignore[attr-defined]  # told by class name: click's own NoArgsIsHelpError
                sys.exit(2)
            line = _usage_line(err)
            if line is None and hasattr(err, "format_message") and hasattr(err, "exit_code"):
                line = f"vmtrace: error: {' '.join(str(err.format_message()).split())}"
            if line is None:
                if type(err).__name__ == "Abort":
                    print("vmtrace: interrupted", file=sys.stderr)
                    sys.exit(130)
                raise
            if standalone:
                print(line, file=sys.stderr)
                sys.exit(getattr(err, "exit_code", 2))
            raise
        if not standalone:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineGroup,
    help=(
        "Trace-driven lock profiling of KVM virtual machine monitors.\n\n"
        "Typical session:\n\n"
        "  vmtrace doctor                       # what this host can record\n\n"
        "  vmtrace bench --vmm qemu --bench inl_pmtimer --vcpus 2 --record pm.vmtrace\n\n"
        "  vmtrace record -o run.vmtrace -- qemu-system-x86_64 -enable-kvm ...\n\n"
        "  vmtrace report run.vmtrace --bql-breakdown"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)

PYTHON_HELP = (
    "Reference VMM only: the Python it runs on: ft (the free-threaded CPython 3.13 that "
    "scripts/setup.sh builds, the default when it is there), gil (the one vmtrace runs on) "
    "or a path."
)


def wide_console() -> Console:
    """A console for wide tables: the terminal's width on a terminal, and
    160 columns when piped (rich would otherwise squeeze to 80 and elide
    the numbers a script or a log is being kept for)."""
    import os

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def _fail(message: str, code: int = 2) -> None:
    # One line, no traceback: the message says what to do.
    print(f"vmtrace: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _show_warning(message: Any, category: Any, *_: Any, **__: Any) -> None:
    # A repaired trace (duplicate rows dropped) is one line, not a source quote.
    if isinstance(message, TraceWarning):
        print(f"vmtrace: warning: {message}", file=sys.stderr)
    else:
        print(f"vmtrace: warning: {category.__name__}: {message}", file=sys.stderr)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", TraceWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except VmtraceError as err:
            _fail(str(err))
        except KeyboardInterrupt as err:
            # 128+N, the shell's convention for "stopped by signal N".
            from .procs import Interrupted

            code = err.exit_status if isinstance(err, Interrupted) else 130
            detail = err.detail if isinstance(err, Interrupted) else ""
            print(f"vmtrace: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
            raise typer.Exit(code) from None

    return wrapper


class _RecordCommand(TyperCommand):
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


@app.command(cls=_RecordCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
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
        0.1, "--callsite-duty", help="--callsites=sampled: share of each second the call-site uprobes are on."
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
    from .record import record as do_record

    cmd = list(ctx.args)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if pid is not None and cmd:
        raise VmtraceError("give either -p PID or a command after --, not both")
    if pid is None and not cmd:
        raise VmtraceError("nothing to record: give a command after -- or -p PID")
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
        aggregate=aggregate,
    )
    lost = f", {result.lost} events LOST" if result.lost else ", no events lost"
    stop = " (stopped by signal)" if result.interrupted else ""
    err_console.print(f"vmtrace: wrote {result.path} ({result.events:,} events, backend {result.backend}{lost}){stop}")
    raise typer.Exit(result.status)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
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
    from .top.cli_run import top as run_top

    cmd = list(ctx.args)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if pid is not None and cmd:
        raise VmtraceError("give either -p PID or a command after --, not both")
    if pid is None and not cmd:
        raise VmtraceError("nothing to watch: give a command after -- or -p PID")
    if once and batch is not None:
        raise VmtraceError("give --once or --batch N, not both")
    raise typer.Exit(run_top(cmd or None, pid, interval, 1 if once else batch, log, log_format))


class _OneLineUsageErrors(TyperCommand):
    """A command whose usage errors (unknown option, bad value) are one line
    on stderr and status 2, like every other vmtrace error."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as err:
            # click's UsageError (exit code 2), which typer either imports from
            # click or vendors, depending on its version.
            if getattr(err, "exit_code", None) != 2 or not hasattr(err, "format_message"):
                raise
            message = " ".join(str(err.format_message()).split())
            print(f"vmtrace: error: {message} (see vmtrace {ctx.info_name} --help)", file=sys.stderr)
            raise typer.Exit(2) from None


#: The views of `vmtrace report`, in the order they print and key the JSON.
REPORT_VIEWS = tuple(v.name for v in CLI_VIEWS)


def _view_flag(name: str) -> Any:
    # The flag and its help are the view table's, so a view is described once.
    v = view(name)
    return typer.Option(False, v.option, help=v.help)


@app.command(cls=_OneLineUsageErrors)
@friendly
def report(
    ctx: typer.Context,
    trace: Path = typer.Argument(..., help="A trace written by vmtrace record or vmtrace bench --record."),
    bql_breakdown: bool = _view_flag("bql_breakdown"),
    exits: bool = _view_flag("exits"),
    locks: bool = _view_flag("locks"),
    offcpu: bool = _view_flag("offcpu"),
    requests: bool = _view_flag("requests"),
    callsites: bool = _view_flag("callsites"),
    aggregate: bool = _view_flag("aggregate"),
    fmt: str = typer.Option(
        "text", "--format", "-f", help="text (tables) or json (one object; with several views, one key per view)."
    ),
    port: str | None = typer.Option(
        None,
        "--port",
        help="Only exits on this port or address, e.g. 0x608 (the PM timer); with --bql-breakdown or --exits.",
    ),
    all_exits: bool = typer.Option(
        False,
        "--all-exits",
        help="For bench traces: every exit, not just the guest's timed loop; with --bql-breakdown.",
    ),
    lock: list[str] = typer.Option([], "--lock", help="Name a futex word, NAME=0xADDR (repeatable); with --locks."),
    html: Path | None = typer.Option(
        None,
        "--html",
        help="Also write a self-contained HTML report (breakdown, exits, locks, off-CPU, timeline) to this file.",
    ),
) -> None:
    """Show where each userspace exit's cycles go, and the BQL's share.

    One or more views of one trace (several combine in one call):

      vmtrace report pm.vmtrace                       # --bql-breakdown
      vmtrace report pm.vmtrace --exits --locks --offcpu
      vmtrace report pm.vmtrace --locks --lock GIL=0x7f3a2c001040 -f json
      vmtrace report blk.vmtrace --requests           # virtio-blk, per request

    Reads only the trace file: runs without root, on any machine.
    """
    from .report import Report
    from .trace import read_trace

    _analysing()

    if fmt not in ("text", "json"):
        raise VmtraceError(f"unknown format {fmt!r}: use text or json")
    # Each view's flag is the parameter named after it.
    loaded = read_trace(trace)
    # A record --aggregate trace has snapshots, not events: its own default.
    default = view("aggregate") if loaded.meta.get("aggregate") else CLI_VIEWS[0]
    chosen = [v for v in CLI_VIEWS if ctx.params[v.name]] or [default]
    # An option that no chosen view reads is a mistake to point out, not to ignore.
    for option, given in (("--port", port is not None), ("--all-exits", all_exits), ("--lock", bool(lock))):
        if given and not any(option in v.reads for v in chosen):
            raise VmtraceError(f"{option} applies to {' and '.join(v.option for v in option_users(option))}")
    port_no = parse_address(port) if port is not None else None
    names = dict(_checked_lock(spec) for spec in lock)
    tr = loaded
    if port_no is not None:
        from .validate import check_port_used

        check_port_used(tr.events, port_no)
    session = Report(tr, port=port_no, timed_loop=not all_exits, lock_names=names)
    # Every chosen view before any output: one that fails stops the command
    # before a page or half a report is written.
    session.compute([v.name for v in chosen])
    if html is not None:
        from .render.html import write_report_html

        # On stderr, so that --format json keeps stdout one JSON document.
        err_console.print(f"vmtrace: wrote {write_report_html(session, html)}")
    if fmt == "json":
        print(json.dumps(session.json([v.name for v in chosen]), indent=2))
        return
    console = wide_console()
    for v in chosen:
        assert v.text is not None
        v.text(session[v.name], console)


def _parse_lock(spec: str) -> tuple[int, str]:
    return _checked_lock(spec)


@app.command()
@friendly
def bench(
    vmm: str = typer.Option("reference", "--vmm", help="qemu or reference (the bundled Python VMM)."),
    bench_name: str = typer.Option(
        "inl_pmtimer",
        "--bench",
        help="inl_pmtimer (ACPI PM timer read), inl_vmm (a port nobody claims), inl_kernel (a port KVM answers), cpuid; on a virtio-blk disk: blk_randread, blk_randwrite (random 4 KiB requests), blk_verify (pattern written, read back, checksummed), blk_malformed (what the device answers to bad requests).",
    ),
    vcpus: int = typer.Option(1, "--vcpus", help="Number of vCPUs; every vCPU runs the loop at once."),
    iterations: int = typer.Option(20000, "--iterations", help="Operations per vCPU."),
    locking: str | None = typer.Option(None, "--locking", help="Reference VMM only: 2013, bql or unlocked."),
    record_to: Path | None = typer.Option(None, "--record", help="Record the run to this trace file."),
    backend: str = typer.Option("auto", "--backend", help="Recording backend with --record."),
    precise: bool = typer.Option(False, "--precise", help="Precise recording (see vmtrace record --help)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    queue_depth: int | None = typer.Option(
        None, "--queue-depth", help="blk_* benches: requests in flight per vCPU (default 1)."
    ),
    blk_mode: str | None = typer.Option(
        None,
        "--blk",
        help="blk_* benches: bql (the main loop services the queue under the BQL, the default) or dataplane (an IOThread, no BQL).",
    ),
    disk: Path | None = typer.Option(
        None,
        "--disk",
        help="blk_* benches: raw disk image (default: a 64 MiB one in a temporary directory). blk_randwrite and blk_verify overwrite data on it.",
    ),
    python: str | None = typer.Option(None, "--python", help=PYTHON_HELP),
    guest_args: str = typer.Option(
        "",
        "--guest-args",
        help='More words for the guest\'s command line, e.g. "readers=1 hammer=serial" for blk_mixed (see reference_vmm/guest/README.md).',
    ),
    qemu: str | None = typer.Option(
        None,
        "--qemu",
        help="--vmm qemu: 7.2 (Debian's), 10.0 (scripts/install_qemu10.sh's private prefix, run with -L) or a path (default: qemu-system-x86_64 on PATH).",
    ),
    callsites: str | None = typer.Option(
        None, "--callsites", help="With --record: full or sampled BQL call sites (see vmtrace record --help)."
    ),
) -> None:
    """Run the benchmark guest and print the guest-measured cycles per operation.

      vmtrace bench --vmm qemu --bench inl_pmtimer --vcpus 2 --json

      vmtrace bench --vmm qemu --bench blk_randread --vcpus 2 --queue-depth 16 --blk dataplane

    With --record the run is traced, and `vmtrace report` puts the guest's
    own number beside the traced breakdown.
    """
    from .bench import run_bench
    from .procs import interrupt_on_signals

    _checked_int(str(iterations), "--iterations", 1, U32_MAX, example="20000")
    _checked_int(str(vcpus), "--vcpus", 1, 64, example="2")
    check_locking([vmm], locking)
    with interrupt_on_signals():
        result = run_bench(
            vmm,
            bench_name,
            vcpus,
            iterations,
            locking,
            record_to,
            backend,
            precise,
            queue_depth=queue_depth,
            blk=blk_mode,
            disk=disk,
            python=python,
            guest_args=guest_args,
            qemu=qemu,
            callsites=callsites,
        )
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    from .render.commands import render_bench

    console = Console()
    render_bench(result, console)
    _print_bench_extras(result, console)


def _print_bench_extras(result: Any, console: Console) -> None:
    """What render_bench does not show yet: blk_mixed's hammers, and the
    interpreter the reference VMM ran on."""
    for h in result.hammers:
        console.print(
            f"vCPU {h.get('vcpu')} hammered the {h.get('target')} ({h.get('port')}): "
            f"{int(h.get('ops', 0)):,} accesses, {int(h.get('cycles_per_op', 0)):,} cycles each"
        )
    i = result.interpreter
    if i:
        gil = "GIL enabled" if i.get("gil_enabled") else "GIL disabled"
        kind = "free-threaded" if i.get("free_threaded") else "with the GIL"
        console.print(f"interpreter: CPython {i.get('version')} {kind}, {gil} at run time ({i.get('path')})")


@app.command()
@friendly
def doctor(
    quick: bool = typer.Option(False, "--quick", help="Skip booting a test guest to see which kvm tracepoints fire."),
) -> None:
    """Check what this host can record, and say what to do about each failure.

    Root, /dev/kvm, tracefs, BPF and bcc, kernel headers, QEMU, and (unless
    --quick) which kvm tracepoints fire when a test guest runs.
    """
    from .doctor import run_checks
    from .render.commands import render_doctor

    checks = run_checks(fire_test=not quick)
    render_doctor(checks, Console())
    if any(c.ok is False for c in checks):
        raise typer.Exit(1)


vmm_app = typer.Typer(help="The bundled reference VMM (a real KVM VMM in Python).", no_args_is_help=True)
app.add_typer(vmm_app, name="vmm")
app.add_typer(fleet_app, name="fleet")


@vmm_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def vmm_run(
    ctx: typer.Context,
    image: Path = typer.Option(..., "--image", help="A multiboot guest image (e.g. the benchmark guest)."),
    vcpus: int = typer.Option(1, "--vcpus"),
    locking: str = typer.Option(
        "bql", "--locking", help="2013 (BQL held outside KVM_RUN), bql (per dispatch) or unlocked."
    ),
    mem: int = typer.Option(64, "--mem", help="Guest memory in MiB."),
    disk: Path | None = typer.Option(
        None, "--disk", help="A raw disk image for a legacy virtio-blk-pci device at 00:02.0."
    ),
    blk_mode: str | None = typer.Option(
        None,
        "--blk",
        help="With --disk: bql (the main loop services the queue under the BQL, the default) or dataplane (an IOThread, no BQL).",
    ),
    python: str | None = typer.Option(None, "--python", help=PYTHON_HELP.removeprefix("Reference VMM only: ")),
) -> None:
    """Boot IMAGE on the reference VMM; arguments after -- go to the guest.

    vmtrace vmm run --image reference_vmm/guest/build/vmtrace-guest.elf --vcpus 2 -- bench=inl_pmtimer

    vmtrace vmm run --image ... --vcpus 2 --disk disk.img --blk dataplane -- bench=blk_randread qd=16
    """
    from .bench import LOCKING_MODES, note_on_stderr
    from .blk import BLK_MODES, check_disk
    from .interpreter import reference_vmm_command, resolve_python
    from .procs import interrupt_on_signals, run_child

    _checked_int(str(vcpus), "--vcpus", 1, 64, example="2")
    _checked_int(str(mem), "--mem", 1, 1 << 20, example="64")
    if locking not in LOCKING_MODES:
        raise VmtraceError(f"--locking takes {', '.join(LOCKING_MODES)}, not {locking!r}")
    if blk_mode is not None and blk_mode not in BLK_MODES:
        raise VmtraceError(f"--blk takes {' or '.join(BLK_MODES)}, not {blk_mode!r}")
    if blk_mode is not None and disk is None:
        raise VmtraceError("--blk needs --disk")
    guest_args = [a for a in ctx.args if a != "--"]
    start = reference_vmm_command(resolve_python(python, note_on_stderr))
    cmd = [
        *start,
        "run",
        "--image",
        str(image),
        "--vcpus",
        str(vcpus),
        "--locking",
        locking,
        "--mem",
        str(mem),
        "--append",
        " ".join(guest_args),
    ]
    if disk is not None:
        check_disk(disk)
        cmd += ["--disk", str(disk), "--blk", blk_mode or "bql"]
    with interrupt_on_signals():
        status = run_child(cmd).returncode
    raise typer.Exit(128 - status if status < 0 else status)


@app.command()
@friendly
def sweep(
    outdir: Path = typer.Option(
        ..., "-o", "--output", help="Directory for the traces, summary.csv/json and report.html."
    ),
    vmm: str = typer.Option("reference", "--vmm", help="qemu, reference, or both: qemu,reference."),
    bench_name: str = typer.Option(
        "inl_pmtimer", "--bench", help="Benchmark the guest runs (see vmtrace bench --help)."
    ),
    vcpus: str = typer.Option("1,2,4,8", "--vcpus", help="Comma-separated vCPU counts."),
    locking: str | None = typer.Option(
        None, "--locking", help="Reference VMM locking modes, comma-separated (default: bql,unlocked)."
    ),
    iterations: int | None = typer.Option(
        None, "--iterations", help="Operations per vCPU (default: 20000 on QEMU, 3000 on the reference VMM)."
    ),
    backend: str = typer.Option("auto", "--backend", help="Recording backend: auto, bcc or ftrace."),
    repeat: int = typer.Option(
        1,
        "--repeat",
        help="Runs per configuration, untraced and recorded alternating; medians are shown, with the untraced range.",
    ),
    python: str = typer.Option(
        "ft",
        "--python",
        help="Reference VMM: the Pythons it runs on, comma-separated, each a configuration of its own: ft (the free-threaded build, the default; the GIL interpreter with a note when it is missing), gil (the one vmtrace runs on: 'reference bql (GIL)' beside the free-threaded curves), or a path.",
    ),
    qemu: str | None = typer.Option(
        None, "--qemu", help="--vmm qemu: QEMU versions or paths, comma-separated, one configuration each (7.2,10.0)."
    ),
) -> None:
    """Reproduce the seed's figure: cost per exit by component across vCPU counts.

      vmtrace sweep -o pm-sweep                                 # reference VMM, bql vs unlocked, 1-8 vCPUs
      vmtrace sweep -o qemu-sweep --vmm qemu --vcpus 1,2,4
      vmtrace sweep -o pm-sweep --repeat 3                      # steadier numbers on a noisy host
      vmtrace sweep -o pm-sweep --python ft,gil                 # the GIL's curves beside the free-threaded ones

    Each configuration runs twice: untraced (the guest's own cycles per op)
    and recorded.  The summary puts the traced breakdown beside the guest's
    number and the observer effect (traced / untraced guest cost); the HTML
    report stacks the components per vCPU count, configurations side by side.
    With more vCPUs than host CPUs one run can be off by 2x: --repeat N runs
    each N times and keeps the trace of the median recorded run.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .render.html import write_sweep_html
    from .render.text import render_sweep
    from .sweep import configs_for, run_sweep, write_summary

    _analysing()

    counts = parse_counts(vcpus)
    if repeat < 1:
        raise VmtraceError("--repeat must be at least 1 (runs per configuration)")
    if iterations is not None:
        _checked_int(str(iterations), "--iterations", 1, U32_MAX, example="20000")
    check_locking(vmm.split(","), locking)
    configs = configs_for(
        [v.strip() for v in vmm.split(",")],
        locking.split(",") if locking else None,
        pythons=[p.strip() for p in python.split(",") if p.strip()],
        qemus=[q.strip() for q in qemu.split(",") if q.strip()] if qemu else None,
    )
    from .outputs import check_output_dir
    from .procs import interrupt_on_signals
    from .sweep import check_outdir

    check_output_dir(outdir, "sweep output directory")
    check_outdir(outdir)
    console = wide_console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("sweep", total=2 * repeat * len(configs) * len(counts))
        started = [False]

        def step(what: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=what)

        with interrupt_on_signals():
            summary = run_sweep(
                configs,
                counts,
                outdir,
                bench=bench_name,
                iterations=iterations,
                backend=backend,
                progress=step,
                repeat=repeat,
            )
        bar.advance(task)
    files = write_summary(summary, outdir)
    files.append(write_sweep_html(summary, outdir / "report.html"))
    render_sweep(summary, console)
    console.print("wrote " + ", ".join(str(f) for f in files))


@app.command()
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
    from .spool import recover as do_recover

    err_console.print(f"vmtrace: wrote {do_recover(spool, output)}")


@app.command()
@friendly
def compare(
    traces: list[Path] = typer.Argument(..., help="Two or more traces; the first is the baseline."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    html: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML page here."),
    port: str | None = typer.Option(
        None, "--port", help="Compare exits on this port only (default: each trace's bench port)."
    ),
) -> None:
    """Components of several traces side by side, with deltas from the first.

    vmtrace compare bql-4vcpu.vmtrace unlocked-4vcpu.vmtrace
    vmtrace compare a.vmtrace b.vmtrace c.vmtrace --format json
    """
    from .compare import compare_traces, comparison_json
    from .render.text import render_comparison

    _analysing()

    if fmt not in ("table", "json"):
        raise VmtraceError(f"--format takes table or json, not {fmt!r}")
    table, breakdowns = compare_traces(traces, port=parse_address(port) if port is not None else None)
    from .render.labels import run_label

    ran = {label: run_label(b.meta) for label, b in breakdowns.items()}
    if html is not None:
        from .render.html import write_compare_html

        write_compare_html(table, html, ran)
    if fmt == "json":
        print(json.dumps(comparison_json(table, breakdowns), indent=2))
        return
    console = wide_console()
    render_comparison(table, console, ran)
    if html is not None:
        console.print(f"wrote {html}")


@app.command()
@friendly
def export(
    trace: Path = typer.Argument(..., help="A trace written by vmtrace record or vmtrace bench --record."),
    perfetto: Path | None = typer.Option(
        None,
        "--perfetto",
        help="Write the timeline as Chrome trace-event JSON for ui.perfetto.dev or chrome://tracing (a name ending in .gz compresses it).",
    ),
) -> None:
    """Export a trace's per-thread timeline to another tool.

      vmtrace export run.vmtrace --perfetto run.json     # open it in ui.perfetto.dev

    One track per thread (CPU 0/KVM, ...); on vCPU tracks each exit is a
    slice holding its components (vmexit, emulator, dispatch, device, BQL
    wait, ...) and, inside those, the time spent off CPU.
    """
    from .export.perfetto import write_perfetto
    from .report import Report
    from .trace import read_trace

    _analysing()

    if perfetto is None:
        raise VmtraceError("nothing to export: give --perfetto OUT")
    err_console.print(f"vmtrace: wrote {write_perfetto(Report(read_trace(trace)), perfetto)}")


def _analysing() -> None:
    """Called by the commands that analyse traces, not at start-up: it
    imports numpy, which --help, doctor and record should not wait for.  A
    cold breakdown of a large trace spends a third of its time in page
    faults with the process defaults (see vmtrace/alloc.py)."""
    from .alloc import tune_for_large_arrays

    tune_for_large_arrays()


def _parse_int(text: str, what: str) -> int:
    return _checked_int(text, what, example="0x608 or 1544")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
