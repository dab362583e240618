"""The aggregate view's page section (a ``record --aggregate`` trace):
exits per second and mean cycles per component over time, then the
recording's rows.  Its terminal form is ``vmtrace.top.series.render_aggregate``,
beside the live view that shares it."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from vmtrace.render.figures import TEMPLATE
from vmtrace.render.html import Html, Section
from vmtrace.render.palette import COMPONENT_COLORS
from vmtrace.top.boundaries import SHOWN
from vmtrace.top.series import AggregateView

__all__ = ["aggregate_section"]


def aggregate_section(report: Any, limits: Any) -> Section | None:
    """The section of ``vmtrace.report.VIEWS``' aggregate view (None for a
    trace of events)."""
    from vmtrace.top.series import is_aggregate

    if not is_aggregate(report.trace):
        return None
    view: AggregateView = report["aggregate"]
    s = view.series
    fig = go.Figure()
    for c in ("vmexit", "emulator", "dispatch", "lock_wait"):
        fig.add_bar(x=s["t_s"], y=s[c], name=c, marker_color=COMPONENT_COLORS.get(c))
    fig.add_scatter(x=s["t_s"], y=s["exits_s"], name="exits/s", yaxis="y2", mode="lines")
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=420,
        xaxis_title="seconds",
        yaxis_title="mean cycles per exit",
        yaxis2={"title": "exits/s", "overlaying": "y", "side": "right"},
        title={"text": "Cycles per exit by component, per interval", "x": 0},
    )
    rows = view.rows.copy()
    keep = ["vcpu", "kind", "addr", "exits", *[c for n in SHOWN for c in (n, f"{n}_p99")], "total"]
    rows = rows[keep].round(0)
    items: list[Any] = [fig, rows]
    share = view.whole.bql_share()
    items.append(
        Html(
            f"<p>BQL share of futex wait: {'unknown' if share is None else f'{share:.1f}%'}; "
            f"{view.whole.counters.dropped} cycles or waits dropped by full maps.</p>"
        )
    )
    items.append(view.whole.futex_words())
    return Section(
        "Aggregate (in-kernel, per interval)",
        items,
        intro=f"{len(s)} snapshots of {view.interval_s:g}s recorded by record --aggregate: counters, "
        "sums and log2 histograms kept in the kernel; p99 within a factor sqrt(2).",
    )
