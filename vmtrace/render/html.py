"""Self-contained HTML pages: the report of one trace, and pages of sections
that ``vmtrace sweep`` and ``vmtrace compare`` assemble.

The report page renders a ``vmtrace.report.Report``: each view of
``vmtrace.report.VIEWS`` names its section builder here, and a builder
reads the session's results and never runs an analysis itself, so the
terminal views and the page of one command share every computation.

A page is one file that opens offline: plotly.js is inlined once in the
head, figures carry their data as JSON, and nothing is fetched (no CDN, no
web fonts, no MathJax).  Text from the trace (thread names, notes) is
escaped; only fragments vmtrace builds itself go in as HTML.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from vmtrace import __version__
from vmtrace.analyses.breakdown import Breakdown
from vmtrace.analyses.jsonform import hex_or_none
from vmtrace.analyses.requests import PHASES, request_timeline
from vmtrace.analyses.timeline import display_state
from vmtrace.outputs import open_output
from vmtrace.report import VIEWS, Report
from vmtrace.trace import Trace

from .figures import (
    COMPONENT_COLORS,
    TEMPLATE,
    breakdown_figure,
    compare_figure,
    cost_histogram,
    detail_window,
    request_phases_figure,
    request_timeline_figure,
    sweep_figure,
    timeline_detail,
    timeline_overview,
)
from .labels import run_label

__all__ = [
    "Section",
    "Html",
    "PageLimits",
    "write_html",
    "page_html",
    "write_html_report",
    "write_report_html",
    "report_sections",
    "write_sweep_html",
    "write_compare_html",
    "sweep_figure",
    "compare_figure",
]


@dataclass(frozen=True)
class Html:
    """A fragment of HTML that vmtrace built itself and that goes into the
    page unescaped (a plain ``str`` item is escaped as text)."""

    markup: str


@dataclass
class Section:
    """One titled part of a page.  ``items`` are shown in order: a plotly
    ``go.Figure``, a ``pd.DataFrame`` (a table), an ``Html`` fragment, or a
    ``str`` (a paragraph of text)."""

    title: str
    items: list[Any] = field(default_factory=list)
    intro: str = ""


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; color: #222; }
h1 { font-size: 1.5em; margin: 24px 0 4px; } h2 { font-size: 1.2em; margin: 32px 0 8px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p { line-height: 1.45; margin: 6px 0; } .meta { color: #555; font-size: 0.92em; }
.warn { color: #a40000; font-weight: 600; } .ok { color: #1a7f37; } .note { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f5f5f5; } td:first-child, th:first-child { text-align: left; }
nav a { margin-right: 14px; } .fig { margin: 8px 0 20px; } .table { overflow-x: auto; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 5px; vertical-align: baseline; }
"""

_FIG_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendDataToCloud"]}


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _fmt(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        x = float(v)
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"
    return str(v)


def _render_item(item: Any, n: int) -> str:
    if isinstance(item, go.Figure):
        div = pio.to_html(
            item,
            full_html=False,
            include_plotlyjs=False,
            config=_FIG_CONFIG,
            div_id=f"vmtrace-fig-{n}",
            default_width="100%",
            validate=False,
        )
        return f'<div class="fig">{div}</div>'
    if isinstance(item, pd.DataFrame):
        return _table(item)
    if isinstance(item, Html):
        return item.markup
    if isinstance(item, str):
        return f"<p>{html.escape(item)}</p>"
    raise TypeError(f"cannot put a {type(item).__name__} on a page")


def _anchor(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")


SectionLike: TypeAlias = Section | go.Figure | tuple[Any, ...]


def _as_section(s: SectionLike) -> Section:
    if isinstance(s, Section):
        return s
    if isinstance(s, tuple):
        title, items = s[0], s[1]
        return Section(
            str(title),
            list(items) if isinstance(items, (list, tuple)) else [items],
            intro=str(s[2]) if len(s) > 2 else "",
        )
    return Section(title="", items=[s])


def page_html(
    sections: Sequence[SectionLike],
    title: str = "vmtrace",
    header: Html | str = "",
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
) -> str:
    """The whole page as one string (see ``write_html``)."""
    secs = [_as_section(s) for s in sections] + [Section(t, [df]) for t, df in tables]
    nav = " ".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in secs if s.title)
    parts, n = [], 0
    for s in secs:
        if s.title:
            parts.append(f'<h2 id="{_anchor(s.title)}">{html.escape(s.title)}</h2>')
        if s.intro:
            parts.append(f'<p class="note">{html.escape(s.intro)}</p>')
        for item in s.items:
            parts.append(_render_item(item, n))
            n += 1
    head = header.markup if isinstance(header, Html) else (f"<p>{html.escape(header)}</p>" if header else "")
    # plotly.js goes in once, inline: the page must open with no network.
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="generator" content="vmtrace {__version__}">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<h1>{html.escape(title)}</h1>{head}<nav>{nav}</nav>{''.join(parts)}"
        f'<p class="note">Written by vmtrace {__version__}. Self-contained: opens offline, fetches nothing.</p>'
        "</body></html>\n"
    )


