"""The locks view (``report --locks``): every futex word the target waited
on, who held the BQL, and the waiting and waking threads, as a terminal
report and a page section.

Formats an ``analyses.locks.Locks``; computes nothing.  The section imports
plotly when it runs, not with this module: a terminal report should not
wait for it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from .palette import COMPONENT_COLORS
from .text import bql_line, fmt_dur, fmt_ms, fmt_pct, grid, lost_line

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vmtrace.report import Report

    from .html import PageLimits, Section

__all__ = ["render_locks", "locks_section"]


def _word_label(name: Any, addr: Any, page: bool = False) -> str:
    """A futex word as a reader knows it: its name when it has one, and its
    address ("?" when unknown).  A terminal column is narrow: "BQL 0x55d0",
    "0x55d0"; the page reads as prose: "BQL (0x55d0)", "futex 0x55d0"."""
    a = f"{int(addr):#x}" if addr is not None and not pd.isna(addr) else "?"
    named = isinstance(name, str) and bool(name)
    if page:
        return f"{name} ({a})" if named else f"futex {a}"
    return f"{name} {a}" if named else a


def render_locks(lk: Any, console: Console | None = None, limit: int = 12) -> None:
    """The ``--locks`` view (``analyses.locks.Locks``)."""
    console = console or Console()
    tot = lk.totals
    console.print("[bold]vmtrace locks[/]  futex words the target waited on, most wait time first")
    lost_line(lk.lost_events, lk.lost_markers, console)
    bql_line(lk.bql, console)
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
                _word_label(r["name"], r["addr"]),
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
        grid(
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
                _word_label(r["name"], r["addr"]),
                f"{int(r['holds']):,}",
                fmt_dur(r["hold_ns"]),
                fmt_dur(r["hold_mean_ns"]),
                fmt_dur(r["hold_p99_ns"]),
            ]
            for r in held.head(limit).to_dict("records")
        ]
        console.print(
            grid(
                "hold times (lock_acquired -> lock_release, as the target reported them)",
                [("lock", "k"), ("holds", "r"), ("held", "r"), ("mean", "r"), ("p99", "r")],
                rows,
            )
        )
    who = _who_held_table(lk, limit)
    if who is not None:
        console.print(who)
    bt = lk.by_thread
    if len(bt):
        rows = [
            [
                _word_label(r["name"], r["addr"]),
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
            grid(
                "waiting and waking threads",
                [("lock", "k"), ("thread", "l"), ("role", "k"), ("waits", "r"), ("waited", "r"), ("wake calls", "r")],
                rows,
                f"{more} more in --format json" if more > 0 else None,
            )
        )
    for note in lk.notes:
        console.print(f"[dim]note: {note}[/]")


def _who_held_table(lk: Any, limit: int) -> Table | None:
    """Who held the BQL (``Locks.who_held``): the wait each holder activity
    caused; None when the trace cannot say."""
    who = getattr(lk, "who_held", None)
    if who is None or not len(who.rows):
        return None
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
    return grid(
        f"who held the BQL: the wait each holder activity caused ({who.waits:,} waits, {fmt_dur(who.wait_ns)}{lost})",
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


# ----------------------------------------------------------------------------
# The page


def locks_section(report: Report, limits: PageLimits) -> Section:
    """The page's locks: wait time per thread and futex word, the words'
    table and who held the BQL."""
    from .html import Section, unavailable

    intro = "Waits are lock spans the VMM reported and blocking futex waits, the BQL apart. "
    locks, why = report.get("locks")
    if locks is None:
        return Section("Locks", [unavailable(why)], intro=intro)
    fig, table = _locks_from_analysis(locks)
    notes = [f"note: {n}" for n in locks.notes]
    who = _who_held_frame(locks)
    return Section("Locks", [x for x in (fig, table, who) if x is not None] + notes, intro=intro)


def _who_held_frame(locks: Any) -> pd.DataFrame | None:
    """``_who_held_table`` for the page."""
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


def _locks_from_analysis(locks: Any) -> tuple[go.Figure | None, pd.DataFrame]:
    import plotly.graph_objects as go

    from .figures import TEMPLATE

    words = locks.words
    if words is None or words.empty:
        return None, pd.DataFrame({"": ["No futex word was waited on in this trace."]})
    us = 1e3
    table = pd.DataFrame(
        {
            "lock": [_word_label(n, a, page=True) for n, a in zip(words["name"], words["addr"], strict=True)],
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
        by = by.assign(lock=[_word_label(n, a, page=True) for n, a in zip(by["name"], by["addr"], strict=True)])
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
