"""The per-request virtio-blk view on synthetic traces with known answers:
every phase of every request, the partition, the summaries, the kernel-only
fallback, and `vmtrace report --requests`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vmtrace.analyses.requests import PHASES, request_breakdown, request_report, request_timeline
from vmtrace.cli import app
from vmtrace.errors import VmtraceError
from vmtrace.trace import Trace, write_trace

from .synthetic import (
    GIL_WORD,
    NOTIFY_PORT,
    BlkBatch,
    BlkRequest,
    ExitScript,
    SyntheticTrace,
    blk_trace,
)

RUN = CliRunner()
PHASE_COLS = [f"{p}_ns" for p in PHASES]
CHECKED = PHASE_COLS + [
    "total_ns",
    "bql_held_ns",
    "wait_cpu_ns",
    "kind",
    "pos",
    "batch",
    "notify_known",
    "irq_raised",
    "bql_taken",
]


def _trace(s: SyntheticTrace) -> Trace:
    return s.trace(futex_names={hex(GIL_WORD): "GIL"})


def _check(rows: pd.DataFrame, expected: list[dict]) -> None:
    assert len(rows) == len(expected)
    for got, want in zip(rows.to_dict("records"), expected, strict=True):
        for col in CHECKED:
            assert got[col] == want[col], (col, got, want)
        wake = got["notify_wakeup_ns"]
        assert (None if pd.isna(wake) else int(wake)) == want["notify_wakeup_ns"]
    assert (rows[PHASE_COLS].sum(axis=1) == rows["total_ns"]).all()
    assert (rows[PHASE_COLS] >= 0).all().all()


def test_dataplane_batches_every_phase() -> None:
    batches = [
        BlkBatch(requests=[BlkRequest("read"), BlkRequest("write", disk_ns=7000), BlkRequest("flush", disk_ns=900)]),
        # Interrupt coalescing, GIL waits inside the disk calls, a preemption.
        BlkBatch(
            requests=[
                BlkRequest("read", gil_ns=400),
                BlkRequest("read", gil_ns=250, gap_ns=10),
                BlkRequest("other", disk_ns=0),
            ],
            irq_ns=1500,
            preempt_ns=700,
            kick=12,
        ),
        BlkBatch(requests=[BlkRequest("write", gil_ns=100)], notify_ns=9000, wake_ns=8000),
    ]
    s, expected = blk_trace(batches)
    rows = request_breakdown(_trace(s))
    _check(rows, expected)
    assert set(rows["role"]) == {"iothread"} and set(rows["thread"]) == {"IO iothread0"}
    assert rows["kick_vcpu"].tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert not rows["lost"].any()


def test_batched_io_requests_overlap_and_complete_out_of_order() -> None:
    # The device pops every request and queues its I/O, then completes each as
    # the disk does: request spans and disk spans of one thread overlap.
    batches = [
        BlkBatch(
            aio=True,
            aio_order=(2, 0, 3, 1),
            requests=[
                BlkRequest("read", disk_ns=9000),
                BlkRequest("write", disk_ns=4000),
                BlkRequest("read", disk_ns=6000),
                BlkRequest("flush", disk_ns=100),
            ],
        ),
        BlkBatch(
            aio=True,
            bql=True,
            bql_wait_ns=700,
            irq_ns=300,
            requests=[BlkRequest("read"), BlkRequest("other"), BlkRequest("read")],
        ),
    ]
    s, expected = blk_trace(batches)
    rows = request_breakdown(_trace(s))
    _check(rows, expected)
    first = rows[rows["batch"] == 0]
    assert (first["pop_ns"].diff().dropna() > 0).all() and first["push_ns"].is_monotonic_increasing is False
    assert first["kind"].tolist() == ["read", "write", "read", "flush"]


def test_bql_main_loop_waits_for_the_bql_before_each_batch() -> None:
    batches = [
        BlkBatch(bql=True, bql_wait_ns=3000, requests=[BlkRequest(), BlkRequest("write")]),
        BlkBatch(bql=True, bql_wait_ns=1, requests=[BlkRequest(gil_ns=300)], irq_ns=800),
    ]
    s, expected = blk_trace(batches, tid=20, role="main", name="python")
    rows = request_breakdown(_trace(s))
    _check(rows, expected)
    assert rows["bql_taken"].all() and (rows["bql_wait_ns"] > 0).all()
    # The pickup is the BQL attempt, not the batch span after it.
    assert (rows["pickup_ns"] < rows["pop_ns"] - rows["bql_wait_ns"]).all()


def test_a_kick_while_the_previous_batch_ran_is_not_claimed() -> None:
    batches = [
        BlkBatch(requests=[BlkRequest(disk_ns=20_000)]),
        BlkBatch(kick_at=-15_000),  # inside the previous batch: whose was it?
        BlkBatch(kick=None),
        BlkBatch(),
    ]
    s, expected = blk_trace(batches, spacing_ns=5_000)
    rows = request_breakdown(_trace(s))
    _check(rows, expected)
    assert rows["notify_known"].tolist() == [True, False, False, True]
    assert rows["kick_vcpu"].isna().tolist() == [False, True, True, False]
    notes = " ".join(request_report(_trace(s)).notes)
    assert "2 requests (2 batches) have no kick of their own" in notes


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from(["read", "write", "flush", "other"]),
                    st.integers(1, 3000),
                    st.integers(0, 20_000),
                    st.integers(0, 1),
                    st.integers(1, 2000),
                    st.integers(1, 500),
                ),
                min_size=1,
                max_size=5,
            ),
            st.booleans(),
            st.integers(0, 5000),
            st.integers(0, 3000),
            st.integers(0, 1),
            st.integers(0, 2000),
            st.sampled_from([None, 11, 12]),
            st.integers(0, 4000),
            st.booleans(),
            st.randoms(),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_phases_partition_every_request(spec: list) -> None:
    batches = []
    for reqs, bql, bql_wait, irq, preempt_on, preempt, kick, notify, aio, rnd in spec:
        rs = [
            BlkRequest(kind, pre, disk + 10, 0 if aio else (disk // 3) * gil, post, gap)
            for kind, pre, disk, gil, post, gap in reqs
        ]
        order = list(range(len(rs)))
        rnd.shuffle(order)
        batches.append(
            BlkBatch(
                requests=rs,
                bql=bql,
                bql_wait_ns=bql_wait if bql else 0,
                irq_ns=irq,
                preempt_ns=preempt if preempt_on and len(rs) > 1 and not aio else 0,
                kick=kick,
                notify_ns=notify,
                wake_ns=notify // 2,
                aio=aio,
                aio_order=tuple(order),
            )
        )
    s, expected = blk_trace(batches)
    _check(request_breakdown(_trace(s)), expected)


def test_summary_per_role_adds_up_and_reads_percentiles() -> None:
    reqs = [BlkRequest(disk_ns=d) for d in (1000, 2000, 3000, 4000)]
    s, _ = blk_trace([BlkBatch(requests=reqs[:2]), BlkBatch(requests=reqs[2:], irq_ns=500)])
    rq = request_report(_trace(s))
    assert rq.source == "probes" and rq.notify_port == NOTIFY_PORT
    ph = rq.phases.set_index("phase")
    assert ph.loc[list(PHASES), "share"].sum() == pytest.approx(1.0)
    disk = rq.requests["disk_ns"].to_numpy()
    assert ph.loc["disk", "p50_ns"] == pytest.approx(np.percentile(disk, 50))
    assert ph.loc["disk", "p99_ns"] == pytest.approx(np.percentile(disk, 99))
    assert ph.loc["total", "mean_ns"] == pytest.approx(rq.requests["total_ns"].mean())
    role = rq.by_role.iloc[0]
    assert (role["role"], role["requests"], role["batches"], role["irq_raised"]) == ("iothread", 4, 2, 2)
    doc = rq.to_json()
    assert doc["by_role"][0]["requests"] == 4 and doc["phases_order"] == list(PHASES)
    assert len(rq.to_json(rows=True)["requests"]) == 4


def test_no_interrupt_is_said_to_be_the_drivers_choice() -> None:
    s, _ = blk_trace([BlkBatch(), BlkBatch()])
    notes = " ".join(request_report(_trace(s)).notes)
    assert "VRING_AVAIL_F_NO_INTERRUPT" in notes and "publication in the avail ring is not traced" in notes


def test_a_request_across_lost_events_is_flagged_and_left_out() -> None:
    s, _ = blk_trace([BlkBatch(requests=[BlkRequest(disk_ns=50_000)]), BlkBatch()])
    first_pop = min(r["ts_ns"] for r in s.rows if r.get("name") == "virtio-blk-req")
    s.lose(first_pop + 20_000, cpu=21 % 2)
    rq = request_report(_trace(s))
    assert rq.requests["lost"].tolist() == [True, False]
    assert rq.excluded_lost == 1 and rq.by_role.iloc[0]["requests"] == 1


def test_timeline_paints_each_phase_where_it_happened() -> None:
    s, _ = blk_trace(
        [
            BlkBatch(
                bql=True,
                bql_wait_ns=2000,
                irq_ns=900,
                requests=[BlkRequest(gil_ns=300), BlkRequest("write", gil_ns=100)],
            )
        ],
        tid=20,
        role="main",
        name="python",
    )
    rq = request_report(_trace(s))
    spans = request_timeline(rq)
    dur = (spans["end_ns"] - spans["start_ns"]).groupby([spans["req"], spans["phase"]]).sum()
    assert list(rq.requests.index) == [0, 1]
    for i in (0, 1):
        r, d = rq.requests.loc[i], dur.loc[i]
        segments = sum(d.get(p, 0) for p in ("notify", "queued", "processing", "tail", "irq"))
        assert segments == r["total_ns"]
        # The waits and the disk call are drawn over the segments they interrupt.
        assert d.get("bql_wait", 0) == r["bql_wait_ns"]
        assert d.get("lock_wait", 0) == r["lock_wait_ns"]
        # The disk call is drawn whole; its own GIL wait is painted over it.
        assert d.get("disk", 0) == r["disk_ns"] + (300, 100)[i]


def test_without_probes_the_kernel_view_shows_kicks_and_disk_sleeps() -> None:
    s = SyntheticTrace()
    s.vcpu(11, 0, [ExitScript()])
    s.thread(30, "IO iothread0", "iothread")
    s.thread(40, "worker", "worker")
    for k in range(12):
        t = 2_000_000 + k * 100_000
        s.add(t, 11, "pio", addr=NOTIFY_PORT, size=2, write=True, value=0)
        s.add(t + 4000, 30, "wakeup", peer_tid=11, cpu=1)
        s.add(t + 4000 + 1000 * (k % 3), 30, "sched_in", peer_tid=0, cpu=0)
        s.add(t + 10_000, 40, "sched_out", value=2, peer_tid=0, cpu=0)
        s.add(t + 60_000, 40, "wakeup", peer_tid=0, cpu=0)
        s.add(t + 61_000, 40, "sched_in", peer_tid=0, cpu=0)
    rq = request_report(s.trace(bench={"blkdev": {"io": "0xc000"}}))
    assert rq.source == "kernel" and rq.requests.empty and rq.notify_port == NOTIFY_PORT
    n = rq.notifications
    assert len(n) == 12 and set(n["role"]) == {"iothread"} and (n["wakeup_ns"] == 4000).all()
    assert sorted(n["oncpu_ns"].astype(int).unique()) == [4000, 5000, 6000]
    d = rq.disk_waits
    assert len(d) == 12 and set(d["role"]) == {"worker"} and (d["dur_ns"] == 51_000).all()
    assert "per-request phases need the VMM's request probes" in rq.notes[0]
    # Without the guest's record the port is found from what its writes wake.
    assert request_report(s.trace()).notify_port == NOTIFY_PORT


def test_a_trace_without_virtio_blk_is_an_error_that_says_so() -> None:
    s = SyntheticTrace()
    s.vcpu(11, 0, [ExitScript()] * 3)
    with pytest.raises(VmtraceError, match="no virtio-blk requests in this trace"):
        request_report(s.trace())


# ----------------------------------------------------------------------------
# The command line


@pytest.fixture
def blk_file(tmp_path: Path) -> Path:
    s, _ = blk_trace(
        [BlkBatch(bql=True, bql_wait_ns=2500, requests=[BlkRequest(), BlkRequest("write")])] * 3,
        tid=20,
        role="main",
        name="python",
    )
    s.vcpu(11, 0, [ExitScript()] * 2, start_ns=100)
    t = _trace(s)
    return write_trace(tmp_path / "blk.vmtrace", t.events, t.meta)


def test_report_requests_text_and_json(blk_file: Path) -> None:
    res = RUN.invoke(app, ["report", str(blk_file), "--requests"])
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "main loop (python [20]): 6 requests in 3 batches" in out
    assert "BQL on the request path: 6 of 6 requests (6 with a wait)" in out
    for label in ("notify (kick -> pickup)", "BQL wait", "disk I/O", "completion interrupt", "total"):
        assert label in out
    res = RUN.invoke(app, ["report", str(blk_file), "--requests", "-f", "json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["view"] == "requests" and doc["by_role"][0]["bql_waited"] == 6
    bql = [p for p in doc["phases"] if p["phase"] == "bql_wait"][0]
    assert bql["p50_ns"] == 2500


def test_report_requests_html_section(blk_file: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    res = RUN.invoke(app, ["report", str(blk_file), "--requests", "--html", str(page)])
    assert res.exit_code == 0, res.stderr
    text = page.read_text()
    assert 'id="requests"' in text and "Mean request by phase" in text and "phase by phase" in text
    # The timeline names the thread that serviced the queue by its role.
    assert "python (main loop) [20]" in text


def test_report_requests_on_a_trace_without_blk_is_one_line(tmp_path: Path) -> None:
    s = SyntheticTrace()
    s.vcpu(11, 0, [ExitScript()] * 3)
    t = s.trace()
    path = write_trace(tmp_path / "pm.vmtrace", t.events, t.meta)
    res = RUN.invoke(app, ["report", str(path), "--requests"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "no virtio-blk requests in this trace" in res.stderr


def test_vmm_run_passes_the_disk_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from vmtrace import procs

    # The VMM is started through procs.run_child (it dies with vmtrace); only
    # the command line is under test here.
    seen: list[list[str]] = []

    def fake_run_child(cmd: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        seen.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(procs, "run_child", fake_run_child)
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(8192))
    res = RUN.invoke(
        app, ["vmm", "run", "--image", "g.elf", "--disk", str(disk), "--blk", "dataplane", "--", "bench=blk_randread"]
    )
    assert res.exit_code == 0, res.stderr
    cmd = seen[0]
    assert cmd[cmd.index("--disk") + 1] == str(disk) and cmd[cmd.index("--blk") + 1] == "dataplane"
    res = RUN.invoke(app, ["vmm", "run", "--image", "g.elf", "--blk", "dataplane"])
    assert res.exit_code == 2 and "--blk needs --disk" in res.stderr
    res = RUN.invoke(app, ["vmm", "run", "--image", "g.elf", "--disk", str(disk), "--blk", "fast"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