def write_html(
    sections: Sequence[SectionLike],
    path: Path | str,
    title: str = "vmtrace",
    header: Html | str = "",
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
) -> Path:
    """Write one self-contained HTML page at ``path``; returns the path.

    ``sections`` are ``Section``s, bare figures, or tuples ``(title, item)``
    / ``(title, [items])`` / ``(title, items, intro)`` where an item is a
    figure, a DataFrame (a table), an ``Html`` fragment or text; ``tables``
    are ``(title, DataFrame)`` sections appended after them; ``header``
    goes under the page title.  Written to a temporary file and renamed, so
    a reader never sees half a page.
    """
    path = Path(path)
    text = page_html(sections, title=title, header=header, tables=tables)
    # Atomic for a regular file, through a symlink, refused for a device (vmtrace.outputs).
    with open_output(path, "HTML report") as f:
        f.write(text.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------
# The report of one trace


def _header(trace: Trace, b: Breakdown) -> Html:
    meta = trace.meta
    target = meta.get("target") or {}
    vmm = " ".join(str(x) for x in (target.get("vmm"), target.get("vmm_version")) if x) or "unknown VMM"
    dur = ((meta.get("end_ns") or 0) - (meta.get("start_ns") or 0)) / 1e9
    lost = b.lost_events
    per_cpu = ", ".join(f"cpu{k}: {v:,}" for k, v in sorted(b.lost_per_cpu.items()))
    lost_html = (
        f'<span class="warn">{lost:,} events lost ({html.escape(per_cpu)})</span>'
        if lost
        else '<span class="ok">no events lost</span>'
    )
    bql = b.bql
    bql_html = (
        f"BQL: futex word {html.escape(str(hex_or_none(bql.get('futex_uaddr'))))} ({html.escape(str(bql.get('method')))})"
        if bql.get("identified")
        else f'<span class="warn">BQL not identified</span> ({html.escape(str(bql.get("method", "no method")))})'
    )
    ran = run_label(meta)
    lines = [
        f"{html.escape(vmm)}{' &middot; ' + html.escape(ran) if ran else ''} &middot; backend {html.escape(str(meta.get('backend')))} &middot; mode "
        f"{html.escape(str(meta.get('mode')))} &middot; KVM {html.escape(b.kvm_flavour)} &middot; TSC "
        f"{b.tsc_hz / 1e9:.3f} GHz &middot; recorded {dur:.2f} s &middot; {len(b.exits):,} exits in the summary",
        f"{lost_html} &middot; {bql_html}",
    ]
    if trace.path:
        lines.insert(0, f"trace: {html.escape(str(trace.path))}")
    if b.guest_cycles_per_op:
        total = b.components.get("total") or 0.0
        lines.append(
            f"guest-measured cycles per operation: <b>{b.guest_cycles_per_op:,.0f}</b> &middot; traced total per "
            f"exit: <b>{total:,.0f}</b> &middot; traced/guest {total / b.guest_cycles_per_op:.2f}"
        )
    notes = "".join(f'<p class="note">note: {html.escape(n)}</p>' for n in b.notes)
    return Html("".join(f'<p class="meta">{line}</p>' for line in lines) + notes)


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


def _by_kind(b: Breakdown, limit: int = 15, by_time: bool = False) -> pd.DataFrame:
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


def _next_step(b: Breakdown) -> str | None:
    if b.port is not None or not b.hottest or b.from_bench:
        return None
    return f"next: vmtrace report {b.path or 'TRACE'} --bql-breakdown --port {int(b.hottest['addr']):#x}"


@dataclass(frozen=True)
class PageLimits:
    """What keeps a page small: ``max_spans`` caps the spans the Gantt chart
    carries (a window around the middle of the summarised exits) and
    ``bins`` the time bins of the whole-trace overview."""

    max_spans: int = 20_000
    bins: int = 400


def report_sections(
    report: Report | Trace,
    port: int | None = None,
    timed_loop: bool = True,
    max_spans: int = 20_000,
    bins: int = 400,
) -> tuple[Html, list[Section]]:
    """The report of one trace as a header and sections: one section per
    view of ``vmtrace.report.VIEWS`` that has one, from the results of
    ``report`` (a ``Report``, which computes each view once; a bare
    ``Trace`` is given one with ``port`` and ``timed_loop``).  See
    ``write_html_report`` for the arguments."""
    if isinstance(report, Trace):
        report = Report(report, port=port, timed_loop=timed_loop)
    limits = PageLimits(max_spans=max_spans, bins=bins)
    if report.trace.meta.get("aggregate"):
        # record --aggregate: interval snapshots, no events to analyse.
        from vmtrace.top.html import aggregate_page

        return aggregate_page(report, limits)
    sections = [s for s in (v.html(report, limits) for v in VIEWS if v.html is not None) if s is not None]
    return _header(report.trace, report["bql_breakdown"]), sections


def _unavailable(why: str) -> str:
    return f"Not available for this trace: {why}."


def breakdown_section(report: Report, limits: PageLimits) -> Section:
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
            _by_kind(b, by_time=True),
        ]
        step = _next_step(b)
        items = lead + ([step] if step else []) + items
    return Section(
        "Breakdown",
        items,
        intro="Where the cycles of one userspace exit go: the components partition the time from one "
        "KVM_RUN to the next (guest, vmexit, emulator, the VMM's exit path and dispatch, device "
        "callback, lock wait with the BQL apart).",
    )


