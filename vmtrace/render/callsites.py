"""The BQL call-site view (``report --callsites``): terminal table and page section.

Formats an ``analyses.callsites.CallsiteTable``; computes nothing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

__all__ = ["render_callsites", "callsites_section"]

_INTRO = (
    "Per call site of the BQL (the file:line QEMU passes to its lock function), as QEMU's "
    "info sync-profile counts them, plus hold time to the matching unlock. Wait is the time inside the "
    "lock call (it includes the probes' own cost); contended counts acquisitions that blocked in futex. "
)


def _us(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v / 1e3:,.1f}"


def _version(meta: dict[str, Any]) -> str:
    target = meta.get("target") or {}
    return " ".join(str(x) for x in (target.get("vmm"), target.get("vmm_version")) if x) or "unknown VMM"


def render_callsites(result: Any, console: Console, meta: dict[str, Any] | None = None) -> None:
    """``result`` a CallsiteTable; ``meta`` the trace metadata (for the
    VMM and its version in the header), optional."""
    sites = result.sites
    head = f"[bold]vmtrace BQL call sites[/]  vmm={_version(meta) if meta else (result.vmm or 'unknown VMM')}"
    if result.sampled:
        head += f"  [yellow]SAMPLED[/] (duty {result.duty}, uprobes on {result.coverage:.1%} of the time)"
    console.print(head)
    for n in result.notes:
        console.print(f"note: {n}")
    if sites.empty:
        return
    t = Table(title_justify="left")
    est = "est. acq." if result.sampled else "acquisitions"
    for col in (
        "call site",
        est,
        "share",
        "wait ms",
        "wait mean µs",
        "wait p99 µs",
        "contended",
        "contended mean µs",
        "hold mean µs",
        "hold p99 µs",
    ):
        t.add_column(col, justify="left" if col == "call site" else "right")
    for r in sites.itertuples():
        count = r.est_acquisitions if result.sampled else r.acquisitions
        t.add_row(
            r.site,
            f"{count:,.0f}",
            f"{r.share:.1%}",
            f"{r.wait_ns / 1e6:,.2f}",
            _us(r.wait_mean_ns),
            _us(r.wait_p99_ns),
            f"{r.contended:,}",
            _us(r.contended_mean_ns),
            _us(r.hold_mean_ns),
            _us(r.hold_p99_ns),
        )
    console.print(t)


def callsites_section(report: Any, limits: Any) -> Any:
    """The page's "BQL call sites" section (None when the trace has none)."""
    from .html import Section, unavailable

    result, why = report.get("callsites")
    if result is None:
        return Section("BQL call sites", [unavailable(why)], intro=_INTRO)
    if result.sites.empty:
        return None
    s = result.sites
    table = pd.DataFrame(
        {
            "call site": s["site"],
            ("est. acquisitions" if result.sampled else "acquisitions"): (
                s["est_acquisitions"] if result.sampled else s["acquisitions"]
            ),
            "share": s["share"],
            "wait ms": s["wait_ns"] / 1e6,
            "wait mean µs": s["wait_mean_ns"] / 1e3,
            "wait p99 µs": s["wait_p99_ns"] / 1e3,
            "contended": s["contended"],
            "contended mean µs": s["contended_mean_ns"] / 1e3,
            "hold mean µs": s["hold_mean_ns"] / 1e3,
            "hold p99 µs": s["hold_p99_ns"] / 1e3,
        }
    )
    intro = _INTRO + f"VMM: {_version(report.trace.meta)}."
    if result.sampled:
        intro += f" Sampled: uprobes on {result.coverage:.1%} of the time; counts extrapolated."
    return Section("BQL call sites", [table, *(f"note: {n}" for n in result.notes)], intro=intro)
