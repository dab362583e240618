"""Which Python runs the reference VMM, and the command line that runs it there.

vmtrace itself stays on Debian's Python, the one bcc is importable from.  The
reference VMM is a target, a process of its own, and runs by default on the
free-threaded CPython 3.13 that ``scripts/build_python_ft.sh`` builds into
``${XDG_CACHE_HOME:-~/.cache}/vmtrace/cpython-3.13-ft``: under the GIL its vCPU
threads share one more big lock besides the BQL, and a sweep would measure
that lock instead of the one it is about (issue 11, DESIGN.md).

The VMM needs only the standard library and the dependency-free probe API
(``vmtrace.probes``), so it runs on any CPython 3.11+ without vmtrace's
dependencies or its editable-install hook: it is started through a small
launcher beside a ``vmtrace`` directory that holds nothing but
``__init__.py``, ``probes.py`` and ``reference_vmm``, each a symbolic link to
the package vmtrace itself imported.  The links are computed from the
imported packages, so the layout of the checkout (``reference_vmm`` beside
``vmtrace`` or inside it) does not matter, and a VMM module that imports more
of vmtrace fails at once instead of working only where pandas happens to be
importable.

The VMM reports the interpreter it ran on, with whether the GIL was enabled at
run time (an extension module can turn it back on), as JSON in the file named
by ``REPORT_ENV``; ``vmtrace bench`` and ``vmtrace record`` set it and keep the
answer in the bench JSON and in the trace's ``target.interpreter``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import VmtraceError

__all__ = [
    "REPORT_ENV",
    "PYTHON_CHOICES",
    "Interpreter",
    "free_threaded_path",
    "inspect_interpreter",
    "resolve_python",
    "reference_vmm_command",
    "read_report",
]

#: The environment variable naming the file the reference VMM writes its
#: interpreter report to (mirrored in reference_vmm/cli.py, which must not
#: import this module).
REPORT_ENV = "VMTRACE_INTERPRETER_REPORT"

#: Names ``--python`` takes besides a path: the free-threaded build, and the
#: interpreter vmtrace runs on (which has the GIL).
PYTHON_CHOICES = ("ft", "gil")

_LAUNCHER = '''\
"""Run the vmtrace reference VMM; written by vmtrace.interpreter.

