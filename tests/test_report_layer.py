"""The report layer: CLI output pinned against tests/golden/, each view
computed once per trace, and the view table that the CLI and HTML read."""

from __future__ import annotations

import difflib

import pytest

from .golden import cli_cases

CASES = cli_cases.cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_output_matches_the_golden_file(name: str) -> None:
    expected = (cli_cases.OUT / name).read_text()
    got = cli_cases.run(CASES[name])
    if got != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "golden", "now", n=2))
        pytest.fail(f"{name}: output changed (regenerate with python -m tests.golden.cli_cases only for a "
                    f"deliberate change):\n{diff[:4000]}", pytrace=False)


def test_every_golden_file_has_a_case() -> None:
    # A stale file would pin nothing; a missing one fails above.
    assert sorted(p.name for p in cli_cases.OUT.iterdir()) == sorted(CASES)
