"""``vmtrace report``, ``compare`` and ``export``: the commands that read
traces.  They need no root and run on any machine.

Each calls the library (``vmtrace.report``, ``vmtrace.compare``, the
Perfetto exporter) and renders its result; the analyses wait until a
command runs, so ``vmtrace --help`` does not import pandas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..errors import VmtraceError
from ..report import CLI_VIEWS, option_users, view
from ..validate import parse_address, parse_lock
from .common import analysing, err_console, friendly, wide_console

__all__ = ["REPORT_VIEWS", "compare", "export", "report"]

#: The views of `vmtrace report`, in the order they print and key the JSON.
REPORT_VIEWS = tuple(v.name for v in CLI_VIEWS)


def _view_flag(name: str) -> Any:
    # The flag and its help are the view table's, so a view is described once.
    v = view(name)
    return typer.Option(False, v.option, help=v.help)


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
    from ..report import Report
    from ..trace import read_trace

    analysing()

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
    names = dict(parse_lock(spec) for spec in lock)
    tr = loaded
    if port_no is not None:
        from ..validate import check_port_used

        check_port_used(tr.events, port_no)
    session = Report(tr, port=port_no, timed_loop=not all_exits, lock_names=names)
    # Every chosen view before any output: one that fails stops the command
    # before a page or half a report is written.
    session.compute([v.name for v in chosen])
    if html is not None:
        from ..render.html import write_report_html

        # On stderr, so that --format json keeps stdout one JSON document.
        err_console.print(f"vmtrace: wrote {write_report_html(session, html)}")
    if fmt == "json":
        print(json.dumps(session.json([v.name for v in chosen]), indent=2))
        return
    console = wide_console()
    for v in chosen:
        assert v.text is not None
        v.text(session[v.name], console)


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
    from ..compare import compare_traces, comparison_json
    from ..render.text import render_comparison

    analysing()

    if fmt not in ("table", "json"):
        raise VmtraceError(f"--format takes table or json, not {fmt!r}")
    table, breakdowns = compare_traces(traces, port=parse_address(port) if port is not None else None)
    from ..render.labels import run_label

    ran = {label: run_label(b.meta) for label, b in breakdowns.items()}
    if html is not None:
        from ..render.html import write_compare_html

        write_compare_html(table, html, ran)
    if fmt == "json":
        print(json.dumps(comparison_json(table, breakdowns), indent=2))
        return
    console = wide_console()
    render_comparison(table, console, ran)
    if html is not None:
        console.print(f"wrote {html}")


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
    from ..export.perfetto import write_perfetto
    from ..report import Report
    from ..trace import read_trace

    analysing()

    if perfetto is None:
        raise VmtraceError("nothing to export: give --perfetto OUT")
    err_console.print(f"vmtrace: wrote {write_perfetto(Report(read_trace(trace)), perfetto)}")
