"""The one JSON-safe converter: numpy and pandas values to plain Python.

Dependency-free at import (it recognises numpy and pandas values by their
methods), so an analysis, a renderer or a collector can use it without
pulling anything in.
"""

from __future__ import annotations

from typing import Any

__all__ = ["json_safe", "records"]


def json_safe(obj: Any) -> Any:
    """``obj`` with every numpy/pandas scalar made a Python one (``.item()``),
    NaN, ``pd.NA`` and ``None`` made ``None``, dict keys made ``str``, and
    tuples made lists, recursively: what ``json.dumps`` accepts."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if _is_na(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            value = obj.item()
        except (ValueError, AttributeError):
            return obj
        # A numpy NaN is a float NaN once unwrapped, and JSON has no NaN.
        return None if isinstance(value, float) and value != value else value
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def records(df: Any) -> list[dict[str, Any]]:
    """A DataFrame as a list of JSON-safe row objects (column -> value)."""
    out: list[dict[str, Any]] = json_safe(df.to_dict(orient="records"))
    return out


def _is_na(obj: Any) -> bool:
    # pandas.NA, recognised without importing pandas: the one value whose
    # type is named NAType in pandas' missing-value module.
    t = type(obj)
    return t.__name__ == "NAType" and t.__module__.startswith("pandas")
