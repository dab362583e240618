"""What ran: the locking mode and the interpreter, as every report writes them.

A reference VMM trace is a measurement of two big locks at once when its
Python has a GIL, and of one when it is free-threaded (issue 11): a report
that shows the locking mode without the interpreter invites the wrong
lesson.  The trace keeps both (``target.interpreter``, as the VMM reported
it, and the locking mode in ``bench`` or on the command line); these
functions only format them, for the text, HTML, sweep and compare renderers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "interpreter_of",
    "interpreter_label",
    "interpreter_short",
    "locking_of",
    "run_label",
    "gil_ran",
    "sweep_python",
]


def interpreter_of(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The interpreter the target reported (``version``, ``free_threaded``,
    ``gil_enabled``, ``path``), or None (QEMU, or an older trace)."""
    info = (meta.get("target") or {}).get("interpreter") or (meta.get("bench") or {}).get("interpreter")
    return dict(info) if isinstance(info, Mapping) and info.get("version") else None


def interpreter_label(info: Mapping[str, Any] | None) -> str | None:
    """ "CPython 3.13.5 free-threaded", "CPython 3.11.2 with the GIL", or
    "CPython 3.13.5 free-threaded, GIL re-enabled at run time" (an
    extension module can turn it back on); None without ``info``.  A
    free-threaded run's label does not say "GIL" at all: its reports have no
    GIL in them."""
    if not info:
        return None
    v = f"CPython {info.get('version')}"
    if info.get("free_threaded"):
        return f"{v} free-threaded, GIL re-enabled at run time" if info.get("gil_enabled") else f"{v} free-threaded"
    return f"{v} with the GIL"


def interpreter_short(info: Mapping[str, Any] | None) -> str | None:
    """A chart label's form: "3.13.5t" (free-threaded, no GIL), "3.11.2 GIL"."""
    if not info:
        return None
    gil = gil_ran(info)
    return f"{info.get('version')}{' GIL' if gil else 't'}"


def gil_ran(info: Mapping[str, Any] | None) -> bool:
    """Whether the target's threads shared a GIL (True when unknown but an
    interpreter was reported; False with no interpreter at all)."""
    if not info:
        return False
    return not info.get("free_threaded") or bool(info.get("gil_enabled"))


def _command_locking(cmd: Sequence[str] | str | None) -> str | None:
    if not cmd:
        return None
    words = cmd.split() if isinstance(cmd, str) else [str(w) for w in cmd]
    for i, w in enumerate(words):
        if w == "--locking" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--locking="):
            return w.split("=", 1)[1]
    return None


def locking_of(meta: Mapping[str, Any]) -> str | None:
    """The reference VMM's locking mode (``bql``, ``unlocked`` ...), from
    the bench record or the target's command line; None for QEMU, whose
    locking its version fixes."""
    bench = meta.get("bench") or {}
    target = meta.get("target") or {}
    return bench.get("locking") or _command_locking(target.get("command"))


def run_label(meta: Mapping[str, Any]) -> str | None:
    """ "locking=unlocked  python=CPython 3.13.5 free-threaded",
    the parts that are known; None when neither is."""
    parts = []
    locking = locking_of(meta)
    if locking:
        parts.append(f"locking={locking}")
    interp = interpreter_label(interpreter_of(meta))
    if interp:
        parts.append(f"python={interp}")
    return "  ".join(parts) or None


def sweep_python(row: Mapping[Any, Any]) -> str | None:
    """The interpreter of a sweep summary row (``python_version``,
    ``free_threaded``, ``gil_enabled``), short: "3.13.5t", "3.11.2 GIL";
    None on QEMU."""
    version = row.get("python_version")
    if not isinstance(version, str) or not version:
        return None
    return interpreter_short(
        {
            "version": version,
            "free_threaded": bool(row.get("free_threaded")),
            "gil_enabled": bool(row.get("gil_enabled")),
        }
    )
