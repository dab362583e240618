"""Decoding of the bcc backend's spool (no BPF needed): records and the
``lost`` markers derived from the per-CPU running lost total in each chunk
header.  The chunks are built with the same numpy dtype the backend decodes,
so these tests pin the header layout that ``bpf/vmtrace.bpf.c`` mirrors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from vmtrace.analyses.intervals import lost_windows
from vmtrace.collectors.bcc_backend import CHUNK_DTYPE, CHUNK_RECS, decode_chunks
from vmtrace.schema import EVENT_TYPES

FUTEX_ENTER = EVENT_TYPES.index("futex_enter")
SOURCE = Path(__file__).resolve().parents[2] / "collectors" / "bpf" / "vmtrace.bpf.c"


def chunk(cpu: int, lost: int, t0: int, n: int = CHUNK_RECS, tid: int = 42) -> np.ndarray:
    """One chunk of ``n`` futex_enter records of ``tid``, 1 ns apart from ``t0``."""
    c = np.zeros(1, dtype=CHUNK_DTYPE)
    c["n"], c["cpu"], c["lost"] = n, cpu, lost
    recs = c["recs"][0]
    recs["ts"][:n] = t0 + np.arange(n)
    recs["tid"][:n] = tid
    recs["event"][:n] = FUTEX_ENTER
    recs["addr"][:n] = 0x1000
    return c


def spool(*chunks: np.ndarray) -> bytes:
    return np.concatenate(chunks).tobytes()


def markers(df: pd.DataFrame) -> list[tuple[int, int, int]]:
    m = df[df["event"] == "lost"]
    assert set(m["tid"]) <= {-1}
    return sorted(zip(m["cpu"].astype(int), m["ts_ns"].astype(int), m["value"].astype(int), strict=True))


def test_header_layout_matches_the_bpf_struct() -> None:
    src = SOURCE.read_text()
    found = re.search(r"struct chunk \{(.*?)\};", src, re.S)
    assert found is not None
    body = found[1]
    fields = [line.split()[-1].rstrip(";").split("[")[0] for line in body.strip().splitlines()]
    assert fields == ["n", "cpu", "lost", "recs"] == list(CHUNK_DTYPE.names or ())
    assert CHUNK_DTYPE.fields["recs"][1] == 16


def test_no_loss_no_markers() -> None:
    df, _names, _tgids = decode_chunks(spool(chunk(0, 0, 100), chunk(0, 0, 1000), chunk(1, 0, 500, n=3)))
    assert markers(df) == []
    assert len(df) == 2 * CHUNK_RECS + 3


def test_a_dropped_chunk_becomes_one_marker() -> None:
    raw = spool(
        chunk(0, 0, 100),
        chunk(0, 128, 1000),  # one chunk of cpu 0 dropped between these two
        chunk(1, 256, 500),  # cpu 1 lost two chunks before its first one arrived
        chunk(1, 256, 2000),
    )
    df, _, _ = decode_chunks(raw)
    assert markers(df) == [(0, 1000, 128), (1, 500, 256)]
    # the window runs from the CPU's last record before the gap
    w = lost_windows(df.sort_values("ts_ns", kind="stable").reset_index(drop=True))
    got = {
        int(c): (int(s), int(e), int(n))
        for c, s, e, n in zip(w["cpu"], w["start_ns"], w["end_ns"], w["count"], strict=True)
    }
    assert got[0] == (100 + CHUNK_RECS - 1, 1000, 128)
    assert got[1][1:] == (500, 256) and got[1][0] == np.iinfo(np.int64).min


def test_loss_after_the_last_record_is_stamped_when_noticed() -> None:
    # the per-CPU chunks read at stop: cpu 0's is empty but its total rose
    raw = spool(chunk(0, 0, 100), chunk(1, 0, 200), chunk(0, 384, 0, n=0), chunk(1, 0, 900, n=5))
    df, _, _ = decode_chunks(raw, noticed_ns=5000)
    assert markers(df) == [(0, 5000, 384)]
    df, _, _ = decode_chunks(raw)  # default: the latest record
    assert markers(df) == [(0, 904, 384)]


def test_order_of_the_spool_does_not_matter() -> None:
    """Chunks of one CPU may reach the spool out of order (the map's partial
    chunk is written at stop, after chunks that reached the ring late)."""
    parts = [
        chunk(0, 0, 100),
        chunk(0, 128, 1000),
        chunk(0, 128, 2000),
        chunk(0, 256, 3000, n=7),
        chunk(1, 0, 150),
        chunk(1, 128, 1500),
    ]
    expected = [(0, 1000, 128), (0, 3000, 128), (1, 1500, 128)]
    rng = np.random.default_rng(1)
    for _ in range(5):
        order = rng.permutation(len(parts))
        df, _, _ = decode_chunks(spool(*[parts[i] for i in order]))
        assert markers(df) == expected


def test_markers_add_up_to_the_final_totals() -> None:
    rng = np.random.default_rng(7)
    parts, final = [], {}
    for cpu in range(4):
        total, t = 0, 0
        for _ in range(20):
            total += int(rng.integers(0, 3)) * CHUNK_RECS
            t += 10_000
            parts.append(chunk(cpu, total, t))
        final[cpu] = total
        parts.append(chunk(cpu, total, 0, n=0))
    df, _, _ = decode_chunks(spool(*parts), noticed_ns=10**9)
    m = df[df["event"] == "lost"]
    assert m.groupby("cpu")["value"].sum().astype(int).to_dict() == {c: v for c, v in final.items() if v}
    assert m["value"].gt(0).all()


def test_loss_before_a_cpus_first_record_is_usable_by_the_analyses() -> None:
    """A CPU whose first chunk already follows a loss gives a window open
    from the start of the trace; span tests must take it as such."""
    from vmtrace.analyses.intervals import thread_spans_lost

    df, _, _ = decode_chunks(spool(chunk(1, 128, 500, tid=7), chunk(0, 0, 100, tid=8)))
    ev = df.sort_values("ts_ns", kind="stable").reset_index(drop=True)
    assert lost_windows(ev)["start_ns"].tolist() == [np.iinfo(np.int64).min]
    lost = thread_spans_lost(ev, np.array([7, 7, 8]), np.array([400, 600, 100]), np.array([550, 700, 227]))
    assert lost.tolist() == [True, False, False]
