"""BQL call sites: QEMU's ``info sync-profile`` table, plus hold time.

QEMU passes the caller's ``__FILE__`` and ``__LINE__`` to its BQL function
(``qemu_mutex_lock_iothread_impl(file, line)`` up to 8.x, ``bql_lock_impl``
since 9.0).  ``vmtrace record --callsites`` (and ``--precise``) reads them at
the function's uprobe: each ``lock_begin`` of the BQL then has ``value`` = an
index into the trace metadata's ``callsites`` list of "file:line" strings.

Per call site this module counts, like QSP:

* acquisitions: ``lock_begin`` -> ``lock_acquired`` pairs of one thread;
* wait: the time inside the lock call (``lock_begin`` -> ``lock_acquired``).
  QSP times ``qemu_mutex_lock_impl`` inside the BQL function with
  ``get_clock()``; vmtrace's span starts at the BQL function's entry uprobe
  and ends at its return uprobe, so each acquisition's wait also holds the
  part of the probes' own cost that lands between the two stamps (a few
  microseconds here, against QSP's ~0.1 us for an uncontended lock).  The
  two agree where waits are long, not where they are short;
* contended: acquisitions whose lock call blocked in ``futex`` on the BQL's
  word, and their wait — the contention QSP's mean hides among fast paths;
* hold: ``lock_acquired`` -> the thread's next ``lock_release`` (the unlock
  uprobe).  QSP has no hold time.  A condition-variable wait on the BQL
  (``qemu_cond_wait(..., &bql)``) drops and retakes the mutex without the
  BQL functions, so such a hold spans the wait: vCPUs that halt show it.

Sampled recordings (``--callsites=sampled``) had the uprobes on only in
windows (metadata ``callsite_sampling.windows``); counts are scaled by
covered/total time and the result says it is sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.trace import Trace

from .intervals import lost_windows, overlaps_loss

__all__ = ["CallsiteTable", "CALLSITE_COLUMNS", "callsite_acquisitions", "callsite_table", "has_callsites"]

#: Columns of CallsiteTable.sites, in order.
CALLSITE_COLUMNS = (
    "site",
    "file",
    "line",
    "acquisitions",
    "est_acquisitions",
    "share",
    "wait_ns",
    "wait_mean_ns",
    "wait_p99_ns",
    "contended",
    "contended_wait_ns",
    "contended_mean_ns",
    "holds",
    "hold_ns",
    "hold_mean_ns",
    "hold_p99_ns",
)


def has_callsites(trace: Trace) -> bool:
    """Whether the trace recorded BQL call sites."""
    return bool(trace.meta.get("callsites"))


def _site_names(trace: Trace) -> list[str]:
    return [str(s) for s in trace.meta.get("callsites") or []]


def callsite_acquisitions(trace: Trace, until_ns: int | None = None) -> pd.DataFrame:
    """One row per BQL acquisition whose call site was recorded.

    ``until_ns``: only acquisitions whose lock call returned at or before
    that time (the comparison window with QSP).

    :returns: a DataFrame with: ``tid`` int32; ``site`` str ("file:line");
        ``begin_ns``, ``acquired_ns`` int64; ``release_ns`` Int64 (NA when
        no unlock followed on that thread); ``wait_ns`` int64; ``hold_ns``
        Int64; ``contended`` bool (the lock call blocked in futex on the
        BQL's word).
    """
    cols = ["tid", "site", "begin_ns", "acquired_ns", "release_ns", "wait_ns", "hold_ns", "contended"]
    names = _site_names(trace)
    ev = trace.events
    lock = ev[
        ev["event"].isin(["lock_begin", "lock_acquired", "lock_release"]).to_numpy()
        & (ev["name"].astype(object) == "BQL").to_numpy()
    ]
    if not names or not len(lock):
        return pd.DataFrame({c: [] for c in cols})
    order = np.lexsort((np.arange(len(lock)), lock["ts_ns"].to_numpy(), lock["tid"].to_numpy()))
    lock = lock.iloc[order]
    kind = lock["event"].astype(object).to_numpy()
    tid = lock["tid"].to_numpy()
    ts = lock["ts_ns"].to_numpy()
    val = lock["value"].to_numpy(dtype="float64", na_value=np.nan)
    n = len(lock)
    nxt = np.arange(1, n + 1)
    nxt[-1] = n - 1
    same1 = np.r_[tid[1:] == tid[:-1], False]
    is_begin = (kind == "lock_begin") & ~np.isnan(val)
    ok = is_begin & same1 & (kind[nxt] == "lock_acquired")
    b = np.flatnonzero(ok)
    a = b + 1
    # The release: the thread's next lock event after the acquisition.
    r = np.minimum(a + 1, n - 1)
    has_rel = (r > a) & (tid[r] == tid[a]) & (kind[r] == "lock_release")
    site_idx = val[b].astype(np.int64)
    valid = (site_idx >= 0) & (site_idx < len(names))
    b, a, r, has_rel, site_idx = b[valid], a[valid], r[valid], has_rel[valid], site_idx[valid]
    out = pd.DataFrame(
        {
            "tid": tid[b].astype(np.int32),
            "site": np.asarray(names, dtype=object)[site_idx],
            "begin_ns": ts[b].astype(np.int64),
            "acquired_ns": ts[a].astype(np.int64),
            "release_ns": pd.array(np.where(has_rel, ts[r], 0), dtype="Int64"),
        }
    )
    out.loc[~has_rel, "release_ns"] = pd.NA
    out["wait_ns"] = out["acquired_ns"] - out["begin_ns"]
    out["hold_ns"] = out["release_ns"] - out["acquired_ns"]
    out["contended"] = _blocked_inside(ev, trace, out)
    windows = lost_windows(ev)
    if len(windows) and len(out):
        end = out["release_ns"].fillna(out["acquired_ns"]).to_numpy(dtype=np.int64)
        out = out[~overlaps_loss(out["begin_ns"].to_numpy(), end, windows)]
    if until_ns is not None:
        out = out[out["acquired_ns"].to_numpy() <= until_ns]
    return out.reset_index(drop=True)[cols]


def _blocked_inside(ev: pd.DataFrame, trace: Trace, acq: pd.DataFrame) -> np.ndarray:
    """For each acquisition: did its thread enter futex on the BQL's word
    between lock_begin and lock_acquired?"""
    word = trace.bql().get("futex_uaddr")
    if not word or not len(acq):
        return np.zeros(len(acq), dtype=bool)
    fx = ev[(ev["event"] == "futex_enter").to_numpy() & (ev["addr"] == word).fillna(False).to_numpy()]
    if not len(fx):
        return np.zeros(len(acq), dtype=bool)
    left = acq[["tid", "begin_ns", "acquired_ns"]].reset_index().sort_values("begin_ns")
    right = pd.DataFrame({"tid": fx["tid"].to_numpy(), "fx_ns": fx["ts_ns"].to_numpy()}).sort_values("fx_ns")
    # The first futex wait of the thread at or after each lock_begin.
    m = pd.merge_asof(left, right, left_on="begin_ns", right_on="fx_ns", by="tid", direction="forward")
    inside = (m["fx_ns"].notna() & (m["fx_ns"] <= m["acquired_ns"])).to_numpy()
    out = np.zeros(len(acq), dtype=bool)
    out[m["index"].to_numpy()] = inside
    return out


@dataclass
class CallsiteTable:
    """Per call site figures (``sites``: one row per site, CALLSITE_COLUMNS,
    times int64 ns or float ns for means and p99s, sorted by wait), and how
    they were sampled: ``sampled`` bool, ``coverage`` float (the share of the
    recording the uprobes were on; 1.0 when not sampled)."""

    sites: pd.DataFrame
    sampled: bool = False
    coverage: float = 1.0
    duty: float | None = None
    notes: list[str] = field(default_factory=list)
    vmm: str = ""  # "qemu 10.0.2": the target and its version, from the metadata

    def to_json(self) -> dict[str, Any]:
        rows = self.sites.astype(object).where(self.sites.notna(), None).to_dict(orient="records")
        return {
            "vmm": self.vmm,
            "sampled": self.sampled,
            "coverage": self.coverage,
            "duty": self.duty,
            "notes": list(self.notes),
            "sites": rows,
        }


def _p99(x: pd.Series) -> float:
    return float(np.percentile(x.to_numpy(dtype=np.float64), 99)) if len(x) else float("nan")


def callsite_table(trace: Trace, until_ns: int | None = None) -> CallsiteTable:
    """QSP's per-call-site table plus hold time, from a ``--callsites`` or
    ``--precise`` trace (see the module doc for each column's definition).
    ``until_ns`` as in :func:`callsite_acquisitions`.  A trace without call
    sites gives an empty table whose note says how to record them."""
    acq = callsite_acquisitions(trace, until_ns)
    sampling = trace.meta.get("callsite_sampling") or {}
    sampled = sampling.get("mode") == "sampled"
    coverage = 1.0
    notes: list[str] = []
    if sampled:
        windows = sampling.get("windows") or []
        on = sum(max(0, int(e) - int(s)) for s, e in windows)
        span = int(trace.meta.get("end_ns") or 0) - int(trace.meta.get("start_ns") or 0)
        coverage = on / span if span > 0 else 0.0
        notes.append(
            f"sampled: uprobes on for {coverage:.1%} of the recording; "
            "est_acquisitions and share are extrapolated from the windows"
        )
    if not has_callsites(trace):
        notes.append("no call sites in this trace: record with --callsites or --precise (QEMU only)")
    rows = []
    for site, g in acq.groupby("site", sort=False):
        held = g["hold_ns"].dropna().astype(np.int64)
        cont = g[g["contended"]]
        file, _, line = str(site).rpartition(":")
        rows.append(
            {
                "site": site,
                "file": file,
                "line": int(line) if line.isdigit() else -1,
                "acquisitions": len(g),
                "est_acquisitions": len(g) / coverage if coverage > 0 else float("nan"),
                "share": 0.0,
                "wait_ns": int(g["wait_ns"].sum()),
                "wait_mean_ns": float(g["wait_ns"].mean()),
                "wait_p99_ns": _p99(g["wait_ns"]),
                "contended": len(cont),
                "contended_wait_ns": int(cont["wait_ns"].sum()),
                "contended_mean_ns": float(cont["wait_ns"].mean()) if len(cont) else float("nan"),
                "holds": len(held),
                "hold_ns": int(held.sum()),
                "hold_mean_ns": float(held.mean()) if len(held) else float("nan"),
                "hold_p99_ns": _p99(held),
            }
        )
    sites = pd.DataFrame(rows, columns=list(CALLSITE_COLUMNS))
    if len(sites):
        sites["share"] = sites["acquisitions"] / sites["acquisitions"].sum()
        sites = sites.sort_values(["wait_ns", "acquisitions"], ascending=False).reset_index(drop=True)
    target = trace.meta.get("target") or {}
    vmm = " ".join(str(x) for x in (target.get("vmm"), target.get("vmm_version")) if x)
    return CallsiteTable(sites, sampled, coverage, sampling.get("duty"), notes, vmm)
