"""Helpers for the reference VMM's tests: a VMM runner (the guest image is
``tests.conftest.guest_image``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _package_root() -> str:
    """The directory ``vmtrace`` was imported from, as imported (not resolved):
    the repository under the editable install, a directory of links when the
    tests run on the free-threaded interpreter (see test_free_threaded.py)."""
    import vmtrace

    return str(Path(vmtrace.__file__).parent.parent)


def run_vmm(
    args: list[str], timeout: float = 60, env: dict[str, str] | None = None, **kw
) -> subprocess.CompletedProcess:
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
