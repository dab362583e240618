"""Intervals of a trace, one job per module; this module gathers them.

- ``events``: which event types a trace holds; ``require_events``.
- ``pairing``: begin/end events into per-thread spans (``pair_spans``,
  futex calls and waits, off-CPU spans).
- ``lost``: lost-event windows and the spans that cross them.
- ``arithmetic``: overlaps and containment of many threads' spans at once.

Analyses, tests and notebooks import these names from here.
"""

from __future__ import annotations

# Deliberately repeated: the imports below mirror the ``__all__`` of each
# submodule, spelled out (not star-imported) so type checkers and readers
# see where each name comes from.  A new public name goes in both places.

from . import arithmetic, events, lost, pairing
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
    exits_of_thread,
    futex_calls,
    futex_waits,
    i64,
    offcpu_spans,
    pair_spans,
    thread_lifetimes,
)

__all__: list[str] = []
__all__ += arithmetic.__all__
__all__ += events.__all__
__all__ += lost.__all__
__all__ += pairing.__all__
