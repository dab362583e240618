"""Decoding of ring-buffer pages into schema rows (no tracefs needed).

``data/cpu{0,1}.pages`` are real ``trace_pipe_raw`` pages recorded on the
development host (QEMU 7.2 running the benchmark guest, with the BQL
identification uprobes attached) and ``data/trace.txt`` is the kernel's own
text rendering of exactly the same records (read from the instance's
``trace`` file before the pages were consumed).  The golden test decodes the
pages and checks every row against an independent parse of the text.

``data/lost-cpu1.pages`` are real pages with the kernel's lost-events flags:
a tracefs instance with an 11 KiB buffer per CPU (the smallest the kernel
allows) recorded a Python loop of futex(FUTEX_WAKE) calls while the reader
took two pages every 20 ms; ``data/lost-stats.json`` is that CPU's
``per_cpu/cpu1/stats`` read after the last page, ``data/lost-formats.json``
the formats of that boot.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.analyses.intervals import lost_windows
from vmtrace.collectors.base import RecordOptions
from vmtrace.collectors.ftrace import FtraceCollector
from vmtrace.collectors.ftrace_events import (
    assemble,
    decode_records,
    identify_lock_word,
    lost_markers,
    pair_run_exits,
    sched_in_missing,
)
from vmtrace.collectors.ringbuf import walk_pages
from vmtrace.collectors.tracefs import EventFormat, parse_format
from vmtrace.schema import EVENT_COLUMNS, EVENT_TYPES
from vmtrace.trace import normalize_events

DATA = Path(__file__).parent / "data"
PAGE = 4096


def load_formats(name: str = "formats.json") -> dict[int, EventFormat]:
    obj = json.loads((DATA / name).read_text())
    return {f["id"]: EventFormat.from_json(f) for f in obj["formats"]}


def decode_sample(uprobe_rows: bool = False):
    formats = load_formats()
    blobs, ts, offs, cpus, lost = [], [], [], [], 0
    base = 0
    for cpu in (0, 1):
        blob = (DATA / f"cpu{cpu}.pages").read_bytes()
        rec = walk_pages(blob, PAGE, base=base)
        blobs.append(blob)
        ts.append(rec.ts)
        offs.append(rec.offset)
        cpus.append(np.full(len(rec.ts), cpu, dtype=np.int16))
        lost += rec.lost
        base += len(blob)
    buf = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    return decode_records(
        buf,
        np.concatenate(ts),
        np.concatenate(offs),
        np.concatenate(cpus),
        formats,
        bql_addr=0x1234,
        uprobe_rows=uprobe_rows,
    ), lost


_PREFIX = re.compile(
    r"^\s*(?P<comm>.*)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<sec>\d+)\.(?P<usec>\d+):\s+(?P<ev>[^:( ]+)[:(]?\s*(?P<rest>.*)$"
)
_STATE = {"R": 0, "S": 1, "D": 2, "T": 4, "t": 8, "X": 16, "Z": 32, "P": 64, "I": 128}


def expected_rows() -> tuple[Counter, dict[str, int]]:
    """Schema rows from the kernel's text output: (ts_us, cpu, event, tid,
    addr, size, write, value, peer) tuples, and the bql/mutex hits."""
    rows: Counter = Counter()
    events: Counter = Counter()
    for line in (DATA / "trace.txt").read_text().splitlines():
        m = _PREFIX.match(line)
        assert m, line
        ts_us = int(m["sec"]) * 1_000_000 + int(m["usec"])
        cpu, pid, ev, rest = int(m["cpu"]), int(m["pid"]), m["ev"], m["rest"]
        events[ev] += 1
        row: tuple | None = None
        if ev == "sys_ioctl" and rest.startswith("->"):
            row = ("ioctl_exit", pid, None, None, None, np.int64(np.uint64(int(rest[3:], 16))), None)
        elif ev == "sys_ioctl":
            assert "cmd: 0xae80" in rest
            row = ("run_enter", pid, None, None, None, None, None)
        elif ev == "sys_futex" and rest.startswith("->"):
            row = ("futex_exit", pid, None, None, None, np.int64(np.uint64(int(rest[3:], 16))), None)
        elif ev == "sys_futex":
            args = dict(a.split(": ") for a in rest.rstrip(")").split(", "))
            row = ("futex_enter", pid, int(args["uaddr"], 0), None, None, int(args["op"], 0), None)
        elif ev == "kvm_pio":
            p = re.match(r"pio_(read|write) at (0x[0-9a-f]+) size (\d+) count \d+ val (0x[0-9a-f]+)", rest)
            row = ("pio", pid, int(p[2], 16), int(p[3]), p[1] == "write", int(p[4], 16), None)
        elif ev == "kvm_mmio":
            p = re.match(r"mmio (\S+) len (\d+) gpa (0x[0-9a-f]+) val (0x[0-9a-f]+)", rest)
            row = ("mmio", pid, int(p[3], 16), int(p[2]), p[1] == "write", int(p[4], 16), None)
        elif ev == "kvm_msr":
            p = re.match(r"msr_(read|write) ([0-9a-f]+) = (0x[0-9a-f]+)", rest)
            row = ("msr", pid, int(p[2], 16), None, p[1] == "write", int(p[3], 16), None)
        elif ev == "kvm_userspace_exit":
            p = re.match(r"reason (\S+) \((\d+)\)", rest)
            value = int(p[2]) if p[1].startswith("KVM_EXIT_") else -int(p[2])
            row = ("userspace_exit", pid, None, None, None, value, None)
        elif ev == "sched_switch":
            p = re.match(
                r"prev_comm=.* prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> next_comm=.* next_pid=(\d+)", rest
            )
            bits: list[int] = [_STATE[c] for c in p[2].rstrip("+").split("|")]
            state = sum(bits)
            state = 0 if p[2].rstrip("+") == "R" else state
            rows[(ts_us, cpu, "sched_out", int(p[1]), None, None, None, state, int(p[3]))] += 1
            row = ("sched_in", int(p[3]), None, None, None, None, int(p[1]))
        elif ev == "sched_wakeup":
            p = re.match(r"comm=.* pid=(\d+) prio", rest)
            row = ("wakeup", int(p[1]), None, None, None, None, pid)
        if row is not None:
            rows[(ts_us, cpu) + row] += 1
    return rows, dict(events)


def as_tuples(df: pd.DataFrame) -> Counter:
    # the text shows microseconds rounded to nearest (the kernel adds 500 ns)
    names = {-1: "ioctl_exit", **dict(enumerate(EVENT_TYPES))}
    out: Counter = Counter()
    r: Any  # a row of cells: pandas-stubs type each as any scalar, int() included
    for r in df.itertuples(index=False):

        def v(x):
            return None if pd.isna(x) else (bool(x) if isinstance(x, (bool, np.bool_)) else int(x))

        out[
            (
                (int(r.ts_ns) + 500) // 1000,
                int(r.cpu),
                names[int(r.event_code)],
                int(r.tid),
                v(r.addr),
                v(r.size),
                v(r.write),
                v(r.value),
                v(r.peer_tid),
            )
        ] += 1
    return out


def test_golden_pages_match_kernel_text() -> None:
    decoded, lost = decode_sample()
    expected, events = expected_rows()
    got = as_tuples(decoded.rows)
    assert lost == 0
    assert sum(expected.values()) > 200
    assert got == expected
    # every record of the pages is accounted for, uprobe hits included
    assert sum(decoded.fired.values()) == sum(events.values())
    assert decoded.fired["kvm:kvm_pio"] == events["kvm_pio"]


def test_golden_bql_identification() -> None:
    decoded, _ = decode_sample()
    # Independent answer from the text: the mutex a thread locks right after
    # it entered the BQL function.
    last: dict[int, str] = {}
    answers: Counter = Counter()
    for line in (DATA / "trace.txt").read_text().splitlines():
        m = _PREFIX.match(line)
        if m["ev"] == "bql_lock":
            last[int(m["pid"])] = "bql"
        elif m["ev"] == "mutex_lock":
            if last.get(int(m["pid"])) == "bql":
                answers[int(re.search(r"mutex=(0x[0-9a-f]+)", m["rest"])[1], 16)] += 1
            last[int(m["pid"])] = "mutex"
    assert answers, "sample has no BQL lock followed by a mutex lock"
    assert identify_lock_word(decoded.lock_hits) == answers.most_common(1)[0][0]


def test_uprobe_rows_only_when_asked() -> None:
    quiet, _ = decode_sample(uprobe_rows=False)
    loud, _ = decode_sample(uprobe_rows=True)
    assert not quiet.rows["event_code"].isin([EVENT_TYPES.index("lock_begin")]).any()
    lb = loud.rows[loud.rows["event_code"] == EVENT_TYPES.index("lock_begin")]
    assert len(lb) > 0 and set(lb["name"]) == {"BQL"} and set(lb["addr"]) == {0x1234}


def test_assemble_gives_exact_schema_and_pairs_exits() -> None:
    decoded, _ = decode_sample()
    tids = decoded.own_pids
    events = normalize_events(assemble(decoded.rows, tids))
    assert list(events.columns) == list(EVENT_COLUMNS)
    for col, dtype in EVENT_COLUMNS.items():
        assert str(events[col].dtype) == dtype or (
            dtype == "category" and isinstance(events[col].dtype, pd.CategoricalDtype)
        )
    assert events["ts_ns"].is_monotonic_increasing
    assert set(events["tid"]) <= tids
    runs = events[events["event"].isin(["run_enter", "run_exit"])]
    # per thread, enters and exits alternate after pairing
    for _, g in runs.groupby("tid"):
        seq = g["event"].astype(str).tolist()
        assert all(a != b for a, b in zip(seq, seq[1:], strict=False) if b == "run_exit")


def test_pair_run_exits() -> None:
    E, X = EVENT_TYPES.index("run_enter"), -1
    rows = pd.DataFrame(
        {
            "ts_ns": [1, 2, 3, 4, 5, 6, 7, 8],
            "tid": [10, 11, 10, 10, 11, 10, 10, 11],
            "event_code": [E, X, X, X, E, E, X, X],
            "value": [None, 0, 0, 5, None, None, -4, 0],
        }
    )
    out = pair_run_exits(rows)
    # tid 10: E X(kept) X(dropped) E X(kept); tid 11: X(dropped: no enter) E X(kept)
    assert out["ts_ns"].tolist() == [1, 3, 5, 6, 7, 8]
    assert out["event_code"].tolist() == [
        E,
        EVENT_TYPES.index("run_exit"),
        E,
        E,
        EVENT_TYPES.index("run_exit"),
        EVENT_TYPES.index("run_exit"),
    ]


def _page(ts: int, words: list[int], commit_flags: int = 0, missed: int | None = None) -> bytes:
    data = struct.pack(f"<{len(words)}I", *words)
    body = data + (struct.pack("<Q", missed) if missed is not None else b"")
    page = struct.pack("<QQ", ts, len(data) | commit_flags) + body
    return page + b"\0" * (PAGE - len(page))


def test_walk_pages_headers() -> None:
    # small record (type_len 2, delta 5), time extend of (1<<27)+3, long record
    # (type_len 0, 120 bytes), discarded padding, then end-of-page padding.
    words = (
        [(5 << 5) | 2, 0xAAAA, 0xBBBB, (3 << 5) | 30, 1, (7 << 5) | 0, 124]
        + list(range(30))
        + [(9 << 5) | 29, 8, 0]
        + [(1 << 5) | 1, 0xCCCC]
        + [29]
    )
    rec = walk_pages(_page(1000, words), PAGE)
    assert rec.ts.tolist() == [1005, 1005 + (1 << 27) + 3 + 7, 1005 + (1 << 27) + 3 + 7 + 1]
    assert rec.offset.tolist() == [16 + 4, 16 + 4 * 5 + 8, 16 + 4 * 40 + 4]
    assert rec.lost == 0
    # absolute time stamp
    rec = walk_pages(_page(50, [(3 << 5) | 31, 2, (1 << 5) | 1, 7]), PAGE)
    assert rec.ts.tolist() == [((2 << 27) | 3) + 1]


def test_lost_event_accounting() -> None:
    pages = (
        _page(10, [(1 << 5) | 1, 1])
        + _page(20, [(1 << 5) | 1, 1], commit_flags=(1 << 31) | (1 << 30), missed=17)
        + _page(30, [(1 << 5) | 1, 1], commit_flags=1 << 31)
    )
    rec = walk_pages(pages, PAGE)
    assert rec.pages == 3 and len(rec.ts) == 3
    assert rec.lost == 17 + 1  # a page flagged without a count is counted as one


def test_walk_pages_reports_each_gap() -> None:
    # The kernel adds its flags as C ints, so a real commit word has bits
    # 32-63 set as well (sign extension); they must not matter.
    sign = 0xFFFFFFFF00000000
    pages = (
        _page(10, [(1 << 5) | 1, 1])
        + _page(20, [(4 << 5) | 1, 1, (2 << 5) | 1, 1], commit_flags=sign | (1 << 31) | (1 << 30), missed=17)
        + _page(30, [(1 << 5) | 1, 1], commit_flags=1 << 31)
        + _page(40, [], commit_flags=1 << 31)  # flagged, and no record on it
        + _page(50, [(3 << 5) | 1, 1], commit_flags=(1 << 31) | (1 << 30), missed=(1 << 64) - 1)  # a stored -1
    )
    rec = walk_pages(pages, PAGE)
    assert rec.ts.tolist() == [11, 24, 26, 31, 53]
    # the first record of each flagged page, or the page's time when it has none
    assert rec.gap_ts.tolist() == [24, 31, 40, 53]
    assert rec.gap_count.tolist() == [17, -1, -1, -1]
    assert rec.lost == 17 + 1 + 1 + 1


def test_walk_pages_no_gaps_on_golden_sample() -> None:
    rec = walk_pages((DATA / "cpu0.pages").read_bytes(), PAGE)
    assert len(rec.gap_ts) == 0 and rec.gap_count.dtype == np.int64


def test_lost_markers_per_cpu_and_unknown_counts() -> None:
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    gaps = {0: (i64(100, 200), i64(5, -1)), 3: (i64(130), i64(4)), 1: (i64(), i64())}
    m = lost_markers(gaps)
    assert list(m.columns) == list(EVENT_COLUMNS)
    assert set(m["event"].astype(str)) == {"lost"} and set(m["tid"]) == {-1}
    got = {
        (int(c), int(t)): (None if pd.isna(v) else int(v))
        for c, t, v in zip(m["cpu"], m["ts_ns"], m["value"], strict=True)
    }
    assert got == {(0, 100): 5, (0, 200): None, (3, 130): 4}  # a page that stored no count: NA
    assert lost_markers({}).empty


def _real_lost_pages() -> tuple[bytes, dict, list[int]]:
    blob = (DATA / "lost-cpu1.pages").read_bytes()
    meta = json.loads((DATA / "lost-stats.json").read_text())
    flagged = [p for p in range(len(blob) // PAGE) if struct.unpack_from("<Q", blob, p * PAGE + 8)[0] & (1 << 31)]
    return blob, meta, flagged


def test_real_lost_pages_gaps() -> None:
    blob, meta, flagged = _real_lost_pages()
    assert len(flagged) >= 3
    rec = walk_pages(blob, PAGE)
    per_page = [walk_pages(blob[p * PAGE : (p + 1) * PAGE], PAGE) for p in range(len(blob) // PAGE)]
    # one gap per flagged page, stamped with that page's first record ...
    assert rec.gap_ts.tolist() == [int(per_page[p].ts[0]) for p in flagged]
    # ... which comes after every record of the pages read before it
    for p in flagged[1:]:
        assert per_page[p].ts[0] > per_page[p - 1].ts[-1]
    # every flagged page carried its count, and they add up to the overrun
    assert (rec.gap_count > 0).all()
    assert int(rec.gap_count.sum()) == meta["stats"]["overrun"] == rec.lost


def test_real_lost_pages_records_stay_whole() -> None:
    """The count stored after a page's data is not mistaken for a record:
    every record decodes as the loop's futex call, entries and exits
    alternating except across a gap."""
    blob, _meta, flagged = _real_lost_pages()
    rec = walk_pages(blob, PAGE)
    buf = np.frombuffer(blob, dtype=np.uint8)
    dec = decode_records(buf, rec.ts, rec.offset, np.full(len(rec.ts), 1, np.int16), load_formats("lost-formats.json"))
    rows = dec.rows.sort_values("ts_ns", kind="stable").reset_index(drop=True)
    assert rows["ts_ns"].is_unique  # so the sort restores the record order
    assert len(rows) == len(rec.ts) and dec.fired.keys() == {"syscalls:sys_enter_futex", "syscalls:sys_exit_futex"}
    assert rows["tid"].nunique() == 1
    enter = rows[rows["event_code"] == EVENT_TYPES.index("futex_enter")]
    assert enter["addr"].nunique() == 1 and set(enter["value"]) == {1}  # FUTEX_WAKE on one word
    codes = rows["event_code"].to_numpy()
    gap_at = set(np.searchsorted(rec.ts, rec.gap_ts).tolist())
    repeats = {i for i in range(1, len(codes)) if codes[i] == codes[i - 1]}
    assert repeats <= gap_at


def test_collector_decode_emitslost_markers(tmp_path: Path) -> None:
    """FtraceCollector's decoding step on the real lossy pages (no tracefs):
    one marker per flagged page, on its CPU, before the first event after
    the gap, and the markers add up to the trace's lost count."""
    blob, meta, flagged = _real_lost_pages()
    spool = tmp_path / "cpu1.raw"
    spool.write_bytes(blob)
    c = FtraceCollector(RecordOptions(spool_dir=tmp_path))
    c._spool_paths = {1: spool}
    c._tracefs = tmp_path  # decoding reads no tracefs: the host's may be closed to this user
    c._formats = load_formats("lost-formats.json")
    c._stats = {1: meta["stats"]}
    rec = walk_pages(blob, PAGE)
    tid = int(
        decode_records(np.frombuffer(blob, np.uint8), rec.ts, rec.offset, np.ones(len(rec.ts), np.int16), c._formats)
        .rows["tid"]
        .iloc[0]
    )
    c._known_tids = {tid}
    col = c._decode()
    ev = col.events
    marks = ev[ev["event"] == "lost"]
    assert len(marks) == len(flagged)
    assert set(marks["cpu"]) == {1} and set(marks["tid"]) == {-1}
    assert marks["ts_ns"].tolist() == rec.gap_ts.tolist()
    assert int(marks["value"].sum()) == col.lost_per_cpu[1] == meta["stats"]["overrun"]
    # each marker sits right before the event it is stamped with
    for i in marks.index:
        assert ev.loc[i + 1, "ts_ns"] == ev.loc[i, "ts_ns"] and ev.loc[i + 1, "tid"] == tid
    assert (ev["event"] != "lost").sum() == len(rec.ts)
    w = lost_windows(ev)
    assert w["count"].sum() == meta["stats"]["overrun"]
    assert (w["start_ns"].iloc[1:] < w["end_ns"].iloc[1:]).all()


