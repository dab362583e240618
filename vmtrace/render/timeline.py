"""The timeline view: every thread's states over the trace, as the page's
section and its two figures (the whole trace binned, then every span of a
window as a Gantt chart).

Lays out ``analyses.timeline.timeline``'s spans; computes nothing.  The
view has no terminal form (``vmtrace export --perfetto`` writes every
span), so this module imports plotly directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vmtrace.analyses.intervals import overlap_sum
from vmtrace.analyses.timeline import STATES, display_state
from vmtrace.schema import ROLE_OTHER, ROLE_VCPU, THREAD_ROLES, role_rank

from .figures import TEMPLATE
from .html import PageLimits, Section
from .palette import COMPONENT_COLORS, COMPONENT_LABELS

if TYPE_CHECKING:
    from vmtrace.report import Report

__all__ = [
    "timeline_section",
    "timeline_overview",
    "timeline_detail",
    "detail_window",
    "thread_labels",
    "STATE_COLORS",
    "STATE_LABELS",
]


#: A span's colour and name by its display state: the parts of an exit keep
#: the breakdown's (a lock wait other than the BQL its lighter red).
STATE_COLORS: dict[str, str] = {
    **{k: v for k, v in COMPONENT_COLORS.items() if k in STATES},
    "lock_wait": COMPONENT_COLORS["other_lock_wait"],
    "running": "#8fbc8f",
    "unattributed": "#d9d9d9",
    "off-CPU runnable": "#f2c12e",
    "off-CPU blocked": "#4d4d4d",
}
STATE_LABELS: dict[str, str] = {
    **{k: COMPONENT_LABELS.get(k, k) for k in STATES},
    "lock_wait": COMPONENT_LABELS["other_lock_wait"],
    "running": "running (not a vCPU)",
    "unattributed": "vCPU outside a complete exit",
    "off-CPU runnable": "off-CPU, runnable (waiting for a CPU)",
    "off-CPU blocked": "off-CPU, blocked",
}
_DISPLAY_ORDER = [*STATES, "off-CPU runnable", "off-CPU blocked"]


def timeline_section(report: Report, limits: PageLimits) -> Section:
    """The page's timeline: the whole trace binned, then every span of a
    window around the middle of the summarised exits (``limits``)."""
    trace, spans, b = report.trace, report["timeline"], report["bql_breakdown"]
    max_spans, bins = limits.max_spans, limits.bins
    if spans.empty:
        return Section("Timeline", ["No thread has events to lay out."])
    if len(b.exits):
        # The middle of the exits the summary covers (the timed loop of a
        # benchmark), where the behaviour the numbers describe is.
        center = int(b.exits["start_ns"].median())
    else:
        center = int((spans["start_ns"].min() + spans["end_ns"].max()) // 2)
    t0 = int(trace.meta.get("start_ns") or spans["start_ns"].min())
    window = detail_window(spans, center, max_spans)
    shown = int(((spans["end_ns"] > window[0]) & (spans["start_ns"] < window[1])).sum())
    whole = (int(spans["end_ns"].max()) - int(spans["start_ns"].min())) / 1e6
    off = display_state(spans).str.startswith("off-CPU")
    intro = (
        f"{len(spans):,} spans over {whole:,.1f} ms. The first chart summarises all of them: per thread, the "
        f"share of each state in {bins} equal time bins. The second shows every one of the {shown:,} spans "
        f"in a {(window[1] - window[0]) / 1e6:.2f} ms window starting {(window[0] - t0) / 1e6:,.1f} ms into "
        f"the recording (the middle of the summarised exits); the page carries at most {max_spans:,} spans "
        f"so it stays small. Off-CPU time ({100 * off.mean():.1f}% of spans) is drawn over the state it "
        f"interrupted; hover a span for its exit, lock or device. `vmtrace export --perfetto` writes every "
        f"span for Perfetto."
    )
    return Section(
        "Timeline",
        [timeline_overview(spans, trace.threads, t0, bins), timeline_detail(spans, trace.threads, window)],
        intro=intro,
    )


# A vCPU's thread name already says what it is (CPU 0/KVM), and "other" says
# nothing: only the remaining roles earn a label beside the name.
_UNLABELLED_ROLES = (ROLE_VCPU, ROLE_OTHER)


def _column(trace_threads: pd.DataFrame, col: str) -> dict[int, Any]:
    """tid -> the thread's ``col`` value, as stored (None, NA and "" kept)."""
    tids = trace_threads["tid"].to_numpy(dtype=np.int64).tolist()
    return dict(zip(tids, trace_threads[col].tolist(), strict=True))


