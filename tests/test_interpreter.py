"""vmtrace.interpreter: which Python runs the reference VMM, and how it is launched there.

Every test runs real interpreters (this one, Debian's /usr/bin/python3 and,
where it is built, the free-threaded CPython 3.13); none needs KVM.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REPO, need
from vmtrace import interpreter
from vmtrace.errors import VmtraceError
from vmtrace.interpreter import (
    REPORT_ENV,
    free_threaded_path,
    inspect_interpreter,
    read_report,
    reference_vmm_command,
    resolve_python,
)

OTHER_PYTHON = "/usr/bin/python3"  # the venv's base: the same CPython without the venv's packages


def ft_python() -> str:
    """The free-threaded interpreter; skips without it (fails under CI, whose
    setup builds it)."""
    path = free_threaded_path()
    need(os.access(path, os.X_OK), f"needs the free-threaded CPython at {path} (bash scripts/setup.sh builds it)")
    return str(path)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own for the launcher (the free-threaded build stays where setup put it)."""
    monkeypatch.setenv("VMTRACE_PYTHON_FT_PREFIX", str(free_threaded_path().parent.parent))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_this_interpreter_is_described_as_it_is() -> None:
    me = inspect_interpreter(sys.executable)
    assert me.version == platform.python_version()
    assert me.free_threaded == bool(__import__("sysconfig").get_config_var("Py_GIL_DISABLED"))
    assert me.is_current and me.path == sys.executable
    assert me.label.startswith(f"CPython {me.version} ")


@pytest.mark.parametrize(
    "path, message",
    [
        ("/nonexistent/python3", "no such interpreter"),
        ("/bin/true", "not a Python 3 interpreter"),
        (str(REPO / "README.md"), "not executable"),
    ],
)
def test_a_bad_python_is_one_clear_error(path: str, message: str) -> None:
    with pytest.raises(VmtraceError, match=message) as err:
        inspect_interpreter(path)
    assert "\n" not in str(err.value) and path in str(err.value)


def test_without_the_free_threaded_build_the_default_is_this_interpreter_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMTRACE_PYTHON_FT_PREFIX", str(tmp_path / "nowhere"))
    notes: list[str] = []
    for _ in range(2):
        assert resolve_python(None, notes.append).is_current
    assert len(notes) == 1  # once per process, not per run
    assert str(tmp_path / "nowhere" / "bin" / "python3.13t") in notes[0] and "scripts/setup.sh" in notes[0]
    assert resolve_python("gil").is_current


def test_the_default_is_the_free_threaded_build(cache: Path) -> None:
    path = ft_python()
    notes: list[str] = []
    ft = resolve_python(None, notes.append)
    assert ft.path == path and ft.free_threaded and not ft.gil_enabled and ft.kind == "free-threaded"
    assert ft.version.startswith("3.13.")
    assert notes == []
    assert resolve_python("ft") == ft


def test_the_launcher_links_the_imported_packages_only(cache: Path) -> None:
    cmd = reference_vmm_command(inspect_interpreter(OTHER_PYTHON))
    assert cmd[:2] == [OTHER_PYTHON, "-s"]
    launcher = Path(cmd[2])
    assert launcher.is_relative_to(cache)
    shim = launcher.parent / "vmtrace"
    import vmtrace
    import vmtrace.reference_vmm

    assert sorted(p.name for p in shim.iterdir()) == ["__init__.py", "probes.py", "reference_vmm"]
    assert (shim / "probes.py").resolve() == Path(vmtrace.__file__).resolve().parent / "probes.py"
    assert (shim / "reference_vmm").resolve() == Path(vmtrace.reference_vmm.__path__[0]).resolve()
    # Made once: a second call finds it, and the current interpreter needs none.
    assert reference_vmm_command(inspect_interpreter(OTHER_PYTHON))[2] == str(launcher)
    assert reference_vmm_command(inspect_interpreter(sys.executable)) == [sys.executable, "-m", "vmtrace.reference_vmm"]


def _run_launched(python: str, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    report = tmp_path / "interp.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHON_GIL")}
    env[REPORT_ENV] = str(report)
    proc = subprocess.run(
        [*reference_vmm_command(inspect_interpreter(python)), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return proc, read_report(report)


@pytest.mark.parametrize("which", ["other", "ft"])
def test_the_vmm_starts_there_and_reports_its_interpreter(which: str, cache: Path, tmp_path: Path) -> None:
    python = ft_python() if which == "ft" else OTHER_PYTHON
    # A missing image is a host error (status 2) after the VMM has started:
    # the report is written on every path.
    proc, report = _run_launched(python, tmp_path, "run", "--image", str(tmp_path / "missing.elf"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("reference-vmm: error:") and len(proc.stderr.strip().splitlines()) == 1
    assert report is not None and report["path"] == python
    described = inspect_interpreter(python)
    assert report["version"] == described.version and report["free_threaded"] == described.free_threaded
    assert report["gil_enabled"] is (which != "ft")


def test_the_vmm_imports_no_vmtrace_module_but_the_probe_api(cache: Path, tmp_path: Path) -> None:
    """What makes the VMM runnable without vmtrace's dependencies: after a
    run, the only vmtrace modules loaded are the package, the probe API and
    the VMM's own (the reference VMM's machine module included)."""
    code = (
        "import sys, runpy, json; sys.argv = ['x', 'run', '--image', sys.argv[1]]\n"
        "try:\n    runpy.run_module('vmtrace.reference_vmm', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "import vmtrace.reference_vmm.machine\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('vmtrace'))))"
    )
    launcher = Path(reference_vmm_command(inspect_interpreter(OTHER_PYTHON))[2])
    proc = subprocess.run(
        [
            OTHER_PYTHON,
            "-s",
            "-c",
            f"import sys; sys.path.insert(0, {str(launcher.parent)!r})\n{code}",
            str(tmp_path / "missing.elf"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    mods = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "vmtrace.probes" in mods and "vmtrace.reference_vmm.machine" in mods
    assert [m for m in mods if not m.startswith("vmtrace.reference_vmm")] == ["vmtrace", "vmtrace.probes"]


def test_read_report_of_nothing_is_none(tmp_path: Path) -> None:
    assert read_report(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text("{half")
    assert read_report(tmp_path / "bad.json") is None


def test_ci_has_the_free_threaded_build() -> None:
    """setup.sh builds it; under CI its absence is a failure, not a fallback."""
    if not IN_CI:
        pytest.skip("only meaningful under CI=true")
    assert os.access(free_threaded_path(), os.X_OK), f"no free-threaded CPython at {free_threaded_path()}"
    assert interpreter.inspect_interpreter(str(free_threaded_path())).free_threaded
