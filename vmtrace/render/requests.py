"""The requests view (``report --requests``): each virtio-blk request from
its kick to its completion, by phase and by the role of the thread that
serviced the queue, as a terminal report, a page section and the section's
two figures.

Formats an ``analyses.requests.Requests``; computes nothing.  The page's
parts import plotly when they run, not with this module: a terminal report
should not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console

from vmtrace.analyses.requests import PHASES, request_timeline
from vmtrace.schema import THREAD_ROLES

from .palette import COMPONENT_COLORS
from .text import fmt_dur, fmt_pct, grid, lost_line

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vmtrace.report import Report

    from .html import PageLimits, Section

__all__ = [
    "render_requests",
    "requests_section",
    "role_label",
    "PHASE_COLORS",
    "PHASE_LABELS",
    "request_phases_figure",
    "request_timeline_figure",
]


#: One colour per phase of a virtio-blk request (``analyses.requests.PHASES``);
#: lock waits keep the breakdown's reds, disk I/O the device's purple.
PHASE_COLORS: dict[str, str] = {
    "notify": "#1f77b4",
    "bql_wait": COMPONENT_COLORS["bql_wait"],
    "queued": "#c7c7c7",
    "processing": COMPONENT_COLORS["dispatch"],
    "disk": COMPONENT_COLORS["device"],
    "lock_wait": COMPONENT_COLORS["other_lock_wait"],
    "tail": "#bcbd22",
    "irq": "#17becf",
}
PHASE_LABELS: dict[str, str] = {
    "notify": "notify (kick -> pickup)",
    "bql_wait": "BQL wait",
    "queued": "queued behind the batch",
    "processing": "processing (pop -> push)",
    "disk": "disk I/O",
    "lock_wait": "other lock wait",
    "tail": "tail (push -> interrupt)",
    "irq": "completion interrupt",
}


# The terminal table's row names: "queued" by the points that bound it, as
# the rows around it are; the last row is the whole request.
_PHASE_ROWS = {**PHASE_LABELS, "queued": "queued (pickup -> pop)", "total": "total"}


def role_label(role: Any) -> str:
    """The name a reader knows a thread role by: main -> main loop ..."""
    return THREAD_ROLES.get(str(role), str(role))


def render_requests(rq: Any, console: Console | None = None) -> None:
    """The ``--requests`` view (``analyses.requests.Requests``): per role of
    the thread that serviced the queue, each phase of a request's time."""
    console = console or Console()
    source = "the VMM's request probes" if rq.source == "probes" else "kernel events only (no request probes)"
    port = f"{rq.notify_port:#x}" if rq.notify_port is not None else "unknown"
    console.print(f"[bold]vmtrace requests[/]  virtio-blk, per request  source: {source}  notify port: {port}")
    lost_line(rq.lost_events, rq.lost_markers, console)
    if rq.source == "probes":
        for r in rq.by_role.to_dict("records"):
            role = r["role"]
            console.print(
                f"[bold]{role_label(role)}[/] ({r['threads']}): {r['requests']:,} requests in {r['batches']:,} "
                f"batches ({r['per_batch']:.1f} per batch); read {r['read']:,}, write {r['write']:,}, "
                f"flush {r['flush']:,}, other {r['other']:,}"
            )
            console.print(
                f"  BQL on the request path: {r['bql_taken']:,} of {r['requests']:,} requests "
                f"({r['bql_waited']:,} with a wait), held {fmt_dur(r['bql_held_mean_ns'])} per request while "
                f"processed; kick known for {r['notify_known']:,}; completion interrupts {r['irq_raised']:,}; "
                f"runnable without a CPU {fmt_dur(r['wait_cpu_mean_ns'])} per request"
            )
            ph = rq.phases[rq.phases["role"] == role]
            rows = []
            for p in ph.to_dict("records"):
                rows.append(
                    [
                        _PHASE_ROWS.get(p["phase"], p["phase"]),
                        fmt_dur(p["mean_ns"]),
                        fmt_pct(p["share"]),
                        fmt_dur(p["p50_ns"]),
                        fmt_dur(p["p90_ns"]),
                        fmt_dur(p["p99_ns"]),
                        f"{int(p['nonzero']):,}",
                    ]
                )
            console.print(
                grid(
                    f"{role_label(role)}: each request from its kick to its completion, by phase",
                    [
                        ("phase", "l"),
                        ("mean", "r"),
                        ("share", "r"),
                        ("p50", "r"),
                        ("p90", "r"),
                        ("p99", "r"),
                        ("requests with it", "r"),
                    ],
                    rows,
                )
            )
        if rq.excluded_lost:
            console.print(f"[yellow]{rq.excluded_lost:,} requests overlapping lost events left out[/]")
    else:
        rows = []
        for r in rq.notification_summary().to_dict("records"):
            woke = r["thread"] if pd.isna(r.get("role")) else f"{r['thread']} ({role_label(r['role'])})"
            rows.append(
                [
                    woke,
                    f"{int(r['kicks']):,}",
                    fmt_dur(r.get("wakeup_p50_ns")),
                    fmt_dur(r.get("wakeup_p99_ns")),
                    fmt_dur(r.get("oncpu_p50_ns")),
                    fmt_dur(r.get("oncpu_p99_ns")),
                ]
            )
        console.print(
            grid(
                "kicks of the queue-notify port, by the thread the ioeventfd woke",
                [
                    ("woken thread", "l"),
                    ("kicks", "r"),
                    ("-> wakeup p50", "r"),
                    ("p99", "r"),
                    ("-> on CPU p50", "r"),
                    ("p99", "r"),
                ],
                rows,
            )
        )
        disk = rq.disk_wait_summary()
        if len(disk):
            rows = [
                [
                    role_label(r["role"]),
                    str(int(r["threads"])),
                    f"{int(r['sleeps']):,}",
                    fmt_dur(r["p50_ns"]),
                    fmt_dur(r["p90_ns"]),
                    fmt_dur(r["p99_ns"]),
                ]
                for r in disk.to_dict("records")
            ]
            console.print(
                grid(
                    "uninterruptible sleeps (disk I/O) of non-vCPU threads",
                    [("role", "k"), ("threads", "r"), ("sleeps", "r"), ("p50", "r"), ("p90", "r"), ("p99", "r")],
                    rows,
                )
            )
    for note in rq.notes:
        console.print(f"[dim]note: {note}[/]")


