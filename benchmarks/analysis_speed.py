"""How fast the analyses read a trace: events per second and peak memory.

The breakdown (``partition``: ``exit_breakdown``, the per-exit components;
``breakdown``: the whole ``--bql-breakdown`` view with its summaries), exit
statistics, lock and off-CPU analyses each run in a fresh subprocess on synthetic traces of 1M and 10M events (4 vCPUs running
PM-timer exits, some waiting for the BQL and woken by the main loop, some
with reported lock and device spans, preemptions, sleeps and in-kernel
PIOs), so every figure is a cold start and ``ru_maxrss`` is that analysis's
own peak (trace read included).  Beside them, ``perf script`` decodes a
perf.data of about the same event count recorded on this host, the way one
would otherwise get at these events.  Not a test: it prints a table.

    .venv/bin/python benchmarks/analysis_speed.py                 # 1M and 10M events
    .venv/bin/python benchmarks/analysis_speed.py --sizes 1e6 --repeat 1 --no-perf

The perf comparison needs ``perf`` (Debian: ``apt-get install linux-perf``)
and root; it records ``sched:sched_switch`` system-wide while ``perf bench
sched pipe`` switches about 280k times a second, until the file holds the
wanted number of events.  Traces and perf.data files are cached in
``--workdir`` (default /tmp/vmtrace-analysis-speed); a 10M-event perf.data
is about 1.2 GB.  Targets: the breakdown at >= 5M events/s, every analysis
under 2 GB at 10M events.  Each analysis runs with the allocator settings the
``vmtrace`` command applies (``vmtrace.alloc.tune_for_large_arrays``: no
hugepage advice from numpy, glibc keeping freed memory); ``--defaults`` adds
a row per analysis with the process defaults a notebook starts with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ANALYSES = ("partition", "breakdown", "exits", "locks", "offcpu")


def _child(analysis: str, path: str, tuned: bool) -> None:
    """Run one analysis on one trace file and print one JSON line."""
    if tuned:
        from vmtrace.alloc import tune_for_large_arrays

        tune_for_large_arrays()
    from vmtrace.analyses.breakdown import bql_breakdown
    from vmtrace.analyses.exits import exit_stats
    from vmtrace.analyses.locks import lock_report
    from vmtrace.analyses.offcpu import offcpu_report
    from vmtrace.analyses.partition import exit_breakdown
    from vmtrace.trace import read_trace

    run = {
        "partition": exit_breakdown,
        "breakdown": lambda t: bql_breakdown(t, timed_loop=False),
        "exits": exit_stats,
        "locks": lock_report,
        "offcpu": offcpu_report,
    }[analysis]
    t0 = time.perf_counter()
    trace = read_trace(path)
    t1 = time.perf_counter()
    c1 = time.process_time()
    run(trace)
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "events": len(trace.events),
                "read_s": t1 - t0,
                "analysis_s": t2 - t1,
                "cpu_s": time.process_time() - c1,
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def _make_trace(n_events: int, path: Path) -> None:
    """A synthetic trace of about ``n_events`` events (see tests/synthetic.py)."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tests.synthetic import ExitScript, SyntheticTrace, replicate
    from vmtrace.trace import write_trace

    templates = [
        ExitScript(),
        ExitScript(kernel_exits=(0x70,)),
        ExitScript(bql_futex_ns=5000, waker=1, wake_latency_ns=300),
        ExitScript(lock_span=True, bql_futex_ns=2000, device_ns=700, other_futex_ns=100),
        ExitScript(preempted_ns=100, post_ns=500),
        ExitScript(sleep_ns=1000, post_ns=2000, port=0x3F8, write=True),
    ]
    per_exit = np.mean([len(_rows_of(x, SyntheticTrace)) for x in templates])
    vcpus = 4
    rng = np.random.default_rng(1)
    seqs = {100 + i: rng.integers(0, len(templates), int(n_events / per_exit / vcpus)) for i in range(vcpus)}
    t = replicate(templates, seqs).trace()
    write_trace(path, t.events, t.meta)


