"""The reference VMM's virtio-blk recorded by vmtrace: where the queue work runs, and the BQL.

``--blk bql``: the main loop services the queue, and every batch of requests
first waits for (takes) the BQL.  ``--blk dataplane``: the IOThread ``IO
iothread0`` services it, and nothing on that thread touches the BQL -- no
probe event, no futex wait on its word.  The per-request view
(``analyses.requests``) says the same request by request.  Two vCPUs, each
mode recorded once for the module.  Real KVM and tracefs (ftrace backend,
which starts fast): runs in CI as root; elsewhere skips and says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vmtrace.analyses.requests import PHASES, request_report
from vmtrace.bench import run_bench
from vmtrace.trace import Trace, read_trace

NOTIFY_PORT = 0xC010
VCPUS = 2
ITER = 300


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, root: None, kvm: None) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("blk")
    disk = out / "disk.img"
    disk.write_bytes(bytes(16 << 20))
    paths = {}
    for mode in ("bql", "dataplane"):
        path = out / f"blk-{mode}.vmtrace"
        res = run_bench(
            "reference",
            "blk_randread",
            VCPUS,
            ITER,
            blk=mode,
            disk=disk,
            record_to=path,
            backend="ftrace",
            queue_depth=4,
            timeout_s=180,
        )
        assert res.exit_status == 1 and res.errors == 0
        paths[mode] = path
    return paths


def _record(recorded: dict[str, Path], mode: str) -> tuple[Trace, pd.DataFrame]:
    t = read_trace(recorded[mode])
    ev = t.events.assign(name=t.events["name"].astype(object), event=t.events["event"].astype(object))
    return t, ev


def _queue_work(ev: pd.DataFrame) -> pd.DataFrame:
    return ev[(ev["event"] == "dispatch_begin") & (ev["name"] == "virtio-blk")]


def test_bql_mode_queue_work_waits_for_the_bql(root, kvm, recorded) -> None:
    t, ev = _record(recorded, "bql")
    roles = dict(zip(t.threads["tid"], t.threads["role"], strict=True))
    work = _queue_work(ev)
    assert len(work) > 50 and {roles.get(tid) for tid in work["tid"]} == {"main"}
    main = int(work["tid"].iloc[0])
    bql = ev[(ev["tid"] == main) & (ev["name"] == "BQL")].sort_values("ts_ns")
    # The BQL event just before each batch on the main thread is its acquisition...
    i = np.searchsorted(bql["ts_ns"].to_numpy(), work["ts_ns"].to_numpy()) - 1
    assert (i >= 0).all() and (bql["event"].to_numpy()[i] == "lock_acquired").all()
    # ...which followed a wait (lock_begin): the request path goes through the BQL.
    assert (bql["event"].to_numpy()[i - 1] == "lock_begin").all()
    assert (ev["name"] == "virtio-blk-read").sum() >= 2 * VCPUS * ITER


def test_dataplane_mode_request_path_has_no_bql(root, kvm, recorded) -> None:
    t, ev = _record(recorded, "dataplane")
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


def _requests(recorded: dict[str, Path], mode: str) -> pd.DataFrame:
    t, _ = _record(recorded, mode)
    rq = request_report(t)
    assert rq.source == "probes"
    rows = rq.requests
    # Every request the guest sent (warmup included) is a row, and its phases add up.
    assert len(rows) >= VCPUS * ITER
    phases = rows[[f"{p}_ns" for p in PHASES]]
    assert (phases.sum(axis=1) == rows["total_ns"]).all()
    assert (phases >= 0).all().all()
    assert set(rows["kind"]) == {"read"}
    # The guest's kicks are in the trace (kvm_pio fires for an ioeventfd write):
    # most batches start from one.
    assert rows["notify_known"].mean() > 0.3
    assert (rows["disk_ns"] > 0).all()
    return rows[~rows["lost"]]


def test_bql_requests_wait_for_the_bql_on_their_path(root, kvm, recorded) -> None:
    rows = _requests(recorded, "bql")
    assert set(rows["role"]) == {"main"}
    assert rows["bql_taken"].all(), "a request was serviced without the BQL"
    # Each batch's BQL acquisition is a wait on the request's path (however short).
    assert (rows["bql_wait_ns"] > 0).mean() > 0.9
    # The BQL is held across the whole of each request's processing, disk I/O included.
    own = rows["push_ns"] - rows["pop_ns"]
    assert (rows["bql_held_ns"] == own).mean() > 0.9


def test_dataplane_requests_never_touch_the_bql(root, kvm, recorded) -> None:
    rows = _requests(recorded, "dataplane")
    assert set(rows["role"]) == {"iothread"} and set(rows["thread"]) == {"IO iothread0"}
    assert not rows["bql_taken"].any()
    assert (rows["bql_wait_ns"] == 0).all() and (rows["bql_held_ns"] == 0).all()
