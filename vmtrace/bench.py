"""``vmtrace bench``: run the benchmark guest on a VMM, optionally recorded.

The guest (``reference_vmm/guest``, the project's own code) boots with
``-kernel`` on QEMU and with the reference VMM's multiboot loader, runs a
timed loop on every vCPU and prints ``VMTRACE-BENCH`` lines on the serial
port.  This module builds the VMM command line, runs it, and parses those
lines; it knows nothing about tracing beyond calling ``record``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .blk import BLK_BENCHES, BLK_MODES, DEFAULT_DISK_BYTES, check_disk, make_disk, supports_o_direct
from .errors import TargetError, VmtraceError
from .interpreter import REPORT_ENV, Interpreter, read_report, reference_vmm_command, resolve_python
from .procs import Interrupted, run_child
from .qemu_versions import QemuBinary, firmware_dir, resolve_qemu

__all__ = [
    "BENCHES",
    "BLK_BENCHES",
    "BLK_MODES",
    "VMMS",
    "LOCKING_MODES",
    "BenchResult",
    "guest_image",
    "vmm_command",
    "parse_bench_output",
    "run_bench",
    "note_on_stderr",
]

BENCHES = ("inl_pmtimer", "inl_vmm", "inl_kernel", "cpuid", "serial_pmtimer", "fwcfg_pmtimer", *BLK_BENCHES)
VMMS = ("qemu", "reference")
LOCKING_MODES = ("2013", "bql", "unlocked")
# Through the vmtrace/reference_vmm link in a checkout, the installed package in a wheel.
GUEST_DIR = (Path(__file__).resolve().parent / "reference_vmm" / "guest").resolve()
GUEST_ELF = "vmtrace-guest.elf"
_LINE = re.compile(r"^VMTRACE-BENCH (\w+)(.*)$")
_KV = re.compile(r'(\w+)=("[^"]*"|\S+)')


@dataclass
class BenchResult:
    """Guest-measured results of one run.  ``cycles_per_op`` is the mean of
    ``per_vcpu`` (TSC cycles per operation, as the guest timed them); None
    for blk_malformed, which times nothing.

    The blk benches add ``cycles_per_request`` (the same mean: with qd > 1 a
    vCPU's cycles per request is its inverse throughput, not a latency),
    ``iops`` (all requests over the span from the first vCPU's start to the
    last one's end), ``per_vcpu_iops``, and the guest's ``blkdev``,
    ``checksums`` (blk_verify) and ``malformed`` (blk_malformed) records.
    blk_mixed's numbers are its ``readers`` vCPUs' (the first ones); the
    others' ``hammers`` records (one per vCPU: ``target``, ``ops``,
    ``cycles_per_op`` ...) and their mean ``hammer_cycles_per_op`` follow.

    ``interpreter`` is what the reference VMM reported of the Python it ran
    on (``version``, ``free_threaded``, ``gil_enabled``, ``path``); None on
    QEMU.

    serial_pmtimer and fwcfg_pmtimer: ``per_vcpu`` are two kinds of op,
    vCPU 0's (serial writes, fw_cfg fills), then the other vCPUs' PM-timer
    reads.  ``qemu_version`` is the version of the QEMU that ran
    ("10.0.2"); None on the reference VMM."""

    vmm: str
    bench: str
    vcpus: int
    iterations: int
    tsc_hz: int
    cycles_per_op: float | None
    per_vcpu: list[float]
    pm_port: int | None
    exit_status: int
    wall_s: float
    locking: str | None = None
    command: list[str] = field(default_factory=list)
    trace: str | None = None
    checks: dict[str, int] = field(default_factory=dict)
    iops: float | None = None
    cycles_per_request: float | None = None
    per_vcpu_iops: list[float] = field(default_factory=list)
    queue_depth: int | None = None
    blk: str | None = None
    disk: str | None = None
    errors: int = 0
    blkdev: dict[str, str] = field(default_factory=dict)
    checksums: list[dict[str, str]] = field(default_factory=list)
    malformed: list[dict[str, str]] = field(default_factory=list)
    interpreter: dict[str, Any] | None = None
    readers: int | None = None
    hammers: list[dict[str, str]] = field(default_factory=list)
    hammer_cycles_per_op: float | None = None
    qemu_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def guest_build_dir() -> Path:
    """Where the guest is built: ``GUEST_DIR/build`` in a source checkout (where
    ``make -C reference_vmm/guest`` puts it), else a per-version, per-source
    directory under ``${XDG_CACHE_HOME:-~/.cache}/vmtrace/guest``, because an
    installed package's directory may be read-only and is not for build output."""
    if (GUEST_DIR.parent.parent / "pyproject.toml").exists():
        return GUEST_DIR / "build"
    if not GUEST_DIR.is_dir():
        raise VmtraceError(f"the benchmark guest's sources are missing: no directory {GUEST_DIR}")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    digest = hashlib.sha256()
    for src in sorted(p for p in GUEST_DIR.iterdir() if p.is_file()):
        digest.update(src.name.encode() + b"\0" + src.read_bytes())
    return cache / "vmtrace" / "guest" / f"{__version__}-{digest.hexdigest()[:16]}"


def guest_image(build: bool = True) -> Path:
    """The benchmark guest ELF, built from source with make when missing."""
    out = guest_build_dir()
    image = out / GUEST_ELF
    if not image.exists() and build:
        try:
            out.mkdir(parents=True, exist_ok=True)
            # Built aside and renamed into place: a concurrent run never sees half an image.
            with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
                proc = subprocess.run(["make", "-C", str(GUEST_DIR), f"BUILD={tmp}"], capture_output=True, text=True)
                if proc.returncode == 0 and (Path(tmp) / GUEST_ELF).exists():
                    os.replace(Path(tmp) / GUEST_ELF, image)
        except OSError as e:
            raise VmtraceError(f"cannot build the benchmark guest in {out}: {e.strerror or e}") from None
        if proc.returncode != 0 or not image.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise VmtraceError(
                f"building the benchmark guest failed ({tail[0]}): it needs gcc and nasm "
                "(run the README's setup command)"
            )
    if not image.exists():
        raise VmtraceError(f"no benchmark guest image at {image}: run `make -C {GUEST_DIR} BUILD={out}`")
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
    disk: Path | None = None,
    blk: str | None = None,
    python: Interpreter | None = None,
) -> list[str]:
    """The command line that runs the guest ``bench`` on ``vmm``
    (``qemu``: the QEMU binary; one inside a private prefix gets ``-L`` to
    its firmware, see vmtrace.qemu_versions); with
    ``disk``, the VM gets a legacy virtio-blk-pci device on that raw image,
    its queue serviced under the BQL (``blk`` "bql", the default) or by an
    IOThread (``blk`` "dataplane").  The reference VMM runs on ``python``
    (default: the interpreter vmtrace runs on)."""
    append = f"bench={bench} iterations={iterations} {extra}".strip()
    if vmm == "qemu":
        cmd = [
            qemu,
            *QemuBinary(qemu, "", firmware_dir(qemu)).args(),
            "-enable-kvm",
            "-cpu",
            "max,-arch-capabilities",
            "-M",
            "pc",
            "-smp",
            str(vcpus),
            "-m",
            "64",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            # debug-threads names the vCPU threads "CPU n/KVM" and the
            # IOThread "IO iothread0", as vmtrace expects.
            "-name",
            "vmtrace-bench,debug-threads=on",
            "-kernel",
            str(image),
            "-append",
            append,
        ]
        if disk is not None:
            cmd += _qemu_blk_args(disk, blk or "bql")
        return cmd
    if vmm == "reference":
        start = reference_vmm_command(python) if python else [sys.executable, "-m", "vmtrace.reference_vmm"]
        return reference_run_command(start, image, vcpus, locking or "bql", append, disk=disk, blk=blk)
    raise VmtraceError(f"unknown VMM {vmm!r}: choose one of {', '.join(VMMS)}")


