"""vmtrace sweep --repeat: medians of the runs, and the trace of the median recorded run kept.

The VMM runs are replaced by a fake ``run_bench`` that writes a real trace
(from the synthetic generator) per recorded run; the live twin is
tests/live/test_sweep.py, which runs the real sweep on the reference VMM.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from tests.synthetic import ExitScript, SyntheticTrace
from vmtrace import bench, sweep
from vmtrace.errors import VmtraceError
from vmtrace.render.text import render_sweep
from vmtrace.trace import read_trace, write_trace


def _fake_runs(monkeypatch: pytest.MonkeyPatch, untraced: list[float], traced: list[float]) -> list[Path]:
    """``run_bench`` answering the given numbers in turn; a recorded run
    writes a trace whose exit count is its position, so the kept trace can
    be recognised."""
    plain, rec, written = iter(untraced), iter(enumerate(traced)), []

    def run_bench(vmm, name, vcpus, iterations, locking=None, record_to=None, backend="auto", python=None, qemu=None):
        if record_to is None:
            return SimpleNamespace(cycles_per_op=next(plain))
        k, cycles = next(rec)
        s = SyntheticTrace()
        s.vcpu(101, 0, [ExitScript()] * (k + 1))
        t = s.trace()
        write_trace(Path(record_to), t.events, t.meta)
        written.append(Path(record_to))
        return SimpleNamespace(cycles_per_op=cycles)

    monkeypatch.setattr(bench, "run_bench", run_bench)
    return written


def test_medians_and_the_median_trace_are_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    written = _fake_runs(monkeypatch, untraced=[300.0, 100.0, 200.0], traced=[900.0, 500.0, 700.0])
    cfg = sweep.SweepConfig("reference", "bql")
    summary = sweep.run_sweep([cfg], [2], tmp_path, repeat=3)
    row = summary.iloc[0]
    assert row["guest_cycles_per_op"] == 200.0 and row["guest_min"] == 100.0 and row["guest_max"] == 300.0
    assert row["traced_guest_cycles_per_op"] == 700.0 and row["runs"] == 3
    assert row["observer_effect"] == pytest.approx(3.5)
    # The median recorded run was the third (700): its trace has 3 exits.
    kept = tmp_path / "reference-bql-2vcpu.vmtrace"
    assert row["trace"] == str(kept) and row["exits"] == 3
    assert len(read_trace(kept).events[read_trace(kept).events["event"] == "run_exit"]) == 3
    # The other recorded runs are gone; nothing else is left in the directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]
    assert not any(p.exists() for p in written if p != kept)


def test_an_even_count_keeps_a_run_that_happened(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_runs(monkeypatch, untraced=[100.0, 200.0], traced=[800.0, 600.0])
    row = sweep.run_sweep([sweep.SweepConfig("qemu")], [1], tmp_path, repeat=2).iloc[0]
    assert row["traced_guest_cycles_per_op"] == 600.0 and row["exits"] == 2  # the lower middle, run 2
    assert row["guest_cycles_per_op"] == 150.0


def test_one_run_is_the_default_and_the_table_shows_ranges_only_when_repeated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _fake_runs(monkeypatch, untraced=[100.0], traced=[150.0])
    once = sweep.run_sweep([sweep.SweepConfig("qemu")], [1], tmp_path / "a")
    assert once.iloc[0]["runs"] == 1 and once.iloc[0]["guest_min"] == once.iloc[0]["guest_max"] == 100.0
    render_sweep(once, Console(width=200))
    assert "guest range" not in capsys.readouterr().out
    _fake_runs(monkeypatch, untraced=[100.0, 140.0, 120.0], traced=[150.0, 160.0, 170.0])
    render_sweep(sweep.run_sweep([sweep.SweepConfig("qemu")], [1], tmp_path / "b", repeat=3), Console(width=200))
    out = capsys.readouterr().out
    assert "guest range" in out and "100-140" in out and "medians of 3 runs" in out


def test_repeat_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VmtraceError, match="--repeat"):
        sweep.run_sweep([sweep.SweepConfig("qemu")], [1], tmp_path, repeat=0)


def test_the_cli_refuses_repeat_zero_in_one_line_before_running_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vmtrace.cli import app

    res = CliRunner().invoke(app, ["sweep", "-o", str(tmp_path / "out"), "--vcpus", "1", "--repeat", "0"])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == ["vmtrace: error: --repeat must be at least 1 (runs per configuration)"]
    assert res.stdout.strip() == "" and not (tmp_path / "out").exists()


def test_a_failed_run_leaves_no_hidden_run_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_runs(monkeypatch, untraced=[100.0, 110.0], traced=[150.0])  # the second recorded run has no answer
    with pytest.raises(StopIteration):
        sweep.run_sweep([sweep.SweepConfig("qemu")], [1], tmp_path, repeat=3)
    assert list(tmp_path.iterdir()) == []


def test_each_interpreter_is_a_configuration_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """--python ft,gil: the GIL's curves beside the free-threaded ones, labelled
    as such; the live twin is tests/live/test_sweep.py."""
    from vmtrace import interpreter

    ft = interpreter.Interpreter("/opt/py/bin/python3.13t", "3.13.5", True, False)
    gil = interpreter.Interpreter(sys.executable, "3.11.2", False, True)
    monkeypatch.setattr(interpreter, "resolve_python", lambda spec, note=None: {"ft": ft, "gil": gil}[spec])
    configs = sweep.configs_for(["reference"], ["bql", "unlocked"], pythons=["gil", "ft"])
    assert [c.label for c in configs] == [
        "reference bql",
        "reference unlocked",
        "reference bql (GIL)",
        "reference unlocked (GIL)",
    ]
    assert [c.slug for c in configs][2:] == ["reference-bql-gil", "reference-unlocked-gil"]
    assert [c.python for c in configs] == [ft.path, ft.path, gil.path, gil.path]
    # Without a free-threaded build "ft" falls back to the same GIL interpreter: one configuration.
    monkeypatch.setattr(interpreter, "resolve_python", lambda spec, note=None: gil)
    assert [c.label for c in sweep.configs_for(["reference"], ["bql"], pythons=["ft", "gil"])] == [
        "reference bql (GIL)"
    ]
    other = interpreter.Interpreter("/usr/bin/python3.12", "3.12.1", False, True)
    monkeypatch.setattr(interpreter, "resolve_python", lambda spec, note=None: {"gil": gil, "x": other}[spec])
    with pytest.raises(VmtraceError, match="two GIL interpreters"):
        sweep.configs_for(["reference"], ["bql"], pythons=["gil", "x"])


def test_the_summary_records_each_runs_interpreter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_runs(monkeypatch, untraced=[100.0], traced=[110.0])
    real = bench.run_bench

    def with_interpreter(*args, **kw):
        res = real(*args, **kw)
        res.interpreter = {"version": "3.13.5", "free_threaded": True, "gil_enabled": False, "path": "/x"}
        return res

    monkeypatch.setattr(bench, "run_bench", with_interpreter)
    row = sweep.run_sweep([sweep.SweepConfig("reference", "unlocked", "/x")], [1], tmp_path).iloc[0]
    assert (row["python_version"], row["free_threaded"], row["gil_enabled"]) == ("3.13.5", True, False)
