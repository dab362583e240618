"""The recorder's spool directory: created per run, cleaned after a crash,
kept when the trace cannot be written.

A spool is ``<tmp>/vmtrace-spool-<owner pid>-<random>``.  The owner's pid in
the name lets the next ``record`` remove spools whose owner was SIGKILLed,
as it removes their tracefs instances.  Spools of older vmtrace versions carry
no owner (``vmtrace-spool-<random>``); they are removed once a day old, an
age no recording reaches.  When writing the trace fails (a full
disk), the events and metadata are saved in the spool next to a
``recover.json`` marker; such a spool is never cleaned automatically, and
``vmtrace recover SPOOL -o OUT`` finishes writing the trace from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import TraceFileError, VmtraceError
from .procs import pid_alive

__all__ = ["SPOOL_PREFIX", "new_spool", "cleanup_stale_spools", "save_for_recovery", "recover"]

SPOOL_PREFIX = "vmtrace-spool-"
_SPOOL_RE = re.compile(r"^vmtrace-spool-(\d+)-\w+$")
_OWNERLESS_RE = re.compile(r"^vmtrace-spool-[A-Za-z0-9_]{8}$")
#: An owner-less spool is left alone until it is this old (seconds).
OWNERLESS_MAX_AGE_S = 24 * 3600
_MARKER = "recover.json"
_EVENTS = "events.parquet"


def new_spool() -> Path:
    """A fresh spool directory named after this process."""
    return Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))


def cleanup_stale_spools(tmpdir: Path | None = None) -> list[str]:
    """Remove spools whose owner process is gone and that hold nothing to
    recover.  Returns what was removed (``["spool /tmp/vmtrace-spool-..."]``)."""
    root = Path(tmpdir or tempfile.gettempdir())
    removed: list[str] = []
    try:
        entries = sorted(root.glob(SPOOL_PREFIX + "*"))
    except OSError:
        return removed
    now = time.time()
    for path in entries:
        if not path.is_dir() or (path / _MARKER).exists():
            continue
        m = _SPOOL_RE.match(path.name)
        if m:
            if pid_alive(int(m.group(1))):
                continue
        elif not _OWNERLESS_RE.match(path.name) or now - _mtime(path) < OWNERLESS_MAX_AGE_S:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(f"spool {path}")
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()  # vanished meanwhile: too young to touch


def save_for_recovery(spool: Path, output: Path, events: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Save what ``write_trace`` could not write, for ``recover``.  Raises
    OSError when the spool's file system is full too."""
    events.to_parquet(spool / _EVENTS, compression="zstd", index=False)
    (spool / _MARKER).write_text(json.dumps({"output": str(output), "meta": meta}, default=str))


def recover(spool: Path, output: Path | None = None) -> Path:
    """Write the trace saved in ``spool`` to ``output`` (default: the path
    the recording was given), then remove the spool.  Returns the path."""
    from .trace import write_trace

    spool = Path(spool)
    marker = spool / _MARKER
    if not marker.is_file() or not (spool / _EVENTS).is_file():
        raise VmtraceError(f"{spool} is not a kept vmtrace spool (no {_MARKER} and {_EVENTS} in it)")
    try:
        saved = json.loads(marker.read_text())
        events = pd.read_parquet(spool / _EVENTS)
    except (OSError, ValueError) as err:
        raise TraceFileError(f"cannot read the spool {spool}: {err}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("meta"), dict):
        raise TraceFileError(f"cannot read the spool {spool}: {_MARKER} is not what record wrote")
    target = Path(output or saved.get("output") or "")
    if not str(target):
        raise VmtraceError("give the trace file to write with -o")
    write_trace(target, events, saved["meta"])
    shutil.rmtree(spool, ignore_errors=True)
    return target
