"""Intervals of a trace, one job per module; this module gathers them.

- ``events``: which event types a trace holds; ``require_events``.
- ``pairing``: begin/end events into per-thread spans (``pair_spans``,
  futex calls and waits, off-CPU spans).
- ``lost``: lost-event windows and the spans that cross them.
- ``arithmetic``: overlaps and containment of many threads' spans at once.

Analyses, tests and notebooks import these names from here.
"""

from __future__ import annotations

# Each name is re-exported explicitly (``name as name``, not a star import) so
# type checkers and readers see where it comes from; ``__all__`` is the
# submodules' own lists.  A new public name goes in both places.
from . import arithmetic, events, lost, pairing
from .arithmetic import (
    ThreadWindows as ThreadWindows,
)
from .arithmetic import (
    dense_codes as dense_codes,
)
from .arithmetic import (
    inside_by_thread as inside_by_thread,
)
from .arithmetic import (
    last_match as last_match,
)
from .arithmetic import (
    overlap_by_thread as overlap_by_thread,
)
from .arithmetic import (
    overlap_sum as overlap_sum,
)
from .arithmetic import (
    rank_in as rank_in,
)
from .events import (
    events_usable as events_usable,
)
from .events import (
    missing_events as missing_events,
)
from .events import (
    present_events as present_events,
)
from .events import (
    require_events as require_events,
)
from .lost import (
    lost_windows as lost_windows,
)
from .lost import (
    overlaps_loss as overlaps_loss,
)
from .lost import (
    thread_spans_lost as thread_spans_lost,
)
from .pairing import (
    exits_of_thread as exits_of_thread,
)
from .pairing import (
    futex_calls as futex_calls,
)
from .pairing import (
    futex_waits as futex_waits,
)
from .pairing import (
    i64 as i64,
)
from .pairing import (
    offcpu_spans as offcpu_spans,
)
from .pairing import (
    pair_spans as pair_spans,
)
from .pairing import (
    thread_lifetimes as thread_lifetimes,
)

__all__: list[str] = []
__all__ += arithmetic.__all__
__all__ += events.__all__
__all__ += lost.__all__
__all__ += pairing.__all__
