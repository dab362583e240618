"""Interval snapshots of top's counters, and the rows every view shows.

The kernel's counters are cumulative (``collectors.top.KernelCounters``); a
``Snapshot`` is the difference of two reads plus what names the rows (vCPU
numbers, the VMM, the host).  Its JSON form is what ``--log`` writes one
line of per interval and what ``record --aggregate`` stores as a time
series, so ``report`` rebuilds the same rows from a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.analyses.runs import exit_reason_name
from vmtrace.collectors.top import KernelCounters

from .boundaries import COMPONENTS, DECODE_KINDS, HBUCKETS, KIND_ERRNO, KIND_REASON, SHOWN, bucket_bounds

__all__ = ["Snapshot", "empty_counters", "delta", "merge", "kind_label", "hist_quantile", "quantile_bounds", "ROW_KEYS"]

_C = {name: i for i, name in enumerate(COMPONENTS)}

#: Row groupings: per vCPU, per exit kind and port, or both.
ROW_KEYS: dict[str, list[str]] = {"vcpu": ["vcpu"], "kind": ["kind", "addr"], "all": ["vcpu", "kind", "addr"]}


def empty_counters(ncomp: int = len(COMPONENTS), nbuckets: int = HBUCKETS) -> KernelCounters:
    """Counters with no keys (before the first read)."""
    z = np.zeros(0, dtype=np.int64)
    return KernelCounters(
        z,
        z,
        np.zeros(0, np.uint64),
        z,
        np.zeros((0, ncomp), np.int64),
        np.zeros((0, ncomp, nbuckets), np.int64),
        np.zeros(0, np.uint64),
        z,
        z,
        0,
        0,
    )


def _index(c: KernelCounters) -> dict[tuple[int, int, int], int]:
    return {(int(t), int(k), int(a)): i for i, (t, k, a) in enumerate(zip(c.tid, c.kind, c.addr, strict=False))}


def delta(before: KernelCounters, after: KernelCounters) -> KernelCounters:
    """What happened between two reads (keys are never removed, so
    ``after`` holds every key of ``before``)."""
    out_count, out_sums, out_hist = after.count.copy(), after.sums.copy(), after.hist.copy()
    at = _index(after)
    for key, i in _index(before).items():
        j = at.get(key)
        if j is not None:
            out_count[j] -= before.count[i]
            out_sums[j] -= before.sums[i]
            out_hist[j] -= before.hist[i]
    keep = out_count > 0
    w_before = dict(
        zip(before.word.tolist(), zip(before.waits.tolist(), before.wait_ns.tolist(), strict=False), strict=False)
    )
    waits = after.waits.copy()
    wait_ns = after.wait_ns.copy()
    for j, w in enumerate(after.word.tolist()):
        n, ns = w_before.get(w, (0, 0))
        waits[j] -= n
        wait_ns[j] -= ns
    wkeep = waits > 0
    return KernelCounters(
        after.tid[keep],
        after.kind[keep],
        after.addr[keep],
        out_count[keep],
        out_sums[keep],
        out_hist[keep],
        after.word[wkeep],
        waits[wkeep],
        wait_ns[wkeep],
        after.dropped - before.dropped,
        after.read_ns,
        after.bql_word,
        list(after.notes),
    )


def merge(parts: list[KernelCounters]) -> KernelCounters:
    """The sum of several intervals' counters (a whole recording)."""
    if not parts:
        return empty_counters()
    acc: dict[tuple[int, int, int], list[Any]] = {}
    words: dict[int, list[int]] = {}
    for p in parts:
        for i, key in enumerate(zip(p.tid.tolist(), p.kind.tolist(), p.addr.tolist(), strict=False)):
            a = acc.setdefault(key, [0, np.zeros(p.sums.shape[1], np.int64), np.zeros(p.hist.shape[1:], np.int64)])
            a[0] += int(p.count[i])
            a[1] += p.sums[i]
            a[2] += p.hist[i]
        for w, n, ns in zip(p.word.tolist(), p.waits.tolist(), p.wait_ns.tolist(), strict=False):
            wv = words.setdefault(int(w), [0, 0])
            wv[0] += n
            wv[1] += ns
    keys = list(acc)
    last = parts[-1]
    return KernelCounters(
        np.array([k[0] for k in keys], np.int64),
        np.array([k[1] for k in keys], np.int64),
        np.array([k[2] for k in keys], np.uint64),
        np.array([acc[k][0] for k in keys], np.int64),
        np.array([acc[k][1] for k in keys], np.int64).reshape(len(keys), last.sums.shape[1]),
        np.array([acc[k][2] for k in keys], np.int64).reshape((len(keys),) + last.hist.shape[1:]),
        np.array(list(words), np.uint64),
        np.array([v[0] for v in words.values()], np.int64),
        np.array([v[1] for v in words.values()], np.int64),
        sum(p.dropped for p in parts),
        last.read_ns,
        next((p.bql_word for p in reversed(parts) if p.bql_word), None),
    )


