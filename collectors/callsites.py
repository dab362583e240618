"""Call sites of the BQL, as both backends record them.

QEMU's BQL function takes the caller's ``__FILE__`` and ``__LINE__``.  A
collector that reads them leaves each ``lock_begin`` with ``addr`` = the
file string's address in QEMU and ``value`` = the line; :func:`assign_sites`
turns the pair into an index into the trace metadata's ``callsites`` list
(``vmtrace.schema``), which is what analyses read.

Sampled recording (``--callsites=sampled``) keeps the call-site uprobes on
for ``duty`` of every ``period_s``; :class:`SamplingWindows` decides when,
and remembers the windows as they really were (attach to detach).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from vmtrace.errors import VmtraceError
from vmtrace.validate import DEFAULT_CALLSITE_PERIOD_S

__all__ = ["CALLSITE_MODES", "check_callsites", "site_label", "assign_sites", "SamplingWindows"]

#: ``record --callsites`` values: every acquisition, or sampled windows.
CALLSITE_MODES = ("full", "sampled")


def check_callsites(mode: str | None, duty: float, period_s: float = DEFAULT_CALLSITE_PERIOD_S) -> str | None:
    """``mode`` if valid (None: no call sites); raises VmtraceError."""
    if mode is None:
        return None
    if mode not in CALLSITE_MODES:
        raise VmtraceError(f"--callsites takes {' or '.join(CALLSITE_MODES)}, not {mode!r}")
    if mode == "sampled" and not (isinstance(duty, (int, float)) and 0 < duty <= 1):
        raise VmtraceError(f"--callsite-duty takes a share of time above 0 and at most 1, not {duty!r}")
    if mode == "sampled" and not (isinstance(period_s, (int, float)) and 0.01 <= period_s <= 3600):
        raise VmtraceError(f"--callsite-period takes seconds from 0.01 to 3600, not {period_s!r}")
    return mode


def site_label(file: str, line: int) -> str:
    """ "softmmu/physmem.c:2748" from QEMU's ``__FILE__`` ("../softmmu/physmem.c"
    in a meson build, which compiles from a build directory beside the
    source) and line: the spelling ``info sync-profile`` prints."""
    while file.startswith("../") or file.startswith("./"):
        file = file.split("/", 1)[1]
    return f"{file}:{int(line)}"


def assign_sites(events: pd.DataFrame, file_of: Callable[[int], str | None]) -> tuple[pd.DataFrame, list[str]]:
    """Rewrite ``lock_begin`` rows (``addr`` = file pointer, ``value`` =
    line) so that ``value`` indexes the returned call-site list; a pointer
    ``file_of`` cannot name leaves ``value`` NA.  ``addr`` is left for the
    caller, who sets it to the lock's word."""
    begin = (events["event"] == "lock_begin").to_numpy()
    if not begin.any():
        return events, []
    ptr = events.loc[begin, "addr"].to_numpy(dtype="float64", na_value=np.nan)
    line = events.loc[begin, "value"].to_numpy(dtype="float64", na_value=np.nan)
    labels: dict[tuple[int, int], str | None] = {}
    sites: list[str] = []
    index: dict[str, int] = {}
    out = np.full(len(ptr), -1, dtype=np.int64)
    keys = np.stack([np.nan_to_num(ptr, nan=-1), np.nan_to_num(line, nan=-1)], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    codes = np.full(len(uniq), -1, dtype=np.int64)
    for i, (p, ln) in enumerate(uniq):
        if p < 0 or ln < 0:
            continue
        key = (int(p), int(ln))
        if key not in labels:
            name = file_of(int(p))
            labels[key] = site_label(name, int(ln)) if name else None
        label = labels[key]
        if label is None:
            continue
        codes[i] = index.setdefault(label, len(index))
        if codes[i] == len(sites):
            sites.append(label)
    out = codes[inverse.reshape(-1)]
    value = pd.array(out, dtype="Int64")
    value[out < 0] = pd.NA
    events = events.copy()
    events.loc[begin, "value"] = value
    return events, sites


class SamplingWindows:
    """When the call-site uprobes are on: ``duty`` (0 < duty <= 1) of every
    ``period_s``.  ``step(now_ns)`` says whether they should be on now;
    ``opened``/``closed`` stamp each window as it really was."""

    def __init__(self, duty: float, period_s: float = 1.0) -> None:
        self.duty = duty
        self.period_ns = int(period_s * 1e9)
        self.windows: list[list[int]] = []
        self._t0: int | None = None

    def want_on(self, now_ns: int | None = None) -> bool:
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self._t0 is None:
            self._t0 = now
        return (now - self._t0) % self.period_ns < self.duty * self.period_ns

    def until_change_s(self, now_ns: int | None = None) -> float:
        """Seconds until ``want_on`` changes (at least 1 ms)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self._t0 is None:
            return 0.001
        phase = (now - self._t0) % self.period_ns
        on_ns = self.duty * self.period_ns
        left = on_ns - phase if phase < on_ns else self.period_ns - phase
        return max(0.001, left / 1e9)

    def opened(self) -> None:
        self.windows.append([time.monotonic_ns(), -1])

    def closed(self) -> None:
        if self.windows and self.windows[-1][1] < 0:
            self.windows[-1][1] = time.monotonic_ns()
