"""Fleet analysis: many traces summarised together, on Dask when one
machine is not enough.

- ``summary``: one trace -> one row (``summarize_trace``), the table's
  columns (``COLUMNS``) and its Parquet file (``write_fleet``/``read_fleet``);
- ``histograms``: fixed log-spaced buckets, so merging is exact addition;
- ``sources``: files, directories, globs and fsspec URLs -> trace sources;
- ``engine``: the same function over every source, in this process, on
  Dask's local scheduler, or on a dask.distributed cluster;
- ``report`` / ``render``: the fleet view and its tables and HTML page;
- ``cli``: ``vmtrace fleet summarize`` and ``vmtrace fleet report``.
"""

from __future__ import annotations

__all__ = ["summary", "histograms", "sources", "engine", "report", "render"]
