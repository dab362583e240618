"""``vmtrace bench``: run the benchmark guest on a VMM, optionally recorded.

The guest (``reference_vmm/guest``, the project's own code) boots with
``-kernel`` on QEMU and with the reference VMM's multiboot loader, runs a
timed loop on every vCPU and prints ``VMTRACE-BENCH`` lines on the serial
port.  This module builds the VMM command line, runs it, and parses those
lines; it knows nothing about tracing beyond calling ``record``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import TargetError, VmtraceError

__all__ = [
    "BENCHES",
    "VMMS",
    "LOCKING_MODES",
    "BenchResult",
    "guest_image",
    "vmm_command",
    "parse_bench_output",
    "run_bench",
]

BENCHES = ("inl_pmtimer", "inl_vmm", "inl_kernel", "cpuid")
VMMS = ("qemu", "reference")
LOCKING_MODES = ("2013", "bql", "unlocked")
GUEST_DIR = Path(__file__).resolve().parent.parent / "reference_vmm" / "guest"
_LINE = re.compile(r"^VMTRACE-BENCH (\w+)(.*)$")
_KV = re.compile(r'(\w+)=("[^"]*"|\S+)')


@dataclass
class BenchResult:
    """Guest-measured results of one run.  ``cycles_per_op`` is the mean of
    ``per_vcpu`` (TSC cycles per operation, as the guest timed them)."""

    vmm: str
    bench: str
    vcpus: int
    iterations: int
    tsc_hz: int
    cycles_per_op: float
    per_vcpu: list[float]
    pm_port: int | None
    exit_status: int
    wall_s: float
    locking: str | None = None
    command: list[str] = field(default_factory=list)
    trace: str | None = None
    checks: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def guest_image(build: bool = True) -> Path:
    """The benchmark guest ELF, built from source with make when missing."""
    image = GUEST_DIR / "build" / "vmtrace-guest.elf"
    if not image.exists() and build:
        proc = subprocess.run(["make", "-C", str(GUEST_DIR)], capture_output=True, text=True)
        if proc.returncode != 0 or not image.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise VmtraceError(
                f"building the benchmark guest failed ({tail[0]}): it needs gcc and nasm "
                "(run the README's setup command)"
            )
    if not image.exists():
        raise VmtraceError(f"no benchmark guest image at {image}: run `make -C {GUEST_DIR}`")
    return image


def vmm_command(
    vmm: str,
    bench: str,
    vcpus: int,
    iterations: int,
    image: Path,
    locking: str | None = None,
    extra: str = "",
    qemu: str = "qemu-system-x86_64",
) -> list[str]:
    """The command line that runs the guest ``bench`` on ``vmm``."""
    append = f"bench={bench} iterations={iterations} {extra}".strip()
    if vmm == "qemu":
        return [
            qemu, "-enable-kvm", "-cpu", "max,-arch-capabilities", "-M", "pc",
            "-smp", str(vcpus), "-m", "64", "-display", "none", "-nodefaults",
            "-no-reboot", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            # debug-threads names the vCPU threads "CPU n/KVM", as vmtrace expects.
            "-name", "vmtrace-bench,debug-threads=on",
            "-kernel", str(image), "-append", append,
        ]
    if vmm == "reference":
        return [
            sys.executable, "-m", "vmtrace.reference_vmm", "run", "--image", str(image),
            "--vcpus", str(vcpus), "--locking", locking or "bql", "--append", append,
        ]
    raise VmtraceError(f"unknown VMM {vmm!r}: choose one of {', '.join(VMMS)}")


def parse_bench_output(text: str) -> dict[str, Any]:
    """The ``VMTRACE-BENCH`` records of a guest's serial output, by kind."""
    out: dict[str, Any] = {"begin": {}, "result": [], "summary": [], "check": {}, "error": [], "end": {}}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        kind, rest = m.group(1), m.group(2)
        fields = {k: v.strip('"') for k, v in _KV.findall(rest)}
        if kind in ("result", "summary", "error"):
            out[kind].append(fields)
        elif kind == "check":
            out["check"].update({k: int(v) for k, v in fields.items() if v.lstrip("-").isdigit()})
        else:
            out[kind] = fields
    return out


