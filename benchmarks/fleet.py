"""Fleet throughput: many realistic traces summarised serially, on Dask's
local process pool, and on a dask.distributed LocalCluster.

Traces are synthetic (tests/synthetic.py: 4 vCPUs of PM-timer exits, some
waiting for the BQL and woken by the main loop, some with lock and device
spans, preemptions, sleeps and in-kernel PIOs), about ``--events`` events
each, drawn with their own seeds and carrying their own hosts and QEMU
versions.  ``--distinct`` of them are generated once into ``--workdir``
and the rest of the fleet are copies (a worker pays the same for a copy).

Printed per engine: wall time, traces/s, events/s, events/s per worker and
the peak RSS of each worker process (``ru_maxrss``; for the serial run,
the one process that does the work).  Beside them, the baselines a worker
must not fall behind: the single-trace breakdown (read + ``bql_breakdown``)
and the single-trace summary (read + the three analyses ``fleet summarize``
runs), each the median of three warm runs in one process.  Targets: two
workers >= 1.8x the serial throughput; events/s per worker >= the
single-trace breakdown.  The load average is printed before and after each
run: other work on the machine shows there.  Not a test.

    .venv/bin/python benchmarks/fleet.py                       # 200 traces of 1M events
    .venv/bin/python benchmarks/fleet.py --traces 40 --engines serial,local
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENGINES = ("serial", "local", "cluster")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured_task(source: str) -> dict[str, Any]:
    """``summarize_trace`` as the engines run it, plus which process ran it
    and that process's peak RSS so far (what a worker reports back)."""
    from vmtrace.alloc import tune_for_large_arrays
    from vmtrace.fleet.summary import summarize_trace

    tune_for_large_arrays()
    row = summarize_trace(source)
    row["_pid"] = os.getpid()
    row["_peak_mb"] = _peak_mb()
    return row


# ----------------------------------------------------------------------------
# Traces


def _make_trace(index: int, events: int, path: Path) -> int:
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tests.synthetic import ExitScript, replicate
    from vmtrace.trace import write_trace

    templates = [
        ExitScript(),
        ExitScript(kernel_exits=(0x70,)),
        ExitScript(bql_futex_ns=5000, waker=1, wake_latency_ns=300),
        ExitScript(lock_span=True, bql_futex_ns=2000, device_ns=700, other_futex_ns=100),
        ExitScript(preempted_ns=100, post_ns=500),
        ExitScript(sleep_ns=1000, post_ns=2000, port=0x3F8, write=True),
    ]
    per_exit = 8.0  # events per exit of this mix, near enough for sizing
    rng = np.random.default_rng(index)
    weights = np.array([4, 1, 1 + index % 4, 1 + index % 3, 1, 1], dtype=float)
    vcpus = 4
    seqs = {
        100 + i: rng.choice(len(templates), int(events / per_exit / vcpus), p=weights / weights.sum())
        for i in range(vcpus)
    }
    t = replicate(templates, seqs).trace()
    version = ("7.2.22", "8.2.2", "10.0.2")[index % 3]
    meta = dict(
        t.meta,
        host={"hostname": f"host-{index % 50:02d}", "kernel": "6.1.0", "cpus": 64},
        target={
            "command": ["qemu-system-x86_64", "-append", "bench=inl_pmtimer"],
            "pid": 1000 + index,
            "vmm": "qemu",
            "vmm_version": version,
        },
        backend="bcc",
        mode="default",
        kvm_flavour="vmx",
        start_ns=0,
        end_ns=10**10,
    )
    write_trace(path, t.events, meta)
    return len(t.events)


