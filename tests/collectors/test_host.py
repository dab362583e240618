"""What the host offers for tracing, asked as root and as any other user.

tracefs is mode 0700, so to an unprivileged user every tracepoint is simply
not available: ``vmtrace doctor`` must say so, not raise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need
from vmtrace.collectors.host import KERNEL_TRACEPOINTS, tracepoint_available

TRACEFS = Path("/sys/kernel/tracing")


def test_a_tracepoint_is_available_when_its_format_file_exists(tmp_path: Path) -> None:
    fmt = tmp_path / "events" / "sched" / "sched_switch" / "format"
    fmt.parent.mkdir(parents=True)
    fmt.write_text("name: sched_switch\n")
    assert tracepoint_available(tmp_path, "sched:sched_switch")
    assert not tracepoint_available(tmp_path, "sched:sched_wakeup")
    assert not tracepoint_available(tmp_path, "kvm:kvm_exit")


def test_a_tracefs_this_user_may_not_read_offers_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The live twin below asks the real tracefs as nobody.
    def refuse(self: Path, *args: object, **kwargs: object) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", refuse)
    assert tracepoint_available(tmp_path, "sched:sched_switch") is False


def test_real_tracefs_as_root_and_as_nobody(root: None) -> None:
    need(shutil.which("setpriv") is not None, "needs setpriv (util-linux) to drop root")
    assert tracepoint_available(TRACEFS, "sched:sched_switch")
    probe = (
        "from pathlib import Path\n"
        "from vmtrace.collectors.host import KERNEL_TRACEPOINTS, tracepoint_available\n"
        f"print(sorted(tp for tp in KERNEL_TRACEPOINTS if tracepoint_available(Path({str(TRACEFS)!r}), tp)))\n"
    )
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/tmp",
        env={**os.environ, "HOME": "/tmp"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == "[]"
    assert "sched:sched_switch" in KERNEL_TRACEPOINTS
