"""The colour and the name of each component of an exit, kept by every chart.

Plain tables, apart from plotly (``figures``) so that a view module can
name its colours at import time and still render a terminal report without
loading plotly.
"""

from __future__ import annotations

__all__ = ["COMPONENT_COLORS", "COMPONENT_LABELS"]


#: One colour per component, kept by every chart (kernel parts in blues,
#: the VMM's in warm colours, lock waits in reds).
COMPONENT_COLORS: dict[str, str] = {
    "guest": "#2ca02c",
    "vmexit": "#1f77b4",
    "emulator": "#6baed6",
    "dispatch": "#ff7f0e",
    "device": "#9467bd",
    "lock_wait": "#d62728",
    "bql_wait": "#d62728",
    "other_lock_wait": "#f08080",
    "runnable": "#f2c12e",
}
COMPONENT_LABELS: dict[str, str] = {
    "guest": "guest",
    "vmexit": "vmexit",
    "emulator": "emulator",
    "dispatch": "user exit + dispatch",
    "device": "device",
    "lock_wait": "lock wait",
    "bql_wait": "BQL wait",
    "other_lock_wait": "other lock / futex wait",
    "runnable": "runnable, waiting for a CPU",
}
