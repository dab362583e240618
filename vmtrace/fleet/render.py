"""The fleet view as terminal tables and as one offline HTML page.

Renderers only format a ``FleetReport``; the page is assembled with the
single-trace report's ``write_html`` and ``Section`` (plotly inlined once,
nothing fetched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from rich.console import Console
from rich.table import Table

from vmtrace.render.figures import TEMPLATE
from vmtrace.render.html import Html, Section, write_html
from vmtrace.render.palette import COMPONENT_COLORS, COMPONENT_LABELS

from . import histograms as hist
from .report import FleetReport
from .summary import COMPONENTS

__all__ = ["render_fleet", "write_fleet_html", "merged_histogram_figure", "trace_box_figure", "group_figure"]

# Bottom to top, the order of an exit; lock wait split into the BQL's and the rest.
_STACK = ("guest", "vmexit", "emulator", "dispatch", "device", "bql_wait", "other_lock_wait")


def _cycles(v: Any) -> str:  # a numeric cell: a number, NaN, NA or None
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return "-"
    return f"{float(v):,.0f}"


def _text(v: Any) -> str:
    """A cell of a string column: pandas gives a missing value as NaN or NA."""
    return "-" if v is None or (not isinstance(v, str) and bool(pd.isna(v))) else str(v)


def _pct(v: Any) -> str:  # a numeric cell, as _cycles
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return "-"
    return f"{100 * float(v):.1f}%"


def _headline(r: FleetReport) -> str:
    failed = f", {len(r.failed):,} failed" if len(r.failed) else ""
    lost = f"{r.lost_events:,} events lost" if r.lost_events else "no events lost"
    return (
        f"{r.traces:,} traces ({r.summarised:,} summarised{failed}), {r.exits:,} exits, {lost}; "
        "cycles per exit, means weighted by exits, quantiles from merged histograms"
    )


def render_fleet(r: FleetReport, console: Console | None = None) -> None:
    """Tables: the fleet's components, the groups, the top traces by BQL
    wait, and the traces that failed."""
    console = console or Console()
    console.print(_headline(r))
    t = Table(title="fleet: cycles per exit", title_justify="left")
    for c in ("component", "mean", "share", "p50 ~", "p99 ~"):
        t.add_column(c, justify="left" if c == "component" else "right", no_wrap=True)
    for comp in r.overall.to_dict(orient="records"):
        t.add_row(
            str(comp["component"]),
            _cycles(comp["mean"]),
            _pct(comp["share"]),
            _cycles(comp["p50"]),
            _cycles(comp["p99"]),
        )
    console.print(t)
    if len(r.groups):
        g = Table(title=f"by {', '.join(r.by)}: mean cycles per exit", title_justify="left")
        for c in [*r.by, "traces", "exits", *COMPONENTS, "BQL share", "worst", "p50 ~", "p99 ~"]:
            g.add_column(c, justify="left" if c in r.by else "right", no_wrap=True)
        for row in r.groups.to_dict(orient="records"):
            g.add_row(
                *[_text(row[b]) for b in r.by],
                f"{row['traces']:,}",
                f"{row['exits']:,}",
                *[_cycles(row[c]) for c in COMPONENTS],
                _pct(row["bql_share"]),
                _pct(row["max_bql_share"]),
                _cycles(row["p50"]),
                _cycles(row["p99"]),
            )
        console.print(g)
    if len(r.top):
        tp = Table(title="top traces by BQL wait (mean cycles per exit)", title_justify="left")
        for c in ("trace", "host", "VMM", "vCPUs", "workload", "exits", "BQL wait", "BQL share", "total", "top lock"):
            tp.add_column(c, justify="right" if c in ("vCPUs", "exits", "BQL wait", "BQL share", "total") else "left")
        for row in r.top.to_dict(orient="records"):
            vmm = " ".join(_text(row.get(k)) for k in ("vmm", "vmm_version", "locking") if _text(row.get(k)) != "-")
            tp.add_row(
                _text(row["path"]),
                _text(row.get("host")),
                vmm or "-",
                _text(row.get("vcpus")),
                _text(row.get("workload")),
                f"{row['exits']:,}",
                _cycles(row["bql_wait_mean"]),
                _pct(row["bql_share"]),
                _cycles(row["total_mean"]),
                _text(row.get("top_lock")),
            )
        console.print(tp)
    for path, error in zip(r.failed["path"], r.failed["error"], strict=True):
        console.print(f"failed: {path}: {error}", markup=False, highlight=False)


# ----------------------------------------------------------------------------
# Figures


def merged_histogram_figure(r: FleetReport) -> go.Figure:
    """One step line per component: the fleet's share of exits per bucket
    (log-spaced cycles), from the merged histograms."""
    fig = go.Figure()
    lows = np.array([hist.bucket_bounds(i)[0] for i in range(hist.N_BUCKETS)])
    lows[0] = 0.5  # the [0, 1) bucket sits at half a cycle on a log axis
    for c in COMPONENTS:
        counts = r.merged[c]
        n = int(counts.sum())
        if n == 0 or counts[0] == n:  # absent from every exit (device without --precise, say)
            continue
        share = counts / n * 100
        nz = np.flatnonzero(counts[1:]) + 1
        lo, hi = int(nz[0]), min(int(nz[-1]) + 1, hist.N_BUCKETS - 1)
        x = np.append(lows[lo:hi], lows[hi])
        y = np.append(share[lo:hi], share[hi - 1])
        fig.add_scatter(
            x=x,
            y=y,
            mode="lines",
            line_shape="hv",
            name=COMPONENT_LABELS.get(c, c),
            line={"color": COMPONENT_COLORS.get(c, "#222"), "dash": "dot" if c == "bql_wait" else None},
            hovertemplate="≥ %{x:,.0f} cycles: %{y:.2f}% of exits<extra>" + c + "</extra>",
        )
    fig.update_layout(
        template=TEMPLATE,
        height=400,
        xaxis_type="log",
        title={
            "text": "Every exit of the fleet: cycles per component (merged histograms; an "
            "exit without the component counts in its share, undrawn)",
            "x": 0,
        },
        xaxis_title="cycles",
        yaxis_title="% of the fleet's exits",
        margin={"t": 90},
    )
    return fig


def trace_box_figure(r: FleetReport, group: str | None = None) -> go.Figure:
    """One box per component (per group when ``group`` is given): the
    distribution across traces of each trace's mean cycles per exit."""
    fig = go.Figure()
    rows = r.rows
    labels = (
        pd.Series([_text(v) for v in rows[group]], dtype=object)
        if group is not None
        else pd.Series(["traces"] * len(rows), dtype=object)
    )
    for key in pd.unique(labels):
        sel = rows[(labels == key).to_numpy()]
        xs, ys, texts = [], [], []
        for c in COMPONENTS:
            v = sel[f"{c}_mean"].to_numpy(dtype=np.float64)
            xs += [c] * len(v)
            ys += list(v)
            texts += list(sel["path"].astype(str))
        fig.add_box(
            x=xs,
            y=ys,
            text=texts,
            boxpoints="all",
            jitter=0.4,
            pointpos=0,
            marker={"size": 4},
            name=str(key) if group is None else f"{group}={key}",
            hovertemplate="%{text}<br>%{x}: %{y:,.0f} cycles per exit<extra></extra>",
        )
    fig.update_layout(
        template=TEMPLATE,
        height=420,
        boxmode="group",
        yaxis_type="log",
        title={"text": "Per trace: mean cycles per exit of each component (one point per trace)", "x": 0},
        yaxis_title="mean cycles per exit (log)",
        margin={"t": 90},
    )
    return fig


