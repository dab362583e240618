"""``vmtrace top``: a live view of exits and lock waits, aggregated in the kernel.

Submodules: ``boundaries`` (the component boundaries and the constants the
BPF program is built with), ``aggregate`` (cumulative counters, interval
snapshots and their rows), ``replay`` (the kernel's state machine in Python,
over a trace), ``session`` (attach, read once per interval, detach),
``render`` (tables, JSON and CSV lines) and ``tui`` (the curses view).
"""

from __future__ import annotations

__all__ = ["boundaries", "aggregate", "replay", "session", "render", "tui"]
