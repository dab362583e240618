"""What every terminal view shares: number formats, the compact table, the
lost-events and BQL lines, and the tables of ``vmtrace sweep`` and
``vmtrace compare``.

Each view's own renderer lives with its page section in the module named
for the view (``breakdown``, ``exits``, ``locks``, ``offcpu``,
``requests``, ``callsites``); they import from here, never the reverse.
Tables are sized for 100 columns: numbers never wrap (a column that would
cut one is given its full width), names fold when the terminal is narrower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from vmtrace.analyses.jsonform import hex_or_none

from .labels import sweep_python

__all__ = [
    "fmt_cycles",
    "fmt_dur",
    "fmt_ms",
    "fmt_pct",
    "grid",
    "lost_line",
    "bql_line",
    "render_sweep",
    "render_comparison",
]


def fmt_cycles(v: float | None) -> str:
    """Cycles with thousands separators, "-" for none."""
    if v is None or v != v:
        return "-"
    return f"{v:,.0f}"


def fmt_dur(ns: float | None) -> str:
    """A duration with its unit, at most 7 characters: 850ns, 21.3µs,
    5.09ms, 1.66s, so one column holds a PIO exit and a lock wait alike."""
    if ns is None or ns != ns:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            v = ns / scale
            return f"{v:.2f}{unit}" if v < 10 else f"{v:.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"
    return f"{ns:.0f}ns"


def fmt_ms(ns: float | None) -> str:
    """Nanoseconds as milliseconds: two decimals below 100 ms."""
    if ns is None or ns != ns:
        return "-"
    ms = ns / 1e6
    return f"{ms:.2f}" if ms < 100 else f"{ms:,.0f}"


def fmt_pct(share: float | None) -> str:
    """A share (0..1) as a percentage with one decimal."""
    if share is None or share != share:
        return "-"
    return f"{100 * share:.1f}%"


def grid(title: str, columns: list[tuple[str, str]], rows: list[list[str]], caption: str | None = None) -> Table:
    """A compact table; ``columns`` are (header, kind): "r" a number and "k"
    a short key, neither ever cut, or "l" text that may fold."""
    from rich import box

    t = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption=caption,
        caption_justify="left",
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for i, (name, kind) in enumerate(columns):
        if kind in ("r", "k"):
            width = max([len(name)] + [len(r[i]) for r in rows])
            t.add_column(name, justify="right" if kind == "r" else "left", no_wrap=True, min_width=width)
        else:
            t.add_column(name, justify="left", overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


def lost_line(lost: int, markers: int, console: Console) -> None:
    """The count of lost events and lost-event markers, red unless zero."""
    style = "bold red" if lost or markers else "green"
    where = f", {markers:,} lost-event markers" if markers else ""
    console.print(f"lost events: [{style}]{lost:,}[/]{where}")


def bql_line(bql: Mapping[str, Any], console: Console) -> None:
    """Which futex word is the BQL and how it was found (the ``bql`` of a
    ``Breakdown`` or a lock report), or that it was not identified."""
    if bql.get("identified"):
        console.print(f"BQL: futex word {hex_or_none(bql.get('futex_uaddr')) or '-'} ({bql.get('method')})")
    else:
        console.print(f"BQL: [yellow]not identified[/] ({bql.get('method', 'no method')})")


def render_sweep(summary: pd.DataFrame, console: Console | None = None) -> None:
    """The sweep summary: one row per configuration and vCPU count."""
    console = console or Console()
    t = Table(title="cycles per exit by component (traced) beside the guest's own cycles per op", title_justify="left")
    repeated = "runs" in summary and bool((summary["runs"] > 1).any())
    cols = [
        "config",
        "python",
        "vCPUs",
        "guest",
        *(["guest range"] if repeated else []),
        "traced guest",
        "effect",
        "vmexit",
        "emulator",
        "dispatch",
        "device",
        "lock wait",
        "BQL",
        "runnable",
        "total",
    ]
    for c in cols:
        t.add_column(c, justify="left" if c in ("config", "python") else "right", no_wrap=True)
    for r in summary.to_dict("records"):
        spread = [f"{fmt_cycles(r['guest_min'])}-{fmt_cycles(r['guest_max'])}"] if repeated else []
        effect = r["observer_effect"]
        t.add_row(
            str(r["config"]),
            sweep_python(r) or "-",
            str(r["vcpus"]),
            fmt_cycles(r["guest_cycles_per_op"]),
            *spread,
            fmt_cycles(r["traced_guest_cycles_per_op"]),
            f"{effect:.2f}x" if effect is not None and effect == effect else "-",
            *(
                fmt_cycles(r.get(c))
                for c in ("vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "runnable", "total")
            ),
        )
    console.print(t)
    if repeated:
        console.print(
            f"guest, traced guest: medians of {int(summary['runs'].max())} runs each; "
            "the breakdown is the trace of the median recorded run"
        )


def render_comparison(
    table: pd.DataFrame, console: Console | None = None, ran: dict[str, str | None] | None = None
) -> None:
    """``vmtrace compare``: one column per trace, deltas from the first;
    ``ran``: label -> what ran (``labels.run_label``), printed above."""
    console = console or Console()
    # Only where a trace says (a reference VMM's): QEMU's locking is its version's.
    if any((ran or {}).values()):
        for label, what in (ran or {}).items():
            console.print(f"{label}: {what or '-'}", markup=False, highlight=False)
    t = Table(title="cycles per exit, deltas from the first trace", title_justify="left")
    t.add_column("component", no_wrap=True)
    for c in table.columns:
        t.add_column(str(c), justify="right", no_wrap=True)
    for comp, row in table.iterrows():
        cells = []
        for col, v in row.items():
            if v is None or pd.isna(v):
                cells.append("-")
            elif str(col).endswith("Δ%"):
                cells.append(f"{v:+.1f}%")
            elif str(col).endswith("Δ"):
                cells.append(f"{v:+,.0f}")
            else:
                cells.append(fmt_cycles(v))
        t.add_row(str(comp), *cells)
    console.print(t)
