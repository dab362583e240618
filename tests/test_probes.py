"""The probe API's spool, decoded: events and the futex words a target names."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vmtrace import probes
from vmtrace.collectors.userspace import read_probe_spool


@pytest.fixture
def spool(tmp_path: Path):
    path = tmp_path / "probes.bin"
    probes.enable(str(path))
    try:
        yield path
    finally:
        probes.disable()


def test_named_futex_words_and_events_round_trip(spool: Path) -> None:
    probes.name_futex(0x1000, "BQL")
    probes.name_futex(0x2000, "GIL")
    probes.lock_begin("BQL", 0x1000)
    probes.lock_acquired("BQL", 0x1000)
    probes.dispatch_begin(0x608, 4, False, "acpi-pm-tmr")
    probes.dispatch_end(0x608, 4, False, "acpi-pm-tmr")
    probes.lock_release("BQL", 0x1000)
    t = threading.Thread(target=lambda: probes.lock_begin("other", 0x3000))
    t.start()
    t.join()
    probes.flush()
    got = read_probe_spool(spool)
    assert got.futex_names == {0x1000: "BQL", 0x2000: "GIL"}
    ev = got.events
    # Naming a word is not an event of the trace.
    assert list(ev["event"][:5]) == ["lock_begin", "lock_acquired", "dispatch_begin", "dispatch_end", "lock_release"]
    assert list(ev["name"][:5]) == ["BQL", "BQL", "acpi-pm-tmr", "acpi-pm-tmr", "BQL"]
    assert int(ev["size"][2]) == 4 and not bool(ev["write"][2])
    assert ev["ts_ns"].is_monotonic_increasing or len(set(ev["tid"])) == 2
    assert len(set(ev["tid"])) == 2


def test_disabled_probes_write_nothing(tmp_path: Path) -> None:
    assert not probes.enabled
    probes.name_futex(0x1000, "BQL")
    probes.lock_begin("BQL", 0x1000)
    assert read_probe_spool(tmp_path / "never-written").events.empty


def test_a_record_cut_short_by_a_crash_is_dropped(spool: Path) -> None:
    probes.lock_begin("BQL", 0x1000)
    probes.flush()
    with open(spool, "ab") as f:
        f.write(b"\x01" * (probes.RECORD.size - 5))
    got = read_probe_spool(spool)
    assert len(got.events) == 1 and got.events["event"][0] == "lock_begin"


def test_concurrent_threads_past_the_flush_size_keep_every_record(spool: Path) -> None:
    # Enough records that each thread's buffer is written out several times
    # while the others append: nothing lost, nothing torn, each under its tid.
    per_thread = 3 * probes._FLUSH_BYTES // probes.RECORD.size + 7
    tids: dict[int, int] = {}

    def work(k: int) -> None:
        tids[k] = threading.get_native_id()
        for i in range(per_thread):
            if i % 2:
                probes.dispatch_begin(0x1000 * k + i, 2, True, f"dev{k}")
            else:
                probes.lock_acquired(f"lock{k}", i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    probes.flush()
    ev = read_probe_spool(spool).events
    assert len(ev) == 4 * per_thread
    for k, tid in tids.items():
        mine = ev[ev["tid"] == tid]
        assert len(mine) == per_thread
        locks = mine[mine["event"] == "lock_acquired"]
        devs = mine[mine["event"] == "dispatch_begin"]
        assert set(locks["name"]) == {f"lock{k}"} and set(devs["name"]) == {f"dev{k}"}
        assert sorted(locks["addr"].astype(int)) == list(range(0, per_thread, 2))
        assert sorted(devs["addr"].astype(int)) == [0x1000 * k + i for i in range(1, per_thread, 2)]
        assert devs["write"].all() and (devs["size"] == 2).all()
        assert mine["ts_ns"].is_monotonic_increasing
