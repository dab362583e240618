"""Spool clean-up after a crash: whose spools go, and which stay."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from vmtrace import spool


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_only_spools_of_gone_owners_with_nothing_to_recover_are_removed(tmp_path: Path) -> None:
    mine = tmp_path / f"vmtrace-spool-{os.getpid()}-abcd1234"
    dead = tmp_path / f"vmtrace-spool-{_dead_pid()}-abcd1234"
    kept = tmp_path / f"vmtrace-spool-{_dead_pid()}-efgh5678"
    for d in (mine, dead, kept):
        d.mkdir()
        (d / "probes.bin").write_bytes(b"x")
    (kept / "recover.json").write_text("{}")  # a trace to recover: never cleaned
    removed = spool.cleanup_stale_spools(tmp_path)
    assert removed == [f"spool {dead}"]
    assert mine.exists() and kept.exists() and not dead.exists()


def test_ownerless_spools_of_older_versions_go_once_a_day_old(tmp_path: Path) -> None:
    old, young, other = (
        tmp_path / n for n in ("vmtrace-spool-k3j_x9qa", "vmtrace-spool-p0o9i8u7", "vmtrace-spool-notes")
    )
    for d in (old, young, other):
        d.mkdir()
    day_ago = time.time() - spool.OWNERLESS_MAX_AGE_S - 60
    os.utime(old, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))  # not a name mkdtemp makes: not ours to remove
    assert spool.cleanup_stale_spools(tmp_path) == [f"spool {old}"]
    assert young.exists() and other.exists() and not old.exists()