def thread_labels(trace_threads: pd.DataFrame, tids: Iterable[int]) -> dict[int, str]:
    """A label per tid: ``CPU 0/KVM [15080]``; the threads that are not
    vCPUs get their role beside, ``python (main loop) [15077]``, ``IO
    iothread0 (IOThread) [15079]``, so the thread that services a queue is
    found at a glance."""
    names, roles = _column(trace_threads, "name"), _column(trace_threads, "role")
    labels = {}
    for tid in (int(t) for t in tids):
        name = str(names[tid]) if tid in names and names[tid] else "?"
        role = str(roles.get(tid))
        label = THREAD_ROLES.get(role) if tid in roles and role not in _UNLABELLED_ROLES else None
        shown = name if label is None else f"{name} ({label})"
        labels[tid] = f"{shown} [{tid}]"
    return labels


def _thread_rank(role: object) -> int:
    """``role_rank``, except that a role outside the table ranks with "other"
    (both are threads the recorder could not place), before a thread the
    trace does not describe at all (``len(THREAD_ROLES)``)."""
    return min(role_rank(role), role_rank(ROLE_OTHER))


def _thread_order(trace_threads: pd.DataFrame, tids: Iterable[int]) -> list[int]:
    roles, vcpus = _column(trace_threads, "role"), _column(trace_threads, "vcpu")
    info = {t: (_thread_rank(roles[t]), int(v) if pd.notna(v) else 0) for t, v in vcpus.items()}
    return sorted((int(t) for t in tids), key=lambda t: (*info.get(t, (len(THREAD_ROLES), 0)), t))


def timeline_overview(spans: pd.DataFrame, trace_threads: pd.DataFrame, t0_ns: int, bins: int = 400) -> go.Figure:
    """The whole trace at a glance: per thread, the share of each state in
    each of ``bins`` equal time bins (stacked areas, one row per thread)."""
    tids = _thread_order(trace_threads, spans["tid"].unique())
    labels = thread_labels(trace_threads, tids)
    lo, hi = int(spans["start_ns"].min()), int(spans["end_ns"].max())
    edges = np.linspace(lo, hi, bins + 1).astype(np.int64)
    b_s, b_e = edges[:-1], edges[1:]
    width = np.maximum(b_e - b_s, 1)
    x_ms = (b_s - t0_ns) / 1e6
    disp = display_state(spans)
    fig = make_subplots(
        rows=len(tids),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=min(0.05, 0.4 / len(tids)),
        subplot_titles=[labels[t] for t in tids],
    )
    shown: set[str] = set()
    for row, tid in enumerate(tids, start=1):
        mine = (spans["tid"] == tid).to_numpy()
        for state in _DISPLAY_ORDER:
            sel = mine & (disp == state).to_numpy()
            if not sel.any():
                continue
            occ = overlap_sum(b_s, b_e, spans["start_ns"].to_numpy()[sel], spans["end_ns"].to_numpy()[sel])
            fig.add_scatter(
                x=x_ms,
                y=np.round(occ / width * 100, 2).astype(np.float32),
                mode="lines",
                line_shape="hv",
                line={"width": 0},
                fillcolor=STATE_COLORS[state],
                stackgroup=f"t{tid}",
                name=STATE_LABELS[state],
                legendgroup=state,
                showlegend=state not in shown,
                hovertemplate="%{x:.1f} ms: %{y:.0f}%<extra>" + STATE_LABELS[state] + "</extra>",
                row=row,
                col=1,
            )
            shown.add(state)
        fig.update_yaxes(range=[0, 100], showticklabels=False, row=row, col=1)
    fig.update_annotations(font_size=11, x=0, xanchor="left")
    fig.update_xaxes(title_text="ms since recording started", row=len(tids), col=1)
    fig.update_layout(
        template=TEMPLATE,
        height=140 + 95 * len(tids),
        hovermode="x",
        title={"text": f"Share of each state per thread, over {bins} time bins", "x": 0, "y": 0.995, "yanchor": "top"},
        margin={"t": 110},
    )
    return fig