def testsched_in_missing() -> None:
    ev = pd.DataFrame(
        {"tid": [1, 1, 1, 2, 2], "event": ["sched_out", "sched_out", "sched_in", "sched_out", "sched_in"]}
    )
    assert sched_in_missing(ev) == 1


def test_parse_format_real_text() -> None:
    text = """name: kvm_pio
ID: 110
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int rw;\toffset:8;\tsize:4;\tsigned:0;
\tfield:char prev_comm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:u32 * uaddr;\toffset:32;\tsize:8;\tsigned:0;
"""
    fmt = parse_format(text, "kvm")
    assert (fmt.key, fmt.id) == ("kvm:kvm_pio", 110)
    assert fmt.fields["rw"].offset == 8 and not fmt.fields["rw"].signed
    assert fmt.fields["common_pid"].signed
    assert fmt.fields["prev_comm"].size == 16 and fmt.fields["prev_comm"].ctype == "char[16]"
    assert fmt.fields["uaddr"].offset == 32
    assert EventFormat.from_json(fmt.to_json()) == fmt


def test_decoding_many_pages_at_once_gives_each_copy_s_events() -> None:
    """50 copies of the page dumps decoded at once, as a long recording's
    drain hands them over: the page walk and the decode scale with no record
    dropped or doubled, and the whole path through assembly runs.  (Copies
    repeat the same timestamps, so normalisation drops rows as duplicates:
    only the decoded rows scale exactly.)  The speed is a benchmark,
    benchmarks/ftrace_decode.py, not a test."""
    formats = load_formats()
    one = (DATA / "cpu0.pages").read_bytes() + (DATA / "cpu1.pages").read_bytes()
    counts = []
    for copies in (1, 50):
        blob = one * copies
        rec = walk_pages(blob, PAGE)
        buf = np.frombuffer(blob, dtype=np.uint8)
        dec = decode_records(buf, rec.ts, rec.offset, np.zeros(len(rec.ts), np.int16), formats)
        events = normalize_events(assemble(dec.rows, dec.own_pids))
        assert len(events) > 100
        counts.append((len(rec.ts), len(dec.rows)))
    (rec1, rows1), (rec50, rows50) = counts
    assert rec1 > 400 and rows1 > 100
    assert (rec50, rows50) == (50 * rec1, 50 * rows1)
