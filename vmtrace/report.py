"""The views of one trace, and a session that computes each of them once.

``VIEWS`` is the table every front end reads: for each view, the library
call that computes it (the call a notebook makes), its JSON form, its
terminal renderer and its section of the HTML page.  ``Report`` is one
trace's session: it computes a view the first time a renderer asks for it
and hands the same result to every renderer after that, so ``vmtrace report
--exits --html`` computes the breakdown and the exits once, not once per
output.  Renderers get the finished results and only format them (as
pyinstrument's renderers read a ``Session``); the analyses below never see
a renderer.

In a notebook::

    from vmtrace.report import Report
    from vmtrace.trace import read_trace

    r = Report(read_trace("pm.vmtrace"), port=0x608)
    r["bql_breakdown"].components        # == bql_breakdown(trace, port=0x608)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import VmtraceError
from .jsonsafe import json_safe

if TYPE_CHECKING:
    from .trace import Trace

__all__ = ["View", "VIEWS", "CLI_VIEWS", "Report", "view", "option_users"]


class _Lazy:
    """A function named by module and attribute, imported on its first call:
    the HTML sections pull in plotly, which a terminal report should not
    wait for."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        self._fn: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        if self._fn is None:
            self._fn = getattr(importlib.import_module(self.module), self.name)
        return self._fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


def _render(module: str, name: str) -> _Lazy:
    """A renderer of ``vmtrace.render.<module>``, the view's own module."""
    return _Lazy(f"vmtrace.render.{module}", name)


def _to_json(result: Any) -> dict[str, Any]:
    doc: dict[str, Any] = result.to_json()
    return doc


@dataclass(frozen=True)
class View:
    """One view of a trace.

    ``compute(report)`` returns the result (an analysis dataclass, or a
    DataFrame for the internal views); it reads the trace and the options
    from the ``Report`` and other views through ``report[name]``.
    ``option`` is the ``vmtrace report`` flag ("" for a view the page uses
    but the command does not offer) and ``help`` its help text;
    ``reads`` are the command's options the view depends on.  ``json``,
    ``text(result, console)`` and ``html(report, limits)`` (a page section
    or None) are its renderers; None where the view has no such form."""

    name: str
    compute: Callable[[Report], Any]
    option: str = ""
    help: str = ""
    reads: frozenset[str] = frozenset()
    json: Callable[[Any], dict[str, Any]] | None = None
    text: Callable[..., None] | None = None
    html: Callable[..., Any] | None = None


# The computations, each the library call a notebook makes with the same
# options.  The analyses are imported when a view is computed, not with this
# module: the command line reads the table (its flags and help) at start-up,
# and --help, doctor and record should not wait for pandas.


def _breakdown(r: Report) -> Any:
    from .analyses.breakdown import bql_breakdown

    return bql_breakdown(r.trace, port=r.port, timed_loop=r.timed_loop)


def _exits(r: Report) -> Any:
    from .analyses.exits import exit_stats

    return exit_stats(r.trace, port=r.port)


def _locks(r: Report) -> Any:
    from .analyses.locks import lock_report

    return lock_report(r.trace, extra_names=dict(r.lock_names))


def _offcpu(r: Report) -> Any:
    from .analyses.offcpu import offcpu_report

    return offcpu_report(r.trace)


def _requests(r: Report) -> Any:
    from .analyses.requests import request_report

    return request_report(r.trace)


def _all_exits(r: Report) -> Any:
    from .analyses.partition import exit_breakdown

    return exit_breakdown(r.trace)


def _callsites(r: Report) -> Any:
    from .analyses.callsites import callsite_table

    return callsite_table(r.trace)


def _aggregate(r: Report) -> Any:
    from .top.series import aggregate_view

    return aggregate_view(r.trace)


def _timeline(r: Report) -> Any:
    from .analyses.timeline import timeline

    return timeline(r.trace, r["all_exits"])