This directory is sys.path[0] of the script, so the `vmtrace` beside it (the
probe API and the reference VMM, nothing else) is the one imported.
"""
import runpy

runpy.run_module("vmtrace.reference_vmm", run_name="__main__", alter_sys=True)
'''
_LAUNCHER_NAME = "run_reference_vmm.py"

# Run by the candidate interpreter: what it is, without importing vmtrace.
_INSPECT = (
    "import json, sys, sysconfig, platform; "
    "print(json.dumps({'version': platform.python_version(), "
    "'implementation': sys.implementation.name, "
    "'free_threaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED')), "
    "'gil_enabled': sys._is_gil_enabled() if hasattr(sys, '_is_gil_enabled') else True, "
    "'major_minor': list(sys.version_info[:2])}))"
)


@dataclass(frozen=True)
class Interpreter:
    """A Python that can run the reference VMM.

    ``path`` str (as given, not resolved: a virtualenv's python is a symbolic
    link whose target has no virtualenv), ``version`` str ("3.13.5"),
    ``free_threaded`` bool (built with ``--disable-gil``), ``gil_enabled``
    bool (at start-up, before the VMM imports anything)."""

    path: str
    version: str
    free_threaded: bool
    gil_enabled: bool

    @property
    def kind(self) -> str:
        """ "free-threaded" or "GIL": what a report writes beside the locking mode."""
        return "free-threaded" if self.free_threaded and not self.gil_enabled else "GIL"

    @property
    def label(self) -> str:
        return f"CPython {self.version} " + ("free-threaded" if self.kind == "free-threaded" else "with the GIL")

    @property
    def is_current(self) -> bool:
        """The interpreter vmtrace itself runs on."""
        return os.path.abspath(self.path) == os.path.abspath(sys.executable)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmtrace"


def free_threaded_path() -> Path:
    """Where ``scripts/build_python_ft.sh`` puts the free-threaded interpreter
    (``VMTRACE_PYTHON_FT_PREFIX`` moves it, for the script and for vmtrace)."""
    prefix = os.environ.get("VMTRACE_PYTHON_FT_PREFIX") or str(_cache_dir() / "cpython-3.13-ft")
    return Path(prefix) / "bin" / "python3.13t"


@functools.cache
def inspect_interpreter(path: str) -> Interpreter:
    """Ask the interpreter at ``path`` what it is; raises VmtraceError when it
    does not run, or is not CPython 3.11 or later."""
    what = f"--python {path}"
    try:
        proc = subprocess.run(
            [path, "-s", "-c", _INSPECT],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "PYTHON_GIL"},
        )
    except FileNotFoundError:
        raise VmtraceError(f"{what}: no such interpreter") from None
    except PermissionError:
        raise VmtraceError(f"{what}: not executable") from None
    except OSError as err:
        raise VmtraceError(f"{what}: cannot run it ({err.strerror})") from None
    except subprocess.TimeoutExpired:
        raise VmtraceError(f"{what}: did not answer within 60 s") from None
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise VmtraceError(f"{what}: not a Python 3 interpreter ({tail})") from None
    if info["implementation"] != "cpython" or tuple(info["major_minor"]) < (3, 11):
        raise VmtraceError(
            f"{what}: the reference VMM needs CPython 3.11 or later, this is {info['implementation']} {info['version']}"
        )
    return Interpreter(path, info["version"], info["free_threaded"], info["gil_enabled"])


def resolve_python(python: str | None = None, note: Callable[[str], None] | None = None) -> Interpreter:
    """The interpreter ``--python`` names: ``None`` or "ft" is the
    free-threaded build when it is there, else the current interpreter (and
    ``note`` is told so, once per process); "gil" is the current interpreter;
    anything else is a path to a CPython 3.11+."""
    if python in (None, "", "ft"):
        ft = free_threaded_path()
        if os.access(ft, os.X_OK):
            interp = inspect_interpreter(str(ft))
            if interp.free_threaded and not interp.gil_enabled:
                return interp
            why = f"{ft} runs with the GIL enabled"
        else:
            why = f"no free-threaded CPython at {ft} (bash scripts/setup.sh builds it)"
        current = inspect_interpreter(sys.executable)
        if note is not None:
            _note_once(note, f"{why}: the reference VMM runs on {current.label} ({sys.executable})")
        return current
    if python == "gil":
        return inspect_interpreter(sys.executable)
    return inspect_interpreter(os.path.expanduser(python))


_noted: set[str] = set()


def _note_once(note: Callable[[str], None], message: str) -> None:
    if message not in _noted:
        _noted.add(message)
        note(message)


def reference_vmm_command(interp: Interpreter) -> list[str]:
    """The start of a command line that runs ``python -m vmtrace.reference_vmm``
    on ``interp``; the VMM's own arguments follow."""
    if interp.is_current:
        return [sys.executable, "-m", "vmtrace.reference_vmm"]
    # -s: no user site-packages; the launcher's directory is sys.path[0].
    return [interp.path, "-s", str(_launcher())]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise VmtraceError(f"cannot locate the {name} package: is vmtrace installed?")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _launcher() -> Path:
    """The launcher script, in a directory of the cache keyed by the packages
    it links to (made once, atomically: concurrent runs may race to make it)."""
    vmtrace_dir = Path(__file__).resolve().parent
    vmm_dir = _package_dir("vmtrace.reference_vmm")
    links = {
        "__init__.py": vmtrace_dir / "__init__.py",
        "probes.py": vmtrace_dir / "probes.py",
        "reference_vmm": vmm_dir,
    }
    key = hashlib.sha256("\0".join([_LAUNCHER, *map(str, links.values())]).encode()).hexdigest()[:16]
    root = _cache_dir() / "reference-vmm-path" / key
    launcher = root / _LAUNCHER_NAME
    if launcher.is_file() and all(os.path.realpath(root / "vmtrace" / n) == str(t) for n, t in links.items()):
        return launcher
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would shut out a VMM run as another user
        (tmp / "vmtrace").mkdir()
        for name, target in links.items():
            os.symlink(target, tmp / "vmtrace" / name)
        (tmp / _LAUNCHER_NAME).write_text(_LAUNCHER)
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not launcher.is_file():  # not another run that got there first
                raise
    except OSError as err:
        raise VmtraceError(f"cannot write the reference VMM launcher under {root.parent}: {err.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return launcher


def read_report(path: Path | str) -> dict[str, Any] | None:
    """The reference VMM's interpreter report (``version`` str,
    ``free_threaded`` bool, ``gil_enabled`` bool, ``path`` str), or None when
    the target wrote none (it is not the reference VMM, or it died first)."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
