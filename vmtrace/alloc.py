"""Allocator settings for analysing large traces in this process.

A breakdown of a 10M-event trace builds and drops a few hundred arrays of
tens of megabytes.  With the defaults, a cold run spends a third of its time
in page faults rather than in numpy:

- numpy asks for transparent hugepages on every large array
  (``madvise(MADV_HUGEPAGE)``); on hosts whose THP setting is
  ``defrag: madvise`` (Debian's default) each such fault may compact memory
  synchronously before the kernel can hand out a 2 MB page;
- glibc serves every block over its mmap threshold (which grows only to
  32 MB) with a fresh ``mmap`` and gives it back with ``munmap`` when freed,
  so the next array of the same size faults its pages in all over again.

``tune_for_large_arrays`` turns numpy's advice off and lets glibc keep freed
memory for reuse.  It changes the whole process, so the library never calls
it on import: the ``vmtrace`` command does, and a notebook may.  The cost is
memory that stays with the process after an analysis (at most the peak it
already had); ``benchmarks/analysis_speed.py`` shows both settings side by
side.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap, and stay there
_TRIM_ABOVE = (1 << 31) - 1  # give memory back only past 2 GiB of free heap top

_tuned = False


def tune_for_large_arrays() -> bool:
    """Apply the settings above once per process.  Returns whether glibc
    accepted its part (False on other C libraries, where only numpy's
    hugepage advice is turned off)."""
    global _tuned
    if _tuned:
        return True
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x keeps it under numpy.core
        from numpy.core import multiarray  # type: ignore[no-redef]  # the same module, at its 1.x path
    set_advice = getattr(multiarray, "_set_madvise_hugepage", None)
    if set_advice is not None:
        set_advice(False)
    ok = False
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is not None:
            ok = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))
    _tuned = ok
    return ok
