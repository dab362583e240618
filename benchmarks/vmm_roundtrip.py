"""Exit round trip of the reference VMM against QEMU's, side by side, untraced.

A userspace exit's round trip is what the guest pays for one ``inl`` that KVM
hands to the VMM: the exit, the return from ``KVM_RUN``, the VMM's decode and
dispatch, and the next ``KVM_RUN``.  Two benches of the benchmark guest time
it: ``inl_vmm`` reads a port no device claims (the VMM's exit path and
unassigned-region dispatch alone) and ``inl_pmtimer`` reads the ACPI PM timer
(the same plus a device callback that reads the host clock).

For each bench and vCPU count the script runs QEMU (its own locking: Debian's
7.2 takes the BQL for both ports) and the reference VMM in ``bql`` and
``unlocked`` mode, on the free-threaded CPython (``ft``, the default the
reference VMM runs on) and on the GIL interpreter vmtrace runs on (``gil``),
interleaved round-robin (the order rotates every round),
so host noise spreads over all of them, and prints the guest-measured TSC
cycles per operation (median of the rounds, mean over vCPUs in each run) and
the ratio reference / QEMU of those medians, with the range of the per-round
ratios beside it.  Progress goes to stderr, the table to stdout.

    .venv/bin/python benchmarks/vmm_roundtrip.py [--rounds 5] [--iterations 20000]
        [--vcpus 1,2] [--benches inl_vmm,inl_pmtimer] [--modes bql,unlocked]
        [--python ft,gil] [--json FILE]

The target (issue 4): the reference VMM's round trip no slower than QEMU's,
a ratio <= 1.00.  Each round also times the floor of an exit on this host
(``benchmarks/kvm_floor.py``: a bare KVM_RUN loop in C and in Python, one
vCPU, host-timed), printed under the table against QEMU's 1-vCPU ``inl_vmm``:
what no VMM can go below, and what Python alone adds.  ``--no-floor`` skips it.

A second table gives each configuration's cost at every vCPU count over its
own cost at 1 vCPU: the target of issue 11 is ``unlocked`` at 2 vCPUs within
1.10x of 1 vCPU on the free-threaded interpreter (2.0x under the GIL).
Without a free-threaded build the ``ft`` columns are left out, with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from vmtrace.bench import run_bench
from vmtrace.errors import VmtraceError
from vmtrace.interpreter import PYTHON_CHOICES, resolve_python

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kvm_floor
from cli_args import positive_ints

BENCHES = ("inl_vmm", "inl_pmtimer")
REFERENCE_MODES = ("bql", "unlocked")
QEMU = ("qemu", None, None)
Config = tuple[str, str | None, str | None]  # (vmm, locking, python)


def _ints(text: str, what: str) -> list[int]:
    return positive_ints(text, what, "vmm_roundtrip")


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        sys.exit(f"vmm_roundtrip: error: {what} takes {', '.join(allowed)}, not {text!r}")
    return values


def run_tsc_hz() -> int:
    from vmtrace.collectors import host

    return host.tsc_hz()[0]


def label(config: Config) -> str:
    vmm, mode, python = config
    return "QEMU" if vmm == "qemu" else f"reference {mode}" + (" (GIL)" if python == "gil" else "")


def short(config: Config) -> str:
    vmm, mode, python = config
    return "QEMU" if vmm == "qemu" else f"ref {mode}" + (" GIL" if python == "gil" else "")


def pythons_to_run(text: str) -> list[str]:
    """The ``--python`` names that give distinct interpreters: ``ft`` is
    dropped, with a note, when it would fall back to the GIL one."""
    names = _names(text, PYTHON_CHOICES, "--python")
    notes: list[str] = []
    if "ft" in names and resolve_python("ft", notes.append).kind != "free-threaded":
        print(
            f"vmm_roundtrip: note: {notes[0] if notes else 'no free-threaded CPython'}; its columns are left out",
            file=sys.stderr,
        )
        names = [n for n in names if n != "ft"] or ["gil"]
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the table shows medians")
    ap.add_argument("--iterations", type=int, default=20000, help="timed reads per vCPU")
    ap.add_argument("--vcpus", default="1,2")
    ap.add_argument("--benches", default=",".join(BENCHES))
    ap.add_argument("--modes", default=",".join(REFERENCE_MODES), help="the reference VMM's locking modes")
    ap.add_argument("--python", default="ft,gil", help="interpreters for the reference VMM: ft (free-threaded), gil")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    ap.add_argument("--json", metavar="FILE", help="also write every run's cycles per op to FILE")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare KVM_RUN loops (C and Python)")
    args = ap.parse_args()
    if args.rounds < 1 or args.iterations < 1:
        sys.exit("vmm_roundtrip: error: --rounds and --iterations must be at least 1")
    vcpu_counts = _ints(args.vcpus, "--vcpus")
    benches = _names(args.benches, BENCHES, "--benches")
    modes = _names(args.modes, ("2013", "bql", "unlocked"), "--modes")
    pythons = pythons_to_run(args.python)
    configs: list[Config] = [QEMU] + [("reference", m, p) for p in pythons for m in modes]

    # cycles[(bench, vcpus, config)] = one value per round, None where a run failed
    cycles: dict[tuple, list[float | None]] = {}
    failures: list[str] = []
    load_before = os.getloadavg()[1]  # the 5-minute average: other work on the host skews every number
    floor: dict[str, list[float]] = {"c": [], "python": []}
    floor_dir = tempfile.TemporaryDirectory()
    floor_exe = None
    if not args.no_floor:
        try:
            floor_exe = kvm_floor.build_c(Path(floor_dir.name))
        except (kvm_floor.FloorError, OSError) as err:
            failures.append(f"floor: {err}")
    for rnd in range(args.rounds):
        if floor_exe is not None:
            try:
                floor["c"].append(kvm_floor.c_ns_per_exit(floor_exe, args.iterations * 10))
                floor["python"].append(kvm_floor.python_ns_per_exit(args.iterations * 10))
            except (kvm_floor.FloorError, OSError) as err:
                failures.append(f"round {rnd} floor: {err}")
            print(
                f"# round {rnd} floor: " + ", ".join(f"{k} {v[-1]:,.0f} ns/exit" for k, v in floor.items() if v),
                file=sys.stderr,
            )
        for bench in benches:
            for vcpus in vcpu_counts:
                # Rotate who goes first: a run right after QEMU's (or after a
                # cold start) must not always be the same configuration.
                k = rnd % len(configs)
                for config in configs[k:] + configs[:k]:
                    vmm, mode, python = config
                    key = (bench, vcpus, config)
                    try:
                        res = run_bench(
                            vmm, bench, vcpus, args.iterations, locking=mode, timeout_s=args.timeout, python=python
                        )
                        value = res.cycles_per_op
                    except VmtraceError as err:
                        failures.append(f"round {rnd} {bench} {vcpus} vCPU {label(config)}: {err}")
                        value = None
                    cycles.setdefault(key, []).append(value)
                    shown = f"{value:,.0f} cycles/op" if value is not None else "failed"
                    print(f"# round {rnd} {bench} {vcpus} vCPU {label(config)}: {shown}", file=sys.stderr)

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(
        f"guest-measured TSC cycles per inl, untraced: median of {args.rounds} interleaved round(s), "
        f"{args.iterations} reads per vCPU"
    )
    console.print("ratio = reference median / QEMU median (range of the per-round ratios); target <= 1.00x")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("bench")
    table.add_column("vCPUs", justify="right")
    table.add_column("QEMU", justify="right")
    refs = configs[1:]
    for config in refs:
        table.add_column(short(config), justify="right")
        table.add_column("ratio", justify="right")
    for bench in benches:
        for vcpus in vcpu_counts:
            q = [v for v in cycles.get((bench, vcpus, QEMU), []) if v is not None]
            qmed = statistics.median(q) if q else None
            row = [bench, str(vcpus), f"{qmed:,.0f}" if qmed else "n/a"]
            for config in refs:
                values = cycles.get((bench, vcpus, config), [])
                r = [v for v in values if v is not None]
                if not r:
                    row += ["n/a", "-"]
                    continue
                rmed = statistics.median(r)
                row.append(f"{rmed:,.0f}")
                if not qmed:
                    row.append("-")
                    continue
                # Per-round ratios pair the runs that met the same host load.
                paired = [rv / qv for rv, qv in zip(values, cycles[(bench, vcpus, QEMU)], strict=False) if rv and qv]
                ratio = rmed / qmed
                style = "green" if ratio <= 1.0 else "red"
                spread = f" ({min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else ""
                row.append(f"[{style}]{ratio:.2f}x[/]{spread}")
            table.add_row(*row)
    console.print(table)
    if len(vcpu_counts) > 1 and 1 in vcpu_counts:
        print_scaling(console, cycles, configs, benches, vcpu_counts)
    q1 = [v for v in cycles.get(("inl_vmm", 1, QEMU), []) if v is not None]
    if floor["c"] and floor["python"]:
        tsc_hz = run_tsc_hz()
        for key, name in (("c", "C"), ("python", "Python (ctypes, as the reference VMM)")):
            cyc = statistics.median(floor[key]) * tsc_hz / 1e9
            note = f" ({cyc / statistics.median(q1):.2f}x QEMU's inl_vmm at 1 vCPU)" if q1 else ""
            console.print(f"floor, bare KVM_RUN loop in {name}, host-timed: {cyc:,.0f} cycles per exit{note}")
    floor_dir.cleanup()
    console.print(
        f"host load average (5 min): {load_before:.2f} before, {os.getloadavg()[1]:.2f} after, on {os.cpu_count()} CPUs"
    )
    for failure in failures:
        console.print(f"failed: {failure}")
    if args.json:
        data = [
            {"bench": b, "vcpus": v, "vmm": c[0], "locking": c[1], "python": c[2], "cycles_per_op": vals}
            for (b, v, c), vals in cycles.items()
        ]
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "iterations": args.iterations, "runs": data}, f, indent=1)


def print_scaling(
    console: Console,
    cycles: dict[tuple, list[float | None]],
    configs: list[Config],
    benches: list[str],
    vcpu_counts: list[int],
) -> None:
    """Each configuration's median at n vCPUs over its median at 1 vCPU, with
    the range of the per-round ratios (a round's runs met the same load)."""
    console.print(
        "cost at n vCPUs / cost at 1 vCPU, same configuration (range of the per-round ratios); "
        "target for reference unlocked on the free-threaded interpreter at 2 vCPUs: <= 1.10x"
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("bench")
    table.add_column("vCPUs", justify="right")
    for config in configs:
        table.add_column(label(config), justify="right")
    for bench in benches:
        for vcpus in [n for n in vcpu_counts if n != 1]:
            row = [bench, str(vcpus)]
            for config in configs:
                one, many = cycles.get((bench, 1, config), []), cycles.get((bench, vcpus, config), [])
                o, m = [v for v in one if v], [v for v in many if v]
                if not o or not m:
                    row.append("n/a")
                    continue
                ratio = statistics.median(m) / statistics.median(o)
                paired = [b / a for a, b in zip(one, many, strict=False) if a and b]
                spread = f" ({min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else ""
                target = config[0] == "reference" and config[1] == "unlocked" and config[2] == "ft" and vcpus == 2
                style = ("green" if ratio <= 1.10 else "red") if target else "default"
                row.append(f"[{style}]{ratio:.2f}x[/]{spread}")
            table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
