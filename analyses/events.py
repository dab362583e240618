"""Event checks: which event types a trace holds, and whether an analysis
can go on without the ones it lacks.

As LISA's analyses do, each analysis says which events it needs; a trace
without them gets one error naming what is missing and what the trace has,
not a KeyError three calls down.
"""

from __future__ import annotations

import pandas as pd

from vmtrace.errors import MissingEventsError
from vmtrace.schema import EVENT_CODE, EVENT_TYPES

__all__ = [
    "present_events",
    "missing_events",
    "events_usable",
    "require_events",
]


def present_events(events: pd.DataFrame) -> list[str]:
    """Names of the event types that occur in ``events``, sorted."""
    codes = events["event"].cat.codes.to_numpy()
    # One byte-wide comparison per type: no 8-byte-per-event temporary.
    return sorted(name for i, name in enumerate(EVENT_TYPES) if (codes == i).any())


def missing_events(events: pd.DataFrame, need: list[str]) -> list[str]:
    """The events of ``need`` that ``events`` lacks."""
    codes = events["event"].cat.codes.to_numpy()
    return [e for e in need if not (codes == EVENT_CODE[e]).any()]


def events_usable(events: pd.DataFrame, need: list[str]) -> bool:
    """Whether an analysis can go on: ``events`` has every type of ``need``,
    or some of them and lost-event markers (every event of one type can have
    gone in the losses, each exit's run_exit say, and the analysis then
    leaves out what spans them instead of refusing)."""
    missing = missing_events(events, need)
    if not missing:
        return True
    return len(missing) < len(need) and bool((events["event"] == "lost").any())


def require_events(events: pd.DataFrame, need: list[str], what: str) -> None:
    """Raise ``MissingEventsError`` naming what ``what`` needs and what the
    trace has, unless ``events_usable``."""
    if not events_usable(events, need):
        raise MissingEventsError(what, missing_events(events, need), present_events(events))
