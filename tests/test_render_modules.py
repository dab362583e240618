"""The shape of vmtrace/render/: one module per view, shared modules that
import no view, no module past the size a reader takes in at once, and a
terminal report that never loads plotly."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from vmtrace.report import VIEWS, View, _Lazy

from .golden import cli_cases

RENDER = Path(__file__).resolve().parents[1] / "vmtrace" / "render"
# What every view shares; a view module may import these, never the reverse.
SHARED = ("text", "html", "figures", "palette", "labels", "commands")


def _render_modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RENDER.glob("*.py")) if p.stem != "__init__"}


def _forms(v: View) -> set[str]:
    """The render modules that hold ``v``'s terminal and page forms."""
    return {
        fn.module.rsplit(".", 1)[1]
        for fn in (v.text, v.html)
        if isinstance(fn, _Lazy) and fn.module.startswith("vmtrace.render.")
    }


def _view_modules() -> set[str]:
    """The render modules the view table names for a terminal or page form."""
    return {m for v in VIEWS for m in _forms(v)}


def _imported_render_modules(path: Path) -> set[str]:
    """The sibling modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:
                found.add(mod.split(".")[0])
            elif mod.startswith("vmtrace.render."):
                found.add(mod.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("vmtrace.render.")}
    return found


def test_no_render_module_is_over_550_lines() -> None:
    sizes = {name: len(p.read_text().splitlines()) for name, p in _render_modules().items()}
    assert sizes and all(n <= 550 for n in sizes.values()), sizes


def test_each_view_has_its_own_module_and_the_shared_ones_import_none() -> None:
    views = _view_modules()
    # Both forms of a view come from one module, named for the view.
    for v in VIEWS:
        assert len(_forms(v)) <= 1, (v.name, _forms(v))
    assert {"breakdown", "exits", "locks", "offcpu", "requests", "timeline", "callsites"} <= views
    assert not views & set(SHARED)
    modules = _render_modules()
    assert set(modules) <= views | set(SHARED), set(modules) - views - set(SHARED)
    for name in SHARED:
        assert not _imported_render_modules(modules[name]) & views, name


def test_terminal_views_do_not_load_plotly() -> None:
    # A fresh interpreter: this test process has plotly loaded already.
    trace = str(cli_cases.BLK[-1])  # the reference VMM's: every view has something to print
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from vmtrace.cli import app\n"
        f"argv = ['report', {trace!r}, '--bql-breakdown', '--exits', '--locks', '--offcpu', '--requests']\n"
        "res = CliRunner().invoke(app, argv)\n"
        "print(json.dumps([res.exit_code, res.stdout, sorted(m for m in sys.modules if m.split('.')[0] == 'plotly')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    status, stdout, plotly = json.loads(out.stdout.splitlines()[-1])
    assert status == 0 and "vmtrace locks" in stdout and "vmtrace requests" in stdout
    assert plotly == []
