"""The exits view (``report --exits``): what ``perf kvm stat`` gives, on any
host, as a terminal report and a page section.

Formats an ``analyses.exits.Exits``; computes nothing.  The section imports
plotly when it runs, not with this module: a terminal report should not
wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console

from .breakdown import by_kind_table
from .palette import COMPONENT_COLORS
from .text import fmt_dur, fmt_pct, grid, lost_line

if TYPE_CHECKING:
    from vmtrace.report import Report

    from .html import PageLimits, Section

__all__ = ["render_exits", "exits_section"]


def render_exits(x: Any, console: Console | None = None, limit: int = 15) -> None:
    """The ``--exits`` view (``analyses.exits.Exits``)."""
    console = console or Console()
    n = len(x.exits)
    user = int(x.exits["userspace"].sum()) if n else 0
    src = "kvm_exit -> kvm_entry" if x.source == "kvm_exit" else "KVM_RUN + decode (no kvm_exit on this host)"
    console.print(f"[bold]vmtrace exits[/]  source: {src}  kvm={x.kvm_flavour}")
    console.print(f"exits: {n:,} ({user:,} to userspace, {n - user:,} handled in the kernel)")
    lost_line(x.lost_events, x.lost_markers, console)
    stat_cols = [("count", "r"), ("%", "r"), ("time %", "r"), ("min", "r"), ("mean", "r"), ("p99", "r"), ("max", "r")]

    def stats(r: dict[str, Any]) -> list[str]:
        return [
            f"{int(r['count']):,}",
            fmt_pct(r["share"]),
            fmt_pct(r["time_share"]) if r["timed"] else "-",
            fmt_dur(r["min_ns"]),
            fmt_dur(r["mean_ns"]),
            fmt_dur(r["p99_ns"]),
            fmt_dur(r["max_ns"]),
        ]

    rows = [[str(r["reason"]), str(r["handled"])] + stats(r) for r in x.by_reason.head(limit).to_dict("records")]
    more = len(x.by_reason) - limit
    console.print(
        grid(
            "by exit reason",
            [("reason", "k"), ("handled", "k")] + stat_cols,
            rows,
            f"{more} more in --format json" if more > 0 else None,
        )
    )
    if len(x.by_access):
        rows = [
            [str(r["kind"]), "-" if pd.isna(r["addr"]) else f"{int(r['addr']):#x}", str(r["dir"])] + stats(r)
            for r in x.by_access.head(limit).to_dict("records")
        ]
        more = len(x.by_access) - limit
        console.print(
            grid(
                "by port (PIO) / address (MMIO, MSR)",
                [("kind", "k"), ("addr", "k"), ("dir", "k")] + stat_cols,
                rows,
                f"{more} more in --format json" if more > 0 else None,
            )
        )
    rows = [
        [
            str(int(r["vcpu"])),
            f"{int(r['count']):,}",
            f"{int(r['userspace']):,}",
            fmt_pct(r["time_share"]),
            fmt_dur(r["mean_ns"]),
            fmt_dur(r["p99_ns"]),
            fmt_dur(r["max_ns"]),
        ]
        for r in x.by_vcpu.to_dict("records")
    ]
    console.print(
        grid(
            "by vCPU",
            [
                ("vcpu", "r"),
                ("count", "r"),
                ("userspace", "r"),
                ("time %", "r"),
                ("mean", "r"),
                ("p99", "r"),
                ("max", "r"),
            ],
            rows,
        )
    )
    for note in x.notes:
        console.print(f"[dim]note: {note}[/]")


def exits_section(report: Report, limits: PageLimits) -> Section:
    """The page's exits: the breakdown by exit kind and port, then every exit
    of the trace by access (a chart and a table) and by reason."""
    import plotly.graph_objects as go

    from .figures import TEMPLATE
    from .html import Section, unavailable

    intro = "Mean cycles per exit by component, by exit kind and port or address (the summarised exits). "
    items: list[Any] = [by_kind_table(report["bql_breakdown"])]
    stats, why = report.get("exits")
    if stats is None:
        return Section("Exits", items, intro=f"({unavailable(why)}) " + intro)
    acc = stats.by_access
    if acc is not None and len(acc):
        top = acc.head(12)
        label = [
            f"{k} {'' if pd.isna(a) else hex(int(a))} {d}"
            for k, a, d in zip(top["kind"], top["addr"], top.get("dir", [""] * len(top)), strict=True)
        ]
        fig = go.Figure(
            go.Bar(
                y=label,
                x=top["count"],
                orientation="h",
                marker_color=COMPONENT_COLORS["vmexit"],
                customdata=np.round(top["mean_ns"].to_numpy(dtype=np.float64) / 1e3, 2),
                hovertemplate="%{y}: %{x:,} exits, mean %{customdata} µs<extra></extra>",
            )
        )
        fig.update_layout(
            template=TEMPLATE,
            height=160 + 28 * len(top),
            yaxis_autorange="reversed",
            title={
                "text": "Every exit of the trace by access, as perf kvm stat counts them",
                "x": 0,
                "y": 0.97,
                "yanchor": "top",
            },
            xaxis_title="exits",
            margin={"t": 70},
        )
        items.append(fig)
        items.append(
            _stat_table(
                acc.assign(addr=acc["addr"].map(lambda a: "-" if pd.isna(a) else hex(int(a)))), ["kind", "addr", "dir"]
            )
        )
    if stats.by_reason is not None and len(stats.by_reason):
        items.append(_stat_table(stats.by_reason, ["reason", "handled"]))
    items += [f"note: {n}" for n in stats.notes]
    return Section(
        "Exits", items, intro=intro + f"Then every exit by access and by reason, timed from {stats.source} events."
    )


def _stat_table(df: pd.DataFrame, keys: list[str], limit: int = 15) -> pd.DataFrame:
    """``exit_table`` columns with times in µs and shares in %."""
    out = df[[k for k in keys if k in df]].head(limit).copy()
    for c in ("count", "userspace"):
        if c in df:
            out[c] = df[c].head(limit)
    for c in ("share", "time_share"):
        if c in df:
            out[f"{c} %"] = (100 * df[c].head(limit).astype(float)).round(2)
    for c in ("mean_ns", "p50_ns", "p99_ns", "max_ns"):
        if c in df:
            out[c.replace("_ns", " µs")] = (df[c].head(limit).astype(float) / 1e3).round(2)
    return out