def reference_run_command(
    start: list[str],
    image: Path,
    vcpus: int,
    locking: str,
    append: str,
    disk: Path | None = None,
    blk: str | None = None,
    mem_mb: int | None = None,
) -> list[str]:
    """The reference VMM's ``run`` command line after ``start`` (its
    interpreter and module): what ``bench`` and ``vmm run`` both start."""
    cmd = [*start, "run", "--image", str(image), "--vcpus", str(vcpus), "--locking", locking]
    if mem_mb is not None:
        cmd += ["--mem", str(mem_mb)]
    cmd += ["--append", append]
    if disk is not None:
        cmd += ["--disk", str(disk), "--blk", blk or "bql"]
    return cmd


def _qemu_blk_args(disk: Path, blk: str) -> list[str]:
    # Legacy virtio-pci (the guest's driver, and what the reference VMM
    # offers), one queue as the guest negotiates no VIRTIO_BLK_F_MQ anyway.
    # cache=none keeps the host page cache out of the measured path; a file
    # system without O_DIRECT (tmpfs) gets writeback instead.  aio=threads
    # works with either.
    cache = "none" if supports_o_direct(disk) else "writeback"
    device = "virtio-blk-pci,disable-modern=on,drive=vmtrace-disk,num-queues=1"
    args = ["-drive", f"file={disk},if=none,id=vmtrace-disk,format=raw,cache={cache},aio=threads"]
    if blk == "dataplane":
        args += ["-object", "iothread,id=iothread0"]
        device += ",iothread=iothread0"
    return args + ["-device", device]