def _result(vmm: str, bench: str, parsed: dict[str, Any], status: int, wall: float,
            cmd: list[str], locking: str | None, output: str) -> BenchResult:
    if parsed["error"]:
        raise TargetError(f"the guest reported an error: {parsed['error'][0].get('msg', parsed['error'][0])}")
    summaries = [s for s in parsed["summary"] if s.get("bench") == bench]
    if not summaries:
        tail = " | ".join(output.strip().splitlines()[-3:]) or "no output"
        raise TargetError(f"{vmm} exited with status {status} before the guest printed results ({tail})")
    summary = summaries[-1]
    per = [float(r["cycles_per_op"]) for r in parsed["result"] if r.get("bench") == bench]
    begin = parsed["begin"]
    port = begin.get("pm_port")
    return BenchResult(
        vmm=vmm,
        bench=bench,
        vcpus=int(summary.get("vcpus", len(per))),
        iterations=int(summary.get("iterations", 0)),
        tsc_hz=int(begin.get("tsc_hz", 0)),
        cycles_per_op=float(summary["cycles_per_op"]),
        per_vcpu=per,
        pm_port=int(port, 0) if port else None,
        exit_status=status,
        wall_s=wall,
        locking=locking,
        command=cmd,
        checks=parsed["check"],
    )


def run_bench(
    vmm: str,
    bench: str,
    vcpus: int,
    iterations: int = 20000,
    locking: str | None = None,
    record_to: Path | None = None,
    backend: str = "auto",
    precise: bool = False,
    timeout_s: float = 300.0,
    echo: bool = False,
) -> BenchResult:
    """Run ``bench`` on ``vmm`` with ``vcpus`` vCPUs; record it when
    ``record_to`` is given (the guest's results then land in the trace's
    ``bench`` metadata, where the report puts them beside the traced cost)."""
    if bench not in BENCHES:
        raise VmtraceError(f"unknown bench {bench!r}: choose one of {', '.join(BENCHES)}")
    if vcpus < 1 or vcpus > 64:
        raise VmtraceError("--vcpus must be between 1 and 64")
    if vmm == "reference" and locking not in (None, *LOCKING_MODES):
        raise VmtraceError(f"unknown locking mode {locking!r}: choose one of {', '.join(LOCKING_MODES)}")
    if vmm == "qemu" and locking not in (None, "bql"):
        raise VmtraceError("QEMU's locking is fixed by its version: --locking applies to --vmm reference")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise VmtraceError("no usable /dev/kvm: load the kvm module and run as root (or join group kvm)")
    image = guest_image()
    cmd = vmm_command(vmm, bench, vcpus, iterations, image, locking)
    with tempfile.TemporaryFile(mode="w+") as out:
        t0 = time.monotonic()
        if record_to is None:
            try:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, timeout=timeout_s)
            except FileNotFoundError:
                raise TargetError(f"command not found: {cmd[0]} (install qemu-system-x86)") from None
            except subprocess.TimeoutExpired:
                raise TargetError(f"{vmm} did not finish within {timeout_s:.0f}s") from None
            status = proc.returncode
        else:
            from .record import record

            holder: dict[str, Any] = {}

            def bench_meta() -> dict[str, Any]:
                out.flush()
                out.seek(0)
                text = out.read()
                holder["text"] = text
                try:
                    res = _result(vmm, bench, parse_bench_output(text), -1, time.monotonic() - t0, cmd, locking, text)
                    return {"bench": res.to_json()}
                except VmtraceError:
                    return {"bench": None}

            rec = record(record_to, cmd=cmd, backend=backend, precise=precise, stdout=out,
                         extra_meta=bench_meta, duration=timeout_s)
            status = rec.exit_status if rec.exit_status is not None else -1
        wall = time.monotonic() - t0
        out.seek(0)
        text = out.read()
    if echo:
        sys.stdout.write(text)
    result = _result(vmm, bench, parse_bench_output(text), status, wall, cmd, locking, text)
    if record_to is not None:
        result.trace = str(record_to)
    return result


def describe_command(cmd: list[str]) -> str:
    return shlex.join(cmd)