def group_figure(r: FleetReport) -> go.Figure:
    """Stacked mean cycles per exit by group (exit-weighted)."""
    fig = go.Figure()
    g = r.groups
    labels = [", ".join(f"{b}={_text(row[b])}" for b in r.by) for row in g.to_dict(orient="records")]
    values = g.assign(other_lock_wait=(g["lock_wait"] - g["bql_wait"]).clip(lower=0))
    for c in _STACK:
        fig.add_bar(
            x=labels,
            y=values[c],
            name=COMPONENT_LABELS.get(c, c),
            marker_color=COMPONENT_COLORS.get(c),
            hovertemplate="%{x}<br>" + c + ": %{y:,.0f} cycles<extra></extra>",
        )
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=420,
        title={"text": f"Mean cycles per exit by {', '.join(r.by)}", "x": 0},
        yaxis_title="cycles per exit",
        margin={"t": 90},
    )
    return fig


def _overall_table(r: FleetReport) -> pd.DataFrame:
    o = r.overall
    return pd.DataFrame(
        {
            "component": o["component"],
            "mean": o["mean"],
            "share": [_pct(v) for v in o["share"]],
            "p50 ~": o["p50"],
            "p50 bucket": [f"{_cycles(a)}-{_cycles(b)}" for a, b in zip(o["p50_low"], o["p50_high"], strict=True)],
            "p99 ~": o["p99"],
            "p99 bucket": [f"{_cycles(a)}-{_cycles(b)}" for a, b in zip(o["p99_low"], o["p99_high"], strict=True)],
        }
    )


def write_fleet_html(r: FleetReport, path: Path | str, source: str = "") -> Path:
    """The fleet view as one self-contained HTML page."""
    import html

    header = Html(
        f'<p class="meta">{html.escape(_headline(r))}</p>'
        + (f'<p class="meta">fleet table: {html.escape(source)}</p>' if source else "")
    )
    sections = [
        Section(
            "Fleet",
            [merged_histogram_figure(r), _overall_table(r)],
            intro="Every exit of every summarised trace. Histogram buckets are the same on every trace "
            "(log-spaced, 2^(1/4) apart), so merging is exact; a quantile is the bucket holding it.",
        ),
        Section(
            "Across traces",
            [trace_box_figure(r, r.by[0] if r.by else None)],
            intro="Each point is one trace's mean; the boxes show how traces differ.",
        ),
    ]
    if len(r.groups):
        groups = r.groups.copy()
        for c in ("bql_share", "max_bql_share"):
            groups[c] = [_pct(v) for v in groups[c]]
        sections.append(Section(f"By {', '.join(r.by)}", [group_figure(r), groups]))
    if len(r.top):
        top = r.top.copy()
        top["bql_share"] = [_pct(v) for v in top["bql_share"]]
        sections.append(
            Section("Top traces by BQL wait", [top], intro="Mean BQL wait per exit (cycles), longest first.")
        )
    if len(r.failed):
        sections.append(Section("Failed traces", [r.failed]))
    return write_html(sections, path, title="vmtrace fleet", header=header)
