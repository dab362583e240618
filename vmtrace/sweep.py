"""The seed's experiment as one command: a benchmark across vCPU counts and
configurations, each run twice (untraced for the guest's own number, then
recorded), summarised in a table and the talk's stacked chart.

The library half of ``vmtrace sweep``; a notebook calls :func:`run_sweep`
and :func:`summarize_sweep` the same way.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .analyses.breakdown import bql_breakdown
from .analyses.partition import COMPONENTS
from .errors import VmtraceError
from .trace import read_trace

__all__ = [
    "SweepConfig",
    "SweepRun",
    "configs_for",
    "check_outdir",
    "write_summary",
    "run_sweep",
    "summarize_sweep",
    "SUMMARY_COLUMNS",
]

#: Columns of the sweep summary (CSV and JSON), one row per (config, vcpus).
SUMMARY_COLUMNS = (
    "config",
    "vmm",
    "locking",
    "bench",
    "vcpus",
    "iterations",
    "guest_cycles_per_op",
    "traced_guest_cycles_per_op",
    "observer_effect",
    "runs",
    "guest_min",
    "guest_max",
    *COMPONENTS,
    "bql_wait",
    "total",
    "exits",
    "lost_events",
    "python_version",
    "free_threaded",
    "gil_enabled",
    "trace",
)


@dataclass(frozen=True)
class SweepRun:
    """One configuration at one vCPU count: the guest's number untraced and
    traced (medians over the repeats, with every run's number), and where
    the trace of the median recorded run went."""

    config: SweepConfig
    bench: str
    vcpus: int
    iterations: int
    guest_cycles_per_op: float
    traced_guest_cycles_per_op: float
    trace: Path
    guest_runs: tuple[float, ...] = ()
    traced_runs: tuple[float, ...] = ()
    #: What the reference VMM reported of its interpreter (see
    #: vmtrace.interpreter.read_report); None on QEMU.
    interpreter: dict[str, Any] | None = None


@dataclass(frozen=True)
class SweepConfig:
    """One VMM set-up; the sweep runs it at every vCPU count.  ``python``
    (reference VMM only) is the interpreter's path, None for the default
    (see vmtrace.interpreter.resolve_python); ``gil`` says it runs with the
    GIL, which the label then says: "reference unlocked (GIL)".  ``qemu``
    (QEMU only) is what ``bench --qemu`` takes: a version or a path; the
    label then names it ("qemu 10.0")."""

    vmm: str
    locking: str | None = None
    python: str | None = None
    gil: bool = False
    qemu: str | None = None

    @property
    def label(self) -> str:
        if self.qemu:
            return f"{self.vmm} {self._qemu_name}"
        base = f"{self.vmm} {self.locking}" if self.locking else self.vmm
        return f"{base} (GIL)" if self.gil else base

    @property
    def _qemu_name(self) -> str:
        q = self.qemu or ""
        return q.rsplit("/", 1)[-1] if "/" in q else q

    @property
    def slug(self) -> str:
        if self.qemu:
            return f"{self.vmm}-{self._qemu_name}"
        base = f"{self.vmm}-{self.locking}" if self.locking else self.vmm
        return f"{base}-gil" if self.gil else base


def configs_for(
    vmms: Iterable[str],
    lockings: Iterable[str] | None,
    pythons: Iterable[str] | None = None,
    qemus: Iterable[str] | None = None,
) -> list[SweepConfig]:
    """Every configuration named on the command line: ``--locking`` applies
    to the reference VMM (QEMU's locking is fixed by its version), and so
    does ``--python`` (default "ft": the free-threaded build, or the GIL
    interpreter with a note on stderr when it is missing).  Each interpreter
    is a configuration of its own, free-threaded ones first.  ``--qemu``
    (versions or paths, each resolved now so a missing one fails before any
    run) makes one QEMU configuration each."""
    from .bench import LOCKING_MODES, VMMS, note_on_stderr
    from .interpreter import Interpreter, resolve_python

    out: list[SweepConfig] = []
    lockings = [x for x in (lockings or []) if x]
    for mode in lockings:
        if mode not in LOCKING_MODES:
            raise VmtraceError(f"unknown locking mode {mode!r}: choose among {', '.join(LOCKING_MODES)}")
    for vmm in vmms:
        if vmm not in VMMS:
            raise VmtraceError(f"unknown VMM {vmm!r}: choose among {', '.join(VMMS)}")
        if vmm == "reference":
            interps: list[Interpreter] = []
            for spec in list(pythons or []) or ["ft"]:
                interp = resolve_python(spec, note_on_stderr)
                if interp.kind in [i.kind for i in interps]:
                    other = next(i for i in interps if i.kind == interp.kind)
                    if other.path == interp.path:
                        continue  # "ft,gil" without a free-threaded build: the same interpreter twice
                    raise VmtraceError(
                        f"--python names two {interp.kind} interpreters ({other.path} and "
                        f"{interp.path}): a sweep compares one of each kind"
                    )
                interps.append(interp)
            interps.sort(key=lambda i: i.kind != "free-threaded")
            out += [
                SweepConfig(vmm, m, i.path, i.kind == "GIL") for i in interps for m in (lockings or ["bql", "unlocked"])
            ]
        elif qemus:
            from .qemu_versions import resolve_qemu

            for q in qemus:
                resolve_qemu(q)
                out.append(SweepConfig(vmm, qemu=q))
        else:
            out.append(SweepConfig(vmm))
    if qemus and "qemu" not in list(vmms):
        raise VmtraceError("--qemu applies to --vmm qemu")
    if not out:
        raise VmtraceError("nothing to sweep: give --vmm qemu and/or reference")
    return out


def check_outdir(outdir: Path) -> None:
    """Refuse, before anything runs, an output directory that is a file or
    cannot be created or written."""
    import os

    outdir = Path(outdir)
    probe = outdir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe == outdir and not outdir.is_dir():
        raise VmtraceError(f"cannot use {outdir} as the sweep's output directory: it exists and is not a directory")
    if not probe.is_dir():
        raise VmtraceError(f"cannot create {outdir}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VmtraceError(f"cannot write to {probe}: permission denied (choose another -o)")


def run_sweep(
    configs: list[SweepConfig],
    vcpus: list[int],
    outdir: Path,
    bench: str = "inl_pmtimer",
    iterations: int | None = None,
    backend: str = "auto",
    progress: Callable[[str], None] | None = None,
    repeat: int = 1,
) -> pd.DataFrame:
    """Run every (config, vCPU count) ``repeat`` times, untraced then
    recorded, alternating.  The guest's numbers are the medians; the trace
    kept, ``outdir/<config>-<n>vcpu.vmtrace``, is the recorded run whose
    guest number is the median one (the others are deleted), so the
    breakdown beside the numbers is a typical run, not a lucky one.
    Returns :func:`summarize_sweep`'s table.  ``iterations`` defaults per
    VMM (the Python VMM is ~10x slower per exit at 8 vCPUs, so it runs
    fewer)."""
    from .bench import BENCHES, run_bench

    if repeat < 1:
        raise VmtraceError("--repeat must be at least 1")
    if bench not in BENCHES:
        raise VmtraceError(f"unknown bench {bench!r}: choose one of {', '.join(BENCHES)}")
    if iterations is not None and iterations < 1:
        raise VmtraceError("--iterations must be at least 1")
    # Options first, the directory after: a mistyped option leaves nothing behind.
    check_outdir(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VmtraceError(f"cannot create {outdir}: {err.strerror}") from None
    runs = []
    for cfg in configs:
        for n in vcpus:
            iters = iterations or (20000 if cfg.vmm == "qemu" else 3000)
            path = outdir / f"{cfg.slug}-{n}vcpu.vmtrace"
            plain: list[float] = []
            interpreter: dict[str, Any] | None = None
            traced: list[tuple[float, Path]] = []
            # Several recorded runs go to hidden files until the median is known.
            files = [path] if repeat == 1 else [outdir / f".{cfg.slug}-{n}vcpu.run{k}.vmtrace" for k in range(repeat)]
            try:
                for k in range(repeat):
                    of = f" ({k + 1}/{repeat})" if repeat > 1 else ""
                    if progress:
                        progress(f"{cfg.label}, {n} vCPU: untraced{of}")
                    plain.append(
                        _guest_cycles(
                            run_bench(
                                cfg.vmm, bench, n, iters, locking=cfg.locking, python=cfg.python, qemu=cfg.qemu
                            ).cycles_per_op
                        )
                    )
                    if progress:
                        progress(f"{cfg.label}, {n} vCPU: recorded{of}")
                    res = run_bench(
                        cfg.vmm,
                        bench,
                        n,
                        iters,
                        locking=cfg.locking,
                        record_to=files[k],
                        backend=backend,
                        python=cfg.python,
                        qemu=cfg.qemu,
                    )
                    traced.append((_guest_cycles(res.cycles_per_op), files[k]))
                    interpreter = getattr(res, "interpreter", None)
            except BaseException:
                # A failed or interrupted run leaves no hidden run files behind.
                for f in files if repeat > 1 else []:
                    f.unlink(missing_ok=True)
                raise
            keep = _median_run(traced)
            for _, p in traced:
                if p != keep[1]:
                    p.unlink(missing_ok=True)
            if keep[1] != path:
                keep[1].replace(path)
            runs.append(
                SweepRun(
                    cfg,
                    bench,
                    n,
                    iters,
                    float(statistics.median(plain)),
                    keep[0],
                    path,
                    tuple(plain),
                    tuple(c for c, _ in traced),
                    interpreter,
                )
            )
    return summarize_sweep(runs)


def _guest_cycles(cycles_per_op: float | None) -> float:
    # A sweep compares what the guest measured: a run without it has nothing to compare.
    if cycles_per_op is None:
        raise VmtraceError("the benchmark guest reported no cycles per operation")
    return cycles_per_op


def _median_run(runs: list[tuple[float, Path]]) -> tuple[float, Path]:
    """The run whose number is the median (the lower middle for an even count:
    a run that happened, not an average of two)."""
    ordered = sorted(runs, key=lambda r: r[0])
    return ordered[(len(ordered) - 1) // 2]


def summarize_sweep(runs: list[SweepRun]) -> pd.DataFrame:
    """One row per run: the guest's untraced and traced cost, the observer
    effect (their ratio) and the trace's mean cycles per exit by component,
    over the guest's timed loop (see ``bql_breakdown``)."""
    rows = []
    for r in runs:
        b = bql_breakdown(read_trace(r.trace))
        plain, traced = r.guest_cycles_per_op, r.traced_guest_cycles_per_op
        rows.append(
            {
                "config": r.config.label,
                "vmm": r.config.vmm,
                "locking": r.config.locking,
                "bench": r.bench,
                "vcpus": r.vcpus,
                "iterations": r.iterations,
                "guest_cycles_per_op": plain,
                "traced_guest_cycles_per_op": traced,
                "observer_effect": traced / plain if plain else None,
                "runs": max(len(r.guest_runs), 1),
                "guest_min": min(r.guest_runs) if r.guest_runs else plain,
                "guest_max": max(r.guest_runs) if r.guest_runs else plain,
                **{c: b.components[c] for c in (*COMPONENTS, "bql_wait", "total")},
                "exits": len(b.exits),
                "lost_events": b.lost_events,
                "python_version": (r.interpreter or {}).get("version"),
                "free_threaded": (r.interpreter or {}).get("free_threaded"),
                "gil_enabled": (r.interpreter or {}).get("gil_enabled"),
                "trace": str(r.trace),
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def write_summary(summary: pd.DataFrame, outdir: Path) -> list[Path]:
    """``summary.csv`` and ``summary.json`` (a list of row objects)."""
    csv, js = outdir / "summary.csv", outdir / "summary.json"
    summary.to_csv(csv, index=False)
    js.write_text(json.dumps(json.loads(summary.to_json(orient="records")), indent=2) + "\n")
    return [csv, js]
