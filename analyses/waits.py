"""The lock-wait rule: which lock a thread was waiting for, and when.

Two kinds of evidence say a thread waits for a lock: a span the target
reported (``lock_begin`` -> ``lock_acquired``, with the lock's name) and a
blocking futex call on a word.  They nest (QEMU's BQL acquire blocks in
futex on the BQL's word; the reference VMM's BQL acquire, once its futex
returns, blocks again re-taking the GIL), so one rule says whose time each
is, and the exit breakdown, the request view and the timeline all apply it:

- a reported lock span is its lock's wait (the BQL's when named ``BQL``);
- a futex wait inside a reported lock span is that span's lock, already
  counted, *except* a wait on another named word (``Trace.futex_names``,
  not the BQL) inside a BQL span, which is that other lock's: the BQL's
  share loses it;
- a futex wait outside any lock span ("free") is the BQL's when it is on
  the BQL's word, else another lock's.

So the BQL's wait is ``+BQL spans +free BQL waits -nested waits`` and any
other lock's ``+other spans +free other waits +nested waits``: each a sum
of per-thread disjoint span sets with a sign (``LockWaits.signed``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vmtrace.trace import Trace

from . import cache
from .arithmetic import inside_by_thread, overlap_by_thread
from .pairing import i64

__all__ = ["BQL_NAME", "LockWaits", "SignedSpans", "attribute_waits", "empty_wait_spans", "trace_lock_waits"]

#: The name of QEMU's big lock in lock spans and ``futex_names``.
BQL_NAME = "BQL"

#: One set of per-thread disjoint spans and the sign its time counts with:
#: (sign, tid, start_ns, end_ns).
SignedSpans = tuple[int, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class LockWaits:
    """Lock-acquire spans and futex waits with the rule applied.

    Spans (``lock_*``, in the order given): ``lock_tid``, ``lock_start``,
    ``lock_end`` int64, ``lock_name`` object, ``lock_bql`` bool (the BQL's).
    Waits (``wait_*``): ``wait_tid``, ``wait_start``, ``wait_end`` int64,
    ``wait_addr`` uint64 (the futex word, 0 when unknown), ``wait_in_lock``
    bool (inside a reported lock span: that lock's), ``wait_on_bql`` bool
    (on the BQL's word), ``wait_nested`` bool (on another named word inside
    a BQL span: that other lock's, taken from the BQL).
    """

    lock_tid: np.ndarray
    lock_start: np.ndarray
    lock_end: np.ndarray
    lock_name: np.ndarray
    lock_bql: np.ndarray
    wait_tid: np.ndarray
    wait_start: np.ndarray
    wait_end: np.ndarray
    wait_addr: np.ndarray
    wait_in_lock: np.ndarray
    wait_on_bql: np.ndarray
    wait_nested: np.ndarray

    def __post_init__(self) -> None:
        # The cache hands the same arrays to every analysis: none may write.
        for value in vars(self).values():
            value.setflags(write=False)

    @property
    def free_bql(self) -> np.ndarray:
        """Waits outside any lock span on the BQL's word: the BQL's."""
        free: np.ndarray = ~self.wait_in_lock & self.wait_on_bql
        return free

    @property
    def free_other(self) -> np.ndarray:
        """Waits outside any lock span on another word: another lock's."""
        free: np.ndarray = ~self.wait_in_lock & ~self.wait_on_bql
        return free

    def of_thread(self, tid: int) -> LockWaits:
        """The spans and waits of one thread, in the order given."""
        lk = self.lock_tid == tid
        wt = self.wait_tid == tid
        return LockWaits(
            self.lock_tid[lk],
            self.lock_start[lk],
            self.lock_end[lk],
            self.lock_name[lk],
            self.lock_bql[lk],
            self.wait_tid[wt],
            self.wait_start[wt],
            self.wait_end[wt],
            self.wait_addr[wt],
            self.wait_in_lock[wt],
            self.wait_on_bql[wt],
            self.wait_nested[wt],
        )

    def signed(self) -> tuple[list[SignedSpans], list[SignedSpans]]:
        """(the BQL's sets, any other lock's sets), each ``SignedSpans``."""
        lk, wt = self.lock_bql, self.wait_tid

        def pick(m: np.ndarray, sign: int, locks: bool) -> SignedSpans:
            if locks:
                return sign, self.lock_tid[m], self.lock_start[m], self.lock_end[m]
            return sign, wt[m], self.wait_start[m], self.wait_end[m]

        bql = [pick(lk, 1, True), pick(self.free_bql, 1, False), pick(self.wait_nested, -1, False)]
        other = [pick(~lk, 1, True), pick(self.free_other, 1, False), pick(self.wait_nested, 1, False)]
        return bql, other

    def within(self, w_tid: np.ndarray, ws: np.ndarray, we: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(BQL wait, other lock wait) ns inside each window of a thread."""
        out = []
        for sets in self.signed():
            total = np.zeros(len(ws), dtype=np.int64)
            for sign, t, s, e in sets:
                if len(s):
                    total += sign * overlap_by_thread(w_tid, ws, np.maximum(we, ws), t, s, e)
            out.append(total)
        return out[0], out[1]

    def spans(self) -> pd.DataFrame:
        """The positive sets as spans: ``tid``, ``start_ns``, ``end_ns``
        int64 and ``what`` str (``bql_wait`` or ``lock_wait``)."""
        parts = []
        for what, sets in zip(("bql_wait", "lock_wait"), self.signed(), strict=True):
            for sign, t, s, e in sets:
                if sign > 0 and len(s):
                    parts.append(pd.DataFrame({"tid": t, "start_ns": s, "end_ns": e, "what": what}))
        return pd.concat(parts, ignore_index=True) if parts else empty_wait_spans()


def empty_wait_spans() -> pd.DataFrame:
    """``LockWaits.spans`` with no rows."""
    return pd.DataFrame(
        {
            "tid": pd.Series([], dtype="int64"),
            "start_ns": pd.Series([], dtype="int64"),
            "end_ns": pd.Series([], dtype="int64"),
            "what": pd.Series([], dtype=object),
        }
    )


def attribute_waits(
    locks: pd.DataFrame, waits: pd.DataFrame, bql_word: int | None, futex_names: dict[int, str]
) -> LockWaits:
    """Apply the rule to ``locks`` (``pair_spans`` of lock_begin ->
    lock_acquired per ``tid`` and ``name``) and ``waits`` (``futex_waits``),
    given the BQL's futex word (None when unknown) and the target's named
    words (``Trace.futex_names``)."""
    l_tid, l_s, l_e = i64(locks, "tid"), i64(locks, "start_ns"), i64(locks, "end_ns")
    # Compared as a category, not as strings: one test per distinct name.
    l_bql = (locks["name"] == BQL_NAME).to_numpy(dtype=bool, na_value=False) if len(locks) else np.zeros(0, dtype=bool)
    l_name = locks["name"].to_numpy(dtype=object) if len(locks) else np.zeros(0, dtype=object)
    w_tid, w_s, w_e = i64(waits, "tid"), i64(waits, "start_ns"), i64(waits, "end_ns")
    w_addr = waits["uaddr"].to_numpy(dtype=np.uint64, na_value=0)
    in_lock = inside_by_thread(w_tid, w_s, l_tid, l_s, l_e) >= 0
    in_bql = inside_by_thread(w_tid, w_s, l_tid[l_bql], l_s[l_bql], l_e[l_bql]) >= 0
    on_bql = (w_addr == np.uint64(bql_word)) if bql_word else np.zeros(len(waits), dtype=bool)
    other_named = np.asarray([a for a, n in futex_names.items() if n != BQL_NAME], dtype=np.uint64)
    nested = in_bql & np.isin(w_addr, other_named)
    return LockWaits(l_tid, l_s, l_e, l_name, l_bql, w_tid, w_s, w_e, w_addr, in_lock, on_bql, nested)


def trace_lock_waits(trace: Trace) -> LockWaits:
    """``attribute_waits`` over every thread of ``trace``, once per trace."""
    return cache.cached(
        trace,
        "lock_waits",
        lambda: attribute_waits(
            cache.lock_spans(trace), cache.futex_waits(trace), trace.bql().get("futex_uaddr"), trace.futex_names()
        ),
    )
