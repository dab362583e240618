"""Command-line list arguments shared by the benchmark scripts."""

from __future__ import annotations

import sys


def positive_ints(text: str, what: str, prog: str) -> list[int]:
    """``1,2,4`` -> [1, 2, 4]; anything else exits with a one-line error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sys.exit(f"{prog}: error: {what} takes numbers such as 1,2,4, not {text!r}")
    if not values or min(values) < 1:
        sys.exit(f"{prog}: error: {what} takes positive numbers, not {text!r}")
    return values
