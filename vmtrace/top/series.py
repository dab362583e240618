"""The view of a ``record --aggregate`` trace: its interval snapshots.

The trace holds no events; its metadata's ``aggregate`` holds one snapshot
(``Snapshot.to_json``) per interval.  ``aggregate_view`` reads them back
into a time series of totals and the rows of the whole recording, for the
terminal, JSON and HTML renderers of ``vmtrace report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from vmtrace.errors import VmtraceError
from vmtrace.trace import Trace

from .aggregate import Snapshot, merge
from .boundaries import SHOWN

__all__ = ["AggregateView", "aggregate_view", "is_aggregate"]


def is_aggregate(trace: Trace) -> bool:
    """Whether ``trace`` was written by ``record --aggregate``."""
    return bool(trace.meta.get("aggregate"))


@dataclass
class AggregateView:
    """``series``: one row per interval: ``t_s`` float (seconds since the
    first), ``interval_s`` float, ``exits`` int, ``exits_s`` float, mean
    cycles per exit of each shown component and ``total``, ``bql_share``
    float percent of futex wait on the BQL (NA when the BQL is unknown).
    ``whole``: the recording as one ``Snapshot``; ``rows``: its rows by vCPU
    and exit kind (``Snapshot.rows``)."""

    series: pd.DataFrame
    whole: Snapshot
    rows: pd.DataFrame
    interval_s: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval_s,
            "intervals": len(self.series),
            "series": self.series.to_dict(orient="records"),
            "rows": self.rows.to_dict(orient="records"),
            "futex_words": self.whole.futex_words().to_dict(orient="records"),
            "bql_share": self.whole.bql_share(),
            "dropped": int(self.whole.counters.dropped),
            "notes": self.notes,
        }


def aggregate_view(trace: Trace) -> AggregateView:
    """The aggregate view of ``trace``; raises ``VmtraceError`` when the
    trace was not recorded with ``--aggregate``."""
    agg = trace.meta.get("aggregate")
    if not agg:
        raise VmtraceError("this trace was not recorded with --aggregate: it has no interval snapshots")
    tsc = trace.tsc_hz or 1_000_000_000
    target = trace.meta.get("target") or {}
    header = {
        "tsc_hz": tsc,
        "vmm": target.get("vmm"),
        "vmm_version": target.get("vmm_version"),
        "kvm_flavour": trace.meta.get("kvm_flavour"),
        "pid": target.get("pid"),
    }
    snaps = [Snapshot.from_json(s) for s in agg.get("snapshots") or []]
    for s in snaps:
        s.header.update(header)
    t0 = snaps[0].start_ns if snaps else 0
    k = tsc / 1e9
    rows = []
    for s in snaps:
        df = s.exits()
        n = int(df["count"].sum())
        row: dict[str, Any] = {
            "t_s": (s.end_ns - t0) / 1e9,
            "interval_s": s.seconds,
            "exits": n,
            "exits_s": n / s.seconds,
        }
        for c in SHOWN + ("total",):
            row[c] = float(df[f"{c}_ns"].sum()) / n * k if n else 0.0
        row["bql_share"] = s.bql_share()
        rows.append(row)
    series = pd.DataFrame(rows, columns=["t_s", "interval_s", "exits", "exits_s", *SHOWN, "total", "bql_share"])
    whole = Snapshot(
        t0,
        snaps[-1].end_ns if snaps else 0,
        merge([s.counters for s in snaps]),
        {t: v for s in snaps for t, v in s.vcpus.items()},
        {},
        {},
        dict(header),
    )
    return AggregateView(
        series, whole, whole.rows(by="all"), float(agg.get("interval_s") or 0), list(trace.meta.get("notes") or [])
    )


def render_aggregate(view: AggregateView, console: Any) -> None:
    """The terminal form: the time series, then the recording's rows."""
    from .render import table_lines

    console.print(
        f"Aggregate recording: {len(view.series)} intervals of {view.interval_s:g}s "
        "(in-kernel counters, no events); mean cycles per exit"
    )
    cols = ["t_s", "exits", "exits_s", *SHOWN, "total", "bql_share"]
    console.print(" ".join(f"{c:>10}" for c in cols))
    for _, r in view.series.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{'-':>10}" if v is None or v != v else f"{v:>10.1f}" if c in ("t_s",) else f"{v:>10.0f}")
        console.print(" ".join(cells))
    console.print("")
    for line in table_lines(view.whole, by="all"):
        console.print(line, highlight=False, markup=False)
    for n in view.notes:
        console.print(f"note: {n}", highlight=False, markup=False)
