"""Every futex word the target waited on: who waited, how long, who woke them.

A futex word is the kernel's face of a userspace lock (QEMU's BQL is a
QemuMutex whose first word is the futex; a condition variable or event is a
word too).  From the ``futex_enter``/``futex_exit`` pairs of the target's
threads this module builds one row per wait call, then per word:

- waits, and how long they lasted (total, mean, p50/p90/p99, max);
- the waiting threads, and the waking ones: a wait's waker is the thread
  whose futex wake call on the same word started inside the wait, else the
  ``peer_tid`` of the sched_wakeup that ended it (which names the CPU's idle
  task when the kernel queued the wakeup, so it comes second);
- hold times, where the target reports lock_acquired -> lock_release spans;
- the word's name: the BQL as the recorder identified it, the names the
  target gave words (metadata ``futex_names``, or a ``name`` on futex
  events), and names given by the caller (``--lock NAME=0xADDR``).

It also gives the share of the target's time spent inside futex calls, waits
and wakes apart, on and off CPU: the trace-level face of a profile that
shows most cycles in ``_raw_spin_lock`` under ``futex_wait_setup`` and
``futex_wake`` (on-CPU time inside futex calls is where that spinning is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.trace import Trace

from . import cache
from .holders import HolderTable, holder_summary
from .intervals import (
    last_match,
    lost_windows,
    overlap_by_thread,
    pair_spans,
    require_events,
    thread_lifetimes,
    thread_spans_lost,
)
from .jsonform import bql_json, hex_or_none, records
from .offcpu import thread_info

__all__ = ["word_names", "lock_waits", "lock_holds", "lock_report", "Locks", "EAGAIN"]

EAGAIN = 11  # a wait whose word changed before it slept returns -EAGAIN


def word_names(trace: Trace, extra: dict[int, str] | None = None) -> dict[int, str]:
    """Futex word -> name, from (later wins): lock_begin events (a reported
    lock span's ``name`` and address), ``name`` on futex_enter events, the
    metadata map ``futex_names`` ({addr: name}, keys int or hex strings),
    the recorder's identified locks (the BQL), then ``extra``."""
    names: dict[int, str] = {}
    ev = trace.events
    # Lock spans the target reported name their lock's address; a name on a
    # futex event names its word.
    for event in ("lock_begin", "futex_enter"):
        rows = ev[(ev["event"] == event).to_numpy() & ev["name"].notna().to_numpy()]
        if len(rows):
            pairs = rows[["addr", "name"]].dropna().drop_duplicates()
            names.update({int(a): str(n) for a, n in zip(pairs["addr"], pairs["name"], strict=True) if int(a)})
    names.update(trace.futex_names())
    names.update(extra or {})
    return names


def lock_waits(trace: Trace, names: dict[int, str] | None = None) -> pd.DataFrame:
    """One row per futex wait call of the target's threads.

    Columns: ``tid`` int32, ``start_ns``, ``end_ns``, ``dur_ns`` int64,
    ``uaddr`` uint64 (the futex word), ``name`` str or None, ``op`` int64,
    ``ret`` Int64 (0 woken, -EAGAIN the word had changed, -ETIMEDOUT ...),
    ``offcpu_ns`` int64 (off CPU inside the call; 0 without sched events),
    ``woken_by`` Int32 (the waker, see the module docstring; NA when
    unknown) and ``lost`` bool (the call spans a lost-event marker: another
    call may hide inside, so it is left out of every statistic).
    """
    require_events(trace.events, ["futex_enter", "futex_exit"], "the lock analysis")
    ev = trace.events
    names = names if names is not None else word_names(trace)
    calls = cache.futex_calls(trace)
    waits = calls[calls["kind"] == "wait"].reset_index(drop=True)
    wakes = calls[calls["kind"] == "wake"].reset_index(drop=True)
    tid = waits["tid"].to_numpy(dtype=np.int64)
    start = waits["start_ns"].to_numpy(dtype=np.int64)
    end = waits["end_ns"].to_numpy(dtype=np.int64)
    word = waits["uaddr"].to_numpy(dtype=np.uint64, na_value=0)
    off = cache.offcpu_spans(trace)
    offcpu = overlap_by_thread(
        tid,
        start,
        end,
        off["tid"].to_numpy(dtype=np.int64),
        off["start_ns"].to_numpy(dtype=np.int64),
        off["end_ns"].to_numpy(dtype=np.int64),
    )

    # Waker by futex wake call: the last wake on the same word that started
    # before the wait returned, and not before the wait began.
    wk_word = wakes["uaddr"].to_numpy(dtype=np.uint64, na_value=0)
    codes, inv = np.unique(np.concatenate((word, wk_word)), return_inverse=True)
    w_key, k_key = inv[: len(word)], inv[len(word) :]
    wk_start = wakes["start_ns"].to_numpy(dtype=np.int64)
    wk_tid = wakes["tid"].to_numpy(dtype=np.int64)
    idx = last_match(w_key, end, k_key, wk_start)
    ok = idx >= 0
    ok[ok] = (wk_start[idx[ok]] >= start[ok]) & (wk_tid[idx[ok]] != tid[ok])
    woken_by = np.where(ok, wk_tid[np.clip(idx, 0, None)] if len(wk_tid) else 0, -1)
    # Else the sched_wakeup of the waiter inside the call, when it names a
    # thread (0 is the idle task delivering a queued wakeup).
    wu = ev[(ev["event"] == "wakeup").to_numpy()]
    wu_ts = wu["ts_ns"].to_numpy(dtype=np.int64)
    wu_peer = wu["peer_tid"].to_numpy(dtype=np.int64, na_value=0)
    j = last_match(tid, end, wu["tid"].to_numpy(dtype=np.int64), wu_ts)
    by_sched = j >= 0
    by_sched[by_sched] = (wu_ts[j[by_sched]] >= start[by_sched]) & (wu_peer[j[by_sched]] > 0)
    woken_by = np.where((woken_by < 0) & by_sched, wu_peer[np.clip(j, 0, None)] if len(wu_peer) else 0, woken_by)

    out = pd.DataFrame(
        {
            "tid": tid.astype(np.int32),
            "start_ns": start,
            "end_ns": end,
            "dur_ns": end - start,
            "uaddr": word,
            "name": _name_column(word, names),
            "op": waits["op"].to_numpy(dtype=np.int64),
            "ret": waits["ret"].array,
            "offcpu_ns": offcpu,
            "woken_by": pd.array(woken_by, dtype="Int32"),
            "lost": thread_spans_lost(ev, tid, start, end),
        }
    )
    out.loc[woken_by < 0, "woken_by"] = pd.NA
    return out


def _name_column(words: np.ndarray, names: dict[int, str]) -> np.ndarray:
    uniq, inv = np.unique(words, return_inverse=True)
    return (
        np.array([names.get(int(a)) for a in uniq] + [None], dtype=object)[inv]
        if len(words)
        else np.zeros(0, dtype=object)
    )


def lock_holds(trace: Trace, names: dict[int, str] | None = None) -> pd.DataFrame:
    """Hold spans the target reported (lock_acquired -> lock_release, per
    thread and lock name): ``tid`` int32, ``name`` str, ``uaddr`` uint64
    (the lock's address as reported, else the word of that name, else 0),
    ``start_ns``, ``end_ns``, ``dur_ns`` int64, ``lost`` bool."""
    ev = trace.events
    names = names if names is not None else word_names(trace)
    spans = pair_spans(ev, "lock_acquired", "lock_release", keys=("tid", "name"))
    by_name = {n: a for a, n in names.items()}
    addr = spans["addr"].to_numpy(dtype=np.uint64, na_value=0) if len(spans) else np.zeros(0, np.uint64)
    lock_name = spans["name"].astype(object).to_numpy() if len(spans) else np.zeros(0, dtype=object)
    fallback = np.array([by_name.get(n, 0) for n in pd.unique(lock_name)], dtype=np.uint64)
    if len(addr):
        uniq = pd.unique(lock_name)
        where = pd.Index(uniq).get_indexer(lock_name)
        addr = np.where(addr == 0, fallback[where], addr)
    return pd.DataFrame(
        {
            "tid": spans["tid"].to_numpy(dtype=np.int32) if len(spans) else np.zeros(0, np.int32),
            "name": lock_name,
            "uaddr": addr,
            "start_ns": spans["start_ns"].to_numpy(dtype=np.int64),
            "end_ns": spans["end_ns"].to_numpy(dtype=np.int64),
            "dur_ns": spans["dur_ns"].to_numpy(dtype=np.int64),
            "lost": thread_spans_lost(
                ev,
                spans["tid"].to_numpy(dtype=np.int64),
                spans["start_ns"].to_numpy(dtype=np.int64),
                spans["end_ns"].to_numpy(dtype=np.int64),
            ),
        }
    )


@dataclass
class Locks:
    """The ``--locks`` view (see ``lock_report``).

    ``words``, one row per futex word waited on or held: ``addr`` uint64,
    ``name`` str or None, ``waits``, ``eagain``, ``blocked``, ``wait_ns``
    int64, ``mean_ns``, ``p50_ns``, ``p90_ns``, ``p99_ns`` float64,
    ``max_ns`` int64 (float64 when a word has holds but no waits),
    ``wait_share`` float64, ``waiters`` int64, ``waiter_names`` str,
    ``wake_calls`` int64, ``wakers`` str, ``holds``, ``hold_ns`` int64,
    ``hold_mean_ns``, ``hold_p99_ns`` float64 (NaN without holds).
    ``by_thread``: ``addr`` uint64, ``name`` str or None, ``tid`` int32,
    ``thread``, ``role`` str, ``waits``, ``wait_ns``, ``wake_calls`` int64.
    ``waits``: every wait call (``lock_waits``): ``tid`` int32,
    ``start_ns``, ``end_ns``, ``dur_ns`` int64, ``uaddr`` uint64, ``name``
    str or None, ``op`` int64, ``ret`` Int64, ``offcpu_ns`` int64,
    ``woken_by`` Int32, ``lost`` bool.  ``totals``: see ``lock_report``;
    ``bql``: the trace's BQL record, ``futex_uaddr`` int or None.
    """

    words: pd.DataFrame
    by_thread: pd.DataFrame
    waits: pd.DataFrame
    totals: dict[str, Any]
    bql: dict[str, Any]
    lost_events: int
    lost_markers: int
    tsc_hz: int
    notes: list[str] = field(default_factory=list)
    who_held: HolderTable | None = None

    def to_json(self) -> dict[str, Any]:
        who: dict[str, Any] | None = None
        if self.who_held is not None:
            rows = self.who_held.rows
            who = {
                "wait_ns": self.who_held.wait_ns,
                "waits": self.who_held.waits,
                "excluded_lost": self.who_held.excluded_lost,
                "rows": records(rows.assign(addr=rows["addr"].map(hex_or_none)) if len(rows) else rows),
            }
        words = self.words.assign(addr=self.words["addr"].map(hex))
        by_thread = self.by_thread.assign(addr=self.by_thread["addr"].map(hex))
        return {
            "view": "locks",
            "lost_events": self.lost_events,
            "lost_markers": self.lost_markers,
            "tsc_hz": self.tsc_hz,
            "bql": bql_json(self.bql),
            "totals": self.totals,
            "words": words.to_dict(orient="records"),
            "by_thread": by_thread.to_dict(orient="records"),
            "notes": self.notes,
            "who_held": who,
        }


def _names_of(tids: pd.Series, label: dict[int, str]) -> str:
    return ", ".join(label.get(int(t), str(int(t))) for t in sorted(set(tids.dropna().astype(int))))


def lock_report(trace: Trace, extra_names: dict[int, str] | None = None) -> Locks:
    """Per futex word: waits, wait time, waiters, wakers, holds; and the
    share of the target's time inside futex calls.

    ``words``, one row per word waited on or held, most wait time first:
    ``addr`` uint64, ``name`` str or None, ``waits`` (calls), ``eagain``
    (returned -EAGAIN without sleeping), ``blocked`` (went off CPU),
    ``wait_ns`` (total), ``mean_ns``, ``p50_ns``, ``p90_ns``, ``p99_ns``,
    ``max_ns`` float, ``wait_share`` float (``wait_ns`` over the target's
    thread time), ``waiters`` int (threads), ``waiter_names`` str,
    ``wake_calls`` int (futex wakes on the word), ``wakers`` str (threads
    that woke a waiter, or called wake on the word), ``holds`` int,
    ``hold_ns`` int, ``hold_mean_ns``/``hold_p99_ns`` float (NaN without
    hold spans).  ``by_thread``: ``addr``, ``name``, ``tid``, ``thread``,
    ``role``, ``waits``, ``wait_ns``, ``wake_calls``.  ``totals``: the
    target's thread time, on-CPU time, and time inside futex wait / wake /
    other calls, on CPU and in all, with shares.
    """
    require_events(trace.events, ["futex_enter", "futex_exit"], "the lock analysis")
    ev = trace.events
    names = word_names(trace, extra_names)
    waits = lock_waits(trace, names)
    calls = cache.futex_calls(trace)
    calls_lost = thread_spans_lost(
        ev,
        calls["tid"].to_numpy(dtype=np.int64),
        calls["start_ns"].to_numpy(dtype=np.int64),
        calls["end_ns"].to_numpy(dtype=np.int64),
    )
    calls = calls[~calls_lost].reset_index(drop=True)
    holds = lock_holds(trace, names)
    good = waits[~waits["lost"]]
    life = thread_lifetimes(ev)
    info = thread_info(trace, life["tid"].to_numpy())
    label = {int(t): f"{n} [{int(t)}]" for t, n in zip(life["tid"], info["name"], strict=True)}
    target_ns = int(life["time_ns"].sum())

    good = good.assign(
        eagain=(good["ret"] == -EAGAIN).fillna(False).to_numpy(dtype=bool), blocked=good["offcpu_ns"].to_numpy() > 0
    )
    g = good.groupby("uaddr", sort=False)
    dur = g["dur_ns"]
    words = pd.DataFrame(
        {
            "waits": g.size(),
            "eagain": g["eagain"].sum(),
            "blocked": g["blocked"].sum(),
            "wait_ns": dur.sum(),
            "mean_ns": dur.mean(),
            "p50_ns": dur.quantile(0.5),
            "p90_ns": dur.quantile(0.9),
            "p99_ns": dur.quantile(0.99),
            "max_ns": dur.max(),
            "waiters": g["tid"].nunique(),
            "waiter_names": g["tid"].agg(lambda t: _names_of(t, label)),
        }
    )
    wake = calls[calls["kind"] == "wake"]
    wake_addr = wake["uaddr"].to_numpy(dtype=np.uint64, na_value=0)
    wake_calls = pd.Series(wake_addr).value_counts()
    waker_sets: dict[int, set[int]] = {}
    for a, t in pd.DataFrame({"a": wake_addr, "t": wake["tid"].to_numpy()}).drop_duplicates().itertuples(index=False):
        waker_sets.setdefault(int(a), set()).add(int(t))
    for a, t in good[["uaddr", "woken_by"]].dropna().drop_duplicates().itertuples(index=False):
        waker_sets.setdefault(int(a), set()).add(int(t))
    h = holds[~holds["lost"]].groupby("uaddr", sort=False)["dur_ns"]
    hold = pd.DataFrame(
        {"holds": h.size(), "hold_ns": h.sum(), "hold_mean_ns": h.mean(), "hold_p99_ns": h.quantile(0.99)}
    )
    idx = words.index.union(hold.index)
    words = words.reindex(idx)
    words = words.join(hold, how="left")
    words.index = words.index.astype(np.uint64)
    for c in ("waits", "eagain", "blocked", "wait_ns", "waiters", "holds", "hold_ns"):
        words[c] = words[c].fillna(0).astype(np.int64)
    words["waiter_names"] = words["waiter_names"].fillna("")
    words["wait_share"] = words["wait_ns"] / target_ns if target_ns else 0.0
    words["wake_calls"] = [int(wake_calls.get(a, 0)) for a in words.index]
    words["wakers"] = [", ".join(label.get(t, str(t)) for t in sorted(waker_sets.get(int(a), ()))) for a in words.index]
    words.insert(0, "name", [names.get(int(a)) for a in words.index])
    words = words.rename_axis("addr").reset_index()
    words = words.sort_values(["wait_ns", "holds"], ascending=False, kind="stable").reset_index(drop=True)
    cols = [
        "addr",
        "name",
        "waits",
        "eagain",
        "blocked",
        "wait_ns",
        "mean_ns",
        "p50_ns",
        "p90_ns",
        "p99_ns",
        "max_ns",
        "wait_share",
        "waiters",
        "waiter_names",
        "wake_calls",
        "wakers",
        "holds",
        "hold_ns",
        "hold_mean_ns",
        "hold_p99_ns",
    ]
    words = words[cols]

    # Per word and thread: who waited how long, who called wake.
    bt_w = good.groupby(["uaddr", "tid"]).agg(waits=("dur_ns", "size"), wait_ns=("dur_ns", "sum"))
    bt_k = pd.DataFrame({"uaddr": wake_addr, "tid": wake["tid"].to_numpy()}).groupby(["uaddr", "tid"]).size()
    by_thread = bt_w.join(bt_k.rename("wake_calls"), how="outer").fillna(0).astype(np.int64).reset_index()
    by_thread = by_thread[by_thread["uaddr"].isin(words["addr"].to_numpy())]
    tinfo = thread_info(trace, by_thread["tid"].to_numpy())
    by_thread = (
        pd.DataFrame(
            {
                "addr": by_thread["uaddr"].to_numpy(dtype=np.uint64),
                "name": [names.get(int(a)) for a in by_thread["uaddr"]],
                "tid": by_thread["tid"].to_numpy(dtype=np.int32),
                "thread": tinfo["name"].to_numpy(),
                "role": tinfo["role"].to_numpy(),
                "waits": by_thread["waits"].to_numpy(),
                "wait_ns": by_thread["wait_ns"].to_numpy(),
                "wake_calls": by_thread["wake_calls"].to_numpy(),
            }
        )
        .sort_values(["wait_ns", "wake_calls"], ascending=False, kind="stable")
        .reset_index(drop=True)
    )

    totals = _futex_totals(trace, calls, life, target_ns)
    bql = dict(trace.bql())
    bql["futex_uaddr"] = int(bql["futex_uaddr"]) if bql.get("futex_uaddr") else None
    notes = []
    n_lost = int(waits["lost"].sum())
    if n_lost:
        notes.append(f"{n_lost:,} futex waits span lost events and are left out")
    if trace.lost_events and not len(lost_windows(ev)):
        notes.append(
            f"{trace.lost_events:,} events were lost and the trace does not say where: "
            "a wait across them may be two waits counted as one"
        )
    if not bql.get("identified"):
        notes.append("the BQL's futex word was not identified: it is among the unnamed words")
    return Locks(
        words=words,
        by_thread=by_thread,
        waits=waits,
        totals=totals,
        bql=bql,
        lost_events=trace.lost_events,
        lost_markers=len(lost_windows(ev)),
        tsc_hz=trace.tsc_hz,
        notes=notes,
        who_held=holder_summary(trace),
    )


def _futex_totals(trace: Trace, calls: pd.DataFrame, life: pd.DataFrame, target_ns: int) -> dict[str, Any]:
    """Time of the target inside futex calls by kind, on CPU and in all."""
    off = cache.offcpu_spans(trace)
    has_sched = len(off) > 0
    s_tid = off["tid"].to_numpy(dtype=np.int64)
    s_start = off["start_ns"].to_numpy(dtype=np.int64)
    s_end = off["end_ns"].to_numpy(dtype=np.int64)
    offcpu_total = int(off["dur_ns"].sum())
    oncpu = target_ns - offcpu_total
    out: dict[str, Any] = {"target_ns": target_ns, "oncpu_ns": oncpu if has_sched else None, "sched_events": has_sched}
    for kind in ("wait", "wake", "other"):
        c = calls[calls["kind"] == kind]
        total = int(c["dur_ns"].sum())
        off_in = overlap_by_thread(
            c["tid"].to_numpy(dtype=np.int64),
            c["start_ns"].to_numpy(dtype=np.int64),
            c["end_ns"].to_numpy(dtype=np.int64),
            s_tid,
            s_start,
            s_end,
        )
        on = total - int(off_in.sum())
        out[f"futex_{kind}_ns"] = total
        out[f"futex_{kind}_share"] = total / target_ns if target_ns else 0.0
        out[f"futex_{kind}_oncpu_ns"] = on if has_sched else None
        out[f"futex_{kind}_oncpu_share"] = (on / oncpu if oncpu else 0.0) if has_sched else None
        out[f"futex_{kind}_calls"] = int(len(c))
    out["futex_oncpu_ns"] = sum(out[f"futex_{k}_oncpu_ns"] for k in ("wait", "wake", "other")) if has_sched else None
    out["futex_oncpu_share"] = (out["futex_oncpu_ns"] / oncpu if oncpu else 0.0) if has_sched else None
    return out
