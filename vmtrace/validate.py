"""Command-line values checked before any work starts: numbers in range,
addresses that fit 64 bits, durations that end, commands that can run.

Each check raises ``UsageError`` with one line that names the option, says
what it takes, and quotes the bad value shortened (a 100 KB value is not
echoed back whole).  The CLI calls these; a notebook has no need to.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = [
    "shown",
    "parse_int",
    "parse_address",
    "parse_counts",
    "parse_lock",
    "check_duration",
    "check_range",
    "check_locking",
    "check_command",
    "check_port_used",
]

U64_MAX = (1 << 64) - 1
#: The benchmark guest reads iterations= as a 32-bit unsigned integer.
U32_MAX = (1 << 32) - 1

#: Share of each period the sampled call-site uprobes are on.  Full call
#: sites cost 4.4-5.9x per PM-timer read on this project's 2-CPU host (three
#: uprobes per BQL acquisition, ~13 us each).
DEFAULT_CALLSITE_DUTY = 0.04
#: Seconds from one sampling window to the next.  Each window also costs a
#: fixed tail: closing a uprobe takes ~90-160 ms here (the kernel waits for
#: grace periods under one mutex, so the three closes run one after another)
#: and each probe keeps trapping until its own close returns, ~350 ms of
#: probes after every window.  With 1 s periods that tail made the 4% duty
#: cost 1.35-1.63x on long runs; with 5 s periods it measured 1.01-1.14x
#: (benchmarks/observer_effect.py --iterations 800000).  Runs shorter than
#: one period see only the window at attach.
DEFAULT_CALLSITE_PERIOD_S = 5.0


def shown(text: Any, limit: int = 40) -> str:
    """``repr(text)``, cut to ``limit`` characters with its length noted."""
    r = repr(text)
    return r if len(r) <= limit else f"{r[: limit - 3]}...' ({len(str(text)):,} characters)"


def parse_int(text: str, what: str, lo: int | None = None, hi: int | None = None, example: str = "1544") -> int:
    """An integer in any base Python reads (0x608, 1544), between ``lo``
    and ``hi`` inclusive."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise UsageError(f"{what} takes a number such as {example}, not {shown(text)}") from None
    check_range(value, what, lo, hi)
    return value


def check_range(value: int | float, what: str, lo: int | float | None = None, hi: int | float | None = None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        top = f"{hi:#x}" if hi is not None and hi > 1 << 32 else f"{hi}"
        span = (
            f"from {lo} to {top}"
            if lo is not None and hi is not None
            else (f"at least {lo}" if lo is not None else f"at most {top}")
        )
        raise UsageError(f"{what} must be {span}, not {value}")


def parse_address(text: str, what: str = "--port") -> int:
    """A port or guest physical address: 0 to 2**64-1."""
    return parse_int(text, what, 0, U64_MAX, example="0x608 (the PM timer)")


def parse_counts(text: str, what: str = "--vcpus", lo: int = 1, hi: int = 64) -> list[int]:
    """A comma-separated list of counts, such as vCPU counts 1,2,4,8."""
    counts = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            n = int(part.strip(), 10)
        except ValueError:
            raise UsageError(
                f"{what} takes counts from {lo} to {hi} separated by commas, such as 1,2,4,8, not {shown(part.strip())}"
            ) from None
        check_range(n, what, lo, hi)
        counts.append(n)
    if not counts:
        raise UsageError(f"{what} takes counts from {lo} to {hi} separated by commas, such as 1,2,4,8")
    return counts


def parse_lock(spec: str) -> tuple[int, str]:
    """``NAME=0xADDR`` -> (address, name); the address a user-space futex word."""
    name, sep, addr = spec.partition("=")
    if not sep or not name.strip() or not addr.strip():
        raise UsageError(f"--lock takes NAME=0xADDR, such as GIL=0x7f3a2c001040, not {shown(spec)}")
    return parse_int(addr, "--lock", 0, U64_MAX, example="0x7f3a2c001040"), name.strip()


def check_duration(seconds: float | None) -> None:
    """``--duration``: finite and positive (a NaN never compares >= elapsed)."""
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--duration takes a number of seconds above 0, such as 5, not {seconds}")


def check_locking(vmms: Iterable[str], locking: str | None) -> None:
    """``--locking`` picks the reference VMM's locking mode; QEMU's is fixed
    by its version, so a QEMU-only run that names one is a mistake, not a
    label for the output."""
    if locking and "reference" not in {v.strip() for v in vmms}:
        raise UsageError("--locking applies to --vmm reference; QEMU's locking is fixed by its version")


def check_command(word: str) -> None:
    """The first word after ``--``: an executable file, or a name on PATH.
    A word that starts with '-' is an option given before ``--`` that
    ``record`` does not have."""
    name = word if len(word) <= 60 else shown(word)
    if word.startswith("-"):
        raise UsageError(f"no such option: {shown(word)} (options go before --, the command after it)")
    if "/" in word:
        p = Path(word)
        if not p.exists():
            raise UsageError(f"cannot run {name}: no such file")
        if p.is_dir():
            raise UsageError(f"cannot run {name}: it is a directory")
        if not os.access(p, os.X_OK):
            raise UsageError(f"cannot run {name}: it is not executable (chmod +x {name})")
        return
    if shutil.which(word) is not None:
        return
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and os.path.isfile(os.path.join(d, word)):
            raise UsageError(f"cannot run {name}: {os.path.join(d, word)} is not executable")
    raise UsageError(f"command not found: {name}")


def check_port_used(events: Any, port: int, limit: int = 5) -> None:
    """Refuse a ``--port`` on which the trace has no PIO or MMIO exit, naming
    the busiest ones it has: an all-zero table says nothing."""
    addrs = events.loc[events["event"].isin(["pio", "mmio"]).to_numpy(), "addr"].dropna()
    if bool((addrs == port).any()):
        return
    top = [f"{int(a):#x} ({int(c):,})" for a, c in addrs.value_counts().head(limit).items()]
    seen = f"exits by port: {', '.join(top)}" if top else "no PIO or MMIO exits at all"
    raise UsageError(f"--port {port:#x}: no exit in this trace is on that port or address ({seen})")
