"""Observer effect of vmtrace against perf record and trace-cmd, side by side.

Runs the benchmark guest's inl_pmtimer loop on QEMU at 1 and 2 vCPUs,
untraced and under each tracer, interleaved (round-robin, several rounds),
and prints the guest-measured cycles per read as medians and as ratios to the
untraced median of the same run, plus trace-file bytes per event.

    .venv/bin/python benchmarks/observer_effect.py [--rounds 3] [--iterations 20000]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from vmtrace.bench import guest_image, parse_bench_output, vmm_command
from vmtrace.trace import read_trace

TRACEPOINTS = [
    "syscalls:sys_enter_ioctl", "syscalls:sys_exit_ioctl", "kvm:kvm_pio", "kvm:kvm_mmio", "kvm:kvm_msr",
    "kvm:kvm_userspace_exit", "syscalls:sys_enter_futex", "syscalls:sys_exit_futex",
    "sched:sched_switch", "sched:sched_wakeup",
]
VMTRACE = [sys.executable, "-m", "vmtrace.cli"]


def wrap(tracer: str, out: Path, cmd: list[str]) -> list[str]:
    if tracer in AGGREGATING:
        return wrap_aggregating(tracer, out, cmd)
    if tracer == "untraced":
        return cmd
    if tracer == "vmtrace":
        return VMTRACE + ["record", "-o", str(out), "--backend", "bcc", "--", *cmd]
    if tracer == "vmtrace-precise":
        return VMTRACE + ["record", "-o", str(out), "--backend", "bcc", "--precise", "--", *cmd]
    if tracer == "vmtrace-ftrace":
        return VMTRACE + ["record", "-o", str(out), "--backend", "ftrace", "--", *cmd]
    if tracer == "perf-record":
        ev = [a for tp in TRACEPOINTS for a in ("-e", tp)]
        return ["perf", "record", "-q", "-o", str(out), *ev, "--", *cmd]
    if tracer == "trace-cmd":
        ev = [a for tp in TRACEPOINTS for a in ("-e", tp)]
        return ["trace-cmd", "record", "-q", "-o", str(out), *ev, *cmd]
    raise ValueError(tracer)


# --- aggregation in the kernel: vmtrace top, record --aggregate, and a bpftrace
# one-liner as the anchor (it keeps a log2 histogram of the same KVM_RUN-to-
# KVM_RUN cycle per vCPU thread, in the kernel, and prints it at exit).

AGGREGATING = ("vmtrace-top", "vmtrace-aggregate", "bpftrace-hist")
BPFTRACE_HIST = (
    "tracepoint:raw_syscalls:sys_enter /pid == cpid && args->id == 16 && args->args[1] == 0xAE80/ "
    "{ if (@start[tid]) { @cycle_ns = hist(nsecs - @start[tid]); } @start[tid] = nsecs; }"
)


def wrap_aggregating(tracer: str, out: Path, cmd: list[str]) -> list[str]:
    """The command line of an aggregating tracer around ``cmd``.  top takes
    the terminal for its tables, so the guest's console goes to a file
    (``guest_output`` reads it back)."""
    if tracer == "vmtrace-top":
        serial = [f"file:{out}.serial" if c == "stdio" else c for c in cmd]
        return VMTRACE + ["top", "--batch", "100000", "-d", "1", "--", *serial]
    if tracer == "vmtrace-aggregate":
        return VMTRACE + ["record", "--aggregate", "1", "-o", str(out), "--", *cmd]
    if tracer == "bpftrace-hist":
        # bpftrace -c splits on blanks and knows no quoting: a script that
        # execs the VMM keeps the quoting, and the pid (cpid) is the VMM's.
        script = Path(f"{out}.sh")
        script.write_text(f"exec {shlex.join(cmd)}\n")
        return ["bpftrace", "-q", "-o", str(out), "-e", BPFTRACE_HIST, "-c", f"/bin/sh {script}"]
    raise ValueError(tracer)


def guest_output(tracer: str, out: Path, stdout: str) -> str:
    """What the guest printed: its console file under top, else stdout."""
    if tracer == "vmtrace-top":
        serial = Path(f"{out}.serial")
        return serial.read_text(errors="replace") if serial.exists() else ""
    return stdout


def events_in(tracer: str, out: Path) -> int:
    if tracer.startswith("vmtrace"):
        return len(read_trace(out).events)
    if tracer == "perf-record":
        text = subprocess.run(["perf", "script", "-i", str(out)], capture_output=True, text=True).stdout
    else:
        text = subprocess.run(["trace-cmd", "report", "-i", str(out)], capture_output=True, text=True).stdout
    return sum(1 for line in text.splitlines() if line and not line.startswith(("#", "cpus=", "version")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--vcpus", default="1,2")
    ap.add_argument("--tracers", default="untraced,vmtrace,vmtrace-precise,vmtrace-ftrace,perf-record,trace-cmd,"
                                         "vmtrace-top,vmtrace-aggregate,bpftrace-hist")
    args = ap.parse_args()
    tracers = args.tracers.split(",")
    if "bpftrace-hist" in tracers and shutil.which("bpftrace") is None:
        print("# bpftrace is not installed (apt-get install bpftrace): its anchor row is skipped", file=sys.stderr)
        tracers.remove("bpftrace-hist")
    image = guest_image()
    results: dict[tuple[int, str], list[float]] = {}
    sizes: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vmtrace-bench-") as tmp:
        for rnd in range(args.rounds):
            for vcpus in map(int, args.vcpus.split(",")):
                for tracer in tracers:
                    out = Path(tmp) / f"{tracer}-{vcpus}-{rnd}.data"
                    cmd = wrap(tracer, out, vmm_command("qemu", "inl_pmtimer", vcpus, args.iterations, image))
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                    parsed = parse_bench_output(guest_output(tracer, out, proc.stdout))
                    if not parsed["summary"]:
                        print(f"# {tracer} {vcpus} vCPU: no result ({proc.stderr.strip()[-200:]})", file=sys.stderr)
                        continue
                    results.setdefault((vcpus, tracer), []).append(float(parsed["summary"][-1]["cycles_per_op"]))
                    if tracer != "untraced" and tracer not in AGGREGATING and out.exists() and rnd == 0:
                        n = events_in(tracer, out)
                        if n:
                            sizes.setdefault(tracer, []).append(out.stat().st_size / n)
                    print(f"# round {rnd} {vcpus} vCPU {tracer}: {results[(vcpus, tracer)][-1]:.0f}", file=sys.stderr)
    print(f"guest-measured cycles per PM-timer read (median of {args.rounds} interleaved rounds), QEMU")
    print(f"{'tracer':<18}" + "".join(f"{v + ' vCPU':>22}" for v in args.vcpus.split(",")) + f"{'bytes/event':>14}")
    for tracer in tracers:
        cells = []
        for vcpus in map(int, args.vcpus.split(",")):
            vals = results.get((vcpus, tracer))
            base = results.get((vcpus, "untraced"))
            if not vals or not base:
                cells.append(f"{'-':>22}")
                continue
            med, b = statistics.median(vals), statistics.median(base)
            cells.append(f"{med:>12,.0f} ({med / b:4.2f}x)")
        size = f"{statistics.median(sizes[tracer]):>14.1f}" if tracer in sizes else f"{'-':>14}"
        print(f"{tracer:<18}" + "".join(cells) + size)


if __name__ == "__main__":
    main()
