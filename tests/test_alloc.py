"""The allocator settings the ``vmtrace`` command applies before analysing."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest


def test_tuning_turns_off_numpy_hugepage_advice_and_glibc_accepts_it() -> None:
    # In a child process: the settings are process-wide and must not leak
    # into the rest of the suite.
    code = (
        "from numpy._core import multiarray as m\n"
        "from vmtrace.alloc import tune_for_large_arrays\n"
        "ok = tune_for_large_arrays()\n"
        "print(ok, m._set_madvise_hugepage(False), tune_for_large_arrays())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt settings are glibc's; this C library is " + (platform.libc_ver()[0] or "unknown"))
    # The second value is the advice numpy had before this reset: off.
    assert out == ["True", "False", "True"]


def test_report_applies_it_and_help_does_not_load_numpy() -> None:
    sample = Path(__file__).resolve().parent.parent / "sample_traces" / "qemu-pmtimer-2vcpu.vmtrace"
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import vmtrace.cli as cli\n"
        "h = CliRunner().invoke(cli.app, ['--help'])\n"
        "print(h.exit_code, 'numpy' in sys.modules)\n"
        f"r = CliRunner().invoke(cli.app, ['report', {str(sample)!r}, '--exits'])\n"
        "from numpy._core import multiarray as m\n"
        "print(r.exit_code, m._set_madvise_hugepage(True))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # --help starts without numpy; report turned numpy's hugepage advice off.
    assert out == ["0", "False", "0", "False"]
