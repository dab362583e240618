"""Call sites against QEMU's own sync-profile, on every installed QEMU.

The run: fwcfg_pmtimer at 2 vCPUs (vCPU 0 holds the BQL for long fw_cfg
fills, vCPU 1 reads the PM timer and queues behind them), QEMU with
``-enable-sync-profile`` and an HMP monitor, recorded with ``--callsites``.
There is no isa-debug-exit device, so after ``VMTRACE-BENCH end`` the guest
halts and QEMU stays up.

The window: both tools count from QEMU's start (vmtrace's uprobes are in
place before QEMU is exec'd; QSP is on from option parsing) to the
``info sync-profile`` command: QSP counts acquisitions up to the main
loop's iteration that runs it (after one iteration per echoed character),
vmtrace those whose lock call returned before the first line of the answer
arrived (collectors.qsp.hmp_command).  The edges can differ by a main-loop
iteration that flushes the answer, and QEMU takes the BQL once or twice
before QSP is on, hence the "2% or 2" tolerance.  The
guest's vCPUs are halted by then, so only the main loop and the RCU thread
still take the BQL.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from vmtrace.analyses.callsites import callsite_table
from vmtrace.bench import guest_image, vmm_command
from vmtrace.collectors.qsp import hmp_command, qsp_args, sync_profile
from vmtrace.qemu_versions import resolve_qemu
from vmtrace.record import record
from vmtrace.trace import Trace, read_trace
from vmtrace.validate import DEFAULT_CALLSITE_DUTY


@pytest.fixture
def live(root: None, bpf: None, qemu_version: str) -> str:
    """Root, bcc, and one of the QEMU versions (conftest.qemu_version)."""
    return qemu_version


def _run_with_qsp(tmp: Path, version: str, mode: str, backend: str = "bcc") -> tuple[Trace, pd.DataFrame, int]:
    binary = resolve_qemu(version)
    cmd = vmm_command("qemu", "fwcfg_pmtimer", 2, 1600, guest_image(), qemu=binary.path)
    i = cmd.index("isa-debug-exit,iobase=0xf4,iosize=4")
    del cmd[i - 1 : i + 1]
    sock = tmp / "mon.sock"
    cmd += qsp_args(sock)
    out_path = tmp / "serial.txt"
    got: dict[str, Any] = {}

    def monitor() -> None:
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline:
                if out_path.exists() and "VMTRACE-BENCH end" in out_path.read_text(errors="replace"):
                    break
                time.sleep(0.2)
            got["qsp"], got["until_ns"] = sync_profile(sock)
        finally:
            try:
                hmp_command(sock, "quit", timeout_s=5)
            except (OSError, TimeoutError):
                pass

    t = threading.Thread(target=monitor, daemon=True)
    with open(out_path, "w") as out:
        t.start()
        # A quarter of each second, not record's default 4% of 5 s: this
        # run's PM-timer loop lasts about a second, and the test needs
        # windows in it.
        duty = 0.25 if mode == "sampled" else DEFAULT_CALLSITE_DUTY
        record(
            tmp / "run.vmtrace",
            cmd=cmd,
            stdout=out,
            callsites=mode,
            callsite_duty=duty,
            callsite_period_s=1.0,
            duration=300,
            backend=backend,
        )
    t.join(30)
    assert "qsp" in got, "the guest never printed its end record"
    return read_trace(tmp / "run.vmtrace"), got["qsp"], int(got["until_ns"])


@pytest.mark.parametrize("backend", ["bcc", "ftrace"])
def test_callsites_agree_with_sync_profile(live: str, backend: str, tmp_path: Path) -> None:
    qemu_version = live
    trace, qsp, until = _run_with_qsp(tmp_path, qemu_version, "full", backend)
    assert trace.bql().get("identified"), trace.meta["locks"]
    assert (trace.meta["target"]["vmm_version"] or "").startswith(qemu_version)
    ours = callsite_table(trace, until_ns=until).sites.set_index("site")
    theirs = qsp[qsp["type"] == "BQL mutex"].groupby("site").agg(count=("count", "sum"), wait_ns=("wait_ns", "sum"))
    both = ours.index.intersection(theirs.index)
    # The PIO path's call site (prepare_mmio_access) and the main loop's are
    # in every run; QSP truncates long paths, so compare the sites it prints whole.
    assert len(both) >= 2, (list(ours.index), list(theirs.index))
    assert any("physmem.c" in s for s in both)
    for site in both:
        a, b = int(ours.loc[site, "acquisitions"]), int(theirs.loc[site, "count"])
        assert abs(a - b) <= max(2, 0.02 * b), f"{site}: vmtrace {a}, QSP {b}"
    # The sites both see carry nearly every acquisition QSP counted.
    assert theirs.loc[both, "count"].sum() >= 0.98 * theirs["count"].sum()
    # Contended: vCPU 1 queued behind the fills, and both tools saw the wait
    # at the PIO path.  vmtrace's wait holds the probes' cost on top of QSP's.
    pio = next(s for s in both if "physmem.c" in s)
    assert ours.loc[pio, "contended"] > 0
    assert theirs.loc[pio, "wait_ns"] > 0
    assert ours.loc[pio, "wait_ns"] >= 0.5 * theirs.loc[pio, "wait_ns"]


def test_sampled_callsites_cover_a_share_and_extrapolate(live: str, tmp_path: Path) -> None:
    trace, qsp, until = _run_with_qsp(tmp_path, live, "sampled")
    table = callsite_table(trace, until_ns=until)
    assert table.sampled and 0 < table.coverage < 0.5, table.coverage
    assert table.notes and "sampled" in table.notes[0]
    sites = table.sites.set_index("site")
    pio = next(s for s in sites.index if "physmem.c" in s)
    assert sites.loc[pio, "acquisitions"] < sites.loc[pio, "est_acquisitions"]
    theirs = qsp[(qsp["type"] == "BQL mutex") & (qsp["site"] == pio)]["count"].sum()
    assert sites.loc[pio, "acquisitions"] < theirs