def _rows_of(x: object, synthetic: type) -> list:
    s = synthetic()
    s._exit(1, 0, x)
    return s.rows


def _run_child(analysis: str, path: Path, tuned: bool) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", analysis, str(path), "tuned" if tuned else "defaults"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _perf_data(n_events: int, workdir: Path) -> tuple[Path, int] | None:
    """A perf.data of about ``n_events`` sched_switch events, and its count."""
    path = workdir / f"perf-{n_events}.data"
    count_file = path.with_suffix(".count")
    if path.exists() and count_file.exists():
        return path, int(count_file.read_text())
    # About two switches per pipe round trip on this host; perf drops events
    # when its buffers fill, so record again, longer, until the file holds
    # nine tenths of the count asked for.
    loops = max(n_events // 2, 1000)
    count = 0
    for _ in range(4):
        subprocess.run(
            [
                "perf",
                "record",
                "-q",
                "-m",
                "64M",
                "-e",
                "sched:sched_switch",
                "-a",
                "-o",
                str(path),
                "--",
                "perf",
                "bench",
                "sched",
                "pipe",
                "-l",
                str(loops),
            ],
            check=True,
            capture_output=True,
        )
        out = subprocess.run(["perf", "script", "-i", str(path), "-F", "event"], check=True, capture_output=True)
        count = out.stdout.count(b"\n")
        if count >= 0.9 * n_events:
            break
        loops = int(loops * n_events / max(count, 1) * 1.05)
    count_file.write_text(str(count))
    return path, count


def _time_perf_script(path: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(
            ["perf", "script", "-i", str(path)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=3, metavar=("ANALYSIS", "TRACE", "ALLOC"), help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=2, metavar=("EVENTS", "TRACE"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1e6,1e7", help="event counts, comma-separated (default 1e6,1e7)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest is shown (default 3)")
    ap.add_argument("--analyses", default=",".join(ANALYSES), help="comma-separated, or none (perf only)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vmtrace-analysis-speed"))
    ap.add_argument("--no-perf", action="store_true", help="skip the perf script comparison")
    ap.add_argument(
        "--defaults", action="store_true", help="also run each analysis with the process's default allocator settings"
    )
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.child[2] == "tuned")
        return
    if args.make:
        _make_trace(int(args.make[0]), Path(args.make[1]))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    perf_ok = not args.no_perf and shutil.which("perf") is not None and os.geteuid() == 0
    print(
        f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; fastest of {args.repeat} cold runs, "
        "each in a fresh process"
    )
    print(f"{'what':<26}{'events':>12}{'read s':>9}{'analysis s':>12}{'cpu s':>8}{'M events/s':>12}{'peak MB':>10}")
    for n in sizes:
        path = args.workdir / f"synthetic-{n}.vmtrace"
        if not path.exists():
            # Generated in a process of its own, so its memory is nobody's peak.
            subprocess.run([sys.executable, __file__, "--make", str(n), str(path)], check=True, cwd=REPO)
        for analysis in [a for a in args.analyses.split(",") if a and a != "none"]:
            for tuned in (True, False) if args.defaults else (True,):
                runs = [_run_child(analysis, path, tuned) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["analysis_s"])
                peak = max(r["maxrss_mb"] for r in runs)
                label = analysis + ("" if tuned else " (defaults)")
                print(
                    f"{label:<26}{best['events']:>12,}{best['read_s']:>9.2f}{best['analysis_s']:>12.2f}"
                    f"{best['cpu_s']:>8.2f}{best['events'] / best['analysis_s'] / 1e6:>12.2f}{peak:>10,.0f}"
                )
        if perf_ok:
            data, count = _perf_data(n, args.workdir)
            secs = _time_perf_script(data, args.repeat)
            print(
                f"{'perf script (sched_switch)':<26}{count:>12,}{'':>9}{secs:>12.2f}{'':>8}{count / secs / 1e6:>12.2f}"
                f"{'':>10}"
            )
    if not perf_ok and not args.no_perf:
        print("perf script skipped: needs perf (apt-get install linux-perf) and root")


if __name__ == "__main__":
    main()
