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
from .events import (
    events_usable,
    missing_events,
    present_events,
    require_events,
)
from .lost import (
    lost_windows,
    overlaps_loss,
    thread_spans_lost,
)
from .pairing import (
    exits_of_thread,
    futex_calls,
    futex_waits,
    i64,
    offcpu_spans,
    pair_spans,
    thread_lifetimes,
)

# Deliberately repeated: these are the submodules' own ``__all__`` lists,
# spelled out so linters and type checkers see every re-export.  A new
# public name goes in its submodule's list and here.
__all__ = [
    "events_usable",
    "missing_events",
    "present_events",
    "require_events",
    "exits_of_thread",
    "futex_calls",
    "futex_waits",
    "i64",
    "offcpu_spans",
    "pair_spans",
    "thread_lifetimes",
    "lost_windows",
    "overlaps_loss",
    "thread_spans_lost",
    "ThreadWindows",
    "dense_codes",
    "inside_by_thread",
    "last_match",
    "overlap_by_thread",
    "overlap_sum",
    "rank_in",
]
