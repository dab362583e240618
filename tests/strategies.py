"""Hypothesis strategies over the synthetic trace generator's exit scripts,
shared by the property tests of the analyses that must agree on one trace."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .synthetic import ExitScript


def exit_scripts(
    post_min_ns: int = 2, preemptions_ns: tuple[int, ...] = (0, 0, 1), kernel_preemptions_ns: tuple[int, ...] = (0,)
) -> st.SearchStrategy[ExitScript]:
    """Exits with every component drawn, lock waits on the BQL and another
    word included.  ``post_min_ns`` must leave room for the longest of
    ``preemptions_ns`` after the lock; ``kernel_preemptions_ns`` are drawn
    for a preemption inside KVM_RUN (``kernel_ns`` is raised to hold it)."""
    return st.builds(
        _with_room,
        kernel_ns=st.integers(1, 50_000),
        emulator_ns=st.integers(2, 5_000),
        pre_lock_ns=st.integers(0, 5_000),
        bql_futex_ns=st.sampled_from([0, 0, 3, 10_000, 123_457]),
        other_futex_ns=st.sampled_from([0, 0, 7, 50_000]),
        device_ns=st.integers(0, 20_000),
        post_ns=st.integers(post_min_ns, 5_000),
        lock_span=st.booleans(),
        preempted_ns=st.sampled_from(list(preemptions_ns)),
        kernel_preempted_ns=st.sampled_from(list(kernel_preemptions_ns)),
    )


def woken_exit_scripts(post_min_ns: int = 3_000) -> st.SearchStrategy[ExitScript]:
    """``exit_scripts`` with preemptions in the kernel and after the lock,
    and BQL waits ended by a wake from another thread followed by a wait for
    a CPU: every place a vCPU thread can be runnable without a CPU."""
    return st.builds(
        _with_room,
        kernel_ns=st.integers(1, 50_000),
        emulator_ns=st.integers(2, 5_000),
        pre_lock_ns=st.integers(0, 5_000),
        bql_futex_ns=st.sampled_from([0, 0, 3_000, 123_457]),
        other_futex_ns=st.sampled_from([0, 0, 7, 50_000]),
        device_ns=st.integers(0, 20_000),
        post_ns=st.integers(post_min_ns, 5_000),
        lock_span=st.booleans(),
        preempted_ns=st.sampled_from([0, 1, 2_500]),
        kernel_preempted_ns=st.sampled_from([0, 1, 40_000]),
        waker=st.sampled_from([None, 5]),
        wake_latency_ns=st.sampled_from([0, 1, 2_000]),
    )


def _with_room(**kw: Any) -> ExitScript:
    """An ExitScript whose kernel_ns holds its preemption, and whose BQL
    wait is only woken where it is long enough to be."""
    kp = kw.get("kernel_preempted_ns", 0)
    if kp:
        kw["kernel_ns"] = max(kw["kernel_ns"], kp + 3)
    if kw.get("waker") is not None and kw.get("bql_futex_ns", 0) < kw.get("wake_latency_ns", 0) + 4:
        kw["waker"] = None
    if kw.get("waker") is None:
        kw["wake_latency_ns"] = 0
    return ExitScript(**kw)
