"""What the live collector tests record: QEMU on the benchmark guest, forked
held before exec (it waits on a pipe) the way the recorder starts a command.

Shared by test_ftrace_live.py and test_lost_live.py: a module of its own, so
neither imports the other (pytest imports test modules by file name, which
type checkers cannot follow).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "reference_vmm" / "guest" / "build" / "vmtrace-guest.elf"
QEMU = "/usr/bin/qemu-system-x86_64"
T = Path("/sys/kernel/tracing")


def qemu_cmd(iterations: int = 20000) -> list[str]:
    cmd = [
        "timeout",
        "30",
        QEMU,
        "-name",
        "vmtrace,debug-threads=on",
        "-enable-kvm",
        "-cpu",
        "max,-arch-capabilities",
        "-M",
        "pc",
        "-smp",
        "2",
        "-m",
        "64",
        "-nographic",
        "-nodefaults",
        "-serial",
        "file:/dev/null",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ]
    if GUEST.exists():
        return cmd + ["-kernel", str(GUEST), "-append", f"bench=inl_pmtimer iterations={iterations}"]
    return cmd  # no guest image: SeaBIOS alone still makes port and MMIO exits


class Target:
    """A child that waits on a pipe, then execs ``cmd``."""

    def __init__(self, cmd: list[str]) -> None:
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            os.close(w)
            os.read(r, 1)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.execvp(cmd[0], cmd)
        os.close(r)
        self._w = w
        self.status: int | None = None

    def release(self) -> None:
        os.write(self._w, b"x")
        os.close(self._w)

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def kill(self) -> None:
        """SIGKILL the target and QEMU under it (``timeout`` makes itself a
        process group leader, so its group is exactly the two of them)."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -9


@pytest.fixture
def target_factory() -> Iterator[Callable[[list[str]], Target]]:
    made: list[Target] = []

    def make(cmd: list[str]) -> Target:
        t = Target(cmd)
        made.append(t)
        return t

    yield make
    for t in made:
        try:
            t.release()
        except OSError:
            pass
        t.kill()
