"""virtio-blk as the kernel sees it: the queue-notify port, the guest's
kicks, the thread each kick woke, and the I/O threads' disk sleeps.

This is what a trace without the VMM's request probes (QEMU has none)
still tells: one row per kick with the thread its ioeventfd woke, and the
uninterruptible sleeps of the threads doing the I/O.  The per-request view
(``analyses.requests``) also takes the notify port and the kicks from here.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from vmtrace.schema import EVENT_CODE
from vmtrace.trace import Trace

from . import cache
from .intervals import i64, last_match
from .offcpu import thread_info
from .runs import vcpu_threads

__all__ = [
    "notify_port",
    "kicks",
    "kernel_notifications",
    "kernel_disk_waits",
    "notification_summary",
    "disk_wait_summary",
    "quantiles",
]

_TASK_UNINTERRUPTIBLE = 2
_QUANTILES = (50, 90, 99)


def quantiles(v: np.ndarray) -> dict[str, float]:
    if len(v) == 0:
        return {f"p{q}_ns": float("nan") for q in _QUANTILES}
    qs = np.percentile(v, _QUANTILES)
    return {f"p{q}_ns": float(x) for q, x in zip(_QUANTILES, qs, strict=True)}


def notify_port(trace: Trace, batches: pd.DataFrame | None = None) -> tuple[int | None, str]:
    """The queue-notify port and how it was found: from the batch spans (the
    reference VMM names its ioeventfd port), from the benchmark guest's
    ``blkdev`` record (I/O BAR + 0x10), else a guess from the kernel events."""
    if batches is not None and len(batches):
        ports = batches["addr"].to_numpy(dtype=np.int64, na_value=0)
        ports = ports[ports > 0]
        if len(ports):
            return int(np.bincount(ports).argmax()), "the VMM's batch probes"
    io = ((trace.meta.get("bench") or {}).get("blkdev") or {}).get("io")
    if io:
        try:
            return int(str(io), 0) + 0x10, "the benchmark guest's blkdev record (BAR0 + 0x10)"
        except ValueError:
            pass
    return _guess_port(trace), "a guess: the PIO port whose writes most often wake a non-vCPU thread"


def kicks(trace: Trace, port: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Times and threads of the guest's writes to the notify port, sorted."""
    ev = trace.events
    if port is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes = ev["event"].cat.codes.to_numpy()
    rows = np.flatnonzero(codes == EVENT_CODE["pio"])
    pio = ev.iloc[rows]
    m = (pio["addr"].to_numpy(dtype=np.int64, na_value=-1) == port) & pio["write"].to_numpy(dtype=bool, na_value=False)
    return i64(pio, "ts_ns")[m], i64(pio, "tid")[m]


def _guess_port(trace: Trace, window_ns: int = 200_000) -> int | None:
    """The PIO write port after which a non-vCPU thread is most often woken
    by the writing vCPU: an ioeventfd's signature.  None when no port has
    ten such writes making up half of its writes."""
    ev = trace.events
    vcpus = np.asarray(sorted(vcpu_threads(trace)), dtype=np.int64)
    codes = ev["event"].cat.codes.to_numpy()
    pio = ev.iloc[np.flatnonzero(codes == EVENT_CODE["pio"])]
    pio = pio[pio["write"].to_numpy(dtype=bool, na_value=False)]
    wk = ev.iloc[np.flatnonzero(codes == EVENT_CODE["wakeup"])]
    wk = wk[~np.isin(i64(wk, "tid"), vcpus) & wk["peer_tid"].notna().to_numpy()]
    if pio.empty or wk.empty:
        return None
    p_ts, p_tid = i64(pio, "ts_ns"), i64(pio, "tid")
    # The first wakeup by the same thread at or after the write.
    idx = last_match(p_tid, -p_ts, i64(wk, "peer_tid"), -i64(wk, "ts_ns"))
    ok = idx >= 0
    ok[ok] = i64(wk, "ts_ns")[idx[ok]] - p_ts[ok] <= window_ns
    ports = pio["addr"].to_numpy(dtype=np.int64, na_value=-1)
    best, best_n = None, 0
    for p in np.unique(ports[ports >= 0]):
        mine = ports == p
        n = int(ok[mine].sum())
        if n >= 10 and n * 2 >= int(mine.sum()) and n > best_n:
            best, best_n = int(p), n
    return best


