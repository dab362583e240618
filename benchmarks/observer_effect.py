"""Observer effect of vmtrace against perf record and trace-cmd, side by side.

Runs the benchmark guest's inl_pmtimer loop on QEMU at 1 and 2 vCPUs, on
every installed QEMU (7.2 and 10.0: ``--qemu``), untraced and under each
tracer, interleaved (round-robin, several rounds), and prints the
guest-measured cycles per read as medians and as ratios to the untraced
median of the same QEMU, plus trace-file bytes per event.  Each ratio is
followed by the interquartile range of the per-round ratios (each round's
run over the same round's untraced run), and ``untraced-again`` runs the
untraced command a second time in every round: its row is this host's noise
floor, the smallest overhead the table can tell from none.  The vmtrace rows:
default mode, ``--precise``, the ftrace backend, and BQL call sites
(``--callsites full`` and ``sampled`` at record's default ``--callsite-duty``); then the
tracers that aggregate in the kernel: ``vmtrace top``, ``record
--aggregate 1`` and, as an anchor, a bpftrace one-liner.

perf, trace-cmd and bpftrace are installed with apt-get when missing (as root); a tool
that is still missing is skipped with one line saying so.

    .venv/bin/python benchmarks/observer_effect.py [--rounds 3] [--iterations 20000] [--qemu 7.2,10.0]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from vmtrace.bench import guest_image, parse_bench_output, vmm_command
from vmtrace.errors import VmtraceError
from vmtrace.qemu_versions import QemuBinary, available_qemus, resolve_qemu
from vmtrace.trace import read_trace
from vmtrace.validate import DEFAULT_CALLSITE_DUTY, DEFAULT_CALLSITE_PERIOD_S

TRACEPOINTS = [
    "syscalls:sys_enter_ioctl",
    "syscalls:sys_exit_ioctl",
    "kvm:kvm_pio",
    "kvm:kvm_mmio",
    "kvm:kvm_msr",
    "kvm:kvm_userspace_exit",
    "syscalls:sys_enter_futex",
    "syscalls:sys_exit_futex",
    "sched:sched_switch",
    "sched:sched_wakeup",
]
VMTRACE = [sys.executable, "-m", "vmtrace.cli"]
#: --callsite-duty of the sampled call-site row (set from the command line).
CALLSITE_DUTY = DEFAULT_CALLSITE_DUTY
#: Foreign tracers: the command each needs and the Debian package that has it.
TOOLS = {
    "perf-record": ("perf", "linux-perf"),
    "trace-cmd": ("trace-cmd", "trace-cmd"),
    "bpftrace-hist": ("bpftrace", "bpftrace"),
}


def ensure_tools(tracers: list[str], install: bool) -> list[str]:
    """The tracers whose tools are present, installing missing ones with
    apt-get when ``install`` and root; one line on stderr per tool skipped."""
    kept = []
    for tracer in tracers:
        tool = TOOLS.get(tracer)
        if tool and not shutil.which(tool[0]) and install and os.geteuid() == 0:
            print(f"# {tool[0]} missing: apt-get install {tool[1]}", file=sys.stderr)
            subprocess.run(["apt-get", "install", "-y", "-q", tool[1]], capture_output=True, text=True)
        if tool and not shutil.which(tool[0]):
            print(f"# skipping {tracer}: {tool[0]} is not installed (Debian package {tool[1]})", file=sys.stderr)
            continue
        why = cannot_run(tracer)
        if why:
            print(f"# skipping {tracer}: {why}", file=sys.stderr)
            continue
        kept.append(tracer)
    return kept


def cannot_run(tracer: str) -> str | None:
    """Why an installed tool cannot trace on this host, tried once on
    ``true`` rather than found out in every round; None if it can."""
    if tracer != "trace-cmd":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        # trace-cmd record sets up the function tracer even for events only
        # (/proc/sys/kernel/ftrace_enabled, set_ftrace_filter), which a
        # kernel that restricts the function tracer refuses.
        proc = subprocess.run(
            ["trace-cmd", "record", "-q", "-e", "sched:sched_switch", "-o", f"{tmp}/probe.dat", "--", "true"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    if proc.returncode == 0:
        return None
    said = " ".join(proc.stderr.split())
    return f"trace-cmd cannot record on this host ({said or f'exit status {proc.returncode}'})"


def wrap(tracer: str, out: Path, cmd: list[str]) -> list[str]:
    if tracer in AGGREGATING:
        return wrap_aggregating(tracer, out, cmd)
    if tracer in ("untraced", "untraced-again"):
        return cmd
    if tracer == "vmtrace":
        return VMTRACE + ["record", "-o", str(out), "--backend", "bcc", "--", *cmd]
    if tracer == "vmtrace-precise":
        return VMTRACE + ["record", "-o", str(out), "--backend", "bcc", "--precise", "--", *cmd]
    if tracer == "vmtrace-ftrace":
        return VMTRACE + ["record", "-o", str(out), "--backend", "ftrace", "--", *cmd]
    if tracer == "vmtrace-callsites":
        return VMTRACE + ["record", "-o", str(out), "--backend", "bcc", "--callsites", "full", "--", *cmd]
    if tracer == "vmtrace-callsites-sampled":
        return VMTRACE + [
            "record",
            "-o",
            str(out),
            "--backend",
            "bcc",
            "--callsites",
            "sampled",
            "--callsite-duty",
            str(CALLSITE_DUTY),
            "--",
            *cmd,
        ]
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
    global CALLSITE_DUTY
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--vcpus", default="1,2")
    ap.add_argument(
        "--tracers",
        default="untraced,untraced-again,vmtrace,vmtrace-precise,vmtrace-ftrace,vmtrace-callsites,"
        "vmtrace-callsites-sampled,perf-record,trace-cmd,vmtrace-top,vmtrace-aggregate,bpftrace-hist",
    )
    ap.add_argument("--qemu", default=None, help="QEMU versions or paths (default: every installed one of 7.2,10.0)")
    ap.add_argument("--no-install", action="store_true", help="skip missing perf/trace-cmd instead of installing them")
    ap.add_argument(
        "--callsite-duty",
        type=float,
        default=CALLSITE_DUTY,
        help=f"duty of the sampled call-site row (default {DEFAULT_CALLSITE_DUTY}, record's)",
    )
    args = ap.parse_args()
    CALLSITE_DUTY = args.callsite_duty
    tracers = ensure_tools(args.tracers.split(","), not args.no_install)
    qemus = args.qemu.split(",") if args.qemu else available_qemus()
    try:
        binaries = {q: resolve_qemu(q) for q in qemus}
    except VmtraceError as err:
        sys.exit(f"observer_effect: error: {err}")
    image = guest_image()
    results: dict[tuple[str, int, str], list[float]] = {}
    sizes: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vmtrace-bench-") as tmp:
        for rnd in range(args.rounds):
            for q, binary in binaries.items():
                for vcpus in map(int, args.vcpus.split(",")):
                    for tracer in tracers:
                        out = Path(tmp) / f"{tracer}-{q.replace('/', '_')}-{vcpus}-{rnd}.data"
                        cmd = wrap(
                            tracer,
                            out,
                            vmm_command("qemu", "inl_pmtimer", vcpus, args.iterations, image, qemu=binary.path),
                        )
                        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                        parsed = parse_bench_output(guest_output(tracer, out, proc.stdout))
                        if not parsed["summary"]:
                            why = proc.stderr.strip().splitlines()[-1:] or ["no output"]
                            print(f"# QEMU {q} {tracer} {vcpus} vCPU: no result ({why[0][:200]})", file=sys.stderr)
                            continue
                        key = (q, vcpus, tracer)
                        results.setdefault(key, []).append(float(parsed["summary"][-1]["cycles_per_op"]))
                        if tracer != "untraced" and tracer not in AGGREGATING and out.exists() and rnd == 0:
                            n = events_in(tracer, out)
                            if n:
                                sizes.setdefault((q, tracer), []).append(out.stat().st_size / n)
                        print(f"# round {rnd} QEMU {q} {vcpus} vCPU {tracer}: {results[key][-1]:.0f}", file=sys.stderr)
    print_table(args, tracers, binaries, results, sizes)


def round_ratios(vals: list[float], base: list[float]) -> tuple[float, float]:
    """Interquartile range of the paired per-round ratios ``vals[r] /
    base[r]`` (rounds where both ran; results are appended in round order
    and a failed run is skipped, so pairs are taken only when both lists are
    complete)."""
    pairs = [v / b for v, b in zip(vals, base, strict=False)] if len(vals) == len(base) else []
    if len(pairs) < 2:
        return float("nan"), float("nan")
    q = statistics.quantiles(pairs, n=4, method="inclusive")
    return q[0], q[2]


def print_table(
    args: argparse.Namespace,
    tracers: list[str],
    binaries: dict[str, QemuBinary],
    results: dict[tuple[str, int, str], list[float]],
    sizes: dict[tuple[str, str], list[float]],
) -> None:
    print(f"guest-measured cycles per PM-timer read (median of {args.rounds} interleaved rounds;")
    print("[p25-p75] of the per-round ratios to the same round's untraced run)")
    if "vmtrace-callsites-sampled" in tracers:
        print(
            f"vmtrace-callsites-sampled: --callsites sampled --callsite-duty {CALLSITE_DUTY} "
            f"--callsite-period {DEFAULT_CALLSITE_PERIOD_S:g} (runs shorter than a period see one window)"
        )
    print(
        f"{'QEMU':<8}{'tracer':<27}"
        + "".join(f"{v + ' vCPU':>30}" for v in args.vcpus.split(","))
        + f"{'bytes/event':>14}"
    )
    for q, binary in binaries.items():
        for tracer in tracers:
            cells = []
            for vcpus in map(int, args.vcpus.split(",")):
                vals = results.get((q, vcpus, tracer))
                base = results.get((q, vcpus, "untraced"))
                if not vals or not base:
                    cells.append(f"{'-':>30}")
                    continue
                med, b = statistics.median(vals), statistics.median(base)
                lo, hi = round_ratios(vals, base)
                spread = f"[{lo:4.2f}-{hi:4.2f}]" if lo == lo else " " * 11
                cells.append(f"{med:>10,.0f} {med / b:4.2f}x {spread}")
            sz = sizes.get((q, tracer))
            size = f"{statistics.median(sz):>14.1f}" if sz else f"{'-':>14}"
            print(f"{binary.version:<8}{tracer:<27}" + "".join(cells) + size)


if __name__ == "__main__":
    main()
