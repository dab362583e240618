"""``vmtrace fleet``: many traces, one question.

A thin shell like the rest of the command: each command checks its
arguments, calls one library function, renders the result, and turns a
``VmtraceError`` into one line on stderr and status 2.  Heavy imports wait
until a command runs, so ``vmtrace --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from vmtrace.errors import VmtraceError

# typer declares options as default values (B008), as vmtrace/cli/ does.
# ruff: noqa: B008

__all__ = ["app"]

app = typer.Typer(
    help="Many hosts' traces summarised together: one row per trace, merged histograms, grouped reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VmtraceError as err:
            print(f"vmtrace: error: {err}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("vmtrace: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@_friendly
def summarize(
    traces: list[str] = typer.Argument(
        ...,
        help="Trace files, directories (searched for *.vmtrace), globs, "
        "or fsspec URLs (s3://... where s3fs is installed).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Fleet table to write (Parquet)."),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help="tcp://HOST:PORT of a running dask.distributed scheduler (its workers open the traces); "
        "'synchronous' to run in this process. Default: Dask's local scheduler with worker processes.",
    ),
    workers: int | None = typer.Option(None, "--workers", help="Local worker processes (default: one per CPU)."),
    all_exits: bool = typer.Option(
        False, "--all-exits", help="Summarise every exit, not a benchmark trace's timed loop."
    ),
) -> None:
    """Summarise every trace into one row of a Parquet table.

    Each trace is analysed on its own by the breakdown, lock and exit
    analyses; a trace that cannot be read or analysed becomes a row whose
    `error` says why.  Query the table with pandas or DuckDB, or run
    `vmtrace fleet report`.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .engine import SYNCHRONOUS, plan_fleet, summarize_fleet

    if workers is not None and scheduler is not None:
        raise VmtraceError("--workers sizes the local pool; a --scheduler cluster has its own workers")
    if workers is not None and workers < 1:
        raise VmtraceError("--workers must be at least 1")
    # Everything that can be refused is refused before the bar is drawn.
    sources = plan_fleet(list(traces), str(output))
    if scheduler == SYNCHRONOUS:
        # As every analysing command does (vmtrace/alloc.py); worker
        # processes do it themselves.
        from vmtrace.alloc import tune_for_large_arrays

        tune_for_large_arrays()
    bar = Progress(
        TextColumn("summarising"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("traces"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("fleet", total=len(sources))

    def step(done: int, total: int) -> None:
        # Drawn from the engine's first word on: a refused scheduler leaves
        # no empty bar above its error line.
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        path, rows = summarize_fleet(
            sources, str(output), scheduler=scheduler, workers=workers, progress=step, all_exits=all_exits
        )
    finally:
        if bar.live.is_started:
            bar.stop()
    failed = [r for r in rows if r.get("error")]
    print(f"vmtrace: wrote {path}: {len(rows):,} traces, {len(failed):,} failed", file=sys.stderr)
    for r in failed:
        print(f"vmtrace: failed: {r['path']}: {r['error']}", file=sys.stderr)


@app.command()
@_friendly
def report(
    table: Path = typer.Argument(..., help="Fleet table written by `vmtrace fleet summarize`."),
    html: Path | None = typer.Option(None, "--html", help="Also write one self-contained HTML page."),
    by: str | None = typer.Option(
        None, "--by", help="Group by summary columns, comma-separated (vmm_version,vcpus,workload ...)."
    ),
    top: int = typer.Option(10, "--top", help="Traces listed by BQL wait."),
) -> None:
    """Tables of the fleet: every exit's components from merged histograms,
    groups, the top traces by BQL wait, failed traces; --html for a page
    with the merged histograms and per-trace box plots."""
    from rich.console import Console

    from .render import render_fleet, write_fleet_html
    from .report import fleet_report
    from .summary import read_fleet

    rows = read_fleet(str(table))
    r = fleet_report(rows, by=[b.strip() for b in by.split(",")] if by else None, top_n=top)
    console = Console() if Console().is_terminal or "COLUMNS" in os.environ else Console(width=200)
    render_fleet(r, console)
    if html is not None:
        if html.is_dir() or not (html.parent if str(html.parent) else Path(".")).is_dir():
            raise VmtraceError(f"cannot write {html}: give a file in an existing directory")
        print(f"vmtrace: wrote {write_fleet_html(r, html, source=str(table))}", file=sys.stderr)
