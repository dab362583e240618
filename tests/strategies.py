"""Hypothesis strategies over the synthetic trace generator's exit scripts,
shared by the property tests of the analyses that must agree on one trace."""

from __future__ import annotations

from hypothesis import strategies as st

from .synthetic import ExitScript


def exit_scripts(post_min_ns: int = 2, preemptions_ns: tuple[int, ...] = (0, 0, 1)) -> st.SearchStrategy[ExitScript]:
    """Exits with every component drawn, lock waits on the BQL and another
    word included.  ``post_min_ns`` must leave room for the longest of
    ``preemptions_ns`` after the lock."""
    return st.builds(
        ExitScript,
        kernel_ns=st.integers(1, 50_000),
        emulator_ns=st.integers(2, 5_000),
        pre_lock_ns=st.integers(0, 5_000),
        bql_futex_ns=st.sampled_from([0, 0, 3, 10_000, 123_457]),
        other_futex_ns=st.sampled_from([0, 0, 7, 50_000]),
        device_ns=st.integers(0, 20_000),
        post_ns=st.integers(post_min_ns, 5_000),
        lock_span=st.booleans(),
        preempted_ns=st.sampled_from(list(preemptions_ns)),
    )