def parse_bench_output(text: str) -> dict[str, Any]:
    """The ``VMTRACE-BENCH`` records of a guest's serial output, by kind:
    lists for ``result``, ``summary``, ``error``, ``checksum`` and
    ``malformed``; ``check`` merged into one dict of ints; the last record
    for any other kind (``begin``, ``end``, ``blkdev``, ...)."""
    out: dict[str, Any] = {
        "begin": {},
        "result": [],
        "summary": [],
        "check": {},
        "error": [],
        "end": {},
        "checksum": [],
        "malformed": [],
        "blkdev": {},
        "hammer": [],
    }
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        kind, rest = m.group(1), m.group(2)
        fields = {k: v.strip('"') for k, v in _KV.findall(rest)}
        if kind in ("result", "summary", "error", "checksum", "malformed", "hammer"):
            out[kind].append(fields)
        elif kind == "check":
            out["check"].update({k: int(v) for k, v in fields.items() if v.lstrip("-").isdigit()})
        else:
            out[kind] = fields
    return out


def _result(
    vmm: str,
    bench: str,
    parsed: dict[str, Any],
    status: int,
    wall: float,
    cmd: list[str],
    locking: str | None,
    output: str,
    stderr: str = "",
    blk: dict[str, Any] | None = None,
) -> BenchResult:
    if parsed["error"]:
        raise TargetError(f"the guest reported an error: {parsed['error'][0].get('msg', parsed['error'][0])}")
    summaries = [s for s in parsed["summary"] if s.get("bench") == bench]
    untimed = bench == "blk_malformed" and parsed["malformed"]
    if not summaries and not untimed:
        # The VMM's own complaint (a disk it cannot open) is on stderr.
        lines = output.strip().splitlines()[-3:] + stderr.strip().splitlines()[-2:]
        tail = " | ".join(line.strip() for line in lines if line.strip()) or "no output"
        raise TargetError(f"{vmm} exited with status {status} before the guest printed results ({tail})")
    summary = summaries[-1] if summaries else {}
    results = [r for r in parsed["result"] if r.get("bench") == bench]
    per = [float(r["cycles_per_op"]) for r in results]
    begin = parsed["begin"]
    port = begin.get("pm_port")
    res = BenchResult(
        vmm=vmm,
        bench=bench,
        vcpus=int(summary.get("vcpus", begin.get("vcpus", len(per)))),
        iterations=int(summary.get("iterations", 0)),
        tsc_hz=int(begin.get("tsc_hz", 0)),
        cycles_per_op=float(summary["cycles_per_op"]) if summary else None,
        per_vcpu=per,
        pm_port=int(port, 0) if port else None,
        exit_status=status,
        wall_s=wall,
        locking=locking,
        command=cmd,
        checks=parsed["check"],
    )
    if bench in BLK_BENCHES:
        blk = blk or {}
        res.queue_depth = blk.get("queue_depth")
        res.blk = blk.get("blk")
        res.disk = blk.get("disk")
        if summary:
            res.iops = float(summary.get("iops", 0))
            res.cycles_per_request = float(summary.get("cycles_per_request", summary["cycles_per_op"]))
            res.errors = int(summary.get("errors", 0))
        res.per_vcpu_iops = [float(r.get("iops", 0)) for r in results]
        res.blkdev = dict(parsed["blkdev"])
        res.checksums = [c for c in parsed["checksum"] if c.get("bench") == bench]
        res.malformed = list(parsed["malformed"])
        if bench == "blk_mixed":
            res.readers = int(summary.get("readers", res.vcpus)) if summary else None
            res.hammers = [h for h in parsed["hammer"] if h.get("bench") == bench]
            per_op = [float(h["cycles_per_op"]) for h in res.hammers if int(h.get("ops", 0))]
            res.hammer_cycles_per_op = sum(per_op) / len(per_op) if per_op else None
    return res


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
    queue_depth: int | None = None,
    blk: str | None = None,
    disk: Path | None = None,
    guest_args: str = "",
    python: str | None = None,
    note: Callable[[str], None] | None = None,
    qemu: str | None = None,
    callsites: str | None = None,
) -> BenchResult:
    """Run ``bench`` on ``vmm`` with ``vcpus`` vCPUs; record it when
    ``record_to`` is given (the guest's results then land in the trace's
    ``bench`` metadata, where the report puts them beside the traced cost).

    The blk_* benches take ``queue_depth`` (requests in flight per vCPU,
    default 1), ``blk`` ("bql", the default, or "dataplane") and ``disk`` (a
    raw image; by default a 64 MiB one made in a temporary directory and
    removed afterwards).  blk_randwrite and blk_verify overwrite data on it.
    ``guest_args`` go to the guest's command line as they are (``seed=7
    write_sector=100 ...``: see the guest README).  blk_mixed splits the
    vCPUs into readers (``readers=N`` among ``guest_args``, default half)
    and hammers of the PM timer (``hammer=serial``: of the UART).

    The reference VMM runs on ``python`` (see
    :func:`vmtrace.interpreter.resolve_python`: by default the free-threaded
    build when it is there; ``note`` hears why when it is not, and defaults
    to a line on stderr).

    ``qemu`` picks the QEMU (a version in
    vmtrace.qemu_versions.KNOWN_VERSIONS or a path; default
    ``qemu-system-x86_64`` on PATH)."""
    if bench not in BENCHES:
        raise VmtraceError(f"unknown bench {bench!r}: choose one of {', '.join(BENCHES)}")
    if vcpus < 1 or vcpus > 64:
        raise VmtraceError("--vcpus must be between 1 and 64")
    if iterations < 1:
        raise VmtraceError("--iterations must be at least 1")
    if vmm not in VMMS:
        raise VmtraceError(f"unknown VMM {vmm!r}: choose one of {', '.join(VMMS)}")
    if vmm == "reference" and locking not in (None, *LOCKING_MODES):
        raise VmtraceError(f"unknown locking mode {locking!r}: choose one of {', '.join(LOCKING_MODES)}")
    if vmm == "qemu" and locking not in (None, "bql"):
        raise VmtraceError("QEMU's locking is fixed by its version: --locking applies to --vmm reference")
    if vmm == "qemu" and python is not None:
        raise VmtraceError("--python applies to --vmm reference (QEMU is not written in Python)")
    if vmm != "qemu" and qemu is not None:
        raise VmtraceError("--qemu applies to --vmm qemu")
    if callsites is not None and (vmm != "qemu" or record_to is None):
        raise VmtraceError("--callsites applies to --vmm qemu with --record")
    qbin = resolve_qemu(qemu) if vmm == "qemu" else None
    qpath = qbin.path if qbin else "qemu-system-x86_64"
    is_blk = bench in BLK_BENCHES
    if not is_blk and (queue_depth is not None or blk is not None or disk is not None):
        raise VmtraceError(
            f"--queue-depth, --blk and --disk apply to the {', '.join(BLK_BENCHES)} benches, not {bench}"
        )
    if is_blk:
        queue_depth = 1 if queue_depth is None else queue_depth
        if not 1 <= queue_depth <= 64:
            raise VmtraceError("--queue-depth must be between 1 and 64")
        blk = blk or "bql"
        if blk not in BLK_MODES:
            raise VmtraceError(f"unknown --blk mode {blk!r}: choose one of {', '.join(BLK_MODES)}")
        if disk is not None:
            check_disk(disk)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise VmtraceError("no usable /dev/kvm: load the kvm module and run as root (or join group kvm)")
    image = guest_image()
    interp = resolve_python(python, note_on_stderr if note is None else note) if vmm == "reference" else None
    if not is_blk:
        cmd = vmm_command(vmm, bench, vcpus, iterations, image, locking, extra=guest_args, qemu=qpath, python=interp)
        res = _execute(vmm, bench, cmd, locking, record_to, backend, precise, timeout_s, echo, None, callsites)
        res.qemu_version = qbin.version if qbin else None
        return res
    extra = f"qd={queue_depth}"
    if bench in ("blk_randread", "blk_randwrite", "blk_mixed"):
        # A short untimed run first: the host's first touches of the image
        # and QEMU's first requests are slower than the steady state.
        extra += f" warmup={min(1000, max(1, iterations // 10))}"
    extra = f"{extra} {guest_args}".strip()
    with tempfile.TemporaryDirectory(prefix="vmtrace-disk-") as tmp:
        if disk is None:
            disk = make_disk(Path(tmp) / "disk.img", DEFAULT_DISK_BYTES)
        cmd = vmm_command(
            vmm, bench, vcpus, iterations, image, locking, extra=extra, disk=disk, blk=blk, qemu=qpath, python=interp
        )
        info = {"queue_depth": queue_depth, "blk": blk, "disk": None if Path(tmp) in disk.parents else str(disk)}
        res = _execute(vmm, bench, cmd, locking, record_to, backend, precise, timeout_s, echo, info, callsites)
        res.qemu_version = qbin.version if qbin else None
        return res


