"""The probe API costs next to nothing when nothing records."""

from __future__ import annotations

from benchmarks.probe_cost import measure


def test_disabled_probes_are_cheaper_than_enabled_ones() -> None:
    cost = measure(n=20_000)
    assert cost["probe_disabled"] < cost["probe_enabled"]
    # A disabled probe is one call of a no-op function: within a few empty calls.
    assert cost["probe_disabled"] < 5 * cost["empty_call"] + 200
    assert cost["pm_dispatch_disabled"] < cost["pm_dispatch_enabled"]
