"""The report layer: CLI output pinned against tests/golden/, each view
computed once per trace, and the view table that the CLI and HTML read."""

from __future__ import annotations

import difflib

import pytest

from .golden import cli_cases

CASES = cli_cases.cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_output_matches_the_golden_file(name: str) -> None:
    expected = (cli_cases.OUT / name).read_text()
    got = cli_cases.run(CASES[name])
    if got != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "golden", "now", n=2))
        pytest.fail(
            f"{name}: output changed (regenerate with python -m tests.golden.cli_cases only for a "
            f"deliberate change):\n{diff[:4000]}",
            pytrace=False,
        )


def test_every_golden_file_has_a_case() -> None:
    # A stale file would pin nothing; a missing one fails above.
    assert sorted(p.name for p in cli_cases.OUT.iterdir()) == sorted(CASES)


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap every view's compute function in the table with a call counter."""
    from dataclasses import replace

    from vmtrace import report

    calls = {v.name: 0 for v in report.VIEWS}

    def counted(v: report.View) -> report.View:
        def compute(r: report.Report) -> object:
            calls[v.name] += 1
            return v.compute(r)

        return replace(v, compute=compute)

    monkeypatch.setattr(report, "VIEWS", tuple(counted(v) for v in report.VIEWS))
    return calls


def test_report_html_computes_each_view_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import importlib

    from typer.testing import CliRunner

    from vmtrace.cli import app

    calls = _counting(monkeypatch)
    # The analyses themselves too, wherever they are called from (a renderer
    # that ran one on its own would count here).
    analyses = {
        "bql_breakdown": "breakdown",
        "exit_stats": "exits",
        "lock_report": "locks",
        "offcpu_report": "offcpu",
        "request_report": "requests",
        "timeline": "timeline",
    }
    ran = dict.fromkeys(analyses, 0)
    for fn, module in analyses.items():
        mod = importlib.import_module(f"vmtrace.analyses.{module}")

        def counted(*a: object, _fn: str = fn, _orig: object = getattr(mod, fn), **kw: object) -> object:
            ran[_fn] += 1
            return _orig(*a, **kw)

        monkeypatch.setattr(mod, fn, counted)
    trace = cli_cases.BLK[-1]  # the reference VMM's: every view has something to show
    res = CliRunner().invoke(
        app,
        [
            "report",
            str(trace),
            "--bql-breakdown",
            "--exits",
            "--locks",
            "--offcpu",
            "--requests",
            "--html",
            str(tmp_path / "r.html"),
        ],
    )
    assert res.exit_code == 0, res.stderr
    assert "vmtrace requests" in res.stdout and (tmp_path / "r.html").stat().st_size > 0
    # The page and the five text views read one session: nothing twice.  The
    # aggregate view is for record --aggregate traces only: never computed here.
    assert calls == {**dict.fromkeys(calls, 1), "aggregate": 0}
    assert ran == dict.fromkeys(ran, 1)


def test_a_view_that_fails_is_tried_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from vmtrace.render.html import write_report_html
    from vmtrace.report import Report
    from vmtrace.trace import read_trace

    calls = _counting(monkeypatch)
    r = Report(read_trace(cli_cases.SAMPLES[0]))
    write_report_html(r, tmp_path / "r.html")
    # A PM-timer trace has no virtio-blk requests: the page leaves the
    # section out, and asking again re-raises without computing again.
    with pytest.raises(Exception, match="no virtio-blk requests"):
        r["requests"]
    assert r.get("requests")[0] is None
    assert calls["requests"] == 1 and calls["bql_breakdown"] == 1 and calls["all_exits"] == 1


def test_a_session_result_is_the_library_call() -> None:
    import json

    from vmtrace.analyses.exits import exit_stats
    from vmtrace.analyses.locks import lock_report
    from vmtrace.jsonsafe import json_safe
    from vmtrace.report import Report
    from vmtrace.trace import read_trace

    def plain(doc: object) -> object:
        return json.loads(json.dumps(json_safe(doc)))

    t = read_trace(cli_cases.SAMPLES[0])
    r = Report(t, port=0x608, lock_names={0x1000: "mine"})
    assert r.json(["exits"]) == plain(exit_stats(t, port=0x608).to_json())
    assert r.json(["exits"])["exits"] < Report(t).json(["exits"])["exits"]  # the port narrowed it
    both = r.json(["locks", "exits"])
    assert list(both) == ["locks", "exits"]
    assert both["locks"] == plain(lock_report(t, extra_names={0x1000: "mine"}).to_json())
    assert r["exits"] is r["exits"]


def test_the_command_offers_each_view_of_the_table() -> None:
    import typer.main

    from vmtrace.cli import app
    from vmtrace.report import CLI_VIEWS, VIEWS, _Lazy

    cmd = typer.main.get_group(app).commands["report"]
    flags = {p.name: p.opts for p in cmd.params if p.param_type_name == "option"}
    for v in CLI_VIEWS:
        assert flags[v.name] == [v.option]
        assert v.text is not None and v.json is not None and v.html is not None
    # Every lazily named renderer exists.
    for v in VIEWS:
        for fn in (v.text, v.html):
            if isinstance(fn, _Lazy):
                assert callable(fn.resolve())


# ----------------------------------------------------------------------------
# The tables of bench and doctor, moved from the CLI to vmtrace.render.commands


def _printed(render: object, *args: object) -> str:
    from rich.console import Console

    console = Console(width=120, record=True, file=open("/dev/null", "w"))
    render(*args, console)
    return console.export_text()


def test_blk_tables_from_the_guest_records() -> None:
    from vmtrace.render.commands import render_bench

    from .test_blk_bench import MALFORMED, VERIFY, result_of

    verify = _printed(render_bench, result_of(VERIFY, "blk_verify"))
    assert "blk_verify on qemu, --blk bql, queue depth 16" in verify
    assert "29,066,654" in verify and "39,680,324" in verify  # each vCPU's cycles per request
    assert "checksum written: sector 100, 9 blocks, 0x2a3b55f8" in verify and "check blk_flush_ok=1" in verify
    bad = _printed(render_bench, result_of(MALFORMED, "blk_malformed"))
    assert "chain_loop" in bad and "cycles/request" not in bad


def test_doctor_table_says_each_status() -> None:
    from vmtrace.doctor import Check
    from vmtrace.render.commands import render_doctor

    out = _printed(
        render_doctor,
        [
            Check("root", True, "uid 0"),
            Check("tracefs", False, "not mounted", "mount it"),
            Check("headers", None, "linked"),
        ],
    )
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert "ok" in lines["root"] and "FAIL" in lines["tracefs"] and "mount it" in lines["tracefs"]
    assert "warn" in lines["headers"]


def test_bench_and_doctor_print_their_tables(kvm: None) -> None:
    import subprocess
    import sys

    cli = [sys.executable, "-m", "vmtrace.cli"]
    proc = subprocess.run(
        [*cli, "bench", "--vmm", "reference", "--bench", "inl_pmtimer", "--vcpus", "2", "--iterations", "300"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # The title wraps at the table's width.
    assert "inl_pmtimer on reference" in " ".join(proc.stdout.split()) and "cycles/op" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["0", "1", "mean"]
    assert "300 iterations per vCPU" in proc.stdout
    doc = subprocess.run([*cli, "doctor", "--quick"], capture_output=True, text=True, timeout=300)
    assert "vmtrace doctor" in doc.stdout and "QEMU" in doc.stdout
    # Status 1 exactly when a check failed.
    assert doc.returncode == (1 if "FAIL" in doc.stdout else 0), doc.stderr
