"""CPU time of the recorder itself while it records a busy VMM.

Starts ``vmtrace record`` around QEMU's PM-timer loop (2 vCPUs, long enough
to outlast the measurement), waits for record's "recording PID" line, and
reads the recorder's user+system time from /proc over ``--seconds``.  On a
host with as many CPUs as vCPUs, that share is taken from the vCPUs.  Then
prints the recording's event rate, so runs can be compared per event.

    .venv/bin/python benchmarks/recorder_cpu.py [--qemu 7.2] [--seconds 6] [-- RECORD-OPTIONS...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmtrace.bench import guest_image, vmm_command
from vmtrace.qemu_versions import resolve_qemu
from vmtrace.trace import read_trace


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qemu", default="7.2", help="QEMU version or path (default 7.2)")
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="how long to measure (default 6)")
    ap.add_argument("record_options", nargs="*", help="after --: extra `vmtrace record` options")
    args = ap.parse_args()
    qemu = resolve_qemu(args.qemu)
    vm = vmm_command("qemu", "inl_pmtimer", args.vcpus, 10_000_000, guest_image(), qemu=qemu.path)
    with tempfile.TemporaryDirectory(prefix="vmtrace-cpu-") as tmp:
        out = Path(tmp) / "run.vmtrace"
        rec = subprocess.Popen(
            [sys.executable, "-m", "vmtrace.cli", "record", "-o", str(out), *args.record_options, "--", *vm],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert rec.stderr is not None
        said = ""
        while "Ctrl-C stops" not in said and rec.poll() is None:
            said += rec.stderr.readline()
        if rec.poll() is not None:
            sys.exit(f"recorder_cpu: error: record exited early: {said.strip()[-300:]}")
        time.sleep(1)  # past the BQL's naming window
        c0, w0 = cpu_seconds(rec.pid), time.monotonic()
        time.sleep(args.seconds)
        c1, w1 = cpu_seconds(rec.pid), time.monotonic()
        rec.send_signal(signal.SIGINT)
        rec.communicate(timeout=300)
        events = read_trace(out).events
    span = (int(events["ts_ns"].max()) - int(events["ts_ns"].min())) / 1e9 if len(events) else 0.0
    opts = " ".join(args.record_options) or "(defaults)"
    print(f"QEMU {qemu.version}, {args.vcpus} vCPUs, record {opts}")
    print(f"recorder: {100 * (c1 - c0) / (w1 - w0):.1f}% of one CPU over {w1 - w0:.1f} s")
    if span > 0:
        print(f"recording: {len(events):,} events in {span:.1f} s ({len(events) / span:,.0f} events/s)")


if __name__ == "__main__":
    main()
