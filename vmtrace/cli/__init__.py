"""The ``vmtrace`` command: a thin shell over the library.

Each command checks its arguments, calls one library function, renders the
result, and turns a ``VmtraceError`` into one line on stderr and status 2.

This file is the table of commands, in the order ``vmtrace --help`` lists
them; the commands live beside it, grouped by what they do:

- ``record``: record, top, recover (watch a running VMM);
- ``report``: report, compare, export (read traces);
- ``bench``: bench, doctor, sweep, vmm run (run a guest);
- ``common``: one-line errors and warnings, shared by all of them.
"""

from __future__ import annotations

import typer

from ..fleet.cli import app as fleet_app
from . import bench, record, report
from .common import PASS_THROUGH, OneLineGroup, OneLineUsageErrors

__all__ = ["app", "main"]

app = typer.Typer(
    cls=OneLineGroup,
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

app.command(cls=record.RecordCommand, context_settings=PASS_THROUGH)(record.record)
app.command(context_settings=PASS_THROUGH)(record.top)
app.command(cls=OneLineUsageErrors)(report.report)
app.command()(bench.bench)
app.command()(bench.doctor)
app.command()(bench.sweep)
app.command()(record.recover)
app.command()(report.compare)
app.command()(report.export)

vmm_app = typer.Typer(help="The bundled reference VMM (a real KVM VMM in Python).", no_args_is_help=True)
vmm_app.command("run", context_settings=PASS_THROUGH)(bench.vmm_run)
app.add_typer(vmm_app, name="vmm")
app.add_typer(fleet_app, name="fleet")


def main() -> None:
    app()
