"""The reference VMM's concurrency tests, run again on the free-threaded CPython.

Under the GIL two threads never run Python at once, so the RCU stress, the
FlatView and owner tests and the virtio-blk integrity tests cannot find a
race the GIL hides.  This test runs those files in a subprocess on CPython
3.13 built with ``--disable-gil`` (``scripts/build_python_ft.sh`` puts it in
the cache), with the GIL off (``PYTHON_GIL=0``: an extension that would turn
it back on makes the run fail instead) and the stress tests scaled up
(``VMTRACE_STRESS_SCALE``): more threads, longer runs, more iterations.

What would catch a race there: test_rcu's stress readers check every view
they hold for ``reclaimed`` (and test_rcu shows that check firing when the
reader side is broken); test_races counts exactly across threads, numbers
FlatViews uniquely, and checks that no vCPU bus calls a finalized device;
the virtio-blk tests compare every byte that went through the rings with
the image.  A lost update, a reclaimed view in use or a torn request fails
one of them.

The free-threaded interpreter gets pytest and hypothesis in a venv of its
own next to it (``ft-venv``, made once, from wheels only: hypothesis's
native builds have no free-threaded wheel) and sees the repository through
a directory of links (``vmtrace`` with ``reference_vmm`` inside), since the
editable install is the GIL interpreter's.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, need

FILES = [
    "test_rcu.py",
    "test_races.py",
    "test_flatview.py",
    "test_devices.py",
    "test_exit_handler.py",
    "test_vcpu_thread.py",
    "test_iothread.py",
    "test_virtio_blk.py",
    "test_virtio_pci.py",
    "test_virtio_blk_live.py",
]
STRESS_SCALE = "4"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmtrace"


def ft_python() -> Path:
    return cache_dir() / "cpython-3.13-ft" / "bin" / "python3.13t"


def ft_venv(interpreter: Path) -> Path:
    """A venv of the free-threaded interpreter with pytest and hypothesis (made once)."""
    venv = cache_dir() / "ft-venv"
    python = venv / "bin" / "python"
    with open(cache_dir() / "ft-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs must not build it at once
        probe = [str(python), "-c", "import pytest, hypothesis"]
        if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
            return python
        subprocess.run([str(interpreter), "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--only-binary=:all:", "pytest", "hypothesis"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        need(
            pip.returncode == 0, f"pytest and hypothesis for the free-threaded interpreter: {pip.stderr.strip()[-300:]}"
        )
    return python


def link_tree(root: Path) -> Path:
    """``root/vmtrace`` holds links to the package's files plus ``reference_vmm``; ``root/tests`` the tests."""
    import vmtrace

    package = Path(vmtrace.__file__).resolve().parent
    shim = root / "vmtrace"
    shim.mkdir(parents=True)
    for entry in package.iterdir():
        (shim / entry.name).symlink_to(entry)
    if not (shim / "reference_vmm").exists():
        (shim / "reference_vmm").symlink_to(REPO / "reference_vmm")
    (root / "tests").symlink_to(REPO / "tests")
    return root


def test_concurrency_tests_pass_on_the_free_threaded_interpreter(kvm, guest_image: Path, tmp_path: Path) -> None:
    interpreter = ft_python()
    need(interpreter.exists(), f"needs the free-threaded CPython at {interpreter} (scripts/build_python_ft.sh)")
    python = ft_venv(interpreter)
    env = dict(
        os.environ,
        PYTHONPATH=str(link_tree(tmp_path / "path")),
        PYTHON_GIL="0",
        VMTRACE_STRESS_SCALE=STRESS_SCALE,
        PYTHONSAFEPATH="1",
    )
    env.pop("VMTRACE_PROBES", None)
    here = Path(__file__).resolve().parent
    args = [str(here / f) for f in FILES]
    script = (
        "import sys, vmtrace.reference_vmm.machine, pytest\n"
        "assert not sys._is_gil_enabled(), 'the GIL came back on'\n"
        f"code = pytest.main(['-q', '-p', 'no:cacheprovider', '--import-mode=importlib', *{args!r}])\n"
        "assert not sys._is_gil_enabled(), 'the GIL came back on during the tests'\n"
        "sys.exit(code)\n"
    )
    r = subprocess.run([str(python), "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    tail = "\n".join(r.stdout.strip().splitlines()[-25:])
    print(tail)
    assert r.returncode == 0, f"on the free-threaded interpreter:\n{tail}\n{r.stderr[-2000:]}"
    summary = r.stdout.strip().splitlines()[-1]
    # Every test the GIL interpreter collects from these files passed there:
    # none skipped, none missing.
    collect = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    collected = collect.stdout.strip().splitlines()[-1]
    assert collected.endswith("collected") or " tests collected" in collected, collected
    expected = int(collected.split()[0])
    assert summary.startswith(f"{expected} passed") and "skipped" not in summary, (summary, collected)
