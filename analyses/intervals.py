"""Intervals of a trace, one job per module; this module gathers them.

- ``events``: which event types a trace holds; ``require_events``.
- ``pairing``: begin/end events into per-thread spans (``pair_spans``,
  futex calls and waits, off-CPU spans).
- ``lost``: lost-event windows and the spans that cross them.
- ``arithmetic``: overlaps and containment of many threads' spans at once.

Analyses, tests and notebooks import these names from here.
"""

from __future__ import annotations

from .arithmetic import (
    ThreadWindows,
    dense_codes,
    inside_by_thread,
    last_match,
    overlap_by_thread,
    overlap_sum,
    rank_in,
)
from .events import events_usable, missing_events, present_events, require_events
from .lost import lost_windows, overlaps_loss, thread_spans_lost
from .pairing import (
    i64,
    exits_of_thread,
    futex_calls,
    futex_waits,
    offcpu_spans,
    pair_spans,
    thread_lifetimes,
)

__all__ = [
    "i64",
    "present_events",
    "missing_events",
    "events_usable",
    "require_events",
    "pair_spans",
    "futex_calls",
    "futex_waits",
    "offcpu_spans",
    "exits_of_thread",
    "thread_lifetimes",
    "lost_windows",
    "overlaps_loss",
    "thread_spans_lost",
    "dense_codes",
    "rank_in",
    "last_match",
    "overlap_sum",
    "overlap_by_thread",
    "ThreadWindows",
    "inside_by_thread",
]