def exits_section(report: Report, limits: PageLimits) -> Section:
    intro = "Mean cycles per exit by component, by exit kind and port or address (the summarised exits). "
    items: list[Any] = [_by_kind(report["bql_breakdown"])]
    stats, why = report.get("exits")
    if stats is None:
        return Section("Exits", items, intro=f"({_unavailable(why)}) " + intro)
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


def locks_section(report: Report, limits: PageLimits) -> Section:
    intro = "Waits are lock spans the VMM reported and blocking futex waits, the BQL apart. "
    locks, why = report.get("locks")
    if locks is None:
        return Section("Locks", [_unavailable(why)], intro=intro)
    fig, table = _locks_from_analysis(locks)
    notes = [f"note: {n}" for n in locks.notes]
    who = _who_held(locks)
    return Section("Locks", [x for x in (fig, table, who) if x is not None] + notes, intro=intro)


def _who_held(locks: Any) -> pd.DataFrame | None:
    """Who held the BQL: the wait each holder activity caused."""
    who = getattr(locks, "who_held", None)
    if who is None or not len(who.rows):
        return None
    r = who.rows
    return pd.DataFrame(
        {
            "who held the BQL (holder activity)": r["activity"],
            "holders": r["holders"],
            "waits": r["waits"],
            "wait caused ms": r["wait_ns"] / 1e6,
            "mean µs": r["mean_ns"] / 1e3,
            "p99 µs": r["p99_ns"] / 1e3,
            "share": [f"{100 * v:.1f}%" for v in r["share"]],
        }
    )


def _word_label(name: Any, addr: Any) -> str:
    a = f"{int(addr):#x}" if addr is not None and not pd.isna(addr) else "?"
    return f"{name} ({a})" if isinstance(name, str) and name else f"futex {a}"


def _locks_from_analysis(locks: Any) -> tuple[go.Figure | None, pd.DataFrame]:
    words = locks.words
    if words is None or words.empty:
        return None, pd.DataFrame({"": ["No futex word was waited on in this trace."]})
    us = 1e3
    table = pd.DataFrame(
        {
            "lock": [_word_label(n, a) for n, a in zip(words["name"], words["addr"], strict=True)],
            "waits": words["waits"],
            "went off CPU": words["blocked"],
            "total ms": words["wait_ns"] / 1e6,
            "mean µs": words["mean_ns"] / us,
            "p99 µs": words["p99_ns"] / us,
            "max µs": words["max_ns"] / us,
            "waiters": words["waiter_names"],
            "wakers": words["wakers"],
            "holds": words["holds"],
        }
    ).head(20)
    fig = None
    by = locks.by_thread
    if not by.empty:
        by = by.assign(lock=[_word_label(n, a) for n, a in zip(by["name"], by["addr"], strict=True)])
        top = by.groupby("lock", sort=False)["wait_ns"].sum().sort_values(ascending=False).index[:8]
        fig = go.Figure()
        for lock in top:
            t = by[by["lock"] == lock]
            thread = [f"{n} [{int(tid)}]" for n, tid in zip(t["thread"], t["tid"], strict=True)]
            fig.add_bar(
                y=thread,
                x=t["wait_ns"] / 1e6,
                name=lock,
                orientation="h",
                marker_color=COMPONENT_COLORS["bql_wait"] if lock.startswith("BQL") else None,
                hovertemplate="%{y}: %{x:.2f} ms<extra>" + html.escape(lock) + "</extra>",
            )
        fig.update_layout(
            template=TEMPLATE,
            barmode="stack",
            height=180 + 30 * by["tid"].nunique(),
            title={"text": "Time spent waiting, per thread and futex word", "x": 0, "y": 0.97, "yanchor": "top"},
            xaxis_title="ms waiting over the whole trace",
            margin={"t": 100},
        )
    return fig, table


