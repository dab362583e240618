"""QEMU's own lock profile (QSP): ``info sync-profile`` over the monitor.

QEMU started with ``-enable-sync-profile`` times every mutex acquisition
(QSP, ``util/qsp.c``) and ``info sync-profile`` prints, per lock object and
call site, the total wait, the count and the mean.  vmtrace uses it as an
independent check of its own call-site figures.  This module reads it from
an HMP monitor socket (``-monitor unix:PATH,server,nowait``) and parses the
table; it places no probes.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pandas as pd

__all__ = ["hmp_command", "parse_sync_profile", "sync_profile", "qsp_args"]

_ROW = re.compile(r"^(BQL mutex|rec_mutex|mutex|condvar)\s+(0x[0-9a-f]+)\s+(\S+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s*$")
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def qsp_args(socket_path: Path) -> list[str]:
    """QEMU arguments that enable QSP and an HMP monitor on ``socket_path``."""
    return ["-enable-sync-profile", "-monitor", f"unix:{socket_path},server,nowait"]


def hmp_command(socket_path: Path, command: str, timeout_s: float = 10.0) -> tuple[str, int]:
    """Send one HMP command; returns what QEMU printed before its next
    prompt (the echo and terminal escapes removed) and the CLOCK_MONOTONIC
    time the first line of the answer arrived: the edge of a comparison
    window.  QEMU's main loop echoes the command one character per
    iteration (each takes the BQL), runs it in the iteration that reads the
    newline, and may write a long answer out over later iterations; the
    first newline comes from the iteration that ran the command."""
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout_s)
        s.connect(str(socket_path))
        buf = b""
        while not buf.rstrip().endswith(b"(qemu)"):  # the banner and first prompt
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("the QEMU monitor closed the connection")
            buf += chunk
            if time.monotonic() > deadline:
                raise TimeoutError("no prompt from the QEMU monitor")
        s.sendall(command.encode() + b"\n")
        buf = b""
        edge_ns = 0
        while not buf.rstrip().endswith(b"(qemu)"):
            chunk = s.recv(65536)
            if not chunk:
                break
            if not edge_ns and b"\n" in chunk:
                edge_ns = time.monotonic_ns()
            buf += chunk
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {command!r} from the QEMU monitor")
    text = _ESCAPES.sub("", buf.decode(errors="replace"))
    return text.rsplit("(qemu)", 1)[0], edge_ns or time.monotonic_ns()


def parse_sync_profile(text: str) -> pd.DataFrame:
    """The rows of ``info sync-profile``.

    :returns: a DataFrame with: ``type`` str ("BQL mutex", "mutex",
        "rec_mutex", "condvar"); ``object`` int (the lock's address);
        ``site`` str ("file:line", as QSP prints it: paths longer than its
        column lose their head); ``wait_ns`` int64 (total); ``count`` int64;
        ``mean_ns`` float64.
    """
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line.strip())
        if not m:
            continue
        kind, obj, site, wait_s, count, avg_us = m.groups()
        rows.append(
            {
                "type": kind,
                "object": int(obj, 16),
                "site": site,
                "wait_ns": int(round(float(wait_s) * 1e9)),
                "count": int(count),
                "mean_ns": float(avg_us) * 1e3,
            }
        )
    return pd.DataFrame(rows, columns=["type", "object", "site", "wait_ns", "count", "mean_ns"])


def sync_profile(socket_path: Path, max_rows: int = 10000) -> tuple[pd.DataFrame, int]:
    """QSP's table now, every call site apart (``-n``: not coalesced), and
    the window edge ``hmp_command`` returns."""
    text, edge_ns = hmp_command(socket_path, f"info sync-profile -n {max_rows}")
    return parse_sync_profile(text), edge_ns
