"""Item 5 of issue 12: a trace that did not come from `vmtrace bench` (a
foreign guest that boots, idles and then loops) gets a report that does
not mislead: the table by exit kind and port leads, ordered by total time;
vmexit is named guest+vmexit where kvm_entry/kvm_exit did not fire; and
the hottest port's view is offered as the next command."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vmtrace.analyses.breakdown import bql_breakdown
from vmtrace.cli import app
from vmtrace.trace import write_trace

from .synthetic import ExitScript, SyntheticTrace

RUN = CliRunner()


def _foreign(tmp_path, kvm_exit: bool = False):
    sy = SyntheticTrace()
    guest = 40_000 if kvm_exit else 0
    # Many cheap PM-timer reads, and a few HLT-like exits that hold a long
    # idle stretch: more of them by count is 0x608, more by time is 0x3f8.
    loop = [ExitScript(port=0x608, kernel_ns=1_000 + guest, guest_ns=guest)] * 50
    idle = [ExitScript(port=0x3F8, write=True, kernel_ns=2_000_000 + guest, guest_ns=guest)] * 3
    sy.vcpu(100, 0, idle + loop)
    t = sy.trace()
    path = tmp_path / "foreign.vmtrace"
    write_trace(path, t.events, t.meta)
    return path


def test_foreign_trace_leads_with_ports_by_time_and_offers_the_next_step(tmp_path):
    path = _foreign(tmp_path)
    res = RUN.invoke(app, ["report", str(path), "--bql-breakdown"])
    assert res.exit_code == 0, res.output
    out = res.output
    lead = out.index("most time first")
    assert lead < out.index("cycles per userspace exit, by component")
    table = out[lead:]
    # Ordered by total time: the three long 0x3f8 exits before fifty 0x608 reads.
    assert table.index("0x3f8") < table.index("0x608")
    assert f"next: vmtrace report {path} --bql-breakdown --port 0x3f8" in " ".join(out.split())
    assert "guest+vmexit" in out
    doc = json.loads(RUN.invoke(app, ["report", str(path), "--bql-breakdown", "-f", "json"]).output)
    assert doc["from_bench"] is False and doc["guest_separated"] is False
    assert doc["component_labels"]["vmexit"] == "guest+vmexit"
    assert doc["hottest"]["addr"] == "0x3f8"
    assert "vmexit" in doc["components"]  # keys tools read are unchanged


def test_port_view_and_guest_separated_traces_say_nothing_extra(tmp_path):
    path = _foreign(tmp_path, kvm_exit=True)
    res = RUN.invoke(app, ["report", str(path), "--bql-breakdown", "--port", "0x608"])
    assert res.exit_code == 0, res.output
    assert "next:" not in res.output and "most time first" not in res.output
    assert "guest+vmexit" not in res.output


def test_bench_traces_keep_their_order(tmp_path):
    sy = SyntheticTrace()
    sy.vcpu(100, 0, [ExitScript(port=0x608)] * 20)
    t = sy.trace(bench={"bench": "inl_pmtimer", "pm_port": 0x608, "cycles_per_op": 5000.0})
    b = bql_breakdown(t)
    assert b.from_bench and b.hottest is not None and b.hottest["addr"] == 0x608
