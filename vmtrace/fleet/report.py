"""The fleet view: what many traces' summary rows say together.

``fleet_report`` is a pure function of the fleet table (``read_fleet``):
fleet-wide and per-group means weighted by exits (so they equal the mean
over every exit of those traces), quantiles read off merged histograms,
the traces that waited longest for the BQL, and the traces that failed.
Rendering is ``vmtrace.fleet.render``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from vmtrace.errors import VmtraceError

from . import histograms as hist
from .summary import COLUMNS, COMPONENTS

__all__ = ["FleetReport", "fleet_report", "group_columns", "merged_histograms", "TOP_BY"]

#: What "top traces by BQL wait" ranks by: mean BQL wait per exit, cycles.
TOP_BY: Final = "bql_wait_mean"
_TOP_COLS: Final = [
    "path",
    "host",
    "vmm",
    "vmm_version",
    "locking",
    "vcpus",
    "workload",
    "exits",
    "bql_wait_mean",
    "bql_share",
    "bql_wait_p99",
    "total_mean",
    "top_lock",
]
# Columns that hold lists: not something to group by.
_NESTED: Final = {"top_locks", "notes", *(f"hist_{c}" for c in COMPONENTS)}


@dataclass
class FleetReport:
    """The fleet view of a fleet table.

    ``overall``: one row per component: ``component``, ``mean`` (cycles per
    exit over every exit of the fleet), ``p50``, ``p99`` (from the merged
    histogram: a bucket's geometric middle), ``p50_low``/``p50_high`` and
    ``p99_low``/``p99_high`` (the bucket's bounds, which hold the true
    quantile), ``share`` (of the mean total).  ``groups``: one row per value
    of ``by``: the ``by`` columns, ``traces``, ``exits``, exit-weighted
    ``{component}`` means, ``bql_share`` (BQL wait over total, over all the
    group's exits), ``max_bql_share`` (its worst trace), ``p50``/``p99`` of
    the total from the group's merged histogram; most exits first.
    ``top``: the ``top_n`` traces with the longest mean BQL wait per exit.
    ``failed``: ``path``, ``error`` of the traces without a summary.
    ``merged``: component -> counts per bucket over every summarised trace.
    """

    traces: int
    summarised: int
    exits: int
    lost_events: int
    by: list[str]
    overall: pd.DataFrame
    groups: pd.DataFrame
    top: pd.DataFrame
    failed: pd.DataFrame
    merged: dict[str, np.ndarray]
    rows: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


def group_columns() -> list[str]:
    """Columns a report can group by: every summary column but the lists."""
    return [c for c in COLUMNS if c not in _NESTED]


def merged_histograms(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Component -> the element-wise sum of the rows' histograms."""
    return {c: hist.merge(rows[f"hist_{c}"]) if len(rows) else np.zeros(hist.N_BUCKETS, np.int64) for c in COMPONENTS}


def _weighted(rows: pd.DataFrame, col: str) -> float:
    exits = rows["exits"].to_numpy(dtype=np.float64)
    n = exits.sum()
    return float((rows[col].to_numpy(dtype=np.float64) * exits).sum() / n) if n else np.nan


def _quantiles(counts: np.ndarray, q: float) -> tuple[float, float, float]:
    found = hist.quantile(counts, q)
    return (np.nan, np.nan, np.nan) if found is None else (found.estimate, found.low, found.high)


def _overall(ok: pd.DataFrame, merged: dict[str, np.ndarray]) -> pd.DataFrame:
    total = _weighted(ok, "total_mean")
    rows = []
    for c in COMPONENTS:
        mean = _weighted(ok, f"{c}_mean")
        p50, p50_lo, p50_hi = _quantiles(merged[c], 0.50)
        p99, p99_lo, p99_hi = _quantiles(merged[c], 0.99)
        rows.append(
            {
                "component": c,
                "mean": mean,
                "share": mean / total if total else np.nan,
                "p50": p50,
                "p99": p99,
                "p50_low": p50_lo,
                "p50_high": p50_hi,
                "p99_low": p99_lo,
                "p99_high": p99_hi,
            }
        )
    return pd.DataFrame(rows)


def _groups(ok: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    cols = [*by, "traces", "exits", *COMPONENTS, "bql_share", "max_bql_share", "p50", "p99"]
    if not by or ok.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for key, grp in ok.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        merged = hist.merge(grp["hist_total"])
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row.update(traces=len(grp), exits=int(grp["exits"].sum()))
        for c in COMPONENTS:
            row[c] = _weighted(grp, f"{c}_mean")
        row["bql_share"] = row["bql_wait"] / row["total"] if row["total"] else 0.0
        row["max_bql_share"] = float(grp["bql_share"].max())
        row["p50"] = _quantiles(merged, 0.50)[0]
        row["p99"] = _quantiles(merged, 0.99)[0]
        out.append(row)
    return pd.DataFrame(out, columns=cols).sort_values("exits", ascending=False, kind="stable").reset_index(drop=True)


def fleet_report(rows: pd.DataFrame, by: list[str] | None = None, top_n: int = 10) -> FleetReport:
    """The fleet view of ``rows`` (a fleet table, see ``read_fleet``),
    grouped by the summary columns ``by``.  Raises ``VmtraceError`` for a
    column that is not one."""
    by = [b for b in (by or []) if b]
    allowed = group_columns()
    unknown = [b for b in by if b not in allowed]
    if unknown:
        raise VmtraceError(f"cannot group by {', '.join(unknown)}: choose among {', '.join(allowed)}")
    if top_n < 0:
        raise VmtraceError("--top must be 0 or more")
    failed_mask = rows["error"].notna().to_numpy(dtype=bool)
    # A trace with no exit in scope says nothing about cost per exit.
    ok = rows[~failed_mask & (rows["exits"].fillna(0).to_numpy(dtype=np.int64) > 0)].reset_index(drop=True)
    merged = merged_histograms(ok)
    top = ok.sort_values([TOP_BY, "bql_share"], ascending=False, kind="stable").head(top_n)
    return FleetReport(
        traces=len(rows),
        summarised=len(ok),
        exits=int(ok["exits"].sum()) if len(ok) else 0,
        lost_events=int(rows["lost_events"].fillna(0).sum()),
        by=by,
        overall=_overall(ok, merged),
        groups=_groups(ok, by),
        top=top[[c for c in _TOP_COLS if c in top]].reset_index(drop=True),
        failed=rows.loc[failed_mask, ["path", "error"]].reset_index(drop=True),
        merged=merged,
        rows=ok,
    )
