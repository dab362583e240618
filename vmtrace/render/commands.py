"""Terminal tables of the commands that run things rather than read a trace:
``vmtrace bench`` (PM-timer and CPUID loops, and the virtio-blk benches)
and ``vmtrace doctor``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_bench", "render_blk", "render_doctor"]


def render_bench(result: Any, console: Console) -> None:
    """A ``vmtrace.bench.BenchResult``: cycles per operation per vCPU and
    their mean (the virtio-blk benches go to ``render_blk``)."""
    if result.blk is not None:
        render_blk(result, console)
        return
    vmm = f"{result.vmm} {result.qemu_version}" if getattr(result, "qemu_version", None) else result.vmm
    t = Table(
        title=f"{result.bench} on {vmm}" + (f" (locking {result.locking})" if result.locking else ""),
        title_justify="left",
    )
    t.add_column("vCPU", justify="right")
    t.add_column("cycles/op", justify="right")
    for i, c in enumerate(result.per_vcpu):
        t.add_row(str(i), f"{c:,.0f}")
    t.add_row("[bold]mean[/]", f"[bold]{result.cycles_per_op:,.0f}[/]")
    console.print(t)
    console.print(
        f"{result.iterations:,} iterations per vCPU, TSC {result.tsc_hz / 1e9:.3f} GHz, {result.wall_s:.1f}s wall"
    )
    if result.trace:
        console.print(f"trace: {result.trace}  (vmtrace report {result.trace} --bql-breakdown)")


def render_blk(result: Any, console: Console) -> None:
    """A virtio-blk bench: cycles and IOPS per vCPU, or for blk_malformed
    what the device answered to each bad request; checksums and checks."""
    vmm = f"{result.vmm} {result.qemu_version}" if getattr(result, "qemu_version", None) else result.vmm
    console.print(f"{result.bench} on {vmm}, --blk {result.blk}, queue depth {result.queue_depth}")
    if result.malformed:
        t = Table()
        for col in ("kind", "answered", "status", "used len", "then ok"):
            t.add_column(col)
        for m in result.malformed:
            t.add_row(
                m.get("kind", "?"),
                m.get("answered", "?"),
                m.get("status", "?"),
                m.get("used_len", "?"),
                m.get("then_ok", "?"),
            )
        console.print(t)
    else:
        t = Table()
        t.add_column("vCPU", justify="right")
        t.add_column("cycles/request", justify="right")
        t.add_column("IOPS", justify="right")
        for i, (c, iops) in enumerate(zip(result.per_vcpu, result.per_vcpu_iops, strict=False)):
            t.add_row(str(i), f"{c:,.0f}", f"{iops:,.0f}")
        t.add_row("[bold]all[/]", f"[bold]{result.cycles_per_request:,.0f}[/]", f"[bold]{result.iops:,.0f}[/]")
        console.print(t)
        console.print(
            f"{result.iterations:,} requests per vCPU, {result.errors} errors, "
            f"TSC {result.tsc_hz / 1e9:.3f} GHz, {result.wall_s:.1f}s wall"
        )
    for c in result.checksums:
        console.print(f"checksum {c.get('region')}: sector {c.get('sector')}, {c.get('blocks')} blocks, {c.get('fnv')}")
    for name, value in result.checks.items():
        console.print(f"check {name}={value}")
    if result.trace:
        console.print(f"trace: {result.trace}  (vmtrace report {result.trace} --bql-breakdown)")


def render_doctor(checks: list[Any], console: Console) -> None:
    """``vmtrace.doctor.run_checks``' results: one row per check, its status
    (ok, warn where ``ok`` is None, FAIL), what was found and what to do."""
    t = Table(title="vmtrace doctor", title_justify="left")
    for col in ("check", "status", "detail", "what to do"):
        t.add_column(col)
    for c in checks:
        status = "[green]ok[/]" if c.ok else ("[yellow]warn[/]" if c.ok is None else "[red]FAIL[/]")
        t.add_row(c.name, status, c.detail, c.fix)
    console.print(t)