def kind_label(kind: int) -> str:
    """The exit kind as the analysis names it: pio, mmio, msr, a KVM_EXIT
    reason (HLT, ...), an errno (EINTR) or unknown."""
    if kind in DECODE_KINDS:
        return DECODE_KINDS[kind]
    if kind >= KIND_ERRNO:
        return exit_reason_name(-(kind - KIND_ERRNO))
    if kind >= KIND_REASON:
        return exit_reason_name(kind - KIND_REASON)
    return "unknown"


def quantile_bounds(hist: np.ndarray, q: float) -> tuple[float, float]:
    """[low, high) ns of the bucket holding the ``q`` quantile (nearest
    rank) of a histogram; (0, 0) when empty."""
    n = int(hist.sum())
    if n == 0:
        return 0.0, 0.0
    rank = max(int(np.ceil(q * n)), 1)
    b = int(np.searchsorted(np.cumsum(hist), rank))
    return bucket_bounds(b)


def hist_quantile(hist: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a histogram in ns: the geometric middle of its
    bucket (the true value is within a factor sqrt(2) of it)."""
    lo, hi = quantile_bounds(hist, q)
    if hi == 0.0:
        return 0.0
    if hi == float("inf"):
        return lo
    return float(np.sqrt(lo * hi)) if lo > 0 else 0.0


@dataclass
class Snapshot:
    """One interval: ``counters`` (a delta) from ``start_ns`` to ``end_ns``.

    ``vcpus`` tid -> vCPU index, ``names`` tid -> thread name, ``words``
    futex word -> name (the BQL, what the target named), ``header``: vmm,
    vmm_version, kvm_flavour, tsc_hz, dropped (cumulative), pid.
    """

    start_ns: int
    end_ns: int
    counters: KernelCounters
    vcpus: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    words: dict[int, str] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(self.end_ns - self.start_ns, 1) / 1e9

    @property
    def tsc_hz(self) -> float:
        return float(self.header.get("tsc_hz") or 1e9)

    def exits(self) -> pd.DataFrame:
        """One row per key: ``tid`` int64, ``vcpu`` int64 (-1: not a vCPU
        the VMM named; numbered by tid then), ``kind`` str, ``addr`` object
        (hex or None), ``count`` int64, ``<component>_ns`` int64 sums."""
        c = self.counters
        vcpus = dict(self.vcpus)
        for t in sorted(set(c.tid.tolist()) - set(vcpus)):
            vcpus[t] = max(vcpus.values(), default=-1) + 1
        df = pd.DataFrame(
            {
                "tid": c.tid,
                "vcpu": [vcpus[int(t)] for t in c.tid],
                "kind": [kind_label(int(k)) for k in c.kind],
                "addr": [hex(int(a)) if int(k) in DECODE_KINDS else None for k, a in zip(c.kind, c.addr, strict=False)],
                "count": c.count,
            }
        )
        for name, i in _C.items():
            df[f"{name}_ns"] = c.sums[:, i] if len(c.count) else np.zeros(0, np.int64)
        return df

    def rows(self, by: str = "all", vcpu: int | None = None, kind: str | None = None) -> pd.DataFrame:
        """The table: grouped by ``by`` (``ROW_KEYS``), optionally only one
        vCPU or exit kind.  Columns: the keys, ``exits`` int, ``exits_s``
        float, then per shown component ``<c>`` mean cycles per exit,
        ``<c>_p99`` cycles (from the log2 histogram: within a factor
        sqrt(2)) and ``<c>_share`` percent of the rows' total time, then
        ``total`` and ``total_p99``; most exits first."""
        keys = ROW_KEYS[by]
        df = self.exits()
        sel = np.ones(len(df), dtype=bool)
        if vcpu is not None:
            sel &= (df["vcpu"] == vcpu).to_numpy()
        if kind is not None:
            sel &= (df["kind"] == kind).to_numpy()
        df = df[sel]
        hist = self.counters.hist[sel] if len(sel) else self.counters.hist
        k = self.tsc_hz / 1e9
        out = []
        groups = df.groupby(keys, dropna=False, sort=False).indices if len(df) else {}
        for key, idx in groups.items():
            key = key if isinstance(key, tuple) else (key,)
            n = int(df["count"].iloc[idx].sum())
            total = float(df["total_ns"].iloc[idx].sum())
            row: dict[str, Any] = dict(zip(keys, key, strict=False))
            row["exits"] = n
            row["exits_s"] = n / self.seconds
            h = hist[idx].sum(axis=0)
            for name in SHOWN + ("total",):
                s = float(df[f"{name}_ns"].iloc[idx].sum())
                row[name] = s / n * k
                row[f"{name}_p99"] = hist_quantile(h[_C[name]], 0.99) * k
                row[f"{name}_share"] = 100.0 * s / total if total else 0.0
            out.append(row)
        cols = keys + ["exits", "exits_s"] + [f"{n}{s}" for n in SHOWN + ("total",) for s in ("", "_p99", "_share")]
        table = pd.DataFrame(out, columns=cols)
        return table.sort_values("exits", ascending=False, kind="stable").reset_index(drop=True)

    def futex_words(self, top: int = 5) -> pd.DataFrame:
        """The futex words waited on most: ``word`` hex, ``name``, ``waits``
        int, ``wait_ms`` float, ``share`` percent of all wait time."""
        c = self.counters
        total = float(c.wait_ns.sum())
        order = np.argsort(-c.wait_ns, kind="stable")[:top]
        return pd.DataFrame(
            {
                "word": [hex(int(c.word[i])) for i in order],
                "name": [
                    self.words.get(int(c.word[i]), "BQL" if c.bql_word and int(c.word[i]) == c.bql_word else "")
                    for i in order
                ],
                "waits": [int(c.waits[i]) for i in order],
                "wait_ms": [c.wait_ns[i] / 1e6 for i in order],
                "share": [100.0 * c.wait_ns[i] / total if total else 0.0 for i in order],
            }
        )

    def bql_share(self) -> float | None:
        """The BQL's percent of all futex wait time (None: BQL unknown)."""
        c = self.counters
        if not c.bql_word:
            return None
        total = float(c.wait_ns.sum())
        on = float(c.wait_ns[c.word == np.uint64(c.bql_word)].sum())
        return 100.0 * on / total if total else 0.0

    # -- JSON ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Compact: histograms sparse, one list per key."""
        c = self.counters
        exits = []
        for i in range(len(c.count)):
            hist = {
                COMPONENTS[j]: [[int(b), int(c.hist[i, j, b])] for b in np.flatnonzero(c.hist[i, j])]
                for j in range(c.hist.shape[1])
                if c.hist[i, j].any()
            }
            exits.append(
                [int(c.tid[i]), int(c.kind[i]), int(c.addr[i]), int(c.count[i]), [int(x) for x in c.sums[i]], hist]
            )
        return {
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "dropped": int(c.dropped),
            "bql_word": c.bql_word,
            "components": list(COMPONENTS),
            "exits": exits,
            "words": [[int(w), int(n), int(ns)] for w, n, ns in zip(c.word, c.waits, c.wait_ns, strict=False)],
            "vcpus": {str(t): v for t, v in self.vcpus.items()},
            "names": {str(t): n for t, n in self.names.items()},
            "word_names": {hex(w): n for w, n in self.words.items()},
            "header": self.header,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Snapshot:
        comps = obj.get("components") or list(COMPONENTS)
        if list(comps) != list(COMPONENTS):
            raise ValueError(f"aggregate components {comps} are not this vmtrace's {list(COMPONENTS)}")
        rows = obj.get("exits") or []
        n, nc = len(rows), len(COMPONENTS)
        hist = np.zeros((n, nc, HBUCKETS), np.int64)
        for i, r in enumerate(rows):
            for comp, pairs in r[5].items():
                for b, v in pairs:
                    hist[i, _C[comp], b] = v
        words = obj.get("words") or []
        counters = KernelCounters(
            np.array([r[0] for r in rows], np.int64),
            np.array([r[1] for r in rows], np.int64),
            np.array([r[2] for r in rows], np.uint64),
            np.array([r[3] for r in rows], np.int64),
            np.array([r[4] for r in rows], np.int64).reshape(n, nc),
            hist,
            np.array([w[0] for w in words], np.uint64),
            np.array([w[1] for w in words], np.int64),
            np.array([w[2] for w in words], np.int64),
            int(obj.get("dropped") or 0),
            int(obj["end_ns"]),
            obj.get("bql_word"),
        )
        return cls(
            int(obj["start_ns"]),
            int(obj["end_ns"]),
            counters,
            {int(t): int(v) for t, v in (obj.get("vcpus") or {}).items()},
            {int(t): n for t, n in (obj.get("names") or {}).items()},
            {int(w, 16): n for w, n in (obj.get("word_names") or {}).items()},
            dict(obj.get("header") or {}),
        )
