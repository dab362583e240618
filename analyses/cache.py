"""Per-trace cache of the results several analyses share.

The breakdown, the lock, off-CPU, request and timeline views all start from
the same futex waits, off-CPU spans and lock-acquire spans, and the timeline
and HTML report from the same exit breakdown.  Computed once per trace per
process, as LISA caches its per-trace analyses, a report of every view costs
one pass over the events for each.

Results live on the ``Trace`` instance itself (an attribute the dataclass
does not declare), so they go when the trace goes.  They are valid while the
trace keeps the same ``events`` object and the same metadata; replacing
either recomputes.  Every caller gets a copy: a DataFrame is copied shallowly
under pandas' copy-on-write (pandas 3 always; pandas 2 when enabled), so a
caller that adds a column or writes a cell changes its copy, never the cache,
and deeply where copy-on-write is off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import pandas as pd

from vmtrace.trace import Trace

from . import pairing, runs

__all__ = ["cached", "clear", "futex_calls", "futex_waits", "offcpu_spans", "lock_spans"]

T = TypeVar("T")

_ATTR = "_vmtrace_analyses_cache"


def _copy_on_write() -> bool:
    if int(pd.__version__.split(".")[0]) >= 3:
        return True
    return pd.get_option("mode.copy_on_write") is True


_SHALLOW = _copy_on_write()


def _fingerprint(trace: Trace) -> str:
    # The metadata is a small JSON-like object; comparing its text catches a
    # caller that names a lock or a thread after a first analysis.
    return repr(trace.meta)


def _store(trace: Trace) -> dict[str, Any]:
    held = trace.__dict__.get(_ATTR)
    meta = _fingerprint(trace)
    if held is None or held[0] is not trace.events or held[1] != meta:
        held = (trace.events, meta, {})
        trace.__dict__[_ATTR] = held
    results: dict[str, Any] = held[2]
    return results


def _copy(value: T) -> T:
    if isinstance(value, pd.DataFrame):
        return cast(T, value.copy(deep=not _SHALLOW))
    return value


def cached(trace: Trace, key: str, compute: Callable[[], T]) -> T:
    """``compute()``'s result for ``trace``, computed on the first call with
    this ``key`` and copied out on every call."""
    results = _store(trace)
    if key not in results:
        results[key] = compute()
    return _copy(cast(T, results[key]))


def clear(trace: Trace) -> None:
    """Forget every result cached for ``trace``."""
    trace.__dict__.pop(_ATTR, None)


def futex_calls(trace: Trace) -> pd.DataFrame:
    """``pairing.futex_calls`` of the trace's events, once per trace."""
    return cached(trace, "futex_calls", lambda: pairing.futex_calls(trace.events))


def futex_waits(trace: Trace) -> pd.DataFrame:
    """``pairing.futex_waits`` of the trace's events, once per trace."""
    return cached(trace, "futex_waits", lambda: pairing.futex_waits(trace.events, futex_calls(trace)))


def offcpu_spans(trace: Trace) -> pd.DataFrame:
    """``pairing.offcpu_spans`` of the trace's events, once per trace."""
    return cached(trace, "offcpu_spans", lambda: pairing.offcpu_spans(trace.events))


def lock_spans(trace: Trace) -> pd.DataFrame:
    """The lock-acquire spans the target reported (``lock_begin`` ->
    ``lock_acquired`` per thread and lock name, ``pairing.pair_spans``
    columns), once per trace."""
    return cached(
        trace,
        "lock_spans",
        lambda: pairing.pair_spans(trace.events, "lock_begin", "lock_acquired", keys=("tid", "name")),
    )


def vcpu_run_cycles(trace: Trace) -> runs.RunCycles:
    """``runs.run_cycles`` of the trace's vCPU threads (``runs.vcpu_threads``),
    once per trace: the exit breakdown, the exit statistics and the holders
    all start from it."""
    rc = cached(trace, "vcpu_run_cycles", lambda: runs.run_cycles(trace, runs.vcpu_threads(trace)))
    return runs.RunCycles(_copy(rc.cycles), _copy(rc.decodes), rc.completions_traced)
