"""The per-trace cache of the analyses: computed once, and never poisoned."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vmtrace.analyses import cache, pairing, partition, runs
from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.analyses.exits import exit_stats
from vmtrace.analyses.locks import lock_report
from vmtrace.analyses.offcpu import offcpu_report
from vmtrace.analyses.partition import exit_breakdown
from vmtrace.analyses.timeline import timeline
from vmtrace.analyses.waits import trace_lock_waits
from vmtrace.trace import read_trace

SAMPLE = Path(__file__).resolve().parent.parent / "sample_traces" / "qemu-pmtimer-2vcpu-precise.vmtrace"


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the real computations behind the cache (each still runs)."""
    seen: Counter[str] = Counter()

    def counting(module: Any, name: str) -> None:
        real: Callable[..., Any] = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for name in ("offcpu_spans", "futex_waits", "futex_calls"):
        counting(pairing, name)
    counting(partition, "compute_exit_breakdown")
    counting(runs, "run_cycles")
    return seen


def test_every_view_of_one_trace_computes_the_shared_parts_once(calls: Counter[str]) -> None:
    t = read_trace(SAMPLE)
    bql_breakdown(t)
    lock_report(t)
    offcpu_report(t)
    timeline(t)
    exit_stats(t)
    bql_breakdown(t, timed_loop=False)
    # The KVM_RUN cycles too: the partition, the holders and the exit
    # statistics all start from them.
    assert calls == {
        "offcpu_spans": 1,
        "futex_waits": 1,
        "futex_calls": 1,
        "compute_exit_breakdown": 1,
        "run_cycles": 1,
    }


def test_another_trace_object_computes_again(calls: Counter[str]) -> None:
    exit_breakdown(read_trace(SAMPLE))
    exit_breakdown(read_trace(SAMPLE))
    assert calls["compute_exit_breakdown"] == 2


def test_a_caller_cannot_poison_the_cache() -> None:
    t = read_trace(SAMPLE)
    first = exit_breakdown(t)
    before = first.copy(deep=True)
    first["total_ns"] = 0
    first.loc[0, "vmexit_ns"] = -1
    del first["kind"]
    again = exit_breakdown(t)
    assert again.equals(before)
    off = cache.offcpu_spans(t)
    off.iloc[:, 1] = 0
    assert (cache.offcpu_spans(t)["start_ns"] > 0).all()
    cyc = cache.vcpu_run_cycles(t).cycles
    cyc["tid"] = 0
    assert (cache.vcpu_run_cycles(t).cycles["tid"] > 0).all()
    rule = trace_lock_waits(t)
    with pytest.raises(ValueError):
        rule.wait_start[0] = 0


def test_new_events_or_metadata_compute_again(calls: Counter[str]) -> None:
    t = read_trace(SAMPLE)
    exit_breakdown(t)
    t.meta["futex_names"] = {**(t.meta.get("futex_names") or {}), hex(0x1000): "other"}
    exit_breakdown(t)
    assert calls["compute_exit_breakdown"] == 2
    t.events = t.events.iloc[: len(t.events) // 2]
    half = exit_breakdown(t)
    assert calls["compute_exit_breakdown"] == 3
    assert len(half) < len(exit_breakdown(read_trace(SAMPLE)))
    cache.clear(t)
    exit_breakdown(t)
    assert calls["compute_exit_breakdown"] == 5


def test_cached_results_equal_fresh_ones() -> None:
    t = read_trace(SAMPLE)
    assert exit_breakdown(t).equals(partition.compute_exit_breakdown(read_trace(SAMPLE)))
    assert cache.offcpu_spans(t).equals(pairing.offcpu_spans(t.events))
    fw = cache.futex_waits(t)
    assert fw.equals(pairing.futex_waits(t.events))
    assert np.array_equal(trace_lock_waits(t).wait_start, fw["start_ns"].to_numpy())
