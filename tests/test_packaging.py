"""vmtrace as a user installs it, not as the checkout runs it.

A wheel built from (a copy of) this checkout goes into a fresh virtualenv made
from Debian's python3 with --system-site-packages (as scripts/setup.sh makes
.venv, so bcc stays visible).  From outside the checkout, the installed
package reports on a sample trace exactly as the checkout does, and builds the
benchmark guest into ``$XDG_CACHE_HOME/vmtrace/guest/``, leaving site-packages
as installed.  Building the wheel, installing it and installing the checkout
in editable mode print no warning.  The dependencies are installed by a pip
call of their own first: what that prints depends on this host's package
index configuration, not on vmtrace.

Live tier (the ``fresh_venv`` fixture): it takes a few minutes and reaches
the package index (or pip's cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from .conftest import REPO, need

SAMPLE = REPO / "sample_traces" / "qemu-pmtimer-1vcpu.vmtrace"
# What a checkout holds that is not the project: never copied into the build.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "out",
    "*.egg-info",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)
WARNING = re.compile(r"warn", re.IGNORECASE)


def pip(python: Path, *args: str, cwd: Path) -> str:
    """Run pip and return everything it printed; fail with that text if it fails."""
    proc = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if WARNING.search(line)]


def lend_dependencies(python: Path, lent: Path) -> None:
    """Make this test run's installed dependencies visible to the fresh venv.

    Installing pandas, pyarrow, plotly, dask... again took most of this
    test's minutes, and what it checks is vmtrace's own wheel.  Everything
    in the running venv's site-packages but vmtrace itself (its dist-info
    and editable-install hook) is linked into ``lent``, which a ``.pth``
    puts on the fresh venv's path, so pip finds the dependencies satisfied
    and vmtrace comes only from the wheel."""
    import sysconfig

    lent.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.startswith(("vmtrace", "__editable__")) or name.endswith(".pth"):
            continue
        (lent / entry.name).symlink_to(entry)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "vmtrace-test-lent-deps.pth").write_text(f"{lent}\n")


def site_files(python: Path) -> set[Path]:
    """Every file of the installed vmtrace package."""
    pkg = subprocess.run(
        [str(python), "-c", "import vmtrace, pathlib; print(pathlib.Path(vmtrace.__file__).parent)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()
    return {p for p in Path(pkg).rglob("*") if "__pycache__" not in p.parts}


def test_wheel_installs_cleanly_reports_and_builds_the_guest_in_the_cache(fresh_venv: Path, tmp_path: Path) -> None:
    need(all(shutil.which(t) for t in ("make", "gcc", "nasm")), "needs make, gcc and nasm to build the guest")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=NOT_SOURCES)
    wheels = tmp_path / "wheels"
    built = pip(fresh_venv, "wheel", "--no-deps", "-w", str(wheels), str(src), cwd=tmp_path)
    assert warnings_in(built) == [], built
    (wheel,) = wheels.glob("vmtrace-*.whl")

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lend_dependencies(fresh_venv, tmp_path / "lent")
    pip(fresh_venv, "install", *deps, cwd=tmp_path)
    installed = pip(fresh_venv, "install", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    assert warnings_in(installed) == [], installed

    outside = tmp_path / "elsewhere"  # no checkout on sys.path from here
    outside.mkdir()
    vmtrace = fresh_venv.parent / "vmtrace"
    where = subprocess.run(
        [str(fresh_venv), "-c", "import vmtrace.analyses.breakdown as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        cwd=outside,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(fresh_venv.parent.parent), where

    report = subprocess.run(
        [str(vmtrace), "report", str(SAMPLE), "--format", "json"],
        capture_output=True,
        text=True,
        cwd=outside,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    checkout = subprocess.run(
        [sys.executable, "-m", "vmtrace.cli", "report", str(SAMPLE), "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert checkout.returncode == 0, checkout.stderr
    assert json.loads(report.stdout) == json.loads(checkout.stdout)

    cache = tmp_path / "cache"
    before = site_files(fresh_venv)
    guest = subprocess.run(
        [str(fresh_venv), "-c", "from vmtrace.bench import guest_image; print(guest_image())"],
        capture_output=True,
        text=True,
        cwd=outside,
        timeout=300,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )
    assert guest.returncode == 0, guest.stderr
    image = Path(guest.stdout.strip())
    assert image.is_relative_to(cache / "vmtrace" / "guest"), image
    assert image.read_bytes()[:4] == b"\x7fELF"
    assert [p.name for p in image.parent.iterdir()] == [image.name]  # the build's scratch files are gone
    assert site_files(fresh_venv) == before

    # Editable, as scripts/setup.sh installs the checkout: a plain .pth, no warning.
    editable = pip(fresh_venv, "install", "--no-deps", "-e", str(src), cwd=tmp_path)
    assert warnings_in(editable) == [], editable
    where = subprocess.run(
        [str(fresh_venv), "-c", "import vmtrace.analyses.breakdown as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        cwd=outside,
        check=True,
    ).stdout.strip()
    assert Path(where) == src / "vmtrace" / "analyses" / "breakdown.py"
