"""Live: blk_mixed, virtio-blk readers beside vCPUs that hammer a BQL device,
on the reference VMM (its default interpreter) and on QEMU, each with the
queue served under the BQL and by an IOThread.

Checks the workload does what it says (the hammers really ran through the
readers' whole run, every read completed), not how fast: the speed-up is
benchmarks/blk_dataplane.py's business.
"""

from __future__ import annotations

import pytest

from vmtrace.bench import run_bench

pytestmark = pytest.mark.live

ITER = 60


def _check(res, vcpus: int, readers: int, target: str, port: str) -> None:
    assert res.exit_status in (0, 1) and res.errors == 0
    assert (res.vcpus, res.readers) == (vcpus, readers)
    assert len(res.per_vcpu) == readers and res.iops and res.iops > 0
    assert res.iterations == ITER
    assert [int(h["vcpu"]) for h in res.hammers] == list(range(readers, vcpus))
    for h in res.hammers:
        assert (h["target"], h["port"]) == (target, port)
        # The hammers ran until the last reader was done: many accesses each.
        assert int(h["ops"]) >= 8 and int(h["cycles_per_op"]) > 0
    assert res.hammer_cycles_per_op and res.hammer_cycles_per_op > 0


@pytest.mark.parametrize("mode", ["bql", "dataplane"])
def test_reference_vmm(kvm, mode: str) -> None:
    res = run_bench("reference", "blk_mixed", 4, ITER, queue_depth=4, blk=mode, timeout_s=240)
    _check(res, 4, 2, "pmtimer", "0x608")
    assert res.blk == mode and res.interpreter is not None


@pytest.mark.parametrize("mode", ["bql", "dataplane"])
def test_qemu(qemu, mode: str) -> None:
    res = run_bench("qemu", "blk_mixed", 4, ITER, queue_depth=4, blk=mode, timeout_s=240)
    _check(res, 4, 2, "pmtimer", "0x608")
    assert res.interpreter is None


def test_serial_hammer_and_reader_count(kvm) -> None:
    res = run_bench(
        "reference",
        "blk_mixed",
        3,
        ITER,
        locking="unlocked",
        queue_depth=2,
        guest_args="readers=1 hammer=serial",
        timeout_s=240,
    )
    _check(res, 3, 1, "serial", "0x3ff")


def test_more_readers_than_vcpus_is_the_guests_usage_error(kvm) -> None:
    from vmtrace.errors import TargetError

    with pytest.raises(TargetError, match="readers is more than the number of vCPUs"):
        run_bench("reference", "blk_mixed", 2, ITER, guest_args="readers=3", timeout_s=120)
