"""The allocator settings the ``vmtrace`` command applies before analysing."""

from __future__ import annotations

import platform
import subprocess
import sys

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


def test_the_cli_applies_it() -> None:
    code = (
        "import sys\n"
        "from unittest import mock\n"
        "import vmtrace.cli as cli\n"
        "from numpy._core import multiarray as m\n"
        "with mock.patch.object(cli, 'app', lambda: None):\n"
        "    cli.main()\n"
        "print(m._set_madvise_hugepage(True))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]
