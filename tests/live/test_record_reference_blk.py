"""The reference VMM's virtio-blk recorded by vmtrace: where the queue work runs, and the BQL.

``--blk bql``: the main loop services the queue, and every batch of requests
first waits for (takes) the BQL.  ``--blk dataplane``: the IOThread ``IO
iothread0`` services it, and nothing on that thread touches the BQL -- no
probe event, no futex wait on its word.  Real KVM and tracefs (ftrace
backend, which starts fast): runs in CI as root; elsewhere skips and says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vmtrace.bench import run_bench
from vmtrace.trace import read_trace

pytestmark = pytest.mark.live

NOTIFY_PORT = 0xC010


def _record(tmp_path: Path, mode: str):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(16 << 20))
    path = tmp_path / f"blk-{mode}.vmtrace"
    res = run_bench("reference", "blk_randread", 1, 300, blk=mode, disk=disk, record_to=path,
                    backend="ftrace", timeout_s=120)
    assert res.exit_status == 1 and res.errors == 0
    t = read_trace(path)
    ev = t.events.assign(name=t.events["name"].astype(object), event=t.events["event"].astype(object))
    return t, ev


def _queue_work(ev: pd.DataFrame) -> pd.DataFrame:
    return ev[(ev["event"] == "dispatch_begin") & (ev["name"] == "virtio-blk")]


def test_bql_mode_queue_work_waits_for_the_bql(root, kvm, tmp_path: Path) -> None:
    t, ev = _record(tmp_path, "bql")
    roles = dict(zip(t.threads["tid"], t.threads["role"]))
    work = _queue_work(ev)
    assert len(work) > 50 and {roles.get(tid) for tid in work["tid"]} == {"main"}
    main = int(work["tid"].iloc[0])
    bql = ev[(ev["tid"] == main) & (ev["name"] == "BQL")].sort_values("ts_ns")
    # The BQL event just before each batch on the main thread is its acquisition...
    i = np.searchsorted(bql["ts_ns"].to_numpy(), work["ts_ns"].to_numpy()) - 1
    assert (i >= 0).all() and (bql["event"].to_numpy()[i] == "lock_acquired").all()
    # ...which followed a wait (lock_begin): the request path goes through the BQL.
    assert (bql["event"].to_numpy()[i - 1] == "lock_begin").all()
    assert (ev["name"] == "virtio-blk-read").sum() >= 2 * 300


def test_dataplane_mode_request_path_has_no_bql(root, kvm, tmp_path: Path) -> None:
    t, ev = _record(tmp_path, "dataplane")
    threads = t.threads
    io = threads[threads["name"] == "IO iothread0"]
    assert len(io) == 1 and io["role"].iloc[0] == "iothread"
    io_tid = int(io["tid"].iloc[0])
    work = _queue_work(ev)
    assert len(work) > 50 and set(work["tid"]) == {io_tid}
    on_io = ev[ev["tid"] == io_tid]
    assert not (on_io["name"] == "BQL").any(), "the IOThread took the BQL"
    bql_word = t.bql().get("futex_uaddr")
    if bql_word:
        waits = on_io[(on_io["event"] == "futex_enter") & (on_io["addr"] == bql_word)]
        assert waits.empty, "the IOThread waited on the BQL's futex"
    # The guest's kicks never reached a vCPU's dispatch: ioeventfd kept them in the kernel.
    assert not ((ev["name"] == "virtio-pci") & (ev["addr"] == NOTIFY_PORT)).any()