# ----------------------------------------------------------------------------
# The page: the section and its figures


def requests_section(report: Report, limits: PageLimits, shown: int = 40) -> Section | None:
    """virtio-blk requests by phase, per role of the servicing thread; None
    for a trace with no virtio-blk activity (most traces)."""
    from .html import Section

    rq, _ = report.get("requests")
    if rq is None:
        return None
    intro = (
        "Each virtio-blk request from the guest's kick (its write to the queue-notify port, an ioeventfd) to "
        "its completion, split into phases that add up to its total, per role of the thread that serviced "
        "the queue: the main loop under the BQL (--blk bql) or an IOThread (dataplane). "
    )
    notes = [f"note: {n}" for n in rq.notes]
    if rq.source != "probes":
        return Section(
            "Requests", [_us_table(rq.notification_summary()), _us_table(rq.disk_wait_summary()), *notes], intro=intro
        )
    ph = rq.phases
    table = pd.DataFrame(
        {
            "role": ph["role"],
            "phase": ph["phase"],
            "requests with it": ph["nonzero"],
            "mean µs": ph["mean_ns"] / 1e3,
            "share %": (100 * ph["share"]).round(1),
            "p50 µs": ph["p50_ns"] / 1e3,
            "p90 µs": ph["p90_ns"] / 1e3,
            "p99 µs": ph["p99_ns"] / 1e3,
        }
    )
    roles = rq.by_role.drop(columns=["bql_held_mean_ns", "wait_cpu_mean_ns"]).assign(
        **{
            "BQL held µs (mean)": rq.by_role["bql_held_mean_ns"] / 1e3,
            "runnable, no CPU µs (mean)": rq.by_role["wait_cpu_mean_ns"] / 1e3,
        }
    )
    reqs = rq.requests[~rq.requests["lost"]]
    first = max(len(reqs) // 2 - shown // 2, 0)
    spans = request_timeline(rq, first=int(reqs.index[first]) if len(reqs) else 0, count=shown)
    items: list[Any] = [request_phases_figure(ph), roles, table]
    if len(spans):
        items.append(request_timeline_figure(spans, rq.requests))
    return Section("Requests", items + notes, intro=intro + f"Phases in order: {', '.join(PHASES)}.")


def _us_table(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns={c: c.replace("_ns", " µs") for c in df.columns if c.endswith("_ns")}).assign(
        **{c.replace("_ns", " µs"): df[c] / 1e3 for c in df.columns if c.endswith("_ns")}
    )


def request_phases_figure(phases: pd.DataFrame, stat: str = "mean_ns") -> go.Figure:
    """Per role of the servicing thread, the mean request split by phase
    (µs, stacked in the order a request goes through them), with the p50
    and p99 of the total beside it."""
    import plotly.graph_objects as go

    from .figures import TEMPLATE

    roles = list(dict.fromkeys(phases["role"]))
    labels = [THREAD_ROLES.get(r, r) for r in roles]
    fig = go.Figure()
    for p in PHASES:
        v = [float(phases.loc[(phases["role"] == r) & (phases["phase"] == p), stat].sum()) / 1e3 for r in roles]
        if not any(v):
            continue
        fig.add_bar(
            y=labels,
            x=v,
            name=PHASE_LABELS[p],
            orientation="h",
            marker_color=PHASE_COLORS[p],
            hovertemplate="%{y}: %{x:.1f} µs<extra>" + PHASE_LABELS[p] + "</extra>",
        )
    tot = phases[phases["phase"] == "total"].set_index("role")
    text = [
        f"p50 {tot.loc[r, 'p50_ns'] / 1e3:,.0f} µs, p99 {tot.loc[r, 'p99_ns'] / 1e3:,.0f} µs" if r in tot.index else ""
        for r in roles
    ]
    fig.add_scatter(
        y=labels,
        x=[float(tot.loc[r, "mean_ns"]) / 1e3 if r in tot.index else 0 for r in roles],
        mode="text",
        text=text,
        textposition="middle right",
        showlegend=False,
        hoverinfo="skip",
    )
    widest = max([float(tot.loc[r, "mean_ns"]) / 1e3 for r in roles if r in tot.index] or [1.0])
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=200 + 60 * len(roles),
        title={
            "text": "Mean request by phase, per role of the thread that serviced the queue",
            "x": 0,
            "y": 0.97,
            "yanchor": "top",
        },
        legend={"traceorder": "normal"},
        # Room on the right for the percentiles written after each bar.
        xaxis={"title": "µs from the kick to completion", "range": [0, widest * 1.45]},
        yaxis_autorange="reversed",
        margin={"t": 110},
    )
    return fig