def detail_window(spans: pd.DataFrame, center_ns: int, max_spans: int) -> tuple[int, int]:
    """A window around ``center_ns`` holding about ``max_spans`` spans of
    all threads together: the Gantt chart shows every span inside it."""
    starts = np.sort(spans["start_ns"].to_numpy())
    lo_all, hi_all = int(spans["start_ns"].min()), int(spans["end_ns"].max())
    if len(starts) <= max_spans:
        return lo_all, hi_all
    i = int(np.searchsorted(starts, center_ns))
    a = max(i - max_spans // 2, 0)
    b = min(a + max_spans, len(starts) - 1)
    a = max(b - max_spans, 0)
    return int(starts[a]), int(starts[b])


def timeline_detail(spans: pd.DataFrame, trace_threads: pd.DataFrame, window: tuple[int, int]) -> go.Figure:
    """Gantt chart of every span inside ``window`` (ns), one row per thread,
    coloured by state (off-CPU first), hover shows what it was."""
    w0, w1 = window
    sel = spans[(spans["end_ns"] > w0) & (spans["start_ns"] < w1)]
    tids = _thread_order(trace_threads, sel["tid"].unique())
    labels = thread_labels(trace_threads, tids)
    row_of = {t: i for i, t in enumerate(tids)}
    start = np.maximum(sel["start_ns"].to_numpy(), w0)
    end = np.minimum(sel["end_ns"].to_numpy(), w1)
    disp = display_state(sel).to_numpy()
    rows = sel["tid"].map(row_of).to_numpy(dtype=np.int16)
    detail = sel["detail"].astype(str).to_numpy()
    if "holder" in sel:
        # A BQL wait says who held the lock meanwhile, doing what.
        holder = sel["holder"].astype(str).to_numpy()
        detail = np.where(
            holder != "", np.char.add(np.char.add(detail.astype(str), "; held by "), holder.astype(str)), detail
        )
    fig = go.Figure()
    for state in _DISPLAY_ORDER:
        m = disp == state
        if not m.any():
            continue
        fig.add_bar(
            y=rows[m],
            x=((end[m] - start[m]) / 1e3).astype(np.float32),
            base=np.round((start[m] - w0) / 1e3, 3),
            orientation="h",
            width=0.8,
            marker={"color": STATE_COLORS[state], "line": {"width": 0}},
            name=STATE_LABELS[state],
            text=detail[m],
            textposition="none",
            hovertemplate="%{x:.2f} µs  %{text}<extra>" + STATE_LABELS[state] + "</extra>",
        )
    # Open zoomed on the window's first ~300 spans, where single exits
    # are wide enough to read; double-click shows the whole window.
    first = np.sort(start)
    view_end = (first[min(300, len(first) - 1)] - w0) / 1e3 if len(first) else (w1 - w0) / 1e3
    fig.update_layout(
        template=TEMPLATE,
        barmode="overlay",
        bargap=0.1,
        height=140 + 36 * max(len(tids), 1),
        title={
            "text": f"Every span in a {(w1 - w0) / 1e6:.2f} ms window (double-click to see all of it)",
            "x": 0,
            "y": 0.98,
            "yanchor": "top",
        },
        xaxis={"title": "µs since the window's start", "range": [0, max(view_end, 1.0)]},
        margin={"t": 110},
        yaxis={"tickvals": list(range(len(tids))), "ticktext": [labels[t] for t in tids], "autorange": "reversed"},
    )
    return fig
