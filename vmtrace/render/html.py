"""Self-contained HTML pages: the report of one trace, and pages of sections
that ``vmtrace sweep`` and ``vmtrace compare`` assemble.

The report page renders a ``vmtrace.report.Report``: each view of
``vmtrace.report.VIEWS`` names its section builder, which lives with the
view's terminal renderer (``breakdown``, ``exits``, ``locks`` ...) and
reads the session's results, never running an analysis itself, so the
terminal views and the page of one command share every computation.  This
module is the shell those sections go in; it reaches them only through the
table, never by import.

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
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from vmtrace import __version__
from vmtrace.analyses.jsonform import hex_or_none
from vmtrace.outputs import open_output
from vmtrace.report import VIEWS, Report
from vmtrace.trace import Trace

from .figures import compare_figure, sweep_figure
from .labels import run_label

if TYPE_CHECKING:
    from vmtrace.analyses.breakdown import Breakdown

__all__ = [
    "Section",
    "Html",
    "PageLimits",
    "unavailable",
    "write_html",
    "page_html",
    "write_html_report",
    "write_report_html",
    "report_sections",
    "write_sweep_html",
    "write_compare_html",
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
        # record --aggregate: interval snapshots, no events to analyse; the
        # aggregate view's section is the page.
        (view,) = (v for v in VIEWS if v.name == "aggregate")
        section = view.html(report, limits) if view.html is not None else None
        return _aggregate_header(report.trace), [section] if section is not None else []
    sections = [s for s in (v.html(report, limits) for v in VIEWS if v.html is not None) if s is not None]
    return _header(report.trace, report["bql_breakdown"]), sections


def _aggregate_header(trace: Trace) -> Html:
    meta = trace.meta
    target = meta.get("target") or {}
    return Html(
        f"<p>VMM {html.escape(str(target.get('vmm')))} {html.escape(str(target.get('vmm_version') or ''))}, KVM "
        f"{html.escape(str(meta.get('kvm_flavour')))}, aggregate recording (no events).</p>"
    )


def _header(trace: Trace, b: Breakdown) -> Html:
    """The report page's header: the trace, what ran and how it was recorded,
    lost events and the BQL, from the breakdown's summary."""
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


def unavailable(why: str) -> str:
    """A section's text for a view the trace cannot feed (``Report.get``'s
    reason)."""
    return f"Not available for this trace: {why}."


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
