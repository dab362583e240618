"""The JSON form of the analyses' results: plain Python values only.

Results keep numbers (a futex word or port is an int); the JSON form shows
addresses in hex, as the text and HTML reports do, and turns numpy and
pandas scalars and missing values into what ``json`` writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["records", "hex_or_none", "bql_json"]


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return None if np.isnan(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """``df`` as a list of row dicts of plain values (None for missing)."""
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def hex_or_none(addr: Any) -> str | None:
    """An address in hex, None when missing."""
    return None if addr is None or pd.isna(addr) else hex(int(addr))


def bql_json(bql: dict[str, Any]) -> dict[str, Any]:
    """The BQL record with its futex word in hex."""
    return {**bql, "futex_uaddr": hex_or_none(bql.get("futex_uaddr"))}
