"""Terminal rendering of analysis results with rich tables."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from vmtrace.analyses.breakdown import Breakdown

__all__ = ["render_breakdown", "fmt_cycles"]


def fmt_cycles(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:,.0f}"


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
    lost = b.lost_events
    style = "bold red" if lost else "green"
    per_cpu = ", ".join(f"cpu{k}: {v}" for k, v in sorted(b.lost_per_cpu.items())) or "none"
    console.print(f"exits: {len(b.exits):,}   lost events: [{style}]{lost:,}[/] ({per_cpu})")
    bql = b.bql
    if bql.get("identified"):
        console.print(f"BQL: futex word {bql.get('futex_uaddr') or '-'} ({bql.get('method')})")
    else:
        console.print(f"BQL: [yellow]not identified[/] ({bql.get('method', 'no method')})")


def _components_table(b: Breakdown) -> Table:
    t = Table(title="cycles per userspace exit, by component", title_justify="left")
    for col in ("component", "mean", "share", "p50", "p90", "p99"):
        t.add_column(col, justify="left" if col == "component" else "right")
    total = b.components.get("total") or 0.0
    for c in ("guest", "vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait"):
        mean = b.components.get(c, 0.0)
        pct = b.percentiles.get(c, {})
        label = "  of which BQL" if c == "bql_wait" else c
        share = f"{100 * mean / total:.1f}%" if total else "-"
        t.add_row(label, fmt_cycles(mean), share, fmt_cycles(pct.get("p50")), fmt_cycles(pct.get("p90")),
                  fmt_cycles(pct.get("p99")))
    pct = b.percentiles.get("total", {})
    t.add_row("[bold]total[/]", f"[bold]{fmt_cycles(total)}[/]", "100%", fmt_cycles(pct.get("p50")),
              fmt_cycles(pct.get("p90")), fmt_cycles(pct.get("p99")))
    return t


def _group_table(df: pd.DataFrame, keys: list[str], title: str, limit: int = 12) -> Table:
    t = Table(title=title, title_justify="left")
    for k in keys:
        t.add_column(k)
    for col in ("exits", "vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "total", "p50", "p99"):
        t.add_column(col, justify="right")
    for row in df.head(limit).to_dict(orient="records"):
        cells = [str(row.get(k) if row.get(k) is not None else "-") for k in keys]
        cells.append(f"{int(row['exits']):,}")
        cells += [fmt_cycles(row[c]) for c in ("vmexit", "emulator", "dispatch", "device", "lock_wait",
                                                "bql_wait", "total", "p50", "p99")]
        t.add_row(*cells)
    if len(df) > limit:
        t.caption = f"{len(df) - limit} more rows in --format json"
    return t


def render_breakdown(b: Breakdown, console: Console | None = None) -> None:
    console = console or Console()
    _header(b, console)
    console.print(_components_table(b))
    console.print(_group_table(b.by_kind, ["kind", "addr"], "by exit kind and port/address"))
    console.print(_group_table(b.by_vcpu, ["vcpu"], "by vCPU"))
    if b.guest_cycles_per_op:
        total = b.components.get("total") or 0.0
        ratio = total / b.guest_cycles_per_op if b.guest_cycles_per_op else float("nan")
        console.print(
            f"guest-measured cycles per operation: {fmt_cycles(b.guest_cycles_per_op)}   "
            f"traced total per exit: {fmt_cycles(total)}   traced/guest: {ratio:.2f}"
        )
    for note in b.notes:
        console.print(f"[dim]note: {note}[/]")


def render_json_safe(obj: Any) -> Any:
    """Make numpy and pandas scalars JSON-serialisable."""
    if isinstance(obj, dict):
        return {str(k): render_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [render_json_safe(v) for v in obj]
    if obj is pd.NA:
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            return obj.item()
        except (ValueError, AttributeError):
            return obj
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
