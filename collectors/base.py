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
from typing import Any

import pandas as pd

__all__ = ["RecordOptions", "LockIdentity", "Collected", "Collector"]


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
    identify_timeout_s: float = 5.0
    buffer_pages: int = 256


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

    def __enter__(self) -> "Collector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()
