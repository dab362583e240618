"""Child processes vmtrace starts, and the signals that stop vmtrace itself.

Two promises, kept here for every command that starts a VMM (``record``,
``bench``, ``sweep``, ``vmm run``):

* A VMM vmtrace started never outlives vmtrace.  The child asks the kernel
  for ``PR_SET_PDEATHSIG`` (SIGKILL) before it execs, so even a SIGKILL to
  vmtrace, which runs no handler, takes the VMM with it.
* SIGTERM and SIGHUP stop vmtrace the way Ctrl-C does: the command unwinds,
  cleans up what it attached and started, and exits with 128+N (the shell's
  convention for "killed by signal N").
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

__all__ = [
    "STOP_SIGNALS",
    "Interrupted",
    "die_with_parent",
    "child_preexec",
    "run_child",
    "pid_alive",
    "interrupt_on_signals",
    "exit_status",
    "spawn_held",
    "terminate",
    "is_zombie",
]

#: Signals that ask vmtrace to stop (SIGINT from the terminal, SIGTERM from
#: kill or systemd, SIGHUP when the terminal goes away).
STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Interrupted(KeyboardInterrupt):
    """vmtrace was asked to stop by signal ``signum``.

    A KeyboardInterrupt, so that every ``finally`` and every ``except
    BaseException`` cleanup on the way out runs exactly as for Ctrl-C.
    ``detail`` says what was kept (a trace, a spool), or is empty.
    """

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum)
        self.signum = signum
        self.detail = detail

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """In a child, before exec: have the kernel send ``sig`` when ``parent``
    (vmtrace) dies.  Safe to call between fork and exec: one prctl, one
    getppid and, if the parent is already gone, ``_exit``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        os._exit(125)
    # The parent may have died between fork and prctl: the signal would then
    # never come, so the orphan leaves at once.
    if os.getppid() != parent:
        os._exit(125)


def child_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess: dies with the calling process and
    starts with default handlers for the stop signals (a VMM must not inherit
    vmtrace's)."""
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(parent)
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)

    return preexec


def run_child(cmd: Sequence[str], timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` for a VMM: the child dies with vmtrace, and if
    vmtrace is interrupted the child is killed and reaped before the
    interruption goes on (subprocess.run kills it on any exception)."""
    return subprocess.run(list(cmd), timeout=timeout, preexec_fn=child_preexec(), **kwargs)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Interrupted`` like Ctrl-C
    (SIGINT) does; the previous handlers come back on the way out.

    Only the main thread can install handlers; elsewhere this does nothing.
    """

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    old: dict[int, Any] = {}
    try:
        for s in STOP_SIGNALS:
            old[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def exit_status(status: int) -> int:
    """A ``waitpid`` status as a shell reports it: the exit code, or 128+N
    for a child killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts:
    its leftovers are not ours to remove)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn_held(cmd: list[str], env: dict[str, str], stdout: TextIO | None) -> tuple[int, int, int]:
    """Fork ``cmd`` held before exec; returns (pid, fd to write "g" to
    release it, fd that yields an errno if exec failed).

    Exec failures come back through a close-on-exec pipe as an errno.
    """
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(go_w)
            os.close(err_r)
            if os.read(go_r, 1) != b"g":
                os._exit(126)  # the recorder gave up before releasing us
            os.close(go_r)
            if stdout is not None:
                os.dup2(stdout.fileno(), 1)
            # The VMM must not outlive vmtrace, even a SIGKILLed one.
            die_with_parent(parent)
            # Ctrl-C reaches the target through the terminal; the target
            # must not inherit vmtrace's handlers.
            for s in STOP_SIGNALS:
                signal.signal(s, signal.SIG_DFL)
            os.execvpe(cmd[0], cmd, env)
        except OSError as err:
            os.write(err_w, str(err.errno).encode())
        finally:
            os._exit(127)
    os.close(go_r)
    os.close(err_w)
    return pid, go_w, err_r


def terminate(pid: int, grace_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``; reap and return the exit status."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return exit_status(status)
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return exit_status(os.waitpid(pid, 0)[1])


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie, or gone): it has no threads left to record."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True  # gone
