"""Text, JSON and CSV forms of a ``Snapshot``; they only format.

``table_lines`` is what both the batch mode (``--once``/``--batch``) and the
curses view draw: a header, the rows, the BQL's share of wait and the top
futex words.  Columns are separated by at least two spaces, so a script
splits a row on runs of whitespace.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pandas as pd

from .aggregate import ROW_KEYS, Snapshot
from .boundaries import SHOWN

__all__ = ["header_line", "table_lines", "log_json", "csv_header", "csv_row", "COLUMN_TITLES", "SORT_KEYS"]

#: Column titles of the shown components (the BQL is bql_wait).
COLUMN_TITLES = {
    "vmexit": "VMEXIT",
    "emulator": "EMUL",
    "dispatch": "DISPATCH",
    "lock_wait": "LOCKWAIT",
    "bql_wait": "BQL",
}

#: What the sort key cycles through.
SORT_KEYS = ("exits", "total", "vmexit", "emulator", "dispatch", "lock_wait", "bql_wait")


def header_line(s: Snapshot) -> str:
    h = s.header
    vmm = h.get("vmm") or "?"
    if h.get("vmm_version"):
        vmm += f" {h['vmm_version']}"
    vm_col = "guest+vmexit" if h.get("guest_folded", True) else "vmexit"
    bql = s.bql_share()
    bql_txt = f"{bql:.0f}%" if bql is not None else "BQL unknown"
    return (
        f"vmtrace top - pid {h.get('pid', '?')}  VMM {vmm}  KVM {h.get('kvm_flavour', '?')}  "
        f"lost {int(h.get('dropped') or 0)}  interval {s.seconds:.2f}s  "
        f"BQL share of wait {bql_txt}  VMEXIT={vm_col}  cycles @ {s.tsc_hz / 1e9:.2f} GHz"
    )


def _fmt(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}"


def _label(row: pd.Series, by: str) -> list[str]:
    out = []
    for k in ROW_KEYS[by]:
        v = row[k]
        out.append("-" if v is None or (isinstance(v, float) and v != v) else str(v))
    return out


def table_lines(
    s: Snapshot,
    by: str = "all",
    sort: str = "exits",
    vcpu: int | None = None,
    kind: str | None = None,
    limit: int | None = None,
    words: int = 5,
) -> list[str]:
    """The view as lines of text: header, filter line, column titles, rows,
    then the BQL's share and the top futex words."""
    rows = s.rows(by=by, vcpu=vcpu, kind=kind)
    if sort != "exits" and len(rows):
        rows = rows.sort_values(sort, ascending=False, kind="stable")
    keys = [k.upper() for k in ROW_KEYS[by]]
    titles = keys + ["EXITS/S"]
    for c in SHOWN:
        t = COLUMN_TITLES[c]
        titles += [t, f"{t}p99", f"{t}%"]
    titles += ["TOTAL", "TOTALp99"]
    body = []
    for _, r in (rows.head(limit) if limit else rows).iterrows():
        cells = _label(r, by) + [f"{r['exits_s']:.0f}"]
        for c in SHOWN:
            cells += [_fmt(r[c]), _fmt(r[f"{c}_p99"]), f"{r[f'{c}_share']:.0f}"]
        cells += [_fmt(r["total"]), _fmt(r["total_p99"])]
        body.append(cells)
    widths = [max(len(t), *(len(b[i]) for b in body)) if body else len(t) for i, t in enumerate(titles)]
    nkeys = len(keys)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < nkeys else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        )

    filt = [f"rows by {by}", f"sort {sort}"]
    if vcpu is not None:
        filt.append(f"vCPU {vcpu}")
    if kind is not None:
        filt.append(f"kind {kind}")
    out = [header_line(s), " | ".join(filt) + "   (mean and p99 cycles per exit; % of the rows' time)", line(titles)]
    out += [line(b) for b in body] if body else ["(no exits in this interval)"]
    fw = s.futex_words(words)
    if len(fw):
        out.append("")
        out.append("FUTEX WORD          NAME   WAITS   WAIT_MS  SHARE%")
        for _, w in fw.iterrows():
            out.append(
                f"{w['word']:<18}  {w['name'] or '-':<5}  {w['waits']:>6}  {w['wait_ms']:>8.2f}  {w['share']:>6.1f}"
            )
    return out


def _summary(s: Snapshot) -> dict[str, Any]:
    rows = s.rows(by="vcpu")
    exits = int(rows["exits"].sum()) if len(rows) else 0
    out: dict[str, Any] = {
        "t_ns": s.end_ns,
        "interval_s": round(s.seconds, 6),
        "exits": exits,
        "exits_s": exits / s.seconds,
        "dropped": int(s.header.get("dropped") or 0),
        "bql_share": s.bql_share(),
    }
    df = s.exits()
    k = s.tsc_hz / 1e9
    for c in SHOWN + ("total",):
        out[c] = float(df[f"{c}_ns"].sum()) / exits * k if exits else 0.0
    return out


def log_json(s: Snapshot) -> str:
    """One JSON line per interval: the summary, and every row by vCPU and
    kind."""
    obj = _summary(s)
    obj["rows"] = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in s.rows(by="all").to_dict(orient="records")
    ]
    obj["futex_words"] = s.futex_words().to_dict(orient="records")
    return json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o))


def csv_header() -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(["t_ns", "interval_s", "exits", "exits_s", "dropped", "bql_share", *SHOWN, "total"])
    return buf.getvalue()


def csv_row(s: Snapshot) -> str:
    """One CSV row per interval: totals over every vCPU, mean cycles."""
    o = _summary(s)
    buf = io.StringIO()
    csv.writer(buf).writerow(
        [
            o["t_ns"],
            o["interval_s"],
            o["exits"],
            f"{o['exits_s']:.1f}",
            o["dropped"],
            "" if o["bql_share"] is None else f"{o['bql_share']:.2f}",
            *(f"{o[c]:.1f}" for c in SHOWN + ("total",)),
        ]
    )
    return buf.getvalue()
