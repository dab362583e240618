"""The breakdown view (``report --bql-breakdown``, the default): cycles per
userspace exit by component, as a terminal report, a page section and the
section's two figures.

Formats a ``Breakdown`` (``analyses.breakdown``); computes nothing.  The
page's parts import plotly when they run, not with this module: a terminal
report should not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from vmtrace.analyses.jsonform import hex_or_none

from .labels import run_label
from .palette import COMPONENT_LABELS
from .text import bql_line, fmt_cycles, fmt_pct, grid

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vmtrace.analyses.breakdown import Breakdown
    from vmtrace.report import Report

    from .html import PageLimits, Section

__all__ = [
    "render_breakdown",
    "next_step",
    "breakdown_section",
    "by_kind_table",
    "breakdown_figure",
    "cost_histogram",
]


def _header(b: Breakdown, console: Console) -> None:
    meta = b.meta
    target = meta.get("target") or {}
    vmm = target.get("vmm", "?")
    version = target.get("vmm_version")
    dur = ((meta.get("end_ns") or 0) - (meta.get("start_ns") or 0)) / 1e9
    console.print(
        f"[bold]vmtrace BQL breakdown[/]  vmm={vmm}{' ' + version if version else ''}  "
        f"backend={meta.get('backend')}  mode={meta.get('mode')}  kvm={b.kvm_flavour}  "
        f"tsc={b.tsc_hz / 1e9:.3f} GHz  recorded {dur:.2f}s"
    )
    ran = run_label(meta)
    if ran:
        console.print(ran, markup=False, highlight=False)
    lost = b.lost_events
    style = "bold red" if lost else "green"
    per_cpu = ", ".join(f"cpu{k}: {v}" for k, v in sorted(b.lost_per_cpu.items())) or "none"
    console.print(f"exits: {len(b.exits):,}   lost events: [{style}]{lost:,}[/] ({per_cpu})")
    bql_line(b.bql, console)


def _components_table(b: Breakdown) -> Table:
    t = Table(title="cycles per userspace exit, by component", title_justify="left")
    for col in ("component", "mean", "share", "p50", "p90", "p99"):
        t.add_column(col, justify="left" if col == "component" else "right")
    total = b.components.get("total") or 0.0
    labels = b.component_labels
    # Without kvm_entry/kvm_exit the guest's time is inside vmexit: one row,
    # named for what it holds, not a guest row of zeros.
    shown = ("guest",) if b.guest_separated else ()
    for c in (*shown, "vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "runnable"):
        mean = b.components.get(c, 0.0)
        pct = b.percentiles.get(c, {})
        label = {"bql_wait": "  of which BQL", "runnable": "runnable (waiting for a CPU)"}.get(c, labels.get(c, c))
        share = f"{100 * mean / total:.1f}%" if total else "-"
        t.add_row(
            label,
            fmt_cycles(mean),
            share,
            fmt_cycles(pct.get("p50")),
            fmt_cycles(pct.get("p90")),
            fmt_cycles(pct.get("p99")),
        )
    pct = b.percentiles.get("total", {})
    t.add_row(
        "[bold]total[/]",
        f"[bold]{fmt_cycles(total)}[/]",
        "100%",
        fmt_cycles(pct.get("p50")),
        fmt_cycles(pct.get("p90")),
        fmt_cycles(pct.get("p99")),
    )
    return t


def fmt_cycles_short(v: float | None) -> str:
    """Cycles in at most 7 characters: 24,357 as is, 4.35M and 847k
    rounded with their unit (an exit that waited for a second is 2.6G)."""
    if v is None or v != v:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= 100 * scale if unit == "k" else abs(v) >= scale:
            x = v / scale
            return f"{x:.2f}{unit}" if abs(x) < 10 else f"{x:.1f}{unit}" if abs(x) < 100 else f"{x:.0f}{unit}"
    return f"{v:,.0f}"


def _group_table(
    df: pd.DataFrame, keys: list[str], title: str, limit: int = 12, vmexit: str = "vmexit", time_share: bool = False
) -> Table:
    comps = ("vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "runnable", "total", "p50", "p99")
    heads = {"lock_wait": "lock", "bql_wait": "BQL", "emulator": "emul", "vmexit": vmexit, "runnable": "runq"}
    rows = []
    for row in df.head(limit).to_dict(orient="records"):
        cells = ["-" if row.get(k) is None or row.get(k) != row.get(k) else str(row.get(k)) for k in keys]
        cells.append(f"{int(row['exits']):,}")
        if time_share:
            cells.append(fmt_pct(row.get("time_share")))
        cells += [fmt_cycles_short(row.get(c)) for c in comps]
        rows.append(cells)
    more = len(df) - limit
    return grid(
        f"{title}, mean cycles per exit (p50/p99 of the total)",
        [(k, "k") for k in keys]
        + [("exits", "r")]
        + ([("time", "r")] if time_share else [])
        + [(heads.get(c, c), "r") for c in comps],
        rows,
        f"{more} more rows in --format json" if more > 0 else None,
    )


def _holder_table(b: Breakdown, limit: int = 12) -> Table | None:
    """bql_wait by what the BQL's holder was doing (``Breakdown.by_holder``)."""
    df = b.by_holder
    if not len(df):
        return None
    total = b.components.get("bql_wait") or 0.0
    rows = [
        [
            str(r["activity"]),
            str(r["holders"] or "-"),
            f"{int(r['exits']):,}",
            fmt_cycles(r["cycles"]),
            f"{100 * r['cycles'] / total:.1f}%" if total else "-",
        ]
        for r in df.head(limit).to_dict("records")
    ]
    more = len(df) - limit
    return grid(
        "BQL wait by what its holder was doing (cycles per exit; the rows add up to the BQL row)",
        [("holder activity", "l"), ("holders", "l"), ("exits", "r"), ("BQL", "r"), ("share", "r")],
        rows,
        f"{more} more rows in --format json" if more > 0 else None,
    )


