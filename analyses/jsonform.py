"""The JSON form of the analyses' results: plain Python values only.

Results keep numbers (a futex word or port is an int); the JSON form shows
addresses in hex, as the text and HTML reports do.  Turning numpy and pandas
scalars and missing values into what ``json`` writes is ``vmtrace.jsonsafe``'s
job; ``records`` is re-exported from there.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

# One converter for the whole package: the JSON form of a table is the
# generic one, so an analysis's JSON and `vmtrace report --json` cannot drift.
from vmtrace.jsonsafe import records

__all__ = ["records", "hex_or_none", "bql_json"]


def hex_or_none(addr: Any) -> str | None:
    """An address in hex, None when missing."""
    return None if addr is None or pd.isna(addr) else hex(int(addr))


def bql_json(bql: dict[str, Any]) -> dict[str, Any]:
    """The BQL record with its futex word in hex."""
    return {**bql, "futex_uaddr": hex_or_none(bql.get("futex_uaddr"))}