#: Every view, in the order the command prints them, keys its JSON and lays
#: out the HTML page.
VIEWS: tuple[View, ...] = (
    View(
        "bql_breakdown",
        _breakdown,
        "--bql-breakdown",
        "Cycles per userspace exit by component: vmexit, emulator, dispatch, device, lock wait (BQL apart); "
        "with distributions, per exit kind/port, per vCPU.  The default view.",
        frozenset({"--port", "--all-exits"}),
        _to_json,
        _render("breakdown", "render_breakdown"),
        _render("breakdown", "breakdown_section"),
    ),
    View(
        "exits",
        _exits,
        "--exits",
        "What perf kvm stat gives, on any host: count, share, time share, min/mean/max per exit reason, per PIO "
        "port and MMIO address, per vCPU.",
        frozenset({"--port"}),
        _to_json,
        _render("exits", "render_exits"),
        _render("exits", "exits_section"),
    ),
    View(
        "locks",
        _locks,
        "--locks",
        "Every futex word the target waited on: waits, wait time (mean, p99), waiting and waking threads, hold "
        "times, the BQL named; time inside futex calls.",
        frozenset({"--lock"}),
        _to_json,
        _render("locks", "render_locks"),
        _render("locks", "locks_section"),
    ),
    View(
        "offcpu",
        _offcpu,
        "--offcpu",
        "Per thread: running, blocked on a lock, blocked on anything else, runnable but waiting for a CPU.",
        frozenset(),
        _to_json,
        _render("offcpu", "render_offcpu"),
        _render("offcpu", "offcpu_section"),
    ),
    View(
        "requests",
        _requests,
        "--requests",
        "virtio-blk: per request, by the role of the thread that serviced it (vCPU, main loop, IOThread): "
        "notification, BQL wait, queueing, processing, disk I/O, completion interrupt; p50/p90/p99.",
        frozenset(),
        _to_json,
        _render("requests", "render_requests"),
        _render("requests", "requests_section"),
    ),
    View(
        "callsites",
        _callsites,
        "--callsites",
        "BQL call sites (QEMU, traces recorded with --callsites or --precise): acquisitions, wait inside the lock "
        "call, contended waits, hold time to the unlock; mean and p99 per file:line, as info sync-profile.",
        frozenset(),
        _to_json,
        _render("callsites", "render_callsites"),
        _render("callsites", "callsites_section"),
    ),
    View(
        "aggregate",
        _aggregate,
        "--aggregate",
        "A record --aggregate trace: exits/s and mean cycles per component per interval, the recording's rows "
        "by vCPU and exit kind with p99, the BQL's share of wait.  The default view of such a trace.",
        frozenset(),
        _to_json,
        _Lazy("vmtrace.top.series", "render_aggregate"),
        _render("aggregate", "aggregate_section"),
    ),
    # Every exit of the trace (not only the breakdown's summary): what the
    # timeline and the Perfetto export lay out.
    View("all_exits", _all_exits),
    View("timeline", _timeline, html=_render("timeline", "timeline_section")),
)

#: The views ``vmtrace report`` offers as flags; the first is its default.
CLI_VIEWS: tuple[View, ...] = tuple(v for v in VIEWS if v.option)


def view(name: str) -> View:
    """The entry of ``VIEWS`` called ``name``."""
    for v in VIEWS:
        if v.name == name:
            return v
    raise VmtraceError(f"no view {name!r}: views are {', '.join(v.name for v in VIEWS)}")


def option_users(option: str) -> list[View]:
    """The command's views that read ``option`` (such as ``--port``)."""
    return [v for v in CLI_VIEWS if option in v.reads]


@dataclass
class Report:
    """One trace's views, each computed at most once (LISA keeps a cache per
    trace the same way).

    ``trace`` is a ``Trace``; ``port`` and ``timed_loop`` select the exits
    the breakdown summarises and ``port`` the exits ``exit_stats`` counts,
    as in ``bql_breakdown``; ``lock_names`` maps a futex word's address
    (int) to a name (str), as ``lock_report``'s ``extra_names``.
    ``report[name]`` is the view's result, computed on first use; a view
    the trace cannot feed raises its ``VmtraceError`` again on every use
    without computing again."""

    trace: Trace
    port: int | None = None
    timed_loop: bool = True
    lock_names: Mapping[int, str] = field(default_factory=dict)
    _results: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _errors: dict[str, VmtraceError] = field(default_factory=dict, init=False, repr=False)

    def __getitem__(self, name: str) -> Any:
        if name in self._results:
            return self._results[name]
        if name in self._errors:
            raise self._errors[name]
        try:
            result = view(name).compute(self)
        except VmtraceError as err:
            self._errors[name] = err
            raise
        self._results[name] = result
        return result

    def seed(self, name: str, result: Any) -> None:
        """Take ``result`` as the view ``name``'s (one the caller already
        has, such as exits a notebook filtered), unless already computed."""
        self._results.setdefault(name, result)

    def compute(self, names: list[str]) -> list[Any]:
        """The results of the views ``names``, in order (each computed once)."""
        return [self[name] for name in names]

    def get(self, name: str) -> tuple[Any, str]:
        """(result, "") or, for a view the trace cannot feed (no futex or
        sched events, say), (None, the reason)."""
        try:
            return self[name], ""
        except VmtraceError as err:
            return None, str(err)

    def json(self, names: list[str]) -> dict[str, Any]:
        """The JSON document of the views ``names``: one view's object, or
        with several one key per view, in the order given."""
        docs = {}
        for name in names:
            to_json = view(name).json
            if to_json is None:
                raise VmtraceError(f"view {name!r} has no JSON form")
            docs[name] = to_json(self[name])
        out: dict[str, Any] = json_safe(docs[names[0]] if len(docs) == 1 else docs)
        return out
