"""Command line: ``python -m vmtrace.reference_vmm run --image IMG --vcpus N ...``.

Guest serial output goes to stdout unchanged; the process exits with the
guest's isa-debug-exit status (QEMU's ``(value << 1) | 1``).  Host errors are
one line on stderr, ``reference-vmm: error: ...``, exit 2; guest failures add
a register dump and exit 3.

When ``VMTRACE_INTERPRETER_REPORT`` names a file, the VMM writes there, as
JSON, the interpreter it runs on: ``version``, ``free_threaded`` (a
``--disable-gil`` build), ``gil_enabled`` (asked at start and again at exit: a
C extension without free-threading support turns the GIL back on when it is
imported) and ``path``.  ``vmtrace bench`` and ``vmtrace record`` set it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import sysconfig
from collections.abc import Sequence
from typing import Any, NoReturn

from .errors import GuestError, VmmError
from .vcpu import LOCKING_MODES

__all__ = ["main", "build_parser"]

EXIT_HOST_ERROR = 2
EXIT_GUEST_FAILURE = 3

# vmtrace.interpreter.REPORT_ENV: the VMM imports no vmtrace module but the
# probe API, so the name is mirrored here.
INTERPRETER_REPORT_ENV = "VMTRACE_INTERPRETER_REPORT"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other error
        print(f"reference-vmm: error: {message}", file=sys.stderr)
        sys.exit(EXIT_HOST_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m vmtrace.reference_vmm", description="The vmtrace reference VMM (KVM).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="boot a multiboot guest image")
    run.add_argument("--image", required=True, help="multiboot (v1) kernel, ELF32 or a.out kludge")
    run.add_argument("--vcpus", type=int, default=1, help="number of vCPUs (default 1)")
    run.add_argument("--locking", choices=LOCKING_MODES, default="bql", help="locking mode (default bql)")
    run.add_argument("--mem", type=int, default=128, metavar="MB", help="guest RAM in MiB (default 128)")
    run.add_argument("--append", default="", help='guest command line, e.g. "bench=inl_pmtimer iterations=20000"')
    run.add_argument("--iothreads", type=int, default=0, help="IOThreads to start (default 0)")
    run.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="stop a guest still running after S seconds"
    )
    run.add_argument("--kvm", default="/dev/kvm", metavar="PATH", help="KVM device (default /dev/kvm)")
    run.add_argument("--stats", action="store_true", help="print exit and unclaimed-access counts to stderr at the end")
    run.add_argument("--disk", metavar="PATH", help="raw disk image for a legacy virtio-blk-pci device at 00:02.0")
    run.add_argument(
        "--blk",
        choices=("bql", "dataplane"),
        default=None,
        help="who services the virtio-blk queue: the main loop under the BQL (default) "
        "or an IOThread without it (dataplane)",
    )
    run.add_argument(
        "--disk-serial", default="", metavar="S", help="what virtio-blk GET_ID answers (default empty, as QEMU)"
    )
    run.add_argument(
        "-S",
        "--paused",
        action="store_true",
        help="create the vCPUs stopped and run them on SIGUSR2, as QEMU's -S and the monitor's cont "
        "(lets tracers attach before the guest's first instruction)",
    )
    run.add_argument("guest_args", nargs="*", help="after --: more guest command-line words")
    return parser


def interpreter_info() -> dict[str, Any]:
    """This interpreter, as the VMM reports it."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)  # 3.13+
    return {
        "version": platform.python_version(),
        "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "gil_enabled": bool(is_gil_enabled()) if is_gil_enabled else True,
        "path": sys.executable,
    }


def _report_interpreter() -> None:
    path = os.environ.get(INTERPRETER_REPORT_ENV)
    if not path:
        return
    # Replaced whole, so a reader never sees half a report.
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(interpreter_info(), f)
        os.replace(tmp, path)
    except OSError as err:
        print(f"reference-vmm: warning: cannot write the interpreter report to {path}: {err.strerror}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the machine, return the process exit status."""
    args = build_parser().parse_args(argv)
    _report_interpreter()
    try:
        return _run(args)
    finally:
        _report_interpreter()


def _run(args: argparse.Namespace) -> int:
    from .machine import MachineConfig, run_machine  # after parsing: --help needs no KVM

    append = " ".join([args.append, *args.guest_args]).strip()
    config = MachineConfig(
        image=args.image,
        vcpus=args.vcpus,
        locking=args.locking,
        mem_mb=args.mem,
        append=append,
        iothreads=args.iothreads,
        timeout_s=args.timeout,
        kvm_path=args.kvm,
        stats=args.stats,
        disk=args.disk,
        blk=args.blk,
        disk_serial=args.disk_serial,
        paused=args.paused,
    )
    try:
        return run_machine(config)
    except GuestError as e:
        sys.stdout.flush()
        print(f"reference-vmm: guest failure: {e}", file=sys.stderr)
        if e.dump:
            print(e.dump, file=sys.stderr)
        return EXIT_GUEST_FAILURE
    except VmmError as e:
        print(f"reference-vmm: error: {e}", file=sys.stderr)
        return EXIT_HOST_ERROR
