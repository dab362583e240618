"""``vmtrace compare``: the breakdowns of several traces side by side.

The first trace is the baseline; every other column carries its delta from
it.  Pure functions of the traces, so a notebook gets the same table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .analyses.breakdown import Breakdown, bql_breakdown
from .analyses.partition import COMPONENTS
from .errors import VmtraceError
from .trace import read_trace

__all__ = ["ROWS", "label_for", "compare_breakdowns", "compare_traces", "comparison_json"]

#: Rows of the comparison: the partition, the BQL's part of lock_wait, the
#: total, and the guest's own number where the trace carries one.
ROWS = (*COMPONENTS, "bql_wait", "total", "guest_cycles_per_op", "exits")


def label_for(path: Path, taken: set[str]) -> str:
    """A short column label: the file's stem, made unique."""
    label = Path(path).stem
    n = 2
    while label in taken:
        label, n = f"{Path(path).stem}#{n}", n + 1
    return label


def compare_breakdowns(breakdowns: dict[str, Breakdown]) -> pd.DataFrame:
    """Rows ``ROWS``; per trace a column of mean cycles per exit and, for all
    but the first, ``<label> Δ`` (absolute) and ``<label> Δ%`` columns."""
    if len(breakdowns) < 2:
        raise VmtraceError("compare needs at least two traces")
    cols: dict[str, list[Any]] = {}
    base_label, base = next(iter(breakdowns.items()))
    base_vals = _values(base)
    for label, b in breakdowns.items():
        vals = _values(b)
        cols[label] = vals
        if label == base_label:
            continue
        cols[f"{label} Δ"] = [None if v is None or w is None else v - w for v, w in zip(vals, base_vals, strict=True)]
        cols[f"{label} Δ%"] = [
            None if v is None or not w else 100.0 * (v - w) / w for v, w in zip(vals, base_vals, strict=True)
        ]
    return pd.DataFrame(cols, index=pd.Index(ROWS, name="component"))


def _values(b: Breakdown) -> list[float | None]:
    c = b.components
    return [*(c[k] for k in (*COMPONENTS, "bql_wait", "total")), b.guest_cycles_per_op, float(len(b.exits))]


def compare_traces(paths: list[Path], port: int | None = None) -> tuple[pd.DataFrame, dict[str, Breakdown]]:
    """Read and break down every trace, then :func:`compare_breakdowns`."""
    breakdowns: dict[str, Breakdown] = {}
    for p in paths:
        b = bql_breakdown(read_trace(p), port=port)
        breakdowns[label_for(p, set(breakdowns))] = b
    return compare_breakdowns(breakdowns), breakdowns


def comparison_json(table: pd.DataFrame, breakdowns: dict[str, Breakdown]) -> dict[str, Any]:
    """The comparison as plain JSON: the traces (with their metadata summary)
    and one object per row."""
    return {
        "baseline": next(iter(breakdowns)),
        "traces": {
            label: {
                k: v
                for k, v in b.to_json().items()
                if k in ("vmm", "backend", "mode", "bql", "lost_events", "interpreter")
            }
            for label, b in breakdowns.items()
        },
        "unit": "cycles per exit",
        "rows": [
            {"component": idx, **{k: (None if pd.isna(v) else float(v)) for k, v in row.items()}}
            for idx, row in table.iterrows()
        ],
    }
