"""Terminal rendering of analysis results with rich tables."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from vmtrace.analyses.breakdown import Breakdown
from vmtrace.analyses.jsonform import hex_or_none
from vmtrace.jsonsafe import json_safe as render_json_safe  # the name callers know; one converter
from vmtrace.schema import THREAD_ROLES

from .labels import run_label, sweep_python

__all__ = ["render_breakdown", "fmt_cycles", "render_json_safe", "next_step"]


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
    ran = run_label(meta)
    if ran:
        console.print(ran, markup=False, highlight=False)
    lost = b.lost_events
    style = "bold red" if lost else "green"
    per_cpu = ", ".join(f"cpu{k}: {v}" for k, v in sorted(b.lost_per_cpu.items())) or "none"
    console.print(f"exits: {len(b.exits):,}   lost events: [{style}]{lost:,}[/] ({per_cpu})")
    bql = b.bql
    if bql.get("identified"):
        console.print(f"BQL: futex word {hex_or_none(bql.get('futex_uaddr')) or '-'} ({bql.get('method')})")
    else:
        console.print(f"BQL: [yellow]not identified[/] ({bql.get('method', 'no method')})")


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
    return _grid(
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
    return _grid(
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


def render_sweep(summary: pd.DataFrame, console: Console | None = None) -> None:
    """The sweep summary: one row per configuration and vCPU count."""
    console = console or Console()
    t = Table(title="cycles per exit by component (traced) beside the guest's own cycles per op", title_justify="left")
    repeated = "runs" in summary and bool((summary["runs"] > 1).any())
    cols = [
        "config",
        "python",
        "vCPUs",
        "guest",
        *(["guest range"] if repeated else []),
        "traced guest",
        "effect",
        "vmexit",
        "emulator",
        "dispatch",
        "device",
        "lock wait",
        "BQL",
        "runnable",
        "total",
    ]
    for c in cols:
        t.add_column(c, justify="left" if c in ("config", "python") else "right", no_wrap=True)
    for r in summary.to_dict("records"):
        spread = [f"{fmt_cycles(r['guest_min'])}-{fmt_cycles(r['guest_max'])}"] if repeated else []
        effect = r["observer_effect"]
        t.add_row(
            str(r["config"]),
            sweep_python(r) or "-",
            str(r["vcpus"]),
            fmt_cycles(r["guest_cycles_per_op"]),
            *spread,
            fmt_cycles(r["traced_guest_cycles_per_op"]),
            f"{effect:.2f}x" if effect is not None and effect == effect else "-",
            *(
                fmt_cycles(r.get(c))
                for c in ("vmexit", "emulator", "dispatch", "device", "lock_wait", "bql_wait", "runnable", "total")
            ),
        )
    console.print(t)
    if repeated:
        console.print(
            f"guest, traced guest: medians of {int(summary['runs'].max())} runs each; "
            "the breakdown is the trace of the median recorded run"
        )


def render_comparison(
    table: pd.DataFrame, console: Console | None = None, ran: dict[str, str | None] | None = None
) -> None:
    """``vmtrace compare``: one column per trace, deltas from the first;
    ``ran``: label -> what ran (``labels.run_label``), printed above."""
    console = console or Console()
    # Only where a trace says (a reference VMM's): QEMU's locking is its version's.
    if any((ran or {}).values()):
        for label, what in (ran or {}).items():
            console.print(f"{label}: {what or '-'}", markup=False, highlight=False)
    t = Table(title="cycles per exit, deltas from the first trace", title_justify="left")
    t.add_column("component", no_wrap=True)
    for c in table.columns:
        t.add_column(str(c), justify="right", no_wrap=True)
    for comp, row in table.iterrows():
        cells = []
        for col, v in row.items():
            if v is None or pd.isna(v):
                cells.append("-")
            elif str(col).endswith("Δ%"):
                cells.append(f"{v:+.1f}%")
            elif str(col).endswith("Δ"):
                cells.append(f"{v:+,.0f}")
            else:
                cells.append(fmt_cycles(v))
        t.add_row(str(comp), *cells)
    console.print(t)


# ----------------------------------------------------------------------------
# Exits, locks and off-CPU views.  Tables are sized for 100 columns: numbers
# never wrap (a column that would cut one is given its full width), names
# fold when the terminal is narrower.


def fmt_us(ns: float | None) -> str:
    """Nanoseconds as microseconds, with the digits that matter at each scale."""
    if ns is None or ns != ns:
        return "-"
    us = ns / 1e3
    if us < 10:
        return f"{us:.2f}"
    if us < 1000:
        return f"{us:.1f}"
    return f"{us:,.0f}"


def fmt_dur(ns: float | None) -> str:
    """A duration with its unit, at most 7 characters: 850ns, 21.3µs,
    5.09ms, 1.66s, so one column holds a PIO exit and a lock wait alike."""
    if ns is None or ns != ns:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            v = ns / scale
            return f"{v:.2f}{unit}" if v < 10 else f"{v:.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"
    return f"{ns:.0f}ns"


def fmt_ms(ns: float | None) -> str:
    if ns is None or ns != ns:
        return "-"
    ms = ns / 1e6
    return f"{ms:.2f}" if ms < 100 else f"{ms:,.0f}"


def fmt_pct(share: float | None) -> str:
    if share is None or share != share:
        return "-"
    return f"{100 * share:.1f}%"


def _grid(title: str, columns: list[tuple[str, str]], rows: list[list[str]], caption: str | None = None) -> Table:
    """A compact table; ``columns`` are (header, kind): "r" a number and "k"
    a short key, neither ever cut, or "l" text that may fold."""
    from rich import box

    t = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption=caption,
        caption_justify="left",
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for i, (name, kind) in enumerate(columns):
        if kind in ("r", "k"):
            width = max([len(name)] + [len(r[i]) for r in rows])
            t.add_column(name, justify="right" if kind == "r" else "left", no_wrap=True, min_width=width)
        else:
            t.add_column(name, justify="left", overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


def _lost_line(lost: int, markers: int, console: Console) -> None:
    style = "bold red" if lost or markers else "green"
    where = f", {markers:,} lost-event markers" if markers else ""
    console.print(f"lost events: [{style}]{lost:,}[/]{where}")


def render_exits(x: Any, console: Console | None = None, limit: int = 15) -> None:
    """The ``--exits`` view (``analyses.exits.Exits``)."""
    console = console or Console()
    n = len(x.exits)
    user = int(x.exits["userspace"].sum()) if n else 0
    src = "kvm_exit -> kvm_entry" if x.source == "kvm_exit" else "KVM_RUN + decode (no kvm_exit on this host)"
    console.print(f"[bold]vmtrace exits[/]  source: {src}  kvm={x.kvm_flavour}")
    console.print(f"exits: {n:,} ({user:,} to userspace, {n - user:,} handled in the kernel)")
    _lost_line(x.lost_events, x.lost_markers, console)
    stat_cols = [("count", "r"), ("%", "r"), ("time %", "r"), ("min", "r"), ("mean", "r"), ("p99", "r"), ("max", "r")]

    def stats(r: dict[str, Any]) -> list[str]:
        return [
            f"{int(r['count']):,}",
            fmt_pct(r["share"]),
            fmt_pct(r["time_share"]) if r["timed"] else "-",
            fmt_dur(r["min_ns"]),
            fmt_dur(r["mean_ns"]),
            fmt_dur(r["p99_ns"]),
            fmt_dur(r["max_ns"]),
        ]

    rows = [[str(r["reason"]), str(r["handled"])] + stats(r) for r in x.by_reason.head(limit).to_dict("records")]
    more = len(x.by_reason) - limit
    console.print(
        _grid(
            "by exit reason",
            [("reason", "k"), ("handled", "k")] + stat_cols,
            rows,
            f"{more} more in --format json" if more > 0 else None,
        )
    )
    if len(x.by_access):
        rows = [
            [str(r["kind"]), "-" if pd.isna(r["addr"]) else f"{int(r['addr']):#x}", str(r["dir"])] + stats(r)
            for r in x.by_access.head(limit).to_dict("records")
        ]
        more = len(x.by_access) - limit
        console.print(
            _grid(
                "by port (PIO) / address (MMIO, MSR)",
                [("kind", "k"), ("addr", "k"), ("dir", "k")] + stat_cols,
                rows,
                f"{more} more in --format json" if more > 0 else None,
            )
        )
    rows = [
        [
            str(int(r["vcpu"])),
            f"{int(r['count']):,}",
            f"{int(r['userspace']):,}",
            fmt_pct(r["time_share"]),
            fmt_dur(r["mean_ns"]),
            fmt_dur(r["p99_ns"]),
            fmt_dur(r["max_ns"]),
        ]
        for r in x.by_vcpu.to_dict("records")
    ]
    console.print(
        _grid(
            "by vCPU",
            [
                ("vcpu", "r"),
                ("count", "r"),
                ("userspace", "r"),
                ("time %", "r"),
                ("mean", "r"),
                ("p99", "r"),
                ("max", "r"),
            ],
            rows,
        )
    )
    for note in x.notes:
        console.print(f"[dim]note: {note}[/]")


def _word_label(name: Any, addr: int) -> str:
    return f"{name} {addr:#x}" if isinstance(name, str) and name else f"{addr:#x}"


def render_locks(lk: Any, console: Console | None = None, limit: int = 12) -> None:
    """The ``--locks`` view (``analyses.locks.Locks``)."""
    console = console or Console()
    tot = lk.totals
    console.print("[bold]vmtrace locks[/]  futex words the target waited on, most wait time first")
    _lost_line(lk.lost_events, lk.lost_markers, console)
    bql = lk.bql
    if bql.get("identified"):
        console.print(f"BQL: futex word {hex_or_none(bql.get('futex_uaddr')) or '-'} ({bql.get('method')})")
    else:
        console.print(f"BQL: [yellow]not identified[/] ({bql.get('method', 'no method')})")
    target = tot["target_ns"]
    line = (
        f"target threads' time {fmt_ms(target)} ms: in futex waits {fmt_pct(tot['futex_wait_share'])}, "
        f"in futex wakes {fmt_pct(tot['futex_wake_share'])}"
    )
    console.print(line)
    if tot.get("sched_events"):
        console.print(
            f"on-CPU time inside futex calls: {fmt_pct(tot['futex_oncpu_share'])} of {fmt_ms(tot['oncpu_ns'])} ms "
            f"on CPU (waits {fmt_pct(tot['futex_wait_oncpu_share'])}, wakes {fmt_pct(tot['futex_wake_oncpu_share'])}):"
            " the kernel's futex work, spinning on its hash-bucket lock included"
        )
    words = lk.words
    rows = []
    for r in words.head(limit).to_dict("records"):
        rows.append(
            [
                _word_label(r["name"], int(r["addr"])),
                f"{int(r['waits']):,}",
                f"{int(r['blocked']):,}",
                fmt_dur(r["wait_ns"]),
                fmt_dur(r["mean_ns"]),
                fmt_dur(r["p99_ns"]),
                fmt_dur(r["max_ns"]),
                fmt_pct(r["wait_share"]),
                str(int(r["waiters"])),
                f"{int(r['wake_calls']):,}",
            ]
        )
    more = len(words) - limit
    console.print(
        _grid(
            "futex words: wait calls, how many slept, time waiting, waiting threads, wake calls",
            [
                ("lock", "k"),
                ("waits", "r"),
                ("slept", "r"),
                ("waited", "r"),
                ("mean", "r"),
                ("p99", "r"),
                ("max", "r"),
                ("of time", "r"),
                ("waiters", "r"),
                ("wakes", "r"),
            ],
            rows,
            f"{more} more in --format json" if more > 0 else None,
        )
    )
    held = words[words["holds"] > 0]
    if len(held):
        rows = [
            [
                _word_label(r["name"], int(r["addr"])),
                f"{int(r['holds']):,}",
                fmt_dur(r["hold_ns"]),
                fmt_dur(r["hold_mean_ns"]),
                fmt_dur(r["hold_p99_ns"]),
            ]
            for r in held.head(limit).to_dict("records")
        ]
        console.print(
            _grid(
                "hold times (lock_acquired -> lock_release, as the target reported them)",
                [("lock", "k"), ("holds", "r"), ("held", "r"), ("mean", "r"), ("p99", "r")],
                rows,
            )
        )
    who = getattr(lk, "who_held", None)
    if who is not None and len(who.rows):
        rows = [
            [
                str(r["activity"]),
                str(r["holders"] or "-"),
                f"{int(r['waits']):,}",
                fmt_dur(r["wait_ns"]),
                fmt_dur(r["mean_ns"]),
                fmt_dur(r["p99_ns"]),
                fmt_pct(r["share"]),
            ]
            for r in who.rows.head(limit).to_dict("records")
        ]
        more = len(who.rows) - limit
        lost = f"; {who.excluded_lost:,} waits across lost events left out" if who.excluded_lost else ""
        console.print(
            _grid(
                f"who held the BQL: the wait each holder activity caused ({who.waits:,} waits, "
                f"{fmt_dur(who.wait_ns)}{lost})",
                [
                    ("holder activity", "l"),
                    ("holders", "l"),
                    ("waits", "r"),
                    ("caused", "r"),
                    ("mean", "r"),
                    ("p99", "r"),
                    ("share", "r"),
                ],
                rows,
                f"{more} more in --format json" if more > 0 else None,
            )
        )
    bt = lk.by_thread
    if len(bt):
        rows = [
            [
                _word_label(r["name"], int(r["addr"])),
                f"{r['thread']} [{int(r['tid'])}]",
                str(r["role"]),
                f"{int(r['waits']):,}",
                fmt_dur(r["wait_ns"]),
                f"{int(r['wake_calls']):,}",
            ]
            for r in bt.head(limit).to_dict("records")
        ]
        more = len(bt) - limit
        console.print(
            _grid(
                "waiting and waking threads",
                [("lock", "k"), ("thread", "l"), ("role", "k"), ("waits", "r"), ("waited", "r"), ("wake calls", "r")],
                rows,
                f"{more} more in --format json" if more > 0 else None,
            )
        )
    for note in lk.notes:
        console.print(f"[dim]note: {note}[/]")


def render_offcpu(off: Any, console: Console | None = None) -> None:
    """The ``--offcpu`` view (``analyses.offcpu.OffCpu``): each thread's
    lifetime split into running, blocked on a lock, blocked on anything else,
    and runnable but waiting for a CPU."""
    console = console or Console()
    console.print("[bold]vmtrace off-CPU[/]  where each thread's time went (first to last event of the thread)")
    _lost_line(off.lost_events, off.lost_markers, console)
    shown = ["running_ns", "lock_ns", "bql_ns", "other_blocked_ns", "runnable_ns", "woken_wait_ns"]
    heads = [("running", "r"), ("lock", "r"), ("BQL", "r"), ("other", "r"), ("runnable", "r"), ("woken", "r")]
    if off.threads["unknown_ns"].any():
        shown.append("unknown_ns")
        heads.append(("unknown", "r"))
    cols = [("thread", "l"), ("role", "k"), ("time ms", "r")] + heads + [("switches", "r")]

    def row(label: str, role: str, r: dict[str, Any]) -> list[str]:
        life = r["time_ns"] or 1
        return [label, role, fmt_ms(r["time_ns"])] + [fmt_pct(r[c] / life) for c in shown] + [f"{int(r['switches']):,}"]

    rows = [row(f"{r['name']} [{int(r['tid'])}]", str(r["role"]), r) for r in off.threads.to_dict("records")]
    v = off.totals.get("vcpu") or {}
    if v.get("time_ns"):
        rows.append(
            row(
                "all vCPUs",
                "vcpu",
                {**v, "switches": int(off.threads.loc[off.threads["role"] == "vcpu", "switches"].sum())},
            )
        )
    console.print(
        _grid(
            "share of each thread's time: running; blocked on a lock (BQL: of it, the BQL), on "
            "anything else; runnable without a CPU (woken: of it, after a wakeup)",
            cols,
            rows,
        )
    )
    if v.get("time_ns"):
        console.print(
            f"vCPU threads: blocked on locks {fmt_ms(v['lock_ns'])} ms (BQL {fmt_ms(v['bql_ns'])} ms); runnable "
            f"without a CPU {fmt_ms(v['runnable_ns'])} ms, of it {fmt_ms(v['woken_wait_ns'])} ms after a wakeup "
            "(oversubscription, not lock contention)"
        )
    for note in off.notes:
        console.print(f"[dim]note: {note}[/]")


_PHASE_LABELS = {
    "notify": "notify (kick -> pickup)",
    "bql_wait": "BQL wait",
    "queued": "queued (pickup -> pop)",
    "processing": "processing (pop -> push)",
    "disk": "disk I/O",
    "lock_wait": "other lock wait",
    "tail": "tail (push -> interrupt)",
    "irq": "completion interrupt",
    "total": "total",
}


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
    _lost_line(rq.lost_events, rq.lost_markers, console)
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
                        _PHASE_LABELS.get(p["phase"], p["phase"]),
                        fmt_dur(p["mean_ns"]),
                        fmt_pct(p["share"]),
                        fmt_dur(p["p50_ns"]),
                        fmt_dur(p["p90_ns"]),
                        fmt_dur(p["p99_ns"]),
                        f"{int(p['nonzero']):,}",
                    ]
                )
            console.print(
                _grid(
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
            _grid(
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
                _grid(
                    "uninterruptible sleeps (disk I/O) of non-vCPU threads",
                    [("role", "k"), ("threads", "r"), ("sleeps", "r"), ("p50", "r"), ("p90", "r"), ("p99", "r")],
                    rows,
                )
            )
    for note in rq.notes:
        console.print(f"[dim]note: {note}[/]")
