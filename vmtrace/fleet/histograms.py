"""Mergeable histograms: one fixed set of log-spaced buckets for every trace.

A trace's histogram of a component is a vector of counts over the same
buckets on every host, so the fleet's histogram is the element-wise sum of
the traces' vectors: exact, associative, and computable in SQL.  The
buckets grow by 2 ** (1/4) (~19%) per step, the ratio the single-trace
report uses (``analyses.breakdown.HIST_BINS_PER_OCTAVE``), and share its
edges: 64 cycles is the edge 2 ** (24/4).

=========  =============================================================
bucket 0   [0, 1) cycles: a component that was absent from the exit
bucket i   [2 ** ((i-1)/4), 2 ** (i/4)) cycles, for 1 <= i <= 160
bucket 161 [2 ** 40, inf): past ~7 minutes at 2.6 GHz
=========  =============================================================

A quantile read off a histogram is a bucket, not a number: ``quantile``
returns the bucket holding the sample of that rank (the 'inverted CDF'
definition), so the true quantile lies inside its bounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple

import numpy as np

__all__ = [
    "PER_OCTAVE",
    "TOP_EXPONENT",
    "N_BUCKETS",
    "EDGES",
    "bucket_of",
    "histogram",
    "merge",
    "quantile",
    "bucket_bounds",
    "Quantile",
]

PER_OCTAVE: Final = 4
#: The last finite edge is 2 ** TOP_EXPONENT cycles.
TOP_EXPONENT: Final = 40
#: Finite edges 2 ** (k / PER_OCTAVE), k = 0 .. TOP_EXPONENT * PER_OCTAVE.
EDGES: Final[np.ndarray] = 2.0 ** (np.arange(TOP_EXPONENT * PER_OCTAVE + 1) / PER_OCTAVE)
EDGES.setflags(write=False)
#: One bucket below the first edge, one between each pair, one past the last.
N_BUCKETS: Final = len(EDGES) + 1


def bucket_of(cycles: np.ndarray) -> np.ndarray:
    """The bucket index (int64) of each value; negative values count as 0.

    ``searchsorted`` against the one stored edge array, rather than a
    logarithm, so a value on an edge lands in the same bucket on every
    machine.
    """
    v = np.asarray(cycles, dtype=np.float64)
    return np.searchsorted(EDGES, np.maximum(v, 0.0), side="right").astype(np.int64)


def histogram(cycles: np.ndarray) -> np.ndarray:
    """Counts per bucket (int64, length ``N_BUCKETS``) of the values."""
    return np.bincount(bucket_of(cycles), minlength=N_BUCKETS).astype(np.int64)


def merge(histograms: Iterable[np.ndarray | list[int] | None]) -> np.ndarray:
    """The element-wise sum of histograms (None, from a failed trace, adds
    nothing)."""
    total = np.zeros(N_BUCKETS, dtype=np.int64)
    for h in histograms:
        if h is None:
            continue
        arr = np.asarray(h, dtype=np.int64)
        if arr.shape != (N_BUCKETS,):
            raise ValueError(f"a fleet histogram has {N_BUCKETS} buckets, not {arr.shape}")
        total += arr
    return total


def bucket_bounds(index: int) -> tuple[float, float]:
    """The [low, high) cycles of bucket ``index``."""
    if index <= 0:
        return 0.0, float(EDGES[0])
    if index >= N_BUCKETS - 1:
        return float(EDGES[-1]), float("inf")
    return float(EDGES[index - 1]), float(EDGES[index])


class Quantile(NamedTuple):
    """A quantile read off a histogram: its bucket, the bucket's bounds, and
    a point estimate (the bucket's geometric middle; its low edge for the
    open last bucket, 0 for the first)."""

    bucket: int
    low: float
    high: float
    estimate: float


def quantile(counts: np.ndarray | list[int], q: float) -> Quantile | None:
    """The q-th quantile (0..1) of the samples a histogram counts: the
    bucket holding the sample of rank ceil(q * n), 1-based, clipped to
    1..n.  None for an empty histogram."""
    c = np.asarray(counts, dtype=np.int64)
    n = int(c.sum())
    if n == 0:
        return None
    # Rounded first: 0.99 * 100 is 99.00000000000001 in binary, rank 99.
    rank = min(max(int(np.ceil(round(q * n, 9))), 1), n)
    index = int(np.searchsorted(np.cumsum(c), rank, side="left"))
    low, high = bucket_bounds(index)
    if index == 0:
        # Below one cycle: a component whose span was absent (integer ns make
        # anything present at least 1 ns, ~2.6 cycles here).
        est = 0.0
    elif np.isinf(high):
        est = low
    else:
        est = float(np.sqrt(low * high))
    return Quantile(index, low, high, est)
