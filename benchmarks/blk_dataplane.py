"""virtio-blk through the BQL or through an IOThread, on QEMU and the reference VMM, side by side.

Runs the benchmark guest's blk_randread (or blk_randwrite) on each
configuration - QEMU without an IOThread (the main loop services the queue
under the BQL), QEMU with one (dataplane), the reference VMM with --blk bql
and with --blk dataplane - at each vCPU count and queue depth, interleaved
round-robin so that host noise spreads over all of them, and prints the
guest-measured IOPS and cycles per request (median of the rounds).

A configuration that cannot run (the reference VMM before its virtio-blk
device exists, a QEMU without IOThreads) is shown as "n/a" with the reason
below the table, and is not tried again in later rounds.

The mixed rows (``blk_mixed``, at ``--mixed-vcpus``, 4 by default: half the
vCPUs read, the others hammer the PM timer, which both VMMs serve under the
BQL) are where the dataplane should pay: the main loop must win the BQL from
the hammers for every batch of requests, an IOThread never takes it.  Their
cells add the hammers' cycles per PM-timer read.  Target (issue 11): the
reference VMM's dataplane IOPS at least 1.5x its BQL path's.  The reference
VMM runs on its default interpreter (the free-threaded build when it is
there; ``--python`` picks another), named in the header.

    .venv/bin/python benchmarks/blk_dataplane.py [--rounds 1] [--iterations 400]
        [--vcpus 1,2,4] [--qd 1,16] [--vmm qemu,reference]
        [--bench blk_randread,blk_mixed] [--mixed-vcpus 4] [--python ft]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from vmtrace.bench import run_bench
from vmtrace.blk import DEFAULT_DISK_BYTES, make_disk
from vmtrace.errors import VmtraceError
from vmtrace.interpreter import resolve_python

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import positive_ints

CONFIGS = {
    ("qemu", "bql"): "QEMU main loop (BQL)",
    ("qemu", "dataplane"): "QEMU IOThread",
    ("reference", "bql"): "reference --blk bql",
    ("reference", "dataplane"): "reference --blk dataplane",
}


def _ints(text: str, what: str) -> list[int]:
    return positive_ints(text, what, "blk_dataplane")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the table shows medians")
    ap.add_argument("--iterations", type=int, default=400, help="timed requests per vCPU")
    ap.add_argument("--vcpus", default="1,2,4")
    ap.add_argument("--qd", default="1,16", help="queue depths (requests in flight per vCPU)")
    ap.add_argument("--vmm", default="qemu,reference")
    ap.add_argument(
        "--bench",
        default="blk_randread,blk_mixed",
        help="comma-separated: blk_randread or blk_randwrite (at --vcpus), blk_mixed (at --mixed-vcpus)",
    )
    ap.add_argument("--mixed-vcpus", default="4", help="vCPU counts of the blk_mixed rows (half read, half hammer)")
    ap.add_argument("--python", default=None, help="the reference VMM's interpreter: ft (default), gil or a path")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    args = ap.parse_args()
    if args.rounds < 1 or args.iterations < 1:
        sys.exit("blk_dataplane: error: --rounds and --iterations must be at least 1")
    benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    if not benches or set(benches) - {"blk_randread", "blk_randwrite", "blk_mixed"}:
        sys.exit(
            f"blk_dataplane: error: --bench takes blk_randread, blk_randwrite and/or blk_mixed, not {args.bench!r}"
        )
    vcpu_counts, depths = _ints(args.vcpus, "--vcpus"), _ints(args.qd, "--qd")
    mixed_counts = _ints(args.mixed_vcpus, "--mixed-vcpus")
    if "blk_mixed" in benches and min(mixed_counts) < 2:
        sys.exit("blk_dataplane: error: --mixed-vcpus takes counts of at least 2 (a reader and a hammer)")
    rows = [(b, n, qd) for b in benches for n in (mixed_counts if b == "blk_mixed" else vcpu_counts) for qd in depths]
    vmms = [v.strip() for v in args.vmm.split(",") if v.strip()]
    configs = [c for c in CONFIGS if c[0] in vmms]
    if not configs:
        sys.exit(f"blk_dataplane: error: --vmm takes qemu and/or reference, not {args.vmm!r}")
    interp = None
    if "reference" in vmms:
        try:
            interp = resolve_python(args.python, lambda m: print(f"blk_dataplane: note: {m}", file=sys.stderr))
        except VmtraceError as err:
            sys.exit(f"blk_dataplane: error: {err}")

    iops: dict[tuple, list[float]] = {}
    cpr: dict[tuple, list[float]] = {}
    hammer: dict[tuple, list[float]] = {}
    failed: dict[tuple, str] = {}
    with tempfile.TemporaryDirectory(prefix="vmtrace-blk-") as tmp:
        # One image for every run: making 64 MiB of data each time would
        # cost more than some of the runs.
        disk = make_disk(Path(tmp) / "disk.img", DEFAULT_DISK_BYTES)
        for rnd in range(args.rounds):
            for bench, vcpus, qd in rows:
                for vmm, mode in configs:
                    if (vmm, mode) in failed:
                        continue
                    key = (bench, vmm, mode, vcpus, qd)
                    try:
                        res = run_bench(
                            vmm,
                            bench,
                            vcpus,
                            args.iterations,
                            queue_depth=qd,
                            blk=mode,
                            disk=disk,
                            timeout_s=args.timeout,
                            python=interp.path if vmm == "reference" and interp else None,
                        )
                    except VmtraceError as err:
                        failed[(vmm, mode)] = f"{vmm} {mode} {bench} {vcpus} vCPU qd {qd}: {err}"
                        print(
                            f"# round {rnd} {CONFIGS[(vmm, mode)]}, {bench} {vcpus} vCPU, qd {qd}: not available",
                            file=sys.stderr,
                        )
                        continue
                    iops.setdefault(key, []).append(res.iops or 0.0)
                    cpr.setdefault(key, []).append(res.cycles_per_request or 0.0)
                    if res.hammer_cycles_per_op:
                        hammer.setdefault(key, []).append(res.hammer_cycles_per_op)
                    print(
                        f"# round {rnd} {CONFIGS[(vmm, mode)]}, {bench} {vcpus} vCPU, qd {qd}: "
                        f"{res.iops:,.0f} IOPS, {res.cycles_per_request:,.0f} cycles/request"
                        + (f", hammers {res.hammer_cycles_per_op:,.0f} cycles/read" if res.hammer_cycles_per_op else "")
                        + (f", {res.errors} errors" if res.errors else ""),
                        file=sys.stderr,
                    )

    width = 34
    # The question: how much more does the IOThread get through than the BQL path?
    ratios = [v for v in dict.fromkeys(vmm for vmm, _ in configs) if {(v, "bql"), (v, "dataplane")} <= set(configs)]
    print(
        f"{args.iterations} requests per vCPU (per reader in blk_mixed), 4 KiB, 64 MiB image, median of "
        f"{args.rounds} round(s); each cell: IOPS (all readers) / TSC cycles per request (mean over readers)"
        " [/ blk_mixed: the hammers' cycles per PM-timer read]; dataplane/bql: the ratio of the median IOPS"
    )
    if interp is not None:
        print(f"reference VMM on {interp.label} ({interp.path})")
    print(
        f"{'bench':<13} {'vCPUs':>5} {'qd':>4}  "
        + "".join(f"{CONFIGS[c]:>{width}}" for c in configs)
        + "".join(f"{v + ' dataplane/bql':>{width}}" for v in ratios)
    )
    for bench, vcpus, qd in rows:
        cells = []
        for vmm, mode in configs:
            key = (bench, vmm, mode, vcpus, qd)
            if key in iops:
                cell = f"{statistics.median(iops[key]):,.0f} / {statistics.median(cpr[key]):,.0f}"
                if key in hammer:
                    cell += f" / {statistics.median(hammer[key]):,.0f}"
            else:
                cell = "n/a"
            cells.append(f"{cell:>{width}}")
        for v in ratios:
            bql, dp = iops.get((bench, v, "bql", vcpus, qd)), iops.get((bench, v, "dataplane", vcpus, qd))
            cell = (
                f"{statistics.median(dp) / statistics.median(bql):.2f}x"
                if bql and dp and statistics.median(bql)
                else "n/a"
            )
            cells.append(f"{cell:>{width}}")
        print(f"{bench:<13} {vcpus:>5} {qd:>4}  " + "".join(cells))
    for reason in failed.values():
        print(f"n/a: {reason}")


if __name__ == "__main__":
    main()
