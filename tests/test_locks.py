"""Lock (futex word) accounting on synthetic traces with scripted waits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtrace.analyses.locks import lock_report, lock_waits, word_names
from vmtrace.errors import MissingEventsError

from .synthetic import BQL_WORD, OTHER_WORD, ExitScript, SyntheticTrace

MAIN = 50


def _scripted() -> tuple[SyntheticTrace, list[ExitScript], list[ExitScript]]:
    a = [
        ExitScript(bql_futex_ns=5000, waker=MAIN, wake_latency_ns=300, lock_span=True, device_ns=400),
        ExitScript(),
        ExitScript(bql_futex_ns=3000, waker=MAIN, other_futex_ns=700, lock_span=True),
    ]
    b = [ExitScript(bql_futex_ns=2000, waker=MAIN), ExitScript(other_futex_ns=50)]
    s = SyntheticTrace()
    s.vcpu(101, 0, a, start_ns=1_000_000)
    s.vcpu(102, 1, b, start_ns=1_000_500)
    return s, a, b


def _lifetimes(s: SyntheticTrace) -> dict[int, int]:
    df = pd.DataFrame(s.rows)
    df = df[df["tid"] >= 0]
    g = df.groupby("tid")["ts_ns"]
    life = g.max() - g.min()
    return dict(zip(life.index.to_numpy(dtype=np.int64).tolist(), life.to_numpy(dtype=np.int64).tolist(), strict=True))


def test_waits_waiters_and_wakers_per_word() -> None:
    s, a, b = _scripted()
    lk = lock_report(s.trace(futex_names={hex(OTHER_WORD): "GIL"}))
    w = lk.words.set_index("name")
    bql = [x.bql_futex_ns for x in a + b if x.bql_futex_ns]
    assert w.loc["BQL", "addr"] == BQL_WORD
    assert w.loc["BQL", "waits"] == len(bql) == 3
    assert w.loc["BQL", "wait_ns"] == sum(bql)
    assert w.loc["BQL", "max_ns"] == max(bql)
    assert w.loc["BQL", "mean_ns"] == pytest.approx(np.mean(bql))
    assert w.loc["BQL", "p99_ns"] == pytest.approx(np.quantile(bql, 0.99))
    assert w.loc["BQL", "blocked"] == 3  # each scripted BQL wait sleeps
    assert w.loc["BQL", "waiters"] == 2
    assert w.loc["BQL", "wake_calls"] == 3
    assert "[50]" in w.loc["BQL", "wakers"]
    gil = [x.other_futex_ns for x in a + b if x.other_futex_ns]
    assert w.loc["GIL", "waits"] == 2 and w.loc["GIL", "wait_ns"] == sum(gil)
    assert w.loc["GIL", "blocked"] == 0 and w.loc["GIL", "wake_calls"] == 0
    # BQL is ranked first: most wait time.
    assert lk.words["name"].iloc[0] == "BQL"
    assert w.loc["BQL", "wait_share"] == pytest.approx(sum(bql) / sum(_lifetimes(s).values()))


def test_each_wait_knows_its_waker() -> None:
    s, _, _ = _scripted()
    waits = lock_waits(s.trace())
    bql = waits[waits["uaddr"] == BQL_WORD]
    assert list(bql["woken_by"]) == [MAIN] * 3
    assert waits.loc[waits["uaddr"] == OTHER_WORD, "woken_by"].isna().all()


def test_sched_wakeup_names_the_waker_when_no_wake_call_was_traced() -> None:
    s = SyntheticTrace()
    s.thread(7, "worker", "worker")
    s.futex(1000, 7, 0xABC0, 500, blocked=True)
    s.add(1400, 7, "wakeup", peer_tid=99, cpu=1)
    s.futex(2000, 7, 0xABC0, 500, blocked=True)
    s.add(2400, 7, "wakeup", peer_tid=0, cpu=1)  # the idle task: no thread to name
    waits = lock_waits(s.trace())
    assert list(waits["woken_by"].astype("Int64")) == [99, pd.NA]


def test_hold_times_from_lock_spans() -> None:
    s, a, b = _scripted()
    w = lock_report(s.trace()).words.set_index("name")
    holds = [x.hold_ns for x in a + b if x.lock_span]
    assert w.loc["BQL", "holds"] == len(holds)
    assert w.loc["BQL", "hold_ns"] == sum(holds)
    assert w.loc["BQL", "hold_mean_ns"] == pytest.approx(np.mean(holds))


def test_eagain_waits_count_as_waits_that_did_not_sleep() -> None:
    s = SyntheticTrace()
    s.thread(7, "CPU 0/KVM", "vcpu", 0)
    s.futex(1000, 7, BQL_WORD, 40, ret=-11)
    s.futex(2000, 7, BQL_WORD, 900, blocked=True)
    w = lock_report(s.trace()).words.set_index("name")
    assert w.loc["BQL", "waits"] == 2 and w.loc["BQL", "eagain"] == 1 and w.loc["BQL", "blocked"] == 1


def test_names_from_events_metadata_and_the_caller() -> None:
    s = SyntheticTrace()
    s.thread(7, "t", "worker")
    s.futex(1000, 7, 0x10, 5)
    s.futex(1100, 7, 0x20, 5)
    s.futex(1200, 7, 0x30, 5)
    s.rows[0]["name"] = "from-event"
    t = s.trace(futex_names={"0x20": "hex-key", 0x30: "int-key", "not-a-number": "ignored"})
    names = word_names(t, extra={0x40: "caller"})
    assert names[0x10] == "from-event" and names[0x20] == "hex-key" and names[0x30] == "int-key"
    assert names[0x40] == "caller" and names[BQL_WORD] == "BQL"
    words = lock_report(t, extra_names={0x10: "renamed"}).words.set_index("addr")
    assert words.loc[0x10, "name"] == "renamed"


def test_time_inside_futex_calls_on_and_off_cpu() -> None:
    s, a, b = _scripted()
    tot = lock_report(s.trace()).totals
    waits = [x.bql_futex_ns for x in a + b] + [x.other_futex_ns for x in a + b]
    assert tot["target_ns"] == sum(_lifetimes(s).values())
    assert tot["futex_wait_ns"] == sum(waits)
    # Each BQL wait is off CPU from +1 to -1; a wake call lasts 2 ns.
    on_in_waits = sum(2 for x in a + b if x.bql_futex_ns) + sum(x.other_futex_ns for x in a + b)
    assert tot["futex_wait_oncpu_ns"] == on_in_waits
    assert tot["futex_wake_ns"] == tot["futex_wake_oncpu_ns"] == 2 * 3
    assert tot["futex_wait_share"] == pytest.approx(sum(waits) / tot["target_ns"])


def test_a_wait_across_lost_events_is_left_out() -> None:
    s = SyntheticTrace()
    s.vcpu(
        101,
        0,
        [
            ExitScript(bql_futex_ns=5000),
            ExitScript(bql_futex_ns=3000, lose=("sched_in",)),
            ExitScript(bql_futex_ns=1000),
        ],
    )
    lk = lock_report(s.trace())
    w = lk.words.set_index("name")
    assert w.loc["BQL", "waits"] == 2 and w.loc["BQL", "wait_ns"] == 6000
    assert any("lost" in n for n in lk.notes)
    assert int(lk.waits["lost"].sum()) == 1


def test_no_futex_events_is_an_error() -> None:
    s = SyntheticTrace()
    s.vcpu(101, 0, [ExitScript()])
    with pytest.raises(MissingEventsError, match="futex_enter, futex_exit"):
        lock_report(s.trace())


vcpu_scripts = st.builds(
    ExitScript,
    bql_futex_ns=st.sampled_from([0, 0, 4, 9_000, 77_777]),
    other_futex_ns=st.sampled_from([0, 0, 13, 40_000]),
    lock_span=st.booleans(),
    device_ns=st.integers(0, 5_000),
    post_ns=st.integers(2, 5_000),
)
main_waits = st.lists(
    st.tuples(st.sampled_from([BQL_WORD, OTHER_WORD, 0x7000]), st.integers(1, 50_000), st.booleans()), max_size=12
)


@settings(max_examples=50, deadline=None)
@given(st.lists(vcpu_scripts, min_size=1, max_size=20), st.lists(vcpu_scripts, min_size=1, max_size=20), main_waits)
def test_lock_wait_accounting_property(
    a: list[ExitScript], b: list[ExitScript], main: list[tuple[int, int, bool]]
) -> None:
    s = SyntheticTrace()
    s.vcpu(201, 0, a, start_ns=10_000)
    s.vcpu(202, 1, b, start_ns=10_003)
    s.thread(MAIN, "qemu-system-x86", "main")
    s.futex(1_000, MAIN, 0x9000, 3, op=129)  # a wake call, so every trace has futex events
    t = 5_000
    for word, dur, sleeps in main:
        t = s.futex(t, MAIN, word, dur + 2, blocked=sleeps) + 17
    s.shuffle_by_cpu(seed=len(a) + 7 * len(main))
    lk = lock_report(s.trace())
    words = lk.words.set_index("addr")
    scripted = {
        BQL_WORD: [x.bql_futex_ns for x in a + b if x.bql_futex_ns],
        OTHER_WORD: [x.other_futex_ns for x in a + b if x.other_futex_ns],
        0x7000: [],
    }
    for word, dur, _ in main:
        scripted[word].append(dur + 2)
    for word, durs in scripted.items():
        if durs:
            assert words.loc[word, "waits"] == len(durs)
            assert words.loc[word, "wait_ns"] == sum(durs)
        else:
            assert word not in words.index or words.loc[word, "waits"] == 0
    # Per thread: waits never exceed the thread's time, and add up to the word.
    life = _lifetimes(s)
    bt = lk.by_thread
    for tid in set(bt["tid"].astype(int).tolist()):
        assert bt.loc[bt["tid"] == tid, "wait_ns"].sum() <= life[tid]
    assert bt.groupby("addr")["wait_ns"].sum().to_dict() == {a_: int(v) for a_, v in words["wait_ns"].items() if v}
    assert lk.totals["futex_wait_ns"] == sum(sum(v) for v in scripted.values())


def test_nested_lock_spans_hold_each_lock_for_its_own_span() -> None:
    # The reference VMM takes the GIL inside a BQL hold: each lock's hold is
    # its own acquired -> release span, nested or not.
    s = SyntheticTrace()
    s.thread(7, "CPU 0/KVM", "vcpu", 0)
    s.add(100, 7, "lock_begin", addr=BQL_WORD, name="BQL")
    s.add(150, 7, "lock_acquired", addr=BQL_WORD, name="BQL")
    s.add(200, 7, "lock_begin", addr=OTHER_WORD, name="GIL")
    s.futex(210, 7, OTHER_WORD, 300, blocked=True)
    s.add(510, 7, "lock_acquired", addr=OTHER_WORD, name="GIL")
    s.add(700, 7, "lock_release", addr=OTHER_WORD, name="GIL")
    s.add(900, 7, "lock_release", addr=BQL_WORD, name="BQL")
    w = lock_report(s.trace()).words.set_index("name")
    assert w.loc["BQL", "holds"] == 1 and w.loc["BQL", "hold_ns"] == 900 - 150
    assert w.loc["GIL", "holds"] == 1 and w.loc["GIL", "hold_ns"] == 700 - 510
    assert w.loc["GIL", "waits"] == 1 and w.loc["GIL", "wait_ns"] == 300 and w.loc["BQL", "waits"] == 0
