"""What ``vmtrace top`` does once its arguments are checked: open the
monitor, then the curses view or N snapshots as tables, and the log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from vmtrace.errors import VmtraceError

from .aggregate import Snapshot
from .render import csv_header, csv_row, log_json, table_lines
from .session import Monitor

__all__ = ["top"]


def top(
    cmd: list[str] | None,
    pid: int | None,
    interval: float,
    batch: int | None,
    log: Path | None,
    log_format: str | None,
    out: TextIO = sys.stdout,
) -> int:
    """Run top; returns the exit status for the shell."""
    if interval <= 0:
        raise VmtraceError("--interval must be above 0 seconds")
    if batch is not None and batch < 1:
        raise VmtraceError("--batch must be at least 1")
    fmt = log_format or ("csv" if log is not None and log.suffix == ".csv" else "json")
    if fmt not in ("json", "csv"):
        raise VmtraceError(f"unknown --log-format {fmt!r}: json or csv")
    if batch is None and not out.isatty():
        raise VmtraceError("standard output is not a terminal: use --once or --batch N for tables")
    log_fh = None
    if log is not None:
        try:
            log_fh = open(log, "w", buffering=1)
        except OSError as err:
            raise VmtraceError(f"cannot write {log}: {err.strerror}") from None
    try:
        with Monitor(cmd=cmd, pid=pid) as monitor:
            if log_fh is not None and fmt == "csv":
                log_fh.write(csv_header())

            def logged(snap: Snapshot) -> Snapshot:
                if log_fh is not None:
                    log_fh.write(csv_row(snap) if fmt == "csv" else log_json(snap) + "\n")
                return snap

            if batch is not None:
                for i, snap in enumerate(monitor.snapshots(interval, batch)):
                    if i:
                        out.write("\n")
                    out.write("\n".join(table_lines(logged(snap))) + "\n")
                    out.flush()
            else:
                from .tui import run_tui

                original = monitor.snapshot
                monitor.snapshot = lambda: logged(original())  # type: ignore[method-assign]
                run_tui(monitor, interval)
            signum = monitor.stop_signal
    finally:
        if log_fh is not None:
            log_fh.close()
    return 128 + signum if signum is not None and batch is not None else 0
