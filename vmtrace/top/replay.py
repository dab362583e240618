"""The kernel's state machine in Python: top's aggregate of a recorded trace.

``collectors/bpf/top.bpf.c`` cuts each cycle at the boundaries of
``boundaries`` as events happen; ``replay`` runs the same per-thread steps
over a trace's events, in trace order, and returns the counters the kernel
would hold.  It is deliberately a per-event loop, line for line the BPF
program's handlers, so a test can set the two side by side; it is for tests
and for checking a trace, not for large traces.  The agreement tests hold
both to the analysis: ``exit_breakdown`` grouped by (tid, kind, port).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmtrace.collectors.top import KernelCounters
from vmtrace.schema import FUTEX_CMD_MASK, FUTEX_WAIT_OPS
from vmtrace.trace import Trace

from .boundaries import (
    COMPONENTS,
    HBUCKETS,
    KIND_ERRNO,
    KIND_MMIO,
    KIND_MSR,
    KIND_PIO,
    KIND_REASON,
    KIND_UNKNOWN,
    REASON_OF_DECODE,
    log2_bucket,
)

__all__ = ["replay"]

_C = {name: i for i, name in enumerate(COMPONENTS)}
_DECODE = {"pio": KIND_PIO, "mmio": KIND_MMIO, "msr": KIND_MSR}
_IO_REASONS = (REASON_OF_DECODE[KIND_PIO][0], REASON_OF_DECODE[KIND_MMIO][0])


@dataclass
class _Thread:
    phase: int = 0  # 0 none, 1 inside KVM_RUN, 2 after run_exit
    kind: int = 0
    addr: int = 0
    ndec: int = 0
    reason: int | None = None
    prev_io: bool = False
    t_enter: int = 0
    t_dec: int = 0
    t_uexit: int = 0
    t_exit: int = 0
    t_kentry_c: int = 0
    t_kentry: int = 0
    t_kexit: int = 0
    lock_ns: int = 0
    bql_ns: int = 0
    f_start: int = 0
    f_uaddr: int = 0
    f_op: int = 0
    pending: tuple[tuple[int, int, int], dict[str, int]] | None = None


class _Acc:
    def __init__(self) -> None:
        self.keys: dict[tuple[int, int, int], int] = {}
        self.count: list[int] = []
        self.sums: list[np.ndarray] = []
        self.hist: list[np.ndarray] = []
        self.words: dict[int, list[int]] = {}

    def add(self, key: tuple[int, int, int], parts: dict[str, int]) -> None:
        i = self.keys.get(key)
        if i is None:
            i = self.keys[key] = len(self.count)
            self.count.append(0)
            self.sums.append(np.zeros(len(COMPONENTS), np.int64))
            self.hist.append(np.zeros((len(COMPONENTS), HBUCKETS), np.int64))
        self.count[i] += 1
        for name, ns in parts.items():
            self.sums[i][_C[name]] += ns
            self.hist[i][_C[name], log2_bucket(ns)] += 1


def _agrees(s: _Thread) -> bool:
    if s.reason is None:
        return True
    return s.reason in REASON_OF_DECODE.get(s.kind, ())


def _commit(acc: _Acc, s: _Thread, kind: int | None = None, addr: int = 0) -> None:
    assert s.pending is not None
    key, parts = s.pending
    s.pending = None
    acc.add(key if kind is None else (key[0], kind, addr), parts)


def _close(acc: _Acc, tid: int, s: _Thread, now: int) -> None:
    named = bool(s.kind) and _agrees(s)
    if named:
        key, t_dec = (tid, s.kind, s.addr), s.t_dec
    elif s.reason is not None:
        kind = KIND_REASON + s.reason if s.reason >= 0 else KIND_ERRNO - s.reason
        key, t_dec = (tid, kind, 0), s.t_uexit
    else:
        key, t_dec = (tid, KIND_UNKNOWN, 0), s.t_exit
    guest = s.t_kexit - s.t_kentry if s.t_kexit and s.t_kentry else 0
    user = now - s.t_exit
    lock = min(s.lock_ns, user)
    bql = min(s.bql_ns, lock)
    s.pending = (
        key,
        {
            "guest": guest,
            "vmexit": t_dec - s.t_enter - guest,
            "emulator": s.t_exit - t_dec,
            "dispatch": user - lock,
            "lock_wait": lock,
            "bql_wait": bql,
            "total": now - s.t_enter,
        },
    )
    # An IO/MMIO exit with no decode of its own waits for the next cycle's
    # completion to name it.
    if named or s.reason not in _IO_REASONS:
        _commit(acc, s)


def replay(trace: Trace, bql_word: int | None = None, completions: bool = True) -> KernelCounters:
    """The counters top's BPF program would hold after seeing ``trace``'s
    events.  ``bql_word``: the BQL's futex word (default: the trace's);
    ``completions``: the host traces a read again when KVM_RUN completes it
    (``boundaries.cflags``' COMPLETIONS; ``run_cycles`` reads it off a
    trace)."""
    if bql_word is None:
        bql_word = trace.bql().get("futex_uaddr")
    ev = trace.events
    acc = _Acc()
    threads: dict[int, _Thread] = {}
    cols = [ev[c].to_numpy(dtype=object) for c in ("ts_ns", "tid", "event", "addr", "value", "write")]
    for ts, tid, event, addr, value, write in zip(*cols, strict=False):
        ts, tid = int(ts), int(tid)
        s = threads.get(tid)
        if event == "run_enter":
            s = threads.setdefault(tid, _Thread())
            if s.pending:
                _commit(acc, s)
            if s.phase == 2:
                _close(acc, tid, s, ts)
                s.prev_io = s.reason in _IO_REASONS
            else:
                s.prev_io = False
            s.phase, s.t_enter, s.kind, s.ndec, s.reason = 1, ts, 0, 0, None
            s.t_kentry_c = s.t_kentry = s.t_kexit = s.lock_ns = s.bql_ns = 0
        elif event == "futex_enter":
            s = threads.setdefault(tid, _Thread())
            s.f_start, s.f_uaddr = ts, int(addr) if addr is not None and addr == addr else 0
            s.f_op = (int(value) if value is not None and value == value else 0) & FUTEX_CMD_MASK
        elif s is None:
            continue
        elif event == "run_exit":
            if s.phase == 1:
                if s.pending:
                    _commit(acc, s)
                s.phase, s.t_exit = 2, ts
        elif event == "futex_exit":
            if not s.f_start:
                continue
            dur, s.f_start = ts - s.f_start, 0
            if s.f_op not in FUTEX_WAIT_OPS:
                continue
            if s.phase == 2:
                s.lock_ns += dur
                if bql_word and s.f_uaddr == bql_word:
                    s.bql_ns += dur
            w = acc.words.setdefault(s.f_uaddr, [0, 0])
            w[0] += 1
            w[1] += dur
        elif s.phase != 1:
            continue
        elif event in _DECODE:
            first = s.ndec == 0
            s.ndec += 1
            is_write = bool(write) if write is not None and write == write else False
            if completions and first and not is_write and s.prev_io and not s.t_kexit:
                if s.pending:
                    _commit(acc, s, _DECODE[event], int(addr))
                continue
            if s.pending:
                _commit(acc, s)
            s.kind, s.addr, s.t_dec = _DECODE[event], int(addr), ts
        elif event == "userspace_exit":
            s.reason, s.t_uexit = int(value), ts
        elif event == "kvm_entry":
            s.t_kentry_c = ts
        elif event == "kvm_exit":
            if s.pending:
                _commit(acc, s)
            s.t_kexit, s.t_kentry = ts, s.t_kentry_c
    keys = list(acc.keys)
    n, nc = len(keys), len(COMPONENTS)
    words = acc.words
    return KernelCounters(
        np.array([k[0] for k in keys], np.int64),
        np.array([k[1] for k in keys], np.int64),
        np.array([k[2] for k in keys], np.uint64),
        np.array(acc.count, np.int64),
        np.array(acc.sums, np.int64).reshape(n, nc),
        np.array(acc.hist, np.int64).reshape(n, nc, HBUCKETS),
        np.array(list(words), np.uint64),
        np.array([v[0] for v in words.values()], np.int64),
        np.array([v[1] for v in words.values()], np.int64),
        0,
        int(ev["ts_ns"].max()) if len(ev) else 0,
        bql_word,
    )