def offcpu_section(report: Report, limits: PageLimits) -> Section:
    intro = (
        "Runnable: switched out while runnable or woken and not yet on a CPU (oversubscription, not "
        "contention). Blocked: asleep, on a lock or on anything else (I/O, an idle loop). "
    )
    off, why = report.get("offcpu")
    if off is None:
        return Section("Off-CPU", [_unavailable(why)], intro=intro)
    fig, table = _offcpu_from_analysis(off)
    return Section("Off-CPU", [fig, table, *(f"note: {n}" for n in off.notes)], intro=intro)


def _offcpu_from_analysis(off: Any) -> tuple[go.Figure, pd.DataFrame]:
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


def requests_section(report: Report, limits: PageLimits, shown: int = 40) -> Section | None:
    """virtio-blk requests by phase, per role of the servicing thread; None
    for a trace with no virtio-blk activity (most traces)."""
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


def timeline_section(report: Report, limits: PageLimits) -> Section:
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


def write_html_report(
    trace: Trace,
    path: Path | str,
    port: int | None = None,
    timed_loop: bool = True,
    max_spans: int = 20_000,
    bins: int = 400,
) -> Path:
    """Write the HTML report of ``trace`` (a ``Trace``) to ``path``: the
    breakdown (stacked cycles per exit by component per vCPU, the cost
    histogram, percentiles), exits, locks, off-CPU and the timeline.

    ``port`` and ``timed_loop`` select the exits of the summary as in
    ``bql_breakdown``; ``max_spans`` caps the spans the Gantt chart carries
    (a window around the middle of the summarised exits) and ``bins`` the
    time bins of the whole-trace overview.  Returns the path.
    """
    return write_report_html(
        Report(trace, port=port, timed_loop=timed_loop), path, PageLimits(max_spans=max_spans, bins=bins)
    )


def write_report_html(report: Report, path: Path | str, limits: PageLimits = PageLimits()) -> Path:
    """Write the HTML page of ``report`` (a ``vmtrace.report.Report``) to
    ``path`` from the views it has computed or computes now, each once (the
    terminal views of the same session reuse them).  Returns the path."""
    header, sections = report_sections(report, max_spans=limits.max_spans, bins=limits.bins)
    name = report.trace.path.name if report.trace.path else "trace"
    return write_html(sections, path, title=f"vmtrace report: {name}", header=header)


def write_sweep_html(summary: pd.DataFrame, path: Path | str) -> Path:
    """The page of ``vmtrace sweep``: ``summary`` (``vmtrace.sweep``'s, one
    row per configuration and vCPU count) as the stacked chart and a table."""
    return write_html(
        [("Cycles per exit by component", sweep_figure(summary))],
        path,
        title="vmtrace sweep",
        tables=[("Summary", summary.drop(columns=["trace"]))],
    )


def write_compare_html(table: pd.DataFrame, path: Path | str, ran: dict[str, str | None] | None = None) -> Path:
    """The page of ``vmtrace compare``: ``table``
    (``vmtrace.compare.compare_breakdowns``') as a chart and a table;
    ``ran``: trace label -> what ran (``labels.run_label``), in the header."""
    header = Html(
        "".join(
            f'<p class="meta">{html.escape(label)}: {html.escape(what or "-")}</p>'
            for label, what in (ran or {}).items()
        )
        if any((ran or {}).values())
        else ""
    )
    return write_html(
        [("Cycles per exit by component", compare_figure(table))],
        path,
        title="vmtrace compare",
        header=header,
        tables=[("Comparison (cycles per exit)", table.reset_index())],
    )
