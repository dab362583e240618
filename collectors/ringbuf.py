"""Decode the kernel ring buffer's binary pages (what ``trace_pipe_raw`` gives).

A read of ``per_cpu/cpuN/trace_pipe_raw`` returns one sub-buffer ("page"),
laid out as ``events/header_page`` and ``events/header_event`` describe:

* page header: ``u64 timestamp`` (time of the page's first event), then the
  ``local_t commit`` word: bytes of event data, with two flags in its high
  bits (bit 31: events were lost before this page; bit 30: their count is
  stored as a ``long`` just after the data); data starts at byte 16.  The
  kernel (``ring_buffer_read_page``) sets bit 31 on the first page read after
  the writer overwrote unread pages, so the loss lies between the previous
  page read from that CPU and this page's first event.  It stores the count
  only when at least 8 bytes of the page are free, which a full page does
  not have: then the page says "some" and no more.  The flags are added as C
  ``int`` constants, so on a 64-bit kernel bits 32-63 come out set as well;
  only the low 32 bits mean anything.
* events, 4-byte aligned, each starting with a ``u32``: ``type_len`` in the
  low 5 bits and ``time_delta`` (ns since the previous event) in the other
  27.  ``type_len`` 1..28: the record is ``4*type_len`` bytes right after the
  header; 0: the next ``u32`` is the record's length + 4 and the record follows
  it; 29: padding (``time_delta`` 0 means the rest of the page is empty);
  30: time extend (``delta = (next_u32 << 27) + time_delta``); 31: absolute
  time stamp (``(next_u32 << 27) | time_delta``).

Walking the headers is sequential (each length decides where the next event
starts); it is a tight loop over a tuple of ``u32`` per page.  Everything after
it (``gather``) is vectorised over all records at once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PAGE_DATA_OFFSET", "RawRecords", "walk_pages", "gather", "gather_bytes", "decode_cstrings"]

PAGE_DATA_OFFSET = 16
_MISSED_EVENTS = 1 << 31
_MISSED_STORED = 1 << 30
_COMMIT_MASK = (1 << 30) - 1
_TYPE_PADDING = 29
_TYPE_TIME_EXTEND = 30
_TYPE_TIME_STAMP = 31


@dataclass
class RawRecords:
    """Records found in a run of pages.

    ``ts`` int64 ns (the buffer's trace clock), ``offset`` int64: byte offset
    of each record (its ``common_type`` field) in the decoded buffer,
    ``lost`` int: events the kernel reported lost between pages (a page that
    said "some" without a count is counted as 1), ``pages`` int.

    One entry per page flagged with lost events, in page order:
    ``gap_ts`` int64, the time of the page's first record (the page's own
    time stamp when it holds none), and ``gap_count`` int64, the count the
    kernel stored, or -1 when it did not store one.
    """

    ts: np.ndarray
    offset: np.ndarray
    lost: int
    pages: int
    gap_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gap_count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def walk_pages(data: bytes | memoryview, page_size: int, base: int = 0) -> RawRecords:
    """Find every record in ``data``, a concatenation of ``page_size`` pages.

    ``base`` int is added to every offset (to index a buffer that holds
    several CPUs' data back to back).  Truncated trailing bytes are ignored.
    """
    mv = memoryview(data)
    npages = len(mv) // page_size
    ts_out: list[int] = []
    off_out: list[int] = []
    lost = 0
    # Per flagged page: index its first record would have, page time stamp,
    # count (-1: not stored), and whether the page held a record at all.
    gaps: list[list[int]] = []
    unpack_hdr = struct.Struct("<QQ").unpack_from
    for p in range(npages):
        if gaps and gaps[-1][3] < 0:
            gaps[-1][3] = int(len(ts_out) > gaps[-1][0])
        start = p * page_size
        ts, commit = unpack_hdr(mv, start)
        if commit & _MISSED_EVENTS:
            count = -1
            if commit & _MISSED_STORED:
                pos = start + PAGE_DATA_OFFSET + (commit & _COMMIT_MASK)
                if pos + 8 <= start + page_size:
                    count = struct.unpack_from("<q", mv, pos)[0]
            # A stored count below 1 says nothing about how many were lost.
            if count <= 0:
                count = -1
            lost += count if count > 0 else 1
            gaps.append([len(ts_out), ts, count, -1])
        length = min(commit & _COMMIT_MASK, page_size - PAGE_DATA_OFFSET)
        nwords = length // 4
        if not nwords:
            continue
        dstart = start + PAGE_DATA_OFFSET
        w = struct.unpack_from(f"<{nwords}I", mv, dstart)
        i = 0
        while i < nwords:
            h = w[i]
            tl = h & 31
            if tl and tl <= 28:
                ts += h >> 5
                ts_out.append(ts)
                off_out.append(dstart + 4 * i + 4)
                i += tl + 1
            elif tl == 0:
                if i + 1 >= nwords:
                    break
                ts += h >> 5
                ts_out.append(ts)
                off_out.append(dstart + 4 * i + 8)
                i += 1 + (w[i + 1] + 3) // 4
            elif tl == _TYPE_TIME_EXTEND:
                if i + 1 >= nwords:
                    break
                ts += (w[i + 1] << 27) + (h >> 5)
                i += 2
            elif tl == _TYPE_TIME_STAMP:
                if i + 1 >= nwords:
                    break
                ts = (w[i + 1] << 27) | (h >> 5)
                i += 2
            else:  # padding
                if not (h >> 5) or i + 1 >= nwords:
                    break
                i += 1 + (w[i + 1] + 3) // 4
    offsets = np.fromiter(off_out, dtype=np.int64, count=len(off_out))
    if base:
        offsets += base
    if gaps and gaps[-1][3] < 0:
        gaps[-1][3] = int(len(ts_out) > gaps[-1][0])
    # A flagged page's first record is the first event after the gap; a
    # flagged page with no record keeps its own time stamp.
    gap_ts = np.array([ts_out[i] if has else t for i, t, _c, has in gaps], dtype=np.int64)
    gap_count = np.array([c for _i, _t, c, _h in gaps], dtype=np.int64)
    all_ts = np.fromiter(ts_out, dtype=np.int64, count=len(ts_out))
    return RawRecords(all_ts, offsets, lost, npages, gap_ts, gap_count)


def gather(buf: np.ndarray, offsets: np.ndarray, field_offset: int, size: int, signed: bool) -> np.ndarray:
    """Integer field at ``offsets + field_offset`` of every record.

    ``buf`` uint8 array; ``offsets`` int64 array; ``size`` 1, 2, 4 or 8.
    Returns int64 (or uint64 for unsigned 8-byte fields).
    """
    if len(offsets) == 0:
        return np.zeros(0, dtype=np.uint64 if size == 8 and not signed else np.int64)
    dtype = np.dtype(f"<{'i' if signed else 'u'}{size}")
    idx = (offsets + field_offset)[:, None] + np.arange(size)
    vals = np.ascontiguousarray(buf[idx]).view(dtype).ravel()
    if size == 8 and not signed:
        return vals.astype(np.uint64)
    return vals.astype(np.int64)


def gather_bytes(buf: np.ndarray, offsets: np.ndarray, field_offset: int, size: int) -> np.ndarray:
    """(n, size) uint8 array of a fixed-size byte field (``char comm[16]``)."""
    if len(offsets) == 0:
        return np.zeros((0, size), dtype=np.uint8)
    return buf[(offsets + field_offset)[:, None] + np.arange(size)]


def decode_cstrings(rows: np.ndarray) -> list[str]:
    """NUL-terminated byte rows -> str (undecodable bytes replaced)."""
    return [bytes(r).split(b"\0", 1)[0].decode("utf-8", "replace") for r in rows]
