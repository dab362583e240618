"""What every ``vmtrace`` command shares: one-line errors and warnings.

A usage error (unknown command or option, bad value, missing argument) or a
``VmtraceError`` is one line on stderr and status 2, never a traceback or
typer's multi-line box; an interrupt is 128+N.  Nothing here imports numpy
or pandas: ``vmtrace --help`` loads this module.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from ..errors import TraceWarning, VmtraceError

__all__ = [
    "PASS_THROUGH",
    "OneLineGroup",
    "OneLineUsageErrors",
    "analysing",
    "err_console",
    "fail",
    "friendly",
    "wide_console",
]

#: For the commands that hand the words after ``--`` to a program they start.
PASS_THROUGH: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}

err_console = Console(stderr=True)


def _usage_line(err: Any) -> str | None:
    """One line for a click usage error (typer vendors click or imports it,
    depending on its version), or None for anything else."""
    if getattr(err, "exit_code", None) != 2 or not hasattr(err, "format_message"):
        return None
    ctx = getattr(err, "ctx", None)
    words = ctx.command_path.split()[1:] if ctx is not None else []
    message = " ".join(str(err.format_message()).split())
    return f"vmtrace: error: {message} (see {' '.join(['vmtrace', *words, '--help'])})"


class OneLineGroup(TyperGroup):
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


class OneLineUsageErrors(TyperCommand):
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


def wide_console() -> Console:
    """A console for wide tables: the terminal's width on a terminal, and
    160 columns when piped (rich would otherwise squeeze to 80 and elide
    the numbers a script or a log is being kept for)."""
    import os

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def fail(message: str, code: int = 2) -> None:
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
    """``fn`` with a ``VmtraceError`` turned into one line and status 2, an
    interrupt into 128+N, and warnings into one line each."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", TraceWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except VmtraceError as err:
            fail(str(err))
        except KeyboardInterrupt as err:
            # 128+N, the shell's convention for "stopped by signal N".
            from ..procs import Interrupted

            code = err.exit_status if isinstance(err, Interrupted) else 130
            detail = err.detail if isinstance(err, Interrupted) else ""
            print(f"vmtrace: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
            raise typer.Exit(code) from None

    return wrapper


def analysing() -> None:
    """Called by the commands that analyse traces, not at start-up: it
    imports numpy, which --help, doctor and record should not wait for.  A
    cold breakdown of a large trace spends a third of its time in page
    faults with the process defaults (see vmtrace/alloc.py)."""
    from ..alloc import tune_for_large_arrays

    tune_for_large_arrays()
