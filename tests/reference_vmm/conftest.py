"""Fixtures for the reference VMM's tests: the benchmark guest image and a VMM runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, need

GUEST_DIR = REPO / "reference_vmm" / "guest"
GUEST_IMAGE = GUEST_DIR / "build" / "vmtrace-guest.elf"


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The benchmark guest, built with ``make -C reference_vmm/guest`` if needed."""
    if not GUEST_IMAGE.exists() and (GUEST_DIR / "Makefile").exists():
        if shutil.which("gcc") and shutil.which("nasm"):
            subprocess.run(["make", "-C", str(GUEST_DIR)], capture_output=True, timeout=120)
    need(GUEST_IMAGE.exists(), f"needs the benchmark guest {GUEST_IMAGE} (make -C reference_vmm/guest: gcc -m32, nasm)")
    return GUEST_IMAGE


def _package_root() -> str:
    """The directory ``vmtrace`` was imported from, as imported (not resolved):
    the repository under the editable install, a directory of links when the
    tests run on the free-threaded interpreter (see test_free_threaded.py)."""
    import vmtrace

    return str(Path(vmtrace.__file__).parent.parent)


def run_vmm(args: list[str], timeout: float = 60, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m vmtrace.reference_vmm ARGS`` (this interpreter) and capture its output."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), full_env.get("PYTHONPATH", "")]))
    full_env["PYTHONSAFEPATH"] = "1"  # the working directory (the repository) must not shadow that root
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vmtrace.reference_vmm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        **kw,
    )
