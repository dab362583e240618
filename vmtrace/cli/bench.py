"""``vmtrace bench``, ``sweep``, ``doctor`` and ``vmm run``: the commands
that run a guest (the benchmark guest on QEMU or the reference VMM, or
doctor's test guest) rather than watch or read a trace.

Heavy imports wait until a command runs, so ``vmtrace --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..errors import VmtraceError
from ..validate import U32_MAX, check_locking, parse_counts, parse_int
from .common import analysing, friendly, wide_console

__all__ = ["PYTHON_HELP", "bench", "doctor", "sweep", "vmm_run"]

PYTHON_HELP = (
    "Reference VMM only: the Python it runs on: ft (the free-threaded CPython 3.13 that "
    "scripts/setup.sh builds, the default when it is there), gil (the one vmtrace runs on) "
    "or a path."
)


@friendly
def bench(
    vmm: str = typer.Option("reference", "--vmm", help="qemu or reference (the bundled Python VMM)."),
    bench_name: str = typer.Option(
        "inl_pmtimer",
        "--bench",
        help="inl_pmtimer (ACPI PM timer read), inl_vmm (a port nobody claims), inl_kernel (a port KVM answers), cpuid; on a virtio-blk disk: blk_randread, blk_randwrite (random 4 KiB requests), blk_verify (pattern written, read back, checksummed), blk_malformed (what the device answers to bad requests).",
    ),
    vcpus: int = typer.Option(1, "--vcpus", help="Number of vCPUs; every vCPU runs the loop at once."),
    iterations: int = typer.Option(20000, "--iterations", help="Operations per vCPU."),
    locking: str | None = typer.Option(None, "--locking", help="Reference VMM only: 2013, bql or unlocked."),
    record_to: Path | None = typer.Option(None, "--record", help="Record the run to this trace file."),
    backend: str = typer.Option("auto", "--backend", help="Recording backend with --record."),
    precise: bool = typer.Option(False, "--precise", help="Precise recording (see vmtrace record --help)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    queue_depth: int | None = typer.Option(
        None, "--queue-depth", help="blk_* benches: requests in flight per vCPU (default 1)."
    ),
    blk_mode: str | None = typer.Option(
        None,
        "--blk",
        help="blk_* benches: bql (the main loop services the queue under the BQL, the default) or dataplane (an IOThread, no BQL).",
    ),
    disk: Path | None = typer.Option(
        None,
        "--disk",
        help="blk_* benches: raw disk image (default: a 64 MiB one in a temporary directory). blk_randwrite and blk_verify overwrite data on it.",
    ),
    python: str | None = typer.Option(None, "--python", help=PYTHON_HELP),
    guest_args: str = typer.Option(
        "",
        "--guest-args",
        help='More words for the guest\'s command line, e.g. "readers=1 hammer=serial" for blk_mixed (see reference_vmm/guest/README.md).',
    ),
    qemu: str | None = typer.Option(
        None,
        "--qemu",
        help="--vmm qemu: 7.2 (Debian's), 10.0 (scripts/install_qemu10.sh's private prefix, run with -L) or a path (default: qemu-system-x86_64 on PATH).",
    ),
    callsites: str | None = typer.Option(
        None, "--callsites", help="With --record: full or sampled BQL call sites (see vmtrace record --help)."
    ),
) -> None:
    """Run the benchmark guest and print the guest-measured cycles per operation.

      vmtrace bench --vmm qemu --bench inl_pmtimer --vcpus 2 --json

      vmtrace bench --vmm qemu --bench blk_randread --vcpus 2 --queue-depth 16 --blk dataplane

    With --record the run is traced, and `vmtrace report` puts the guest's
    own number beside the traced breakdown.
    """
    from ..bench import run_bench
    from ..procs import interrupt_on_signals

    parse_int(str(iterations), "--iterations", 1, U32_MAX, example="20000")
    parse_int(str(vcpus), "--vcpus", 1, 64, example="2")
    check_locking([vmm], locking)
    with interrupt_on_signals():
        result = run_bench(
            vmm,
            bench_name,
            vcpus,
            iterations,
            locking,
            record_to,
            backend,
            precise,
            queue_depth=queue_depth,
            blk=blk_mode,
            disk=disk,
            python=python,
            guest_args=guest_args,
            qemu=qemu,
            callsites=callsites,
        )
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    from ..render.commands import render_bench

    console = Console()
    render_bench(result, console)
    _print_bench_extras(result, console)


def _print_bench_extras(result: Any, console: Console) -> None:
    """What render_bench does not show yet: blk_mixed's hammers, and the
    interpreter the reference VMM ran on."""
    for h in result.hammers:
        console.print(
            f"vCPU {h.get('vcpu')} hammered the {h.get('target')} ({h.get('port')}): "
            f"{int(h.get('ops', 0)):,} accesses, {int(h.get('cycles_per_op', 0)):,} cycles each"
        )
    i = result.interpreter
    if i:
        gil = "GIL enabled" if i.get("gil_enabled") else "GIL disabled"
        kind = "free-threaded" if i.get("free_threaded") else "with the GIL"
        console.print(f"interpreter: CPython {i.get('version')} {kind}, {gil} at run time ({i.get('path')})")


@friendly
def doctor(
    quick: bool = typer.Option(False, "--quick", help="Skip booting a test guest to see which kvm tracepoints fire."),
) -> None:
    """Check what this host can record, and say what to do about each failure.

    Root, /dev/kvm, tracefs, BPF and bcc, kernel headers, QEMU, and (unless
    --quick) which kvm tracepoints fire when a test guest runs.
    """
    from ..doctor import run_checks
    from ..render.commands import render_doctor

    checks = run_checks(fire_test=not quick)
    render_doctor(checks, Console())
    if any(c.ok is False for c in checks):
        raise typer.Exit(1)


@friendly
def vmm_run(
    ctx: typer.Context,
    image: Path = typer.Option(..., "--image", help="A multiboot guest image (e.g. the benchmark guest)."),
    vcpus: int = typer.Option(1, "--vcpus"),
    locking: str = typer.Option(
        "bql", "--locking", help="2013 (BQL held outside KVM_RUN), bql (per dispatch) or unlocked."
    ),
    mem: int = typer.Option(64, "--mem", help="Guest memory in MiB."),
    disk: Path | None = typer.Option(
        None, "--disk", help="A raw disk image for a legacy virtio-blk-pci device at 00:02.0."
    ),
    blk_mode: str | None = typer.Option(
        None,
        "--blk",
        help="With --disk: bql (the main loop services the queue under the BQL, the default) or dataplane (an IOThread, no BQL).",
    ),
    python: str | None = typer.Option(None, "--python", help=PYTHON_HELP.removeprefix("Reference VMM only: ")),
) -> None:
    """Boot IMAGE on the reference VMM; arguments after -- go to the guest.

    vmtrace vmm run --image reference_vmm/guest/build/vmtrace-guest.elf --vcpus 2 -- bench=inl_pmtimer

    vmtrace vmm run --image ... --vcpus 2 --disk disk.img --blk dataplane -- bench=blk_randread qd=16
    """
    from ..bench import LOCKING_MODES, note_on_stderr, reference_run_command
    from ..blk import BLK_MODES, check_disk
    from ..interpreter import reference_vmm_command, resolve_python
    from ..procs import interrupt_on_signals, run_child

    parse_int(str(vcpus), "--vcpus", 1, 64, example="2")
    parse_int(str(mem), "--mem", 1, 1 << 20, example="64")
    if locking not in LOCKING_MODES:
        raise VmtraceError(f"--locking takes {', '.join(LOCKING_MODES)}, not {locking!r}")
    if blk_mode is not None and blk_mode not in BLK_MODES:
        raise VmtraceError(f"--blk takes {' or '.join(BLK_MODES)}, not {blk_mode!r}")
    if blk_mode is not None and disk is None:
        raise VmtraceError("--blk needs --disk")
    guest_args = [a for a in ctx.args if a != "--"]
    start = reference_vmm_command(resolve_python(python, note_on_stderr))
    if disk is not None:
        check_disk(disk)
    cmd = reference_run_command(start, image, vcpus, locking, " ".join(guest_args), disk, blk_mode, mem_mb=mem)
    with interrupt_on_signals():
        status = run_child(cmd).returncode
    raise typer.Exit(128 - status if status < 0 else status)


@friendly
def sweep(
    outdir: Path = typer.Option(
        ..., "-o", "--output", help="Directory for the traces, summary.csv/json and report.html."
    ),
    vmm: str = typer.Option("reference", "--vmm", help="qemu, reference, or both: qemu,reference."),
    bench_name: str = typer.Option(
        "inl_pmtimer", "--bench", help="Benchmark the guest runs (see vmtrace bench --help)."
    ),
    vcpus: str = typer.Option("1,2,4,8", "--vcpus", help="Comma-separated vCPU counts."),
    locking: str | None = typer.Option(
        None, "--locking", help="Reference VMM locking modes, comma-separated (default: bql,unlocked)."
    ),
    iterations: int | None = typer.Option(
        None, "--iterations", help="Operations per vCPU (default: 20000 on QEMU, 3000 on the reference VMM)."
    ),
    backend: str = typer.Option("auto", "--backend", help="Recording backend: auto, bcc or ftrace."),
    repeat: int = typer.Option(
        1,
        "--repeat",
        help="Runs per configuration, untraced and recorded alternating; medians are shown, with the untraced range.",
    ),
    python: str = typer.Option(
        "ft",
        "--python",
        help="Reference VMM: the Pythons it runs on, comma-separated, each a configuration of its own: ft (the free-threaded build, the default; the GIL interpreter with a note when it is missing), gil (the one vmtrace runs on: 'reference bql (GIL)' beside the free-threaded curves), or a path.",
    ),
    qemu: str | None = typer.Option(
        None, "--qemu", help="--vmm qemu: QEMU versions or paths, comma-separated, one configuration each (7.2,10.0)."
    ),
) -> None:
    """Reproduce the seed's figure: cost per exit by component across vCPU counts.

      vmtrace sweep -o pm-sweep                                 # reference VMM, bql vs unlocked, 1-8 vCPUs
      vmtrace sweep -o qemu-sweep --vmm qemu --vcpus 1,2,4
      vmtrace sweep -o pm-sweep --repeat 3                      # steadier numbers on a noisy host
      vmtrace sweep -o pm-sweep --python ft,gil                 # the GIL's curves beside the free-threaded ones

    Each configuration runs twice: untraced (the guest's own cycles per op)
    and recorded.  The summary puts the traced breakdown beside the guest's
    number and the observer effect (traced / untraced guest cost); the HTML
    report stacks the components per vCPU count, configurations side by side.
    With more vCPUs than host CPUs one run can be off by 2x: --repeat N runs
    each N times and keeps the trace of the median recorded run.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..render.html import write_sweep_html
    from ..render.text import render_sweep
    from ..sweep import configs_for, run_sweep, write_summary

    analysing()

    counts = parse_counts(vcpus)
    if repeat < 1:
        raise VmtraceError("--repeat must be at least 1 (runs per configuration)")
    if iterations is not None:
        parse_int(str(iterations), "--iterations", 1, U32_MAX, example="20000")
    check_locking(vmm.split(","), locking)
    configs = configs_for(
        [v.strip() for v in vmm.split(",")],
        locking.split(",") if locking else None,
        pythons=[p.strip() for p in python.split(",") if p.strip()],
        qemus=[q.strip() for q in qemu.split(",") if q.strip()] if qemu else None,
    )
    from ..outputs import check_output_dir
    from ..procs import interrupt_on_signals
    from ..sweep import check_outdir

    check_output_dir(outdir, "sweep output directory")
    check_outdir(outdir)
    console = wide_console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("sweep", total=2 * repeat * len(configs) * len(counts))
        started = [False]

        def step(what: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=what)

        with interrupt_on_signals():
            summary = run_sweep(
                configs,
                counts,
                outdir,
                bench=bench_name,
                iterations=iterations,
                backend=backend,
                progress=step,
                repeat=repeat,
            )
        bar.advance(task)
    files = write_summary(summary, outdir)
    files.append(write_sweep_html(summary, outdir / "report.html"))
    render_sweep(summary, console)
    console.print("wrote " + ", ".join(str(f) for f in files))
