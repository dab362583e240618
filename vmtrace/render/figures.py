"""What vmtrace's plotly figures share, and the figures of several traces.

The template every figure uses, the stacking of a breakdown bar, and the
charts of ``vmtrace sweep`` and ``vmtrace compare``; a view's own figures
live with its section (``breakdown``, ``requests``, ``timeline`` ...), the
colours in ``palette``, the page around them in ``html``.  Every figure is
built to stay small inside a self-contained HTML file (a few traces,
numeric arrays, pre-binned histograms) and uses the same colour for the
same component everywhere, so a reader learns the palette once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .labels import sweep_python
from .palette import COMPONENT_COLORS, COMPONENT_LABELS

__all__ = [
    "TEMPLATE",
    "STACK",
    "stack_values",
    "add_stack",
    "sweep_figure",
    "compare_figure",
]


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
STACK = ("guest", "vmexit", "emulator", "dispatch", "device", "bql_wait", "other_lock_wait", "runnable")


def stack_values(row: dict[str, Any]) -> dict[str, float]:
    """A breakdown row's components as ``STACK`` draws them: the lock wait
    split into the BQL's and the rest."""
    get = row.get
    out = {c: float(get(c, 0.0) or 0.0) for c in ("guest", "vmexit", "emulator", "dispatch", "device")}
    lock = float(get("lock_wait", 0.0) or 0.0)
    bql = float(get("bql_wait", 0.0) or 0.0)
    out["bql_wait"] = bql
    out["other_lock_wait"] = max(lock - bql, 0.0)
    out["runnable"] = float(get("runnable", 0.0) or 0.0)
    return out


def add_stack(
    fig: go.Figure, x: list[str], values: list[dict[str, float]], labels: Mapping[str, str] = COMPONENT_LABELS
) -> None:
    """Add to ``fig`` one bar per component of ``STACK``, bottom to top, over
    ``x``; ``values`` holds one ``stack_values`` row per ``x``.  The guest's
    bar only where it has time (hosts without kvm_entry/kvm_exit have none)."""
    for c in STACK:
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
        lab: stack_values({str(k): table.at[k, lab] if k in table.index else 0.0 for k in table.index})
        for lab in labels
    }
    add_stack(fig, labels, [values[lab] for lab in labels])
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
