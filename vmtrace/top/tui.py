"""The full-screen view: curses, redrawn once per interval.

Why curses and not rich's Live: the view needs raw keys without Enter
(sort, filter, drill, freeze, quit) and must hand the terminal back sane on
every exit path.  curses does both itself (cbreak input with a timeout,
``endwin`` in ``wrapper``), ships with Python and draws only what changed;
Live would need a second, hand-written termios layer for the keys.

Keys: ``s`` next sort column, ``g`` next grouping (vCPU x kind, vCPU,
kind), ``v`` filter by the next vCPU, ``k`` filter by the next exit kind,
``d`` drill into one vCPU (its rows by exit kind; again for the next),
``c`` clear filters, ``f`` or space freeze/unfreeze, ``q`` quit.
"""

from __future__ import annotations

import curses
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .aggregate import ROW_KEYS, Snapshot
from .render import SORT_KEYS, table_lines
from .session import Monitor

__all__ = ["ViewState", "run_tui"]

_GROUPS = tuple(ROW_KEYS)


@dataclass
class ViewState:
    """What the keys change."""

    by: str = "all"
    sort: str = "exits"
    vcpu: int | None = None
    kind: str | None = None
    frozen: bool = False
    drill: bool = False
    quit: bool = False
    seen_vcpus: set[int] = field(default_factory=set)
    seen_kinds: set[str] = field(default_factory=set)

    def observe(self, snap: Snapshot) -> None:
        """Remember the vCPUs and exit kinds seen, the filters' choices (an
        interval in which a vCPU did not exit must not drop it from them)."""
        exits = snap.exits()
        self.seen_vcpus.update(int(v) for v in exits["vcpu"])
        self.seen_kinds.update(str(k) for k in exits["kind"])

    def key(self, ch: str, snap: Snapshot | None) -> None:
        """Apply one key press (``snap``: what is shown, for the choices)."""
        if snap is not None:
            self.observe(snap)
        vcpus = sorted(self.seen_vcpus)
        kinds = sorted(self.seen_kinds)
        if ch == "q":
            self.quit = True
        elif ch == "s":
            self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
        elif ch == "g":
            self.drill = False
            self.by = _GROUPS[(_GROUPS.index(self.by) + 1) % len(_GROUPS)]
        elif ch == "v":
            self.vcpu = _next(vcpus, self.vcpu)
        elif ch == "k":
            self.kind = _next(kinds, self.kind)
        elif ch == "d":
            if not self.drill:
                self.drill, self.by = True, "kind"
                self.vcpu = self.vcpu if self.vcpu is not None else (vcpus[0] if vcpus else None)
            else:
                self.vcpu = _next(vcpus, self.vcpu)
                if self.vcpu is None:
                    self.drill, self.by = False, "all"
        elif ch == "c":
            self.vcpu = self.kind = None
            self.drill, self.by = False, "all"
        elif ch in ("f", " "):
            self.frozen = not self.frozen


def _next(choices: list[Any], current: Any) -> Any:
    """The choice after ``current``; after the last, None (no filter)."""
    if not choices:
        return None
    if current not in choices:
        return choices[0]
    i = choices.index(current) + 1
    return choices[i] if i < len(choices) else None


def _draw(scr: Any, snap: Snapshot | None, st: ViewState) -> None:
    scr.erase()
    h, w = scr.getmaxyx()
    if snap is None:
        lines = ["vmtrace top: waiting for the first interval ..."]
    else:
        lines = table_lines(snap, by=st.by, sort=st.sort, vcpu=st.vcpu, kind=st.kind, limit=max(h - 12, 1))
    state = "FROZEN  " if st.frozen else ""
    lines.append("")
    lines.append(f"{state}keys: s sort  g group  v vCPU  k kind  d drill  c clear  f freeze  q quit")
    for y, text in enumerate(lines[: h - 1]):
        try:
            scr.addnstr(y, 0, text, w - 1, curses.A_REVERSE if y == 2 else 0)
        except curses.error:
            pass
    scr.refresh()


def run_tui(monitor: Monitor, interval: float) -> None:
    """Draw ``monitor``'s snapshots every ``interval`` s until q, a stop
    signal or the target's end."""

    def main(scr: Any) -> None:
        curses.curs_set(0)
        scr.timeout(100)
        st = ViewState()
        shown: Snapshot | None = None
        next_at = time.monotonic() + interval
        _draw(scr, shown, st)
        while not st.quit and not monitor.done:
            ch = scr.getch()
            if ch != -1 and 0 <= ch < 256:
                st.key(chr(ch), shown)
                _draw(scr, shown, st)
            if time.monotonic() >= next_at:
                next_at += interval
                snap = monitor.snapshot()
                st.observe(snap)
                if not st.frozen:
                    shown = snap
                _draw(scr, shown, st)

    # The terminal's own size, not COLUMNS/LINES a caller exported (they
    # do not follow a resize; ncurses prefers them to the tty's size).
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
    try:
        curses.wrapper(main)
    except curses.error:
        # The terminal went away (SIGHUP); there is nothing left to restore.
        if monitor.stop_signal is None:
            raise
