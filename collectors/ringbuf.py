"""Decode the kernel ring buffer's binary pages (what ``trace_pipe_raw`` gives).

A read of ``per_cpu/cpuN/trace_pipe_raw`` returns one sub-buffer ("page"),
laid out as ``events/header_page`` and ``events/header_event`` describe:

* page header: ``u64 timestamp`` (time of the page's first event), then the
  ``local_t commit`` word: bytes of event data, with two flags in its high
  bits (bit 31: events were lost before this page; bit 30: their count is
  stored as a ``long`` just after the data); data starts at byte 16.
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
from dataclasses import dataclass

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
    ``lost`` int: events the kernel reported lost between pages (-1 per
    page that said "some" without a count is counted as 1), ``pages`` int.
    """

    ts: np.ndarray
    offset: np.ndarray
    lost: int
    pages: int


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
    unpack_hdr = struct.Struct("<QQ").unpack_from
    for p in range(npages):
        start = p * page_size
        ts, commit = unpack_hdr(mv, start)
        if commit & _MISSED_EVENTS:
            if commit & _MISSED_STORED:
                length = commit & _COMMIT_MASK
                pos = start + PAGE_DATA_OFFSET + length
                lost += struct.unpack_from("<Q", mv, pos)[0] if pos + 8 <= start + page_size else 1
            else:
                lost += 1
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
    return RawRecords(np.fromiter(ts_out, dtype=np.int64, count=len(ts_out)), offsets, lost, npages)


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
