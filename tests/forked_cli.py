"""``python -m vmtrace.cli ARGS`` many times over, without paying for the
interpreter and its heavy imports each time.

A command-line test runs vmtrace as a user does: its own process, its own
working directory, environment, stdin, stdout and stderr, and an exit status.
Most of such a process's second is spent importing numpy, pandas, pyarrow,
typer and rich before vmtrace reads an argument; the bad-input suite alone
runs over two hundred of them.  A server process imports those libraries
once, then forks a child per command; the child takes the command's
directory, environment and files and runs ``vmtrace.cli`` as ``python -m``
does (``runpy``), in a fresh copy of the server's memory.  Nothing vmtrace
computes survives from one command to the next, and vmtrace itself is
imported anew in each child, so import-time reads of the environment see
the command's.  Tests that are about start-up itself (what a command
imports, how long it takes) run a real ``python -m`` instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class ForkedRun(subprocess.CompletedProcess[str]):
    """A finished command, with the PID its process had."""

    pid: int = 0


class ForkedCli:
    """A server of ``vmtrace`` commands (``python -m tests.forked_cli``)."""

    def __init__(self) -> None:
        self._server = subprocess.Popen(
            [sys.executable, "-m", "tests.forked_cli"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buf = b""

    def run(self, argv: list[str], cwd: Path | str, env: Mapping[str, str], timeout: float = 90) -> ForkedRun:
        """Run ``vmtrace argv``; the result's ``args`` are the command as
        ``python -m`` would run it, and ``pid`` is the child's.  On ``timeout`` the child is stopped (SIGTERM, then
        SIGKILL) and ``subprocess.TimeoutExpired`` raised."""
        with tempfile.TemporaryDirectory(prefix="vmtrace-forked-cli-") as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {"argv": argv, "cwd": str(cwd), "env": dict(env), "stdout": str(out), "stderr": str(err)}
            assert self._server.stdin is not None
            self._server.stdin.write(json.dumps(request).encode() + b"\n")
            self._server.stdin.flush()
            pid = int(self._line(60)["pid"])
            try:
                status = self._line(timeout)["status"]
            except subprocess.TimeoutExpired:
                # A regression that blocks must not outlive the test: SIGTERM
                # lets a recorder detach, then SIGKILL.
                os.kill(pid, signal.SIGTERM)
                try:
                    self._line(30)
                except subprocess.TimeoutExpired:
                    os.kill(pid, signal.SIGKILL)
                    self._line(30)
                raise subprocess.TimeoutExpired(["vmtrace", *argv], timeout) from None
            done = ForkedRun(
                [sys.executable, "-m", "vmtrace.cli", *argv],
                os.waitstatus_to_exitcode(status),
                out.read_text(errors="replace"),
                err.read_text(errors="replace"),
            )
        done.pid = pid
        return done

    def _line(self, timeout: float) -> dict[str, int]:
        assert self._server.stdout is not None
        fd = self._server.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise subprocess.TimeoutExpired("forked vmtrace", timeout)
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the forked-CLI server exited (status {self._server.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, int] = json.loads(line)
        return reply

    def close(self) -> None:
        if self._server.poll() is None:
            assert self._server.stdin is not None
            self._server.stdin.close()
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()


_shared: ForkedCli | None = None


def forked_cli() -> ForkedCli:
    """This test process's server, started on first use."""
    global _shared
    if _shared is None:
        _shared = ForkedCli()
        atexit.register(_shared.close)
    return _shared


# --- the server -------------------------------------------------------------


def _child(request: dict[str, Any]) -> None:
    """Become ``python -m vmtrace.cli ARGV`` in the request's place; never returns."""
    import runpy
    import traceback

    code: int = 1
    try:
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            new = os.open(str(path), flags, 0o600)
            os.dup2(new, fd)
            os.close(new)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["vmtrace", *request["argv"]]
        try:
            runpy.run_module("vmtrace.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def serve() -> None:
    # What every vmtrace command imports before it reads an argument.
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import rich.console  # noqa: F401
    import typer  # noqa: F401

    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        replies.write(json.dumps({"pid": pid}).encode() + b"\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"status": status}).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":
    serve()