def next_step(b: Breakdown) -> str | None:
    """The command that opens the hottest port's breakdown, when the report
    is not already one port's."""
    if b.port is not None or not b.hottest:
        return None
    path = b.path or "TRACE"
    return f"vmtrace report {path} --bql-breakdown --port {int(b.hottest['addr']):#x}"


def _histogram_table(b: Breakdown, rows: int = 12) -> Table | None:
    """The distribution of total cycles per exit, coarsened to ``rows``
    log-spaced bins between the first and the last non-empty one."""
    h = getattr(b, "histograms", {}).get("total") or {}
    counts, edges = h.get("counts") or [], h.get("edges") or []
    nz = [i for i, c in enumerate(counts) if c]
    if not nz:
        return None
    lo, hi = nz[0], nz[-1] + 1
    step = max(1, -(-(hi - lo) // rows))
    t = Table(title="distribution of cycles per exit (total)", title_justify="left", box=None, pad_edge=False)
    t.add_column("cycles", justify="right", no_wrap=True)
    t.add_column("exits", justify="right", no_wrap=True)
    t.add_column("", no_wrap=True)
    groups = [(i, min(i + step, hi)) for i in range(lo, hi, step)]
    sums = [sum(counts[a:z]) for a, z in groups]
    top = max(sums) or 1
    for (a, z), n in zip(groups, sums, strict=True):
        t.add_row(f"{fmt_cycles(edges[a])} - {fmt_cycles(edges[z])}", f"{n:,}", "█" * round(40 * n / top))
    return t


def render_breakdown(b: Breakdown, console: Console | None = None) -> None:
    """The ``--bql-breakdown`` view (``analyses.breakdown.Breakdown``)."""
    console = console or Console()
    _header(b, console)
    vmexit = b.component_labels["vmexit"]
    by_kind = b.by_kind.assign(addr=b.by_kind["addr"].map(hex_or_none))
    step = next_step(b)
    # A trace that is not a benchmark's mixes boot, idle and loop exits: its
    # mean over every exit misleads (seconds of idle guest time inside a few
    # exits where kvm_exit does not fire), the per-port rows do not.
    lead = not b.from_bench and b.port is None and len(by_kind) > 0
    if lead:
        console.print(
            "[bold]not a `vmtrace bench` trace:[/] exits of every kind are mixed; read the row of the "
            "port you care about, not the mean over all exits"
        )
        ordered = by_kind.sort_values("time_share", ascending=False, kind="stable")
        console.print(
            _group_table(
                ordered,
                ["kind", "addr"],
                "by exit kind and port/address, most time first",
                vmexit=vmexit,
                time_share=True,
            )
        )
        if step:
            console.print(f"[bold]next:[/] {step}")
    console.print(_components_table(b))
    holders = _holder_table(b)
    if holders is not None:
        console.print(holders)
    hist = _histogram_table(b)
    if hist is not None:
        console.print(hist)
    if not lead:
        console.print(_group_table(by_kind, ["kind", "addr"], "by exit kind and port/address", vmexit=vmexit))
    console.print(_group_table(b.by_vcpu, ["vcpu"], "by vCPU", vmexit=vmexit))
    if b.by_role["role"].nunique() > 1 if len(b.by_role) else False:
        console.print(_group_table(b.by_role, ["role"], "by thread role", vmexit=vmexit))
    if b.guest_cycles_per_op:
        total = b.components.get("total") or 0.0
        ratio = total / b.guest_cycles_per_op if b.guest_cycles_per_op else float("nan")
        console.print(
            f"guest-measured cycles per operation: {fmt_cycles(b.guest_cycles_per_op)}   "
            f"traced total per exit: {fmt_cycles(total)}   traced/guest: {ratio:.2f}"
        )
    for note in b.notes:
        console.print(f"[dim]note: {note}[/]")
    if not b.guest_separated and not any("kvm_exit" in n for n in b.notes):
        console.print(
            "[dim]note: guest+vmexit: kvm_entry/kvm_exit did not fire, so the guest's own time is "
            "inside the vmexit part[/]"
        )


# ----------------------------------------------------------------------------
# The page: the section and its figures


def breakdown_section(report: Report, limits: PageLimits) -> Section:
    """The page's breakdown: the stacked chart, the cost histogram, the
    percentiles and the BQL wait by holder; on a trace that is not a
    benchmark's, led by the exits port by port."""
    from .html import Section

    b = report["bql_breakdown"]
    items: list[Any] = [breakdown_figure(b), cost_histogram(b.exits, b.tsc_hz), _percentiles(b)]
    holders = _holders(b)
    if holders is not None:
        items.append(holders)
    if not b.from_bench and b.port is None:
        # Not a benchmark's trace: the mean over every exit mixes boot, idle
        # and loop; lead with where the time went, port by port.
        lead: list[Any] = [
            "Not a `vmtrace bench` trace: read the row of the port you care about, not the mean over every exit.",
            by_kind_table(b, by_time=True),
        ]
        step = next_step(b)
        items = lead + ([f"next: {step}"] if step else []) + items
    return Section(
        "Breakdown",
        items,
        intro="Where the cycles of one userspace exit go: the components partition the time from one "
        "KVM_RUN to the next (guest, vmexit, emulator, the VMM's exit path and dispatch, device "
        "callback, lock wait with the BQL apart).",
    )


def _percentiles(b: Breakdown) -> pd.DataFrame:
    total = b.components.get("total") or 0.0
    rows = []
    labels = b.component_labels
    shown = ("guest",) if b.guest_separated else ()
    for c in (*shown, "vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "runnable", "total"):
        mean = b.components.get(c, 0.0)
        p = b.percentiles.get(c, {})
        rows.append(
            {
                "component (cycles per exit)": {
                    "bql_wait": "  of which BQL",
                    "runnable": "runnable (waiting for a CPU)",
                }.get(c, labels.get(c, c)),
                "mean": mean,
                "share": f"{100 * mean / total:.1f}%" if total else "-",
                "p50": p.get("p50"),
                "p90": p.get("p90"),
                "p99": p.get("p99"),
            }
        )
    return pd.DataFrame(rows)


def by_kind_table(b: Breakdown, limit: int = 15, by_time: bool = False) -> pd.DataFrame:
    """Mean cycles per exit by exit kind and port or address, for the page
    (the exits section opens with it too); most time first with
    ``by_time``."""
    cols = [
        "kind",
        "addr",
        "exits",
        "time_share",
        "vmexit",
        "emulator",
        "dispatch",
        "device",
        "lock_wait",
        "bql_wait",
        "runnable",
        "total",
        "p50",
        "p99",
    ]
    df = b.by_kind.assign(addr=b.by_kind["addr"].map(hex_or_none))
    if by_time:
        df = df.sort_values("time_share", ascending=False, kind="stable")
    df = df[[c for c in cols if c in df]].head(limit)
    if "time_share" in df:
        df = df.assign(time_share=[f"{100 * v:.1f}%" for v in df["time_share"]])
    return df.rename(columns={"vmexit": b.component_labels["vmexit"], "time_share": "time"})


def _holders(b: Breakdown) -> pd.DataFrame | None:
    """bql_wait split by what the BQL's holder was doing."""
    df = b.by_holder
    if not len(df):
        return None
    total = b.components.get("bql_wait") or 0.0
    return pd.DataFrame(
        {
            "BQL wait by holder activity": df["activity"],
            "holders": df["holders"],
            "exits": df["exits"],
            "cycles per exit": df["cycles"],
            "share of BQL wait": [f"{100 * c / total:.1f}%" if total else "-" for c in df["cycles"]],
        }
    )


def breakdown_figure(b: Breakdown) -> go.Figure:
    """Mean cycles per exit, stacked by component, for each vCPU and for all
    of them; the guest's own cycles per operation marked where it was
    measured (a diamond per vCPU, a dashed line for the mean)."""
    import plotly.graph_objects as go

    from .figures import TEMPLATE, add_stack, stack_values

    rows: list[tuple[str, dict[str, Any]]] = [("all vCPUs", b.components)]
    for r in b.by_vcpu.sort_values("vcpu").to_dict(orient="records"):
        rows.append((f"vCPU {int(r['vcpu'])}", {str(k): v for k, v in r.items()}))
    x = [label for label, _ in rows]
    values = [stack_values(r) for _, r in rows]
    fig = go.Figure()
    labels = dict(COMPONENT_LABELS)
    if not getattr(b, "guest_separated", True):
        labels["vmexit"] = "guest+vmexit"  # no kvm_entry/kvm_exit: the guest's time is inside
    add_stack(fig, x, values, labels)
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
    import plotly.graph_objects as go

    from .figures import TEMPLATE

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
