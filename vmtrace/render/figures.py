"""Plotly figures of vmtrace's results, each a pure function of a result.

Figures only: the page around them is ``vmtrace.render.html``.  Every
figure is built to stay small inside a self-contained HTML file (a few
traces, numeric arrays, pre-binned histograms) and uses the same colour for
the same component everywhere, so a reader learns the palette once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vmtrace.analyses.breakdown import Breakdown
from vmtrace.analyses.intervals import overlap_sum
from vmtrace.analyses.timeline import STATES, display_state
from vmtrace.schema import ROLE_OTHER, ROLE_VCPU, THREAD_ROLES, role_rank

from .labels import sweep_python

__all__ = [
    "COMPONENT_COLORS",
    "COMPONENT_LABELS",
    "STATE_COLORS",
    "TEMPLATE",
    "breakdown_figure",
    "cost_histogram",
    "sweep_figure",
    "compare_figure",
    "timeline_overview",
    "timeline_detail",
    "thread_labels",
    "detail_window",
    "PHASE_COLORS",
    "request_phases_figure",
    "request_timeline_figure",
]

#: One colour per component, kept by every chart (kernel parts in blues,
#: the VMM's in warm colours, lock waits in reds).
COMPONENT_COLORS: dict[str, str] = {
    "guest": "#2ca02c",
    "vmexit": "#1f77b4",
    "emulator": "#6baed6",
    "dispatch": "#ff7f0e",
    "device": "#9467bd",
    "lock_wait": "#d62728",
    "bql_wait": "#d62728",
    "other_lock_wait": "#f08080",
    "runnable": "#f2c12e",
}
COMPONENT_LABELS: dict[str, str] = {
    "guest": "guest",
    "vmexit": "vmexit",
    "emulator": "emulator",
    "dispatch": "user exit + dispatch",
    "device": "device",
    "lock_wait": "lock wait",
    "bql_wait": "BQL wait",
    "other_lock_wait": "other lock / futex wait",
    "runnable": "runnable, waiting for a CPU",
}
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

# A template of a few keys: plotly's default one is ~10 kB of JSON repeated
# in every figure of a page.
TEMPLATE = go.layout.Template(
    layout={
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 12, "color": "#222"},
        "paper_bgcolor": "white",
        "plot_bgcolor": "#fbfbfb",
        "xaxis": {"gridcolor": "#e5e5e5", "zerolinecolor": "#bbb", "automargin": True},
        "yaxis": {"gridcolor": "#e5e5e5", "zerolinecolor": "#bbb", "automargin": True},
        "hoverlabel": {"namelength": -1},
        "margin": {"t": 50, "b": 40, "l": 60, "r": 20},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    }
)

# Stacking order of a breakdown bar, bottom to top: the order of the exit.
_STACK = ("guest", "vmexit", "emulator", "dispatch", "device", "bql_wait", "other_lock_wait", "runnable")


def _stack_values(row: dict[str, Any]) -> dict[str, float]:
    get = row.get
    out = {c: float(get(c, 0.0) or 0.0) for c in ("guest", "vmexit", "emulator", "dispatch", "device")}
    lock = float(get("lock_wait", 0.0) or 0.0)
    bql = float(get("bql_wait", 0.0) or 0.0)
    out["bql_wait"] = bql
    out["other_lock_wait"] = max(lock - bql, 0.0)
    out["runnable"] = float(get("runnable", 0.0) or 0.0)
    return out


def breakdown_figure(b: Breakdown) -> go.Figure:
    """Mean cycles per exit, stacked by component, for each vCPU and for all
    of them; the guest's own cycles per operation marked where it was
    measured (a diamond per vCPU, a dashed line for the mean)."""
    rows: list[tuple[str, dict[str, Any]]] = [("all vCPUs", b.components)]
    for r in b.by_vcpu.sort_values("vcpu").to_dict(orient="records"):
        rows.append((f"vCPU {int(r['vcpu'])}", {str(k): v for k, v in r.items()}))
    x = [label for label, _ in rows]
    values = [_stack_values(r) for _, r in rows]
    fig = go.Figure()
    labels = dict(COMPONENT_LABELS)
    if not getattr(b, "guest_separated", True):
        labels["vmexit"] = "guest+vmexit"  # no kvm_entry/kvm_exit: the guest's time is inside
    for c in _STACK:
        y = [v[c] for v in values]
        if c == "guest" and not any(y):
            continue
        fig.add_bar(
            x=x,
            y=y,
            name=labels[c],
            marker_color=COMPONENT_COLORS[c],
            hovertemplate="%{x}: %{y:,.0f} cycles<extra>" + labels[c] + "</extra>",
        )
    bench = b.meta.get("bench") or {}
    per_vcpu = bench.get("per_vcpu") or []
    if b.guest_cycles_per_op:
        gx = ["all vCPUs"] + [f"vCPU {i}" for i in range(len(per_vcpu)) if f"vCPU {i}" in x]
        gy = [b.guest_cycles_per_op] + [float(per_vcpu[i]) for i in range(len(per_vcpu)) if f"vCPU {i}" in x]
        fig.add_scatter(
            x=gx,
            y=gy,
            mode="markers",
            name="guest-measured cycles/op",
            marker={"symbol": "diamond", "size": 11, "color": "black"},
            hovertemplate="%{x}: guest measured %{y:,.0f} cycles/op<extra></extra>",
        )
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=420,
        title={"text": "Mean cycles per userspace exit, by component", "x": 0, "y": 0.98, "yanchor": "top"},
        yaxis_title="cycles per exit",
        margin={"t": 90},
    )
    return fig


def cost_histogram(exits: pd.DataFrame, tsc_hz: int, bins: int = 80) -> go.Figure:
    """Distribution of the cost of one exit (cycles, log scale), one step
    line per vCPU.  Binned here: the page carries ``bins`` numbers per vCPU,
    not one per exit."""
    fig = go.Figure()
    k = tsc_hz / 1e9
    total = exits["total_ns"].to_numpy(dtype=np.float64) * k
    total = total[total > 0]
    title = "Cost of one exit (cycles, log scale)"
    if len(total):
        # The outer 0.1% on each side would stretch the axis over decades
        # with nothing to see; they are counted in the edge bins instead.
        lo, hi = np.log10(np.quantile(total, [0.001, 0.999]))
        edges = np.logspace(lo, hi if hi > lo else lo + 1, bins + 1)
        title += ": 0.1% to 99.9%, the rest counted in the edge bins"
        vcpus = exits["vcpu"].to_numpy(dtype=np.int64)
        total_ns = exits["total_ns"].to_numpy(dtype=np.float64)
        for vcpu in np.unique(vcpus).tolist():
            t = np.clip(total_ns[vcpus == vcpu] * k, edges[0], edges[-1])
            counts, _ = np.histogram(t, bins=edges)
            share = counts / max(len(t), 1) * 100
            fig.add_scatter(
                x=edges,
                y=np.append(share, share[-1]),
                mode="lines",
                line_shape="hv",
                name=f"vCPU {vcpu} ({len(t):,} exits)",
                hovertemplate="≥ %{x:,.0f} cycles: %{y:.2f}% of exits<extra></extra>",
            )
    fig.update_layout(
        template=TEMPLATE,
        height=360,
        xaxis_type="log",
        title={"text": title, "x": 0, "y": 0.98, "yanchor": "top"},
        xaxis_title="cycles per exit (run_enter to the next run_enter)",
        yaxis_title="% of the vCPU's exits",
        margin={"t": 80},
    )
    return fig


def sweep_figure(summary: pd.DataFrame, config_col: str = "config", vcpus_col: str = "vcpus") -> go.Figure:
    """The sweep chart: for each vCPU count, one stacked bar per
    configuration side by side (mean cycles per exit by component), the
    guest-measured cost marked on each bar and the observer effect written
    above it.

    ``summary`` has one row per (``config_col`` str, e.g. "qemu bql";
    ``vcpus_col`` int) with float columns ``guest``, ``vmexit``,
    ``emulator``, ``dispatch``, ``lock_wait``, ``device`` (mean cycles per
    exit), optionally ``bql_wait`` (the BQL's part of ``lock_wait``),
    ``guest_cycles_per_op`` and ``observer_effect`` (traced/untraced ratio;
    NA where not measured), and ``guest_min``/``guest_max`` (the range of
    repeated untraced runs, drawn as an error bar on the guest's mark).
    """
    if summary.empty:
        raise ValueError("the sweep summary has no rows")
    for col in (config_col, vcpus_col):
        if col not in summary:
            raise ValueError(f"the sweep summary lacks column {col!r}")
    df = summary.copy()
    configs = list(dict.fromkeys(df[config_col].astype(str)))
    df["_c"] = pd.Categorical(df[config_col].astype(str), categories=configs)
    df = df.sort_values([vcpus_col, "_c"], kind="stable")
    # Two-level category axis: vCPU count outside, configuration inside, so
    # each bar is labelled and the configurations stand side by side.
    x = [
        [f"{int(v)} vCPU{'s' if int(v) != 1 else ''}" for v in df[vcpus_col]],
        [_with_python(str(r[config_col]), r) for r in df.to_dict(orient="records")],
    ]
    split_bql = "bql_wait" in df and df["bql_wait"].notna().any()
    parts = (
        ["guest", "vmexit", "emulator", "dispatch", "device"]
        + (["bql_wait", "other_lock_wait"] if split_bql else ["lock_wait"])
        + (["runnable"] if "runnable" in df else [])
    )
    values = pd.DataFrame(index=df.index)
    for c in ("guest", "vmexit", "emulator", "dispatch", "device", "lock_wait", "runnable"):
        values[c] = pd.to_numeric(df[c], errors="coerce").fillna(0.0) if c in df else 0.0
    if split_bql:
        values["bql_wait"] = pd.to_numeric(df["bql_wait"], errors="coerce").fillna(0.0).clip(upper=values["lock_wait"])
        values["other_lock_wait"] = values["lock_wait"] - values["bql_wait"]
    fig = go.Figure()
    for c in parts:
        if c == "guest" and not values[c].any():
            continue
        fig.add_bar(
            x=x,
            y=values[c].to_numpy(),
            name=COMPONENT_LABELS[c],
            marker_color=COMPONENT_COLORS[c],
            hovertemplate="%{x}: %{y:,.0f} cycles<extra>" + COMPONENT_LABELS[c] + "</extra>",
        )
    total = values[list(parts)].sum(axis=1).to_numpy()
    guest = pd.to_numeric(df.get("guest_cycles_per_op", pd.Series(np.nan, index=df.index)), errors="coerce")
    has_g = guest.notna().to_numpy()
    if has_g.any():
        g = guest[has_g].to_numpy(dtype=np.float64)
        error_y = None
        if "guest_min" in df and "guest_max" in df:
            lo = pd.to_numeric(df["guest_min"], errors="coerce").to_numpy(dtype=np.float64)[has_g]
            hi = pd.to_numeric(df["guest_max"], errors="coerce").to_numpy(dtype=np.float64)[has_g]
            if np.nan_to_num(hi - lo).any():
                error_y = {
                    "type": "data",
                    "symmetric": False,
                    "array": np.nan_to_num(hi - g),
                    "arrayminus": np.nan_to_num(g - lo),
                    "color": "black",
                    "thickness": 1.5,
                    "width": 6,
                }
        fig.add_scatter(
            x=[list(np.asarray(x[0])[has_g]), list(np.asarray(x[1])[has_g])],
            y=g,
            mode="markers",
            name="guest-measured cycles/op" + (" (median, range of runs)" if error_y else ""),
            marker={"symbol": "line-ew-open", "size": 28, "color": "black", "line": {"width": 3, "color": "black"}},
            error_y=error_y,
            hovertemplate="%{x}: guest measured %{y:,.0f} cycles/op<extra></extra>",
        )
    effect = pd.to_numeric(df.get("observer_effect", pd.Series(np.nan, index=df.index)), errors="coerce")
    has_e = effect.notna().to_numpy()
    if has_e.any():
        top = np.fmax(total, np.nan_to_num(guest.to_numpy(dtype=np.float64), nan=0.0))
        if "guest_max" in df:  # above the range bar too
            top = np.fmax(
                top, np.nan_to_num(pd.to_numeric(df["guest_max"], errors="coerce").to_numpy(dtype=np.float64), nan=0.0)
            )
        fig.add_scatter(
            x=[list(np.asarray(x[0])[has_e]), list(np.asarray(x[1])[has_e])],
            y=top[has_e] * 1.02,
            mode="text",
            text=[f"×{e:.2f}" for e in effect[has_e]],
            textposition="top center",
            name="observer effect (traced / untraced)",
            hovertemplate="%{x}: tracing made the guest's operation %{text} as slow<extra></extra>",
        )
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=480,
        title={
            "text": "Cycles per exit by component, by vCPU count and configuration",
            "x": 0,
            "y": 0.98,
            "yanchor": "top",
        },
        yaxis_title="cycles per exit (mean)",
        margin={"t": 100},
    )
    return fig


def _with_python(config: str, row: Mapping[Any, Any]) -> str:
    """A sweep bar's label: the configuration and the interpreter it ran on
    ("reference unlocked · 3.13.5t"); a "(GIL)" configuration keeps its
    word once."""
    py = sweep_python(row)
    if not py:
        return config
    return f"{config} · {py.removesuffix(' GIL') if '(GIL)' in config else py}"


def compare_figure(table: pd.DataFrame) -> go.Figure:
    """Several traces side by side: one stacked bar per trace (mean cycles
    per exit by component), the guest-measured cost marked, and each bar's
    total change from the first trace written above it.

    ``table`` is ``vmtrace.compare.compare_breakdowns``' result: rows
    indexed by component (``guest`` ... ``device``, ``bql_wait``, ``total``,
    ``guest_cycles_per_op``), one column per trace and, for all but the
    first, ``<label> Δ`` and ``<label> Δ%`` columns (ignored here).
    """
    labels = [c for c in table.columns if not str(c).endswith((" Δ", " Δ%"))]
    fig = go.Figure()
    values = {
        lab: _stack_values({str(k): table.at[k, lab] if k in table.index else 0.0 for k in table.index})
        for lab in labels
    }
    for c in _STACK:
        y = [values[lab][c] for lab in labels]
        if c == "guest" and not any(y):
            continue
        fig.add_bar(
            x=labels,
            y=y,
            name=COMPONENT_LABELS[c],
            marker_color=COMPONENT_COLORS[c],
            hovertemplate="%{x}: %{y:,.0f} cycles<extra>" + COMPONENT_LABELS[c] + "</extra>",
        )
    if "guest_cycles_per_op" in table.index:
        measured = table.loc["guest_cycles_per_op", labels]
        assert isinstance(measured, pd.Series)  # the index names each component once
        g = pd.to_numeric(measured, errors="coerce")
        if g.notna().any():
            fig.add_scatter(
                x=list(g[g.notna()].index),
                y=g[g.notna()].to_numpy(dtype=np.float64),
                mode="markers",
                name="guest-measured cycles/op",
                marker={"symbol": "line-ew-open", "size": 40, "color": "black", "line": {"width": 3, "color": "black"}},
                hovertemplate="%{x}: guest measured %{y:,.0f} cycles/op<extra></extra>",
            )
    totals = [sum(values[lab].values()) for lab in labels]
    if len(labels) > 1 and totals[0]:
        fig.add_scatter(
            x=labels[1:],
            y=[t * 1.02 for t in totals[1:]],
            mode="text",
            text=[f"{100 * (t - totals[0]) / totals[0]:+.0f}%" for t in totals[1:]],
            textposition="top center",
            name=f"total vs {labels[0]}",
            hoverinfo="skip",
        )
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=460,
        title={"text": "Mean cycles per exit by component, per trace", "x": 0, "y": 0.98, "yanchor": "top"},
        yaxis_title="cycles per exit",
        margin={"t": 100},
    )
    return fig


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


def request_phases_figure(phases: pd.DataFrame, stat: str = "mean_ns") -> go.Figure:
    """Per role of the servicing thread, the mean request split by phase
    (µs, stacked in the order a request goes through them), with the p50
    and p99 of the total beside it."""
    from vmtrace.analyses.requests import PHASES

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
