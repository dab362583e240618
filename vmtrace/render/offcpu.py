"""The off-CPU view (``report --offcpu``): each thread's time split into
running, blocked on a lock (the BQL apart), blocked on anything else, and
runnable but waiting for a CPU, as a terminal report and a page section.

Formats an ``analyses.offcpu.OffCpu``; computes nothing.  The section
imports plotly when it runs, not with this module: a terminal report should
not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console

from .palette import COMPONENT_COLORS
from .text import fmt_ms, fmt_pct, grid, lost_line

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vmtrace.report import Report

    from .html import PageLimits, Section

__all__ = ["render_offcpu", "offcpu_section"]


def render_offcpu(off: Any, console: Console | None = None) -> None:
    """The ``--offcpu`` view (``analyses.offcpu.OffCpu``): each thread's
    lifetime split into running, blocked on a lock, blocked on anything else,
    and runnable but waiting for a CPU."""
    console = console or Console()
    console.print("[bold]vmtrace off-CPU[/]  where each thread's time went (first to last event of the thread)")
    lost_line(off.lost_events, off.lost_markers, console)
    shown = ["running_ns", "lock_ns", "bql_ns", "other_blocked_ns", "runnable_ns", "woken_wait_ns"]
    heads = [("running", "r"), ("lock", "r"), ("BQL", "r"), ("other", "r"), ("runnable", "r"), ("woken", "r")]
    if off.threads["unknown_ns"].any():
        shown.append("unknown_ns")
        heads.append(("unknown", "r"))
    cols = [("thread", "l"), ("role", "k"), ("time ms", "r")] + heads + [("switches", "r")]

    def row(label: str, role: str, r: dict[str, Any]) -> list[str]:
        life = r["time_ns"] or 1
        return [label, role, fmt_ms(r["time_ns"])] + [fmt_pct(r[c] / life) for c in shown] + [f"{int(r['switches']):,}"]

    rows = [row(f"{r['name']} [{int(r['tid'])}]", str(r["role"]), r) for r in off.threads.to_dict("records")]
    v = off.totals.get("vcpu") or {}
    if v.get("time_ns"):
        rows.append(
            row(
                "all vCPUs",
                "vcpu",
                {**v, "switches": int(off.threads.loc[off.threads["role"] == "vcpu", "switches"].sum())},
            )
        )
    console.print(
        grid(
            "share of each thread's time: running; blocked on a lock (BQL: of it, the BQL), on "
            "anything else; runnable without a CPU (woken: of it, after a wakeup)",
            cols,
            rows,
        )
    )
    if v.get("time_ns"):
        console.print(
            f"vCPU threads: blocked on locks {fmt_ms(v['lock_ns'])} ms (BQL {fmt_ms(v['bql_ns'])} ms); runnable "
            f"without a CPU {fmt_ms(v['runnable_ns'])} ms, of it {fmt_ms(v['woken_wait_ns'])} ms after a wakeup "
            "(oversubscription, not lock contention)"
        )
    for note in off.notes:
        console.print(f"[dim]note: {note}[/]")


# ----------------------------------------------------------------------------
# The page


def offcpu_section(report: Report, limits: PageLimits) -> Section:
    """The page's off-CPU time: where each thread's life went, as a chart
    and a table."""
    from .html import Section, unavailable

    intro = (
        "Runnable: switched out while runnable or woken and not yet on a CPU (oversubscription, not "
        "contention). Blocked: asleep, on a lock or on anything else (I/O, an idle loop). "
    )
    off, why = report.get("offcpu")
    if off is None:
        return Section("Off-CPU", [unavailable(why)], intro=intro)
    fig, table = _offcpu_from_analysis(off)
    return Section("Off-CPU", [fig, table, *(f"note: {n}" for n in off.notes)], intro=intro)


def _offcpu_from_analysis(off: Any) -> tuple[go.Figure, pd.DataFrame]:
    import plotly.graph_objects as go

    from .figures import TEMPLATE

    t = off.threads
    zero = pd.Series(0, index=t.index)
    parts = {
        "running": t.get("running_ns", zero),
        "blocked on the BQL": t.get("bql_ns", zero),
        "blocked on another lock": t.get("lock_ns", zero) - t.get("bql_ns", zero),
        "blocked, not on a lock": t.get("other_blocked_ns", zero),
        "runnable, waiting for a CPU": t.get("runnable_ns", zero),
        "unknown (lost events)": t.get("unknown_ns", zero),
    }
    colors = [
        "#8fbc8f",
        COMPONENT_COLORS["bql_wait"],
        COMPONENT_COLORS["other_lock_wait"],
        "#4d4d4d",
        "#f2c12e",
        "#d9d9d9",
    ]
    names = [f"{n} [{int(tid)}]" for n, tid in zip(t.get("name", "?"), t["tid"], strict=False)]
    fig = go.Figure()
    for (label, v), color in zip(parts.items(), colors, strict=False):
        if (v > 0).any():
            fig.add_bar(
                y=names,
                x=v / 1e6,
                name=label,
                orientation="h",
                marker_color=color,
                hovertemplate="%{y}: %{x:.1f} ms<extra>" + label + "</extra>",
            )
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=180 + 30 * len(t),
        title={"text": "Where each thread's observed life went", "x": 0, "y": 0.97, "yanchor": "top"},
        xaxis_title="ms (first to last event of the thread)",
        yaxis_autorange="reversed",
        margin={"t": 100},
    )
    life = t.get("time_ns", zero).replace(0, 1)
    table = pd.DataFrame(
        {
            "thread": names,
            "life ms": t.get("time_ns", zero) / 1e6,
            **{f"{k} %": (100 * v / life).round(2) for k, v in parts.items()},
        }
    )
    return fig, table
