"""Run ``summarize_trace`` over many traces: in this process, on Dask's local
scheduler with worker processes, or on a running dask.distributed cluster.

Every engine maps the same pure function over the same list of sources and
returns the rows in the order of that list, so the three give identical
tables.  Sources travel to the workers as strings; each worker opens its
traces itself (a URL through fsspec), and only the summary rows, a few
kilobytes each, come back.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable
from typing import Any, Final

from vmtrace.errors import VmtraceError

from .sources import expand_sources
from .summary import error_row, summarize_trace, write_fleet

__all__ = ["SYNCHRONOUS", "plan_fleet", "summarize_fleet", "run_fleet", "default_workers"]

#: ``--scheduler`` value that runs every trace in the calling process.
SYNCHRONOUS: Final = "synchronous"

Progress = Callable[[int, int], None]
Task = Callable[[str], dict[str, Any]]


def default_workers() -> int:
    """One worker process per CPU this process may run on."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def _worker_task(source: str, all_exits: bool) -> dict[str, Any]:
    # Each worker process tunes its allocator once, as the vmtrace command
    # does before an analysis (vmtrace/alloc.py): a cold breakdown otherwise
    # spends a third of its time in page faults.
    from vmtrace.alloc import tune_for_large_arrays

    tune_for_large_arrays()
    return summarize_trace(source, all_exits=all_exits)


def run_fleet(
    sources: list[str],
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    task: Task | None = None,
    all_exits: bool = False,
) -> list[dict[str, Any]]:
    """One row per source, in order.

    ``scheduler``: None for Dask's local scheduler with ``workers`` processes
    (default: one per CPU), ``"synchronous"`` for this process, or the
    address of a dask.distributed scheduler (``tcp://HOST:PORT``), whose
    workers must be able to open the sources.  ``progress(done, total)`` is
    called with 0 once the engine is up (connected, for a cluster), then
    as traces finish.  ``task`` replaces the per-trace function
    (a benchmark measures its workers this way); it must be picklable.
    """
    if workers is not None and workers < 1:
        raise VmtraceError("--workers must be at least 1")
    total = len(sources)
    report = progress or (lambda done, n: None)
    if scheduler == SYNCHRONOUS:
        # The caller's process keeps its own allocator settings (the library
        # never changes them behind a notebook's back).
        fn = task or functools.partial(summarize_trace, all_exits=all_exits)
        report(0, total)
        rows = []
        for i, source in enumerate(sources):
            rows.append(fn(source))
            report(i + 1, total)
        return rows
    fn = task or functools.partial(_worker_task, all_exits=all_exits)
    if scheduler is None:
        return _run_local(sources, fn, workers or default_workers(), report)
    return _run_distributed(sources, fn, scheduler, report)


def _run_local(sources: list[str], fn: Task, workers: int, report: Progress) -> list[dict[str, Any]]:
    from concurrent.futures.process import BrokenProcessPool

    from dask.base import compute
    from dask.callbacks import Callback
    from dask.delayed import delayed

    total = len(sources)
    done = [0]

    class _Count(Callback):
        # _posttask runs in the scheduler's thread once per finished task.
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if isinstance(result, dict):
                done[0] += 1
                report(done[0], total)

    report(0, total)
    tasks = [delayed(fn, pure=True)(s, dask_key_name=f"trace-{i}") for i, s in enumerate(sources)]
    try:
        with _Count():  # type: ignore[no-untyped-call]  # dask's Callback.__init__ is unannotated
            # One trace per hand-off (Dask's default batches 6): a trace is
            # seconds of work, and batches would leave a worker idle at the end.
            rows = compute(*tasks, scheduler="processes", num_workers=workers, chunksize=1)
    except BrokenProcessPool:
        # A worker died (killed for memory, or a script that starts the pool
        # without an `if __name__ == "__main__":` guard, which spawned
        # workers re-run).
        raise VmtraceError(
            "a fleet worker process died; run with fewer --workers, or from a script guarded "
            'by `if __name__ == "__main__":`'
        ) from None
    return list(rows)


def _run_distributed(sources: list[str], fn: Task, address: str, report: Progress) -> list[dict[str, Any]]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise VmtraceError("--scheduler needs the distributed package (pip install 'dask[distributed]')") from None
    if "://" not in address:
        raise VmtraceError(f"--scheduler takes an address such as tcp://10.0.0.5:8786, not {address!r}")
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as err:
        raise VmtraceError(f"cannot reach the Dask scheduler at {address}: {str(err).splitlines()[0]}") from None
    report(0, len(sources))
    try:
        # Keys of this run only: a second run on the same cluster must not
        # be handed the first one's results.
        run = uuid.uuid4().hex[:12]
        futures = client.map(fn, sources, key=[f"vmtrace-fleet-{run}-{i}" for i in range(len(sources))], pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        rows: list[dict[str, Any] | None] = [None] * len(sources)
        for n, future in enumerate(as_completed(futures), start=1):
            i = index[future.key]
            try:
                rows[i] = future.result()
            except Exception as err:  # a worker lost with its task (killed, out of memory): that trace's row
                # Dask's own message runs on for lines: its first sentence says it.
                said = str(err).split(". ")[0]
                rows[i] = error_row(sources[i], f"the Dask worker running it failed: {type(err).__name__}: {said}")
            report(n, len(sources))
        return [r for r in rows if r is not None]
    finally:
        client.close()


def plan_fleet(specs: list[str], output: str) -> list[str]:
    """Check that ``output`` can be written and expand ``specs`` (files,
    directories, globs, URLs) to the traces to summarise: everything that
    can fail before any work starts."""
    parent = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise VmtraceError(f"cannot write {output}: it is a directory; give a file name")
    if not os.path.isdir(parent):
        raise VmtraceError(f"cannot write {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise VmtraceError(f"cannot write {output}: directory {parent} is not writable")
    return expand_sources(specs)


def summarize_fleet(
    sources: list[str],
    output: str,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    all_exits: bool = False,
) -> tuple[str, list[dict[str, Any]]]:
    """Summarise every trace of ``sources`` (see ``plan_fleet`` and
    ``run_fleet``) and write the fleet table to ``output``.  Returns the
    path and the rows."""
    rows = run_fleet(sources, scheduler=scheduler, workers=workers, progress=progress, all_exits=all_exits)
    return write_fleet(rows, output), rows
