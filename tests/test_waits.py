"""The lock-wait rule (analyses.waits) on made-up spans with known answers,
and the schema tables the analyses share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vmtrace.analyses.waits import attribute_waits
from vmtrace.schema import EVENT_CODE, EVENT_TYPES, THREAD_ROLES, role_rank
from vmtrace.trace import read_trace

BQL, GIL, OTHER = 0x1000, 0x2000, 0x3000
NAMES = {BQL: "BQL", GIL: "GIL"}


def _locks(rows: list[tuple[int, int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tid": [r[0] for r in rows],
            "start_ns": [r[1] for r in rows],
            "end_ns": [r[2] for r in rows],
            "name": pd.Categorical([r[3] for r in rows], categories=["BQL", "mutex"]),
        }
    )


def _waits(rows: list[tuple[int, int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tid": [r[0] for r in rows],
            "start_ns": [r[1] for r in rows],
            "end_ns": [r[2] for r in rows],
            "uaddr": pd.array([r[3] for r in rows], dtype="UInt64"),
        }
    )


def test_each_wait_goes_to_one_lock() -> None:
    locks = _locks([(1, 100, 200, "BQL"), (1, 300, 400, "mutex"), (2, 100, 200, "BQL")])
    waits = _waits(
        [
            (1, 110, 150, BQL),  # inside the BQL span: already the BQL's
            (1, 160, 190, GIL),  # the GIL re-taken inside the BQL acquire: the GIL's
            (1, 310, 350, OTHER),  # inside the mutex span: the mutex's
            (1, 500, 600, BQL),  # free, on the BQL's word
            (1, 700, 750, OTHER),  # free, on another word
            (2, 120, 130, GIL),  # thread 2's BQL span holds it, not thread 1's
            (3, 150, 160, GIL),  # a thread with no lock span: free, another lock
        ]
    )
    rule = attribute_waits(locks, waits, BQL, NAMES)
    assert rule.lock_bql.tolist() == [True, False, True]
    assert rule.wait_in_lock.tolist() == [True, True, True, False, False, True, False]
    assert rule.free_bql.tolist() == [False, False, False, True, False, False, False]
    assert rule.free_other.tolist() == [False, False, False, False, True, False, True]
    assert rule.wait_nested.tolist() == [False, True, False, False, False, True, False]

    # One window per thread over everything: the BQL's and the others' time.
    bql, other = rule.within(np.array([1, 2, 3]), np.zeros(3, dtype=np.int64), np.full(3, 1000, dtype=np.int64))
    assert bql.tolist() == [100 - 30 + 100, 100 - 10, 0]
    assert other.tolist() == [100 + 50 + 30, 10, 10]
    # Every wait counted once: the two add up to the lock spans and free waits.
    assert (bql + other).tolist() == [100 + 100 + 100 + 50, 100, 10]


def test_without_a_known_bql_word_every_free_wait_is_another_lock() -> None:
    rule = attribute_waits(_locks([]), _waits([(1, 0, 10, BQL), (1, 20, 30, GIL)]), None, {})
    assert not rule.free_bql.any() and rule.free_other.all() and not rule.wait_nested.any()
    assert rule.spans()["what"].tolist() == ["lock_wait", "lock_wait"]


def test_event_codes_are_the_trace_files_category_codes() -> None:
    assert [EVENT_CODE[e] for e in EVENT_TYPES] == list(range(len(EVENT_TYPES)))
    path = Path(__file__).resolve().parent.parent / "sample_traces" / "qemu-pmtimer-1vcpu.vmtrace"
    ev = read_trace(path).events
    first = ev.drop_duplicates("event")
    for name, code in zip(first["event"].astype(str), first["event"].cat.codes, strict=True):
        assert EVENT_CODE[name] == code


def test_thread_roles_have_an_order_and_labels() -> None:
    assert list(THREAD_ROLES)[:3] == ["vcpu", "main", "iothread"]
    assert THREAD_ROLES["iothread"] == "IOThread"
    assert sorted(["other", "whatever", "vcpu", "iothread"], key=role_rank) == ["vcpu", "iothread", "other", "whatever"]
