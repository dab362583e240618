"""FlatView: a MemoryRegion tree rendered into sorted, non-overlapping ranges.

A FlatView never changes after it is built.  Readers look an address up by
binary search (``bisect`` over the range starts) and may keep using the view
for as long as they stay inside an RCU read-side critical section; a writer
builds a new view and swaps it in (see :mod:`.address_space`).

Rendering follows QEMU's ``render_memory_region``: walk the tree, visit
subregions in priority order, and let each region fill only the parts of its
window that nothing rendered before it already covers.  Adjacent ranges that
continue the same region are then merged (``flatview_simplify``).
"""

from __future__ import annotations

import bisect
import itertools
import threading
from typing import NamedTuple

from .region import MemoryRegion

__all__ = ["FlatRange", "FlatView", "render"]


class FlatRange(NamedTuple):
    """``[start, end)`` of the address space maps to ``mr`` at ``offset_in_region``."""

    start: int
    end: int
    mr: MemoryRegion
    offset_in_region: int


class _RangeBuilder:
    """Sorted, non-overlapping ranges; ``fill`` only covers what is still free."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ranges: list[FlatRange] = []

    def fill(self, lo: int, hi: int, mr: MemoryRegion, base: int) -> None:
        """Cover the free parts of ``[lo, hi)`` with ``mr`` (its offset 0 at ``base``)."""
        i = bisect.bisect_right(self.starts, lo) - 1
        if i >= 0 and self.ranges[i].end > lo:
            lo = self.ranges[i].end  # the start is already covered
        i += 1
        while lo < hi:
            nxt = self.ranges[i].start if i < len(self.ranges) else hi
            if nxt > lo:
                piece_end = min(nxt, hi)
                self.ranges.insert(i, FlatRange(lo, piece_end, mr, lo - base))
                self.starts.insert(i, lo)
                i += 1
                lo = piece_end
                continue
            lo = max(lo, self.ranges[i].end)
            i += 1


def _render(mr: MemoryRegion, base: int, lo: int, hi: int, out: _RangeBuilder) -> None:
    if not mr.enabled:
        return
    lo, hi = max(lo, base), min(hi, base + mr.size)
    if lo >= hi:
        return
    if mr.alias is not None:
        # The alias shows the target as if the target's offset 0 were here.
        _render(mr.alias, base - mr.alias_offset, lo, hi, out)
        return
    for sub in mr.subregions:  # already in priority order
        _render(sub, base + sub.addr, lo, hi, out)
    if mr.terminates:
        out.fill(lo, hi, mr, base)


def _simplify(ranges: list[FlatRange]) -> list[FlatRange]:
    merged: list[FlatRange] = []
    for r in ranges:
        if merged:
            last = merged[-1]
            if (
                last.mr is r.mr
                and last.end == r.start
                and last.offset_in_region + (last.end - last.start) == r.offset_in_region
            ):
                merged[-1] = FlatRange(last.start, r.end, r.mr, last.offset_in_region)
                continue
        merged.append(r)
    return merged


def render(root: MemoryRegion) -> list[FlatRange]:
    """The flat ranges of the tree under ``root`` (root at address 0)."""
    out = _RangeBuilder()
    _render(root, 0, 0, root.size, out)
    return _simplify(out.ranges)


class FlatView:
    """An immutable rendering of a tree, shared by readers under RCU.

    The view holds a reference on every region it routes to (on their owners,
    really) from creation until :meth:`unref` drops the last view reference;
    ``reclaimed`` then becomes True, which tests use to prove that no reader
    ever touched a reclaimed view.
    """

    __slots__ = ("ranges", "_starts", "_ends", "_refs", "_lock", "reclaimed", "generation")
    # A view may be built outside the topology lock (tests, a second
    # renderer), so ``+= 1`` on a class attribute could hand two views one
    # number without the GIL; next() on a count is one atomic step on every
    # CPython build (3.13t: a compare-and-swap), QEMU's qatomic_fetch_inc.
    _generations = itertools.count(1)

    def __init__(self, ranges: list[FlatRange]) -> None:
        self.ranges = tuple(ranges)
        self._starts = [r.start for r in self.ranges]
        self._ends = [r.end for r in self.ranges]
        self._refs = 1
        self._lock = threading.Lock()
        self.reclaimed = False
        self.generation = next(FlatView._generations)
        for mr in {id(r.mr): r.mr for r in self.ranges}.values():
            mr.ref()

    @classmethod
    def from_root(cls, root: MemoryRegion) -> FlatView:
        return cls(render(root))

    def lookup(self, addr: int) -> FlatRange | None:
        """The range containing ``addr``, or None: a binary search."""
        assert not self.reclaimed, "lookup in a reclaimed FlatView"
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._ends[i]:
            return self.ranges[i]
        return None

    def ref(self) -> None:
        """``flatview_ref``."""
        with self._lock:
            assert self._refs > 0, "ref of a reclaimed FlatView"
            self._refs += 1

    def unref(self) -> None:
        """``flatview_unref``: the last reference destroys the view."""
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self.reclaimed = True
            for mr in {id(r.mr): r.mr for r in self.ranges}.values():
                mr.unref()

    def __repr__(self) -> str:
        body = ", ".join(f"[{r.start:#x},{r.end:#x}) {r.mr.name}+{r.offset_in_region:#x}" for r in self.ranges)
        return f"<FlatView #{self.generation} {body}>"
