"""``vmtrace doctor``: what this host can record, and what to do about gaps."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmtrace.collectors import host
from vmtrace.collectors.qemu import qemu_symbols, qemu_version, resolve_binary
from vmtrace.procs import run_child

__all__ = ["Check", "run_checks", "tracepoints_that_fire"]


@dataclass
class Check:
    """One line of the doctor's report: ``ok`` True/False, or None for a
    warning that does not stop recording."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


#: Checks that read tracefs or load BPF, which only root can do.
_ROOT_ONLY = ("leftovers of killed recorders", "tracefs", "tracepoints", "BPF (bcc)")


def _leftovers_check() -> Check:
    """Remove what SIGKILLed recorders left (as ``record`` does at start) and
    say what that was."""
    from vmtrace.record import cleanup_leftovers

    removed = cleanup_leftovers()
    if not removed:
        return Check("leftovers of killed recorders", True, "none")
    return Check(
        "leftovers of killed recorders",
        None,
        "removed " + ", ".join(removed),
        "a recorder was SIGKILLed; nothing more to do",
    )


def _bpf_check() -> Check:
    from vmtrace.collectors.bcc_backend import bcc_available

    ok, why = bcc_available()
    if not ok:
        return Check("BPF (bcc)", False, why, "run the README's setup command, or record with --backend ftrace")
    try:
        from bcc import BPF

        BPF(text="int probe(void *ctx) { return 0; }").cleanup()
    except Exception as err:  # bcc raises plain Exception on load errors
        return Check(
            "BPF (bcc)",
            False,
            f"bcc cannot load a program: {str(err).splitlines()[0]}",
            "check CAP_BPF/root and that the kernel headers match (see README)",
        )
    return Check("BPF (bcc)", True, "bcc compiles and loads BPF programs")


def tracepoints_that_fire(seconds: float = 1.0) -> dict[str, int] | None:
    """Boot the benchmark guest on QEMU in a private tracefs instance and
    count each kvm event; None when that cannot be done here."""
    from vmtrace.bench import guest_image, vmm_command

    tracefs = host.tracefs_path()
    qemu = resolve_binary("qemu-system-x86_64")
    if tracefs is None or qemu is None or os.geteuid() != 0:
        return None
    try:
        image = guest_image()
    except Exception:
        return None
    inst = tracefs / "instances" / f"vmtrace-doctor-{os.getpid()}"
    events = ["kvm_entry", "kvm_exit", "kvm_pio", "kvm_mmio", "kvm_msr", "kvm_userspace_exit"]
    counts: dict[str, int] = {}
    inst.mkdir()
    try:
        for ev in events:
            p = inst / "events" / "kvm" / ev / "enable"
            if p.exists():
                p.write_text("1")
        cmd = vmm_command("qemu", "inl_pmtimer", 1, 2000, image)
        run_child(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        (inst / "tracing_on").write_text("0")
        text = (inst / "trace").read_text(errors="replace")
        for ev in events:
            counts[ev] = text.count(f" {ev}:")
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        for ev in events:
            p = inst / "events" / "kvm" / ev / "enable"
            try:
                p.write_text("0")
            except OSError:
                pass
        for _ in range(20):
            try:
                inst.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return counts


def run_checks(fire_test: bool = True) -> list[Check]:
    checks: list[Check] = []
    root = os.geteuid() == 0
    checks.append(
        Check(
            "root",
            root,
            "running as root" if root else "not root",
            "" if root else "run vmtrace record/doctor with sudo",
        )
    )
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    checks.append(
        Check(
            "/dev/kvm",
            kvm,
            "usable" if kvm else "missing or not accessible",
            "" if kvm else "load kvm_intel/kvm_amd and run as root",
        )
    )
    checks.append(Check("KVM flavour", None if host.kvm_flavour() == "unknown" else True, host.kvm_flavour()))
    if root:
        checks.append(_leftovers_check())
        path = host.tracefs_path()
        if path is None:
            try:
                path = host.ensure_tracefs()
            except Exception as err:
                checks.append(Check("tracefs", False, str(err)))
        if path is not None:
            checks.append(Check("tracefs", True, f"mounted at {path}"))
            have = host.available_tracepoints(path)
            missing = [tp for tp, ok in have.items() if not ok]
            checks.append(
                Check(
                    "tracepoints",
                    not missing or None,
                    "all present" if not missing else f"missing: {', '.join(missing)}",
                    "" if not missing else "load the kvm module; syscalls need CONFIG_FTRACE_SYSCALLS",
                )
            )
    else:
        # tracefs is root-only (mode 0700): these are not failures of the
        # host, just checks this user cannot make.
        for name in _ROOT_ONLY:
            checks.append(Check(name, None, "not checked: needs root", "run `sudo vmtrace doctor`"))
    release = os.uname().release
    headers = Path(f"/lib/modules/{release}/build")
    checks.append(
        Check(
            "kernel headers",
            headers.exists(),
            str(headers) if headers.exists() else "absent",
            "" if headers.exists() else "run the README's setup command (links linux-headers-amd64)",
        )
    )
    if root:
        checks.append(_bpf_check())
    qemu = resolve_binary("qemu-system-x86_64")
    if qemu:
        syms = qemu_symbols(qemu)
        checks.append(Check("QEMU", True, f"{qemu} {qemu_version(qemu) or '?'}"))
        checks.append(
            Check(
                "QEMU BQL symbols",
                not syms.missing or None,
                "all present" if not syms.missing else f"missing: {', '.join(syms.missing)}",
                "" if not syms.missing else "the BQL cannot be named by uprobes; use --lock NAME=0xADDR",
            )
        )
    else:
        checks.append(Check("QEMU", None, "qemu-system-x86_64 not found", "apt-get install qemu-system-x86"))
    if fire_test and not root:
        checks.append(Check("kvm tracepoints fire", None, "not checked: needs root", "run `sudo vmtrace doctor`"))
    if fire_test and root and kvm and qemu:
        counts = tracepoints_that_fire()
        if counts is None:
            checks.append(Check("kvm tracepoints fire", None, "could not run the test guest"))
        else:
            silent = [ev for ev in ("kvm_entry", "kvm_exit") if counts.get(ev, 0) == 0]
            detail = ", ".join(f"{k}={v}" for k, v in counts.items())
            checks.append(
                Check(
                    "kvm tracepoints fire",
                    None if silent else True,
                    detail,
                    "kvm_entry/kvm_exit never fire here (paravirtual KVM?): guest time is folded into vmexit"
                    if silent
                    else "",
                )
            )
    return checks
