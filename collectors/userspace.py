"""Decode the spool that ``vmtrace.probes`` writes inside a target.

The record layout is defined once in ``vmtrace.probes.RECORD`` and mirrored
here as a numpy dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vmtrace import probes

__all__ = ["PROBE_DTYPE", "ProbeSpool", "read_probe_spool"]

PROBE_DTYPE = np.dtype(
    [
        ("ts", "<i8"),
        ("tid", "<i4"),
        ("code", "u1"),
        ("sizew", "u1"),
        ("name_id", "<u2"),
        ("addr", "<u8"),
        ("value", "<i8"),
    ]
)
assert PROBE_DTYPE.itemsize == probes.RECORD.size

_CODE_TO_EVENT = {code: name for name, code in probes.EVENT_CODES.items()}


@dataclass
class ProbeSpool:
    """What a target reported: schema rows, and the names it gave futex words."""

    events: pd.DataFrame
    futex_names: dict[int, str] = field(default_factory=dict)


def read_probe_spool(path: Path) -> ProbeSpool:
    """Decode the spool a target wrote through ``vmtrace.probes``.

    Empty when the target never enabled probes.  A record cut short by a
    crash at the end of the file is dropped, not misread.
    """
    path = Path(path)
    if not path.exists():
        return ProbeSpool(pd.DataFrame({"ts_ns": []}))
    raw = path.read_bytes()
    raw = raw[: len(raw) - len(raw) % PROBE_DTYPE.itemsize]
    recs = np.frombuffer(raw, dtype=PROBE_DTYPE)
    names: dict[int, str] = {}
    names_path = Path(str(path) + ".names")
    if names_path.exists():
        for line in names_path.read_text(errors="replace").splitlines():
            nid, _, name = line.partition("\t")
            if nid.isdigit():
                names[int(nid)] = name
    named = recs[recs["code"] == probes.NAME_FUTEX_CODE]
    futex_names = {int(a): names.get(int(n), f"#{n}") for a, n in zip(named["addr"], named["name_id"], strict=True)}
    known = np.isin(recs["code"], list(_CODE_TO_EVENT))
    recs = recs[known]
    event = [_CODE_TO_EVENT[int(c)] for c in recs["code"]]
    is_dispatch = np.isin(recs["code"], [probes.EVENT_CODES["dispatch_begin"], probes.EVENT_CODES["dispatch_end"]])
    size = pd.array(recs["sizew"] & 0x7F, dtype="UInt8")
    write = pd.array((recs["sizew"] & 0x80) != 0, dtype="boolean")
    size[~is_dispatch] = pd.NA
    write[~is_dispatch] = pd.NA
    events = pd.DataFrame(
        {
            "ts_ns": recs["ts"],
            "tid": recs["tid"],
            "cpu": np.full(len(recs), -1, dtype=np.int16),
            "event": event,
            "addr": pd.array(recs["addr"], dtype="UInt64"),
            "size": size,
            "write": write,
            "name": [names.get(int(n), f"#{n}") for n in recs["name_id"]],
        }
    )
    return ProbeSpool(events, futex_names)