def request_timeline_figure(spans: pd.DataFrame, requests: pd.DataFrame) -> go.Figure:
    """Gantt chart of a few requests (``analyses.requests.request_timeline``):
    one row per request, its phases where they happened; the disk and lock
    waits inside a request are drawn over the segment they interrupt."""
    import plotly.graph_objects as go

    from .figures import TEMPLATE

    if spans.empty:
        return go.Figure()
    t0 = int(spans["start_ns"].min())
    reqs = list(dict.fromkeys(spans["req"]))
    row_of = {r: i for i, r in enumerate(reqs)}
    role = requests["role"].to_dict()
    batch = requests["batch"].to_dict()
    pos = requests["pos"].to_dict()
    ticks = [f"{THREAD_ROLES.get(role[r], role[r])} batch {batch[r]} #{pos[r]}" for r in reqs]
    fig = go.Figure()
    # Segments first, then what interrupts them, so overlay mode paints those on top.
    for p in ("notify", "queued", "processing", "tail", "irq", "disk", "bql_wait", "lock_wait"):
        m = (spans["phase"] == p).to_numpy()
        if not m.any():
            continue
        sub = spans[m]
        fig.add_bar(
            y=sub["req"].map(row_of).to_numpy(),
            x=((sub["end_ns"] - sub["start_ns"]) / 1e3).to_numpy(),
            base=((sub["start_ns"] - t0) / 1e3).round(3).to_numpy(),
            orientation="h",
            width=0.8,
            marker={"color": PHASE_COLORS[p], "line": {"width": 0}},
            name=PHASE_LABELS[p],
            hovertemplate="%{x:.1f} µs<extra>" + PHASE_LABELS[p] + "</extra>",
        )
    fig.update_layout(
        template=TEMPLATE,
        barmode="overlay",
        bargap=0.1,
        height=160 + 18 * len(reqs),
        title={"text": f"{len(reqs)} consecutive requests, phase by phase", "x": 0, "y": 0.99, "yanchor": "top"},
        xaxis_title="µs since the first kick shown",
        margin={"t": 110},
        yaxis={"tickvals": list(range(len(reqs))), "ticktext": ticks, "autorange": "reversed"},
    )
    return fig