def ensure_traces(workdir: Path, count: int, events: int, distinct: int) -> list[Path]:
    """``count`` traces of about ``events`` events in ``workdir``: the first
    ``distinct`` generated (two processes at a time), the rest copies of
    them, cycling; made once and reused.  Copies cost a worker exactly what
    their original does, and a 1M-event trace takes seconds to generate on
    a loaded 2-CPU machine."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"fleet-{events}-{i:04d}.vmtrace" for i in range(count)]
    distinct = max(1, min(distinct, count))
    missing = [i for i in range(distinct) if not paths[i].exists()]
    if missing:
        print(f"generating {len(missing)} traces of ~{events:,} events in {workdir} ...", flush=True)
        t0 = time.perf_counter()
        procs: list[subprocess.Popen[bytes]] = []
        for i in missing:
            while len(procs) >= 2:
                procs[0].wait()
                if procs[0].returncode:
                    raise SystemExit(f"generating a trace failed (status {procs[0].returncode})")
                procs.pop(0)
            procs.append(
                subprocess.Popen([sys.executable, __file__, "--make", str(i), str(events), str(paths[i])], cwd=REPO)
            )
        for p in procs:
            if p.wait():
                raise SystemExit(f"generating a trace failed (status {p.returncode})")
        print(f"generated in {time.perf_counter() - t0:.0f} s", flush=True)
    for i in range(distinct, count):
        if not paths[i].exists():
            tmp = paths[i].with_name(f".{paths[i].name}.tmp")
            shutil.copyfile(paths[i % distinct], tmp)
            os.replace(tmp, paths[i])
    return paths


# ----------------------------------------------------------------------------
# Runs, each in a fresh process so its peak memory is its own


def _baseline(path: str) -> dict[str, Any]:
    from vmtrace.alloc import tune_for_large_arrays
    from vmtrace.analyses.breakdown import bql_breakdown
    from vmtrace.analyses.exits import exit_stats
    from vmtrace.analyses.locks import lock_report
    from vmtrace.trace import read_trace

    tune_for_large_arrays()
    bd, summ = [], []
    events = 0
    for _ in range(4):  # the first run warms the process and is dropped
        t0 = time.perf_counter()
        trace = read_trace(path)
        bql_breakdown(trace)
        t1 = time.perf_counter()
        lock_report(trace)
        exit_stats(trace)
        t2 = time.perf_counter()
        events = len(trace.events)
        bd.append(t1 - t0)
        summ.append(t2 - t0)
    return {
        "events": events,
        "breakdown_s": statistics.median(bd[1:]),
        "summary_s": statistics.median(summ[1:]),
        "peak_mb": _peak_mb(),
    }


def _run_engine(engine: str, sources: list[str], workers: int) -> dict[str, Any]:
    from vmtrace.fleet.engine import run_fleet

    info: dict[str, Any] = {}
    if engine == "cluster":
        from distributed import LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        )
        info["startup_s"] = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            rows = run_fleet(sources, scheduler=cluster.scheduler_address, task=measured_task)
            wall = time.perf_counter() - t0
        finally:
            cluster.close()
    else:
        t0 = time.perf_counter()
        rows = run_fleet(
            sources, scheduler="synchronous" if engine == "serial" else None, workers=workers, task=measured_task
        )
        wall = time.perf_counter() - t0
    peaks: dict[int, float] = {}
    for r in rows:
        peaks[r["_pid"]] = max(peaks.get(r["_pid"], 0.0), r["_peak_mb"])
    info.update(
        wall_s=wall,
        events=int(sum(r["events"] or 0 for r in rows)),
        traces=len(rows),
        failed=sum(1 for r in rows if r["error"]),
        processes=len(peaks),
        peak_mb=sorted(peaks.values(), reverse=True),
    )
    return info


def _child(kind: str, arg: str, workers: int) -> None:
    if kind == "baseline":
        out = _baseline(arg)
    else:
        out = _run_engine(kind, json.loads(Path(arg).read_text()), workers)
    print(json.dumps(out))


def _in_child(kind: str, arg: str, workers: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, arg, str(workers)], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--traces", type=int, default=200, help="traces in the fleet (default 200)")
    ap.add_argument("--events", type=float, default=1e6, help="events per trace (default 1e6)")
    ap.add_argument(
        "--distinct",
        type=int,
        default=20,
        help="traces generated; the rest of --traces are copies of them (default 20)",
    )
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the pool and the cluster (default 2)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: serial, local, cluster")
    ap.add_argument("--generate-only", action="store_true", help="make the traces and stop")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmtrace" / "fleet-bench",
    )
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.make:
        _make_trace(int(args.make[0]), int(args.make[1]), Path(args.make[2]))
        return
    engines = [e for e in args.engines.split(",") if e]
    if bad := [e for e in engines if e not in ENGINES]:
        raise SystemExit(f"unknown engine {bad[0]!r}: choose among {', '.join(ENGINES)}")
    paths = ensure_traces(args.workdir, args.traces, int(args.events), args.distinct)
    if args.generate_only:
        return
    listing = args.workdir / f"sources-{args.traces}-{int(args.events)}.json"
    listing.write_text(json.dumps([str(p) for p in paths]))
    print(
        f"host: {os.cpu_count()} CPUs; {args.traces} traces of ~{int(args.events):,} events "
        f"({min(args.distinct, args.traces)} distinct, the rest copies); "
        f"{args.workers} workers; load average (1/5/15 min) at start {_load()}"
    )
    base = _in_child("baseline", str(paths[0]), 1)
    bd_rate = base["events"] / base["breakdown_s"]
    summary_rate = base["events"] / base["summary_s"]
    print(f"{'baseline, one trace':<28}{'s':>8}{'M events/s':>12}")
    print(f"{'  read + breakdown':<28}{base['breakdown_s']:>8.2f}{bd_rate / 1e6:>12.2f}")
    print(f"{'  read + 3 analyses':<28}{base['summary_s']:>8.2f}{summary_rate / 1e6:>12.2f}")
    print(
        f"{'engine':<10}{'workers':>8}{'wall s':>9}{'traces/s':>10}{'M ev/s':>9}{'M ev/s/wkr':>12}{'speedup':>9}"
        f"{'vs bd':>7}{'vs 3an':>8}  {'peak MB per worker':<22}{'load before -> after'}"
    )
    serial_rate = None
    for engine in engines:
        before = _load()
        r = _in_child(engine, str(listing), args.workers)
        n_workers = 1 if engine == "serial" else args.workers
        rate = r["events"] / r["wall_s"]
        if engine == "serial":
            serial_rate = rate
        speedup = f"{rate / serial_rate:.2f}x" if serial_rate else "-"
        peaks = ",".join(f"{p:,.0f}" for p in r["peak_mb"])
        extra = f" (cluster start {r['startup_s']:.1f} s, not in wall)" if "startup_s" in r else ""
        failed = f" {r['failed']} FAILED" if r["failed"] else ""
        print(
            f"{engine:<10}{n_workers:>8}{r['wall_s']:>9.1f}{r['traces'] / r['wall_s']:>10.2f}{rate / 1e6:>9.2f}"
            f"{rate / n_workers / 1e6:>12.2f}{speedup:>9}{rate / n_workers / bd_rate:>6.2f}x"
            f"{rate / n_workers / summary_rate:>7.2f}x  {peaks:<22}"
            f"{before} -> {_load()}{extra}{failed}",
            flush=True,
        )
    print(
        "vs bd: events/s per worker over the single-trace breakdown's (target >= 1); vs 3an: over the "
        "single-trace read + 3 analyses a row needs (the engine's own overhead); speedup over serial "
        "(target >= 1.8x at 2 workers)"
    )


if __name__ == "__main__":
    main()