def kernel_notifications(trace: Trace, port: int | None) -> pd.DataFrame:
    """One row per kick on ``port``: ``vcpu`` Int16 (the kicking vCPU),
    ``kick_ns`` int64, and the non-vCPU thread that the kicking thread woke
    next (the ioeventfd's poller): ``tid`` Int32, ``role``, ``thread``,
    ``wakeup_ns``/``oncpu_ns`` Int64 (kick -> its wakeup; kick -> back on a
    CPU).  NA where no such wakeup followed within 1 ms (the poller was
    already awake, or the kick found no one waiting)."""
    ev = trace.events
    k_ts, k_tid = kicks(trace, port)
    vcpus = vcpu_threads(trace)
    codes = ev["event"].cat.codes.to_numpy()
    wk = ev.iloc[np.flatnonzero(codes == EVENT_CODE["wakeup"])]
    wk = wk[~np.isin(i64(wk, "tid"), np.asarray(list(vcpus), dtype=np.int64)) & wk["peer_tid"].notna().to_numpy()]
    n = len(k_ts)
    tid = np.full(n, -1, dtype=np.int64)
    wake = np.full(n, -1, dtype=np.int64)
    if n and len(wk):
        j = last_match(k_tid, -k_ts, wk["peer_tid"].to_numpy(dtype=np.int64), -i64(wk, "ts_ns"))
        ok = j >= 0
        ok[ok] = i64(wk, "ts_ns")[j[ok]] - k_ts[ok] <= 1_000_000
        tid[ok] = i64(wk, "tid")[j[ok]]
        wake[ok] = i64(wk, "ts_ns")[j[ok]]
    ins = ev.iloc[np.flatnonzero(codes == EVENT_CODE["sched_in"])]
    oncpu = np.full(n, -1, dtype=np.int64)
    got = tid >= 0
    if got.any() and len(ins):
        j = last_match(tid[got], -wake[got], i64(ins, "tid"), -i64(ins, "ts_ns"))
        ok = j >= 0
        idx = np.flatnonzero(got)[ok]
        oncpu[idx] = i64(ins, "ts_ns")[j[ok]]
    info = thread_info(trace, np.where(got, tid, 0))

    def na(v: np.ndarray, m: np.ndarray, dtype: Literal["Int16", "Int32", "Int64"]) -> Any:
        a = pd.array(np.where(m, v, 0), dtype=dtype)
        a[~m] = pd.NA
        return a

    none = np.array(None, dtype=object)  # what numpy's stubs accept for a None fill
    return pd.DataFrame(
        {
            "vcpu": na(np.array([vcpus.get(int(t), -1) for t in k_tid], dtype=np.int64), np.ones(n, bool), "Int16"),
            "kick_ns": k_ts,
            "tid": na(tid, got, "Int32"),
            "role": np.where(got, info["role"].to_numpy(dtype=object), none),
            "thread": np.where(got, info["name"].to_numpy(dtype=object), none),
            "wakeup_ns": na(wake - k_ts, got, "Int64"),
            "oncpu_ns": na(oncpu - k_ts, oncpu >= 0, "Int64"),
        }
    )


def kernel_disk_waits(trace: Trace) -> pd.DataFrame:
    """Uninterruptible sleeps (prev_state D: what a thread doing direct disk
    I/O shows) of the target's non-vCPU threads: ``tid`` int32, ``role``,
    ``thread``, ``start_ns``, ``dur_ns`` int64."""
    ev = trace.events
    codes = ev["event"].cat.codes.to_numpy()
    outs = ev.iloc[np.flatnonzero(codes == EVENT_CODE["sched_out"])]
    d = (outs["value"].to_numpy(dtype=np.int64, na_value=0) & 0xFF) == _TASK_UNINTERRUPTIBLE
    off = cache.offcpu_spans(trace)
    vcpus = np.asarray(list(vcpu_threads(trace)), dtype=np.int64)
    key = pd.MultiIndex.from_arrays([i64(outs, "tid")[d], i64(outs, "ts_ns")[d]])
    mine = pd.MultiIndex.from_arrays([i64(off, "tid"), i64(off, "start_ns")]).isin(key)
    off = off[mine & ~np.isin(i64(off, "tid"), vcpus)]
    info = thread_info(trace, i64(off, "tid"))
    return pd.DataFrame(
        {
            "tid": off["tid"].to_numpy(dtype=np.int32),
            "role": info["role"].to_numpy(),
            "thread": info["name"].to_numpy(),
            "start_ns": i64(off, "start_ns"),
            "dur_ns": i64(off, "dur_ns"),
        }
    )


def notification_summary(n: pd.DataFrame) -> pd.DataFrame:
    """Per woken role: kicks, and kick -> wakeup / -> on CPU percentiles."""
    out = []
    woke = n[n["tid"].notna()]
    for (role, thread), r in woke.groupby(["role", "thread"], sort=False):
        row = {"role": role, "thread": thread, "kicks": len(r)}
        for col in ("wakeup_ns", "oncpu_ns"):
            v = r[col].dropna().to_numpy(dtype=np.int64)
            q = quantiles(v)
            row.update({f"{col[:-3]}_{k}": x for k, x in q.items()})
        out.append(row)
    if len(n) - len(woke):
        out.append({"role": None, "thread": "(no thread woken within 1 ms)", "kicks": len(n) - len(woke)})
    return pd.DataFrame(out)


def disk_wait_summary(d: pd.DataFrame) -> pd.DataFrame:
    """Per role of the I/O threads: threads, uninterruptible sleeps and their percentiles."""
    out = []
    for role, r in d.groupby("role", sort=False):
        out.append(
            {
                "role": role,
                "threads": int(r["tid"].nunique()),
                "sleeps": len(r),
                **quantiles(r["dur_ns"].to_numpy(dtype=np.int64)),
            }
        )
    return pd.DataFrame(out)
