"""Helpers for the reference VMM's tests: a VMM runner (the guest image is
``tests.conftest.guest_image``)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def run_vmm(
    args: list[str], timeout: float = 60, env: dict[str, str] | None = None, **kw
) -> subprocess.CompletedProcess:
    """Run ``python -m vmtrace.reference_vmm ARGS`` and capture its output."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vmtrace.reference_vmm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        **kw,
    )
