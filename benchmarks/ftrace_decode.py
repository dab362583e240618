"""How fast the ftrace backend decodes raw ring-buffer pages into events.

A busy target makes about 300k events/s; the decoder (page walk, record
decode, assembly into the event table, normalisation) must keep well ahead
of that, or a long recording falls behind and the kernel drops events.  The
input is the two per-CPU page dumps the decoder's tests use
(``tests/collectors/data/cpu*.pages``, recorded from QEMU on this host),
repeated ``--repeat`` times.  Not a test: it prints the rate of each round
and the median against the target.

    .venv/bin/python benchmarks/ftrace_decode.py [--repeat 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from vmtrace.collectors.ftrace_events import assemble, decode_records
from vmtrace.collectors.ringbuf import walk_pages
from vmtrace.collectors.tracefs import EventFormat
from vmtrace.trace import normalize_events

DATA = Path(__file__).resolve().parent.parent / "tests" / "collectors" / "data"
PAGE = 4096
TARGET = 300_000


def load_formats() -> dict[int, EventFormat]:
    """The event formats saved beside the page dumps (tracefs ``format`` files of that host)."""
    obj = json.loads((DATA / "formats.json").read_text())
    return {f["id"]: EventFormat.from_json(f) for f in obj["formats"]}


def records_per_second(blob: bytes, formats: dict[int, EventFormat]) -> tuple[int, float]:
    t0 = time.perf_counter()
    rec = walk_pages(blob, PAGE)
    buf = np.frombuffer(blob, dtype=np.uint8)
    dec = decode_records(buf, rec.ts, rec.offset, np.zeros(len(rec.ts), np.int16), formats)
    normalize_events(assemble(dec.rows, dec.own_pids))
    return len(rec.ts), len(rec.ts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200, help="copies of the page dumps decoded at once")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    formats = load_formats()
    blob = ((DATA / "cpu0.pages").read_bytes() + (DATA / "cpu1.pages").read_bytes()) * args.repeat
    rates = []
    for i in range(args.rounds):
        n, rate = records_per_second(blob, formats)
        rates.append(rate)
        print(f"round {i}: {n:,} records at {rate / 1e6:.2f}M records/s")
    med = statistics.median(rates)
    print(
        f"median {med / 1e6:.2f}M records/s: {med / TARGET:.1f}x the {TARGET / 1e3:.0f}k events/s a busy target makes"
    )


if __name__ == "__main__":
    main()
