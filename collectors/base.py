"""What every collector backend provides, and the raw-event record it produces.

A collector attaches to a host (tracepoints, uprobes) for one target process
tree, streams what it sees into a spool file while the target runs, and on
``stop()`` hands back a ``Collected`` value: raw events in the trace schema
(``vmtrace.schema.EVENT_COLUMNS``), lost-event counts per CPU, which
tracepoints fired, thread names seen and what the BQL identification found.

Collectors are context managers: ``__exit__`` detaches everything they
attached (tracefs events and instances, uprobes, BPF programs) on every path,
including exceptions and signals.  A signal handler must only call
``request_stop()``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from vmtrace.schema import EVENT_TYPES
from vmtrace.trace import normalize_events
from vmtrace.validate import DEFAULT_CALLSITE_DUTY, DEFAULT_CALLSITE_PERIOD_S

from .qemu import IDENTIFY_TIMEOUT_S

__all__ = ["RecordOptions", "LockIdentity", "Collected", "Collector", "lost_rows", "with_markers"]


@dataclass
class RecordOptions:
    """What to record.

    ``precise`` keeps uprobes on the VMM's lock and dispatch functions for the
    whole run; otherwise they are attached only until the BQL is identified.
    ``vmm_binary`` is the executable to place uprobes on (None: no uprobes).
    ``spool_dir`` holds the backend's temporary files.
    """

    spool_dir: Path
    precise: bool = False
    vmm_binary: str | None = None
    sched: bool = True
    identify_timeout_s: float = IDENTIFY_TIMEOUT_S
    buffer_pages: int = 256
    #: None, "full" or "sampled" (collectors.callsites): read the BQL
    #: function's file and line; sampled keeps its uprobes on for
    #: ``callsite_duty`` of every ``callsite_period_s``.
    callsites: str | None = None
    callsite_duty: float = DEFAULT_CALLSITE_DUTY
    callsite_period_s: float = DEFAULT_CALLSITE_PERIOD_S


@dataclass
class LockIdentity:
    """How a lock's futex word was found."""

    name: str
    futex_uaddr: int | None
    method: str
    identified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "futex_uaddr": self.futex_uaddr,
            "method": self.method,
            "identified": self.identified,
        }


@dataclass
class Collected:
    """Everything a backend observed, ready to be written as a trace."""

    events: pd.DataFrame
    lost_per_cpu: dict[int, int]
    tracepoints: dict[str, dict[str, Any]]
    thread_names: dict[int, str]
    thread_tgids: dict[int, int] = field(default_factory=dict)  # tid -> process id
    locks: list[LockIdentity] = field(default_factory=list)
    probes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Trace metadata the backend adds (``callsites``, ``callsite_sampling``).
    meta: dict[str, Any] = field(default_factory=dict)


class Collector(abc.ABC):
    """One recording backend.  Use as ``with Backend(opts) as c: ...``.

    Life cycle: ``attach(pid)`` (filters set to the process tree of ``pid``,
    which is still stopped before exec when vmtrace started it), then
    ``poll()`` repeatedly while the target runs, then ``stop()`` once, then
    ``__exit__`` detaches.  ``attach`` raises ``HostError`` with what to do
    when the host cannot record.
    """

    name: str = "base"

    def __init__(self, options: RecordOptions) -> None:
        self.options = options

    @abc.abstractmethod
    def attach(self, pid: int) -> None:
        """Start recording events of process ``pid`` and its descendants."""

    @abc.abstractmethod
    def poll(self, timeout_ms: int = 100) -> None:
        """Move buffered events to the spool; returns within ``timeout_ms``."""

    @abc.abstractmethod
    def stop(self) -> Collected:
        """Stop recording, drain every buffer and return what was seen."""

    @abc.abstractmethod
    def detach(self) -> None:
        """Remove everything attached; idempotent, safe after a failed attach."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def lost_rows(ts_ns: np.ndarray, cpu: np.ndarray, count: np.ndarray) -> pd.DataFrame:
    """Schema ``lost`` markers (``vmtrace.schema``), one per element.

    ``ts_ns`` int64, the first event recorded on ``cpu`` (int16) after the
    gap; ``count`` int64 events lost there, negative when the collector knows
    of a loss but not its size (``value`` is then NA).  Returns the schema
    columns with ``tid`` -1, in the order given.
    """
    count = np.asarray(count, dtype=np.int64)
    value = pd.array(np.maximum(count, 0), dtype="Int64")
    value[count < 0] = pd.NA
    return normalize_events(
        pd.DataFrame(
            {
                "ts_ns": np.asarray(ts_ns, dtype=np.int64),
                "tid": np.full(len(count), -1, dtype=np.int32),
                "cpu": np.asarray(cpu, dtype=np.int16),
                "event": pd.Categorical(["lost"] * len(count), categories=list(EVENT_TYPES)),
                "value": value,
            }
        )
    )


def with_markers(events: pd.DataFrame, markers: pd.DataFrame) -> pd.DataFrame:
    """``events`` (schema form, sorted) with ``markers`` merged in by time.

    At equal times a marker goes first: it stands for events that happened
    before the event it is stamped with.
    """
    if not len(markers):
        return events
    if not len(events):
        return normalize_events(markers)
    # Same categories on both sides, so concat keeps the columns categorical
    # instead of turning a 10M-row column into objects.
    names = events["name"].cat.categories
    markers = markers.assign(name=pd.Categorical([None] * len(markers), categories=names))
    both = pd.concat([markers, events], ignore_index=True)
    order = np.argsort(both["ts_ns"].to_numpy(), kind="stable")
    return both.iloc[order].reset_index(drop=True)
