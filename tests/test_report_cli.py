"""`vmtrace report` views and options: JSON equals the API, bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.analyses.exits import exit_stats
from vmtrace.analyses.locks import lock_report
from vmtrace.analyses.offcpu import offcpu_report
from vmtrace.cli import app
from vmtrace.jsonsafe import json_safe
from vmtrace.trace import read_trace, write_trace

from .synthetic import OTHER_WORD, ExitScript, SyntheticTrace

RUN = CliRunner()


def _write(tmp_path: Path, s: SyntheticTrace, name: str = "t.vmtrace", **meta: Any) -> Path:
    t = s.trace(**meta)
    return write_trace(tmp_path / name, t.events, t.meta)


@pytest.fixture
def full(tmp_path: Path) -> Path:
    s = SyntheticTrace()
    s.vcpu(
        101,
        0,
        [
            ExitScript(bql_futex_ns=5000, waker=50, wake_latency_ns=100, lock_span=True),
            ExitScript(preempted_ns=300, post_ns=900, kernel_exits=(0x70,)),
            ExitScript(other_futex_ns=800, port=0x3F8, write=True),
        ]
        * 3,
    )
    s.vcpu(
        102, 1, [ExitScript(bql_futex_ns=2000, waker=50), ExitScript(sleep_ns=400, post_ns=900)] * 2, start_ns=1_000_050
    )
    return _write(tmp_path, s, futex_names={hex(OTHER_WORD): "GIL"})


def _json(args: list[str]) -> dict:
    res = RUN.invoke(app, ["report", *args])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _api(doc: object) -> dict:
    return json.loads(json.dumps(json_safe(doc)))


def test_all_views_in_one_json_object_equal_the_api(full: Path) -> None:
    got = _json([str(full), "--bql-breakdown", "--exits", "--locks", "--offcpu", "-f", "json"])
    assert list(got) == ["bql_breakdown", "exits", "locks", "offcpu"]
    t = read_trace(full)
    assert got["bql_breakdown"] == _api(bql_breakdown(t).to_json())
    assert got["exits"] == _api(exit_stats(t).to_json())
    assert got["locks"] == _api(lock_report(t).to_json())
    assert got["offcpu"] == _api(offcpu_report(t).to_json())
    words = {w["name"]: w for w in got["locks"]["words"]}
    assert words["BQL"]["waits"] == 3 * 1 + 2 and words["GIL"]["waits"] == 3


def test_one_view_is_that_views_object(full: Path) -> None:
    assert _json([str(full), "--exits", "-f", "json"])["view"] == "exits"
    # With no view named, the breakdown, in the shape it always had.
    plain = _json([str(full), "-f", "json"])
    assert "components" in plain and plain["exits"] == 3 * 3 + 2 * 2


def test_port_narrows_the_breakdown_and_the_exits(full: Path) -> None:
    got = _json([str(full), "--exits", "--bql-breakdown", "--port", "0x3f8", "-f", "json"])
    assert got["exits"]["exits"] == 3
    assert got["bql_breakdown"]["exits"] == 3
    assert [r["addr"] for r in got["exits"]["by_access"]] == ["0x3f8"]


def test_lock_names_a_word(full: Path) -> None:
    got = _json([str(full), "--locks", "--lock", "mine=0x5555_0000_2000".replace("_", ""), "-f", "json"])
    assert "mine" in {w["name"] for w in got["words"]}


def test_text_views_print_their_tables_with_whole_numbers(full: Path) -> None:
    res = RUN.invoke(
        app, ["report", str(full), "--exits", "--locks", "--offcpu", "--bql-breakdown"], env={"COLUMNS": "100"}
    )
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    for title in (
        "vmtrace BQL breakdown",
        "vmtrace exits",
        "by exit reason",
        "by port (PIO)",
        "vmtrace locks",
        "futex words",
        "waiting and waking threads",
        "vmtrace off-CPU",
        "share of each thread's time",
    ):
        assert title in out
    assert "…" not in out
    assert "0x3f8" in out and "GIL" in out and "CPU 1/KVM [102]" in out


def _only_futex(tmp_path: Path) -> Path:
    s = SyntheticTrace()
    s.thread(7, "worker", "worker")
    s.futex(1000, 7, 0x10, 500)
    return _write(tmp_path, s, "futex.vmtrace")


def _only_kvm(tmp_path: Path) -> Path:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript()] * 2)
    return _write(tmp_path, s, "kvm.vmtrace")


@pytest.mark.parametrize(
    "make, args, expect",
    [
        (_only_kvm, ["--nope"], "No such option: --nope"),
        (_only_kvm, ["--locks", "--port", "0x608"], "--port applies to --bql-breakdown and --exits"),
        (_only_kvm, ["--exits", "--all-exits"], "--all-exits applies to --bql-breakdown"),
        (_only_kvm, ["--lock", "GIL=0x10"], "--lock applies to --locks"),
        (_only_kvm, ["--locks", "--lock", "GIL"], "--lock takes NAME=0xADDR"),
        (_only_kvm, ["--locks", "--lock", "GIL=zz"], "--lock takes a number"),
        (_only_kvm, ["--exits", "--port", "pm"], "--port takes a number"),
        (_only_kvm, ["-f", "yaml"], "unknown format 'yaml'"),
        (_only_futex, ["--exits"], "exit statistics needs events run_enter and run_exit, or kvm_exit and kvm_entry"),
        (_only_futex, ["--bql-breakdown"], "the exit breakdown needs events run_enter, run_exit"),
        (_only_kvm, ["--locks"], "the lock analysis needs events futex_enter, futex_exit"),
        (_only_kvm, ["--offcpu"], "the off-CPU analysis needs events sched_out, sched_in"),
    ],
)
def test_bad_options_and_inapplicable_views_are_one_line(tmp_path: Path, make, args: list[str], expect: str) -> None:
    res = RUN.invoke(app, ["report", str(make(tmp_path)), *args])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_a_real_process_prints_one_line_for_an_unknown_option(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vmtrace.cli", "report", str(_only_kvm(tmp_path)), "--exitz"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "No such option: --exitz" in proc.stderr