def note_on_stderr(message: str) -> None:
    print(f"vmtrace: note: {message}", file=sys.stderr)


def _execute(
    vmm: str,
    bench: str,
    cmd: list[str],
    locking: str | None,
    record_to: Path | None,
    backend: str,
    precise: bool,
    timeout_s: float,
    echo: bool,
    blk: dict[str, Any] | None,
    callsites: str | None = None,
) -> BenchResult:
    stderr = ""
    interpreter: dict[str, Any] | None = None
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryDirectory(prefix="vmtrace-bench-") as tmp:
        t0 = time.monotonic()
        if record_to is None:
            report = Path(tmp) / "interpreter.json"
            try:
                # run_child: the VMM dies with vmtrace, even a SIGKILLed one.
                proc = run_child(
                    cmd,
                    stdout=out,
                    stderr=subprocess.PIPE,
                    text=True,
                    timeout=timeout_s,
                    env={**os.environ, REPORT_ENV: str(report)},
                )
            except FileNotFoundError:
                raise TargetError(f"command not found: {cmd[0]} (install qemu-system-x86)") from None
            except subprocess.TimeoutExpired:
                raise TargetError(f"{vmm} did not finish within {timeout_s:.0f}s") from None
            status = proc.returncode
            stderr = proc.stderr or ""
            interpreter = read_report(report)
        else:
            from .record import record

            holder: dict[str, Any] = {}

            def bench_meta() -> dict[str, Any]:
                out.flush()
                out.seek(0)
                text = out.read()
                holder["text"] = text
                try:
                    res = _result(
                        vmm, bench, parse_bench_output(text), -1, time.monotonic() - t0, cmd, locking, text, blk=blk
                    )
                    return {"bench": res.to_json()}
                except VmtraceError:
                    return {"bench": None}

            rec = record(
                record_to,
                cmd=cmd,
                backend=backend,
                precise=precise,
                stdout=out,
                extra_meta=bench_meta,
                duration=timeout_s,
                callsites=callsites,
            )
            if rec.signum is not None:
                # The guest's results are incomplete, the trace is not lost.
                raise Interrupted(rec.signum, f"the trace recorded so far was written to {record_to}")
            status = rec.exit_status if rec.exit_status is not None else -1
            interpreter = rec.interpreter
        wall = time.monotonic() - t0
        out.seek(0)
        text = out.read()
    if echo:
        sys.stdout.write(text)
    result = _result(vmm, bench, parse_bench_output(text), status, wall, cmd, locking, text, stderr, blk)
    result.interpreter = interpreter
    if record_to is not None:
        result.trace = str(record_to)
    return result


def describe_command(cmd: list[str]) -> str:
    return shlex.join(cmd)
