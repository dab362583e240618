"""Synthetic traces with known answers, for unit tests of the analyses.

``ExitScript`` describes one vCPU exit as the durations of its parts; the
builder emits the raw events a collector would, so an analysis must recover
exactly those durations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from vmtrace.trace import Trace, normalize_events

BQL_WORD = 0x5555_0000_1000
OTHER_WORD = 0x5555_0000_2000
TSC_HZ = 2_000_000_000  # 2 cycles per ns keeps expected values easy


@dataclass
class ExitScript:
    """One exit: guest-side then kernel then userspace durations in ns."""

    port: int = 0x608
    write: bool = False
    kernel_ns: int = 1000  # run_enter -> decode
    emulator_ns: int = 200  # decode -> run_exit
    pre_lock_ns: int = 100  # run_exit -> lock attempt
    bql_futex_ns: int = 0  # blocked on the BQL's futex word
    other_futex_ns: int = 0  # blocked on another futex word
    device_ns: int = 0  # dispatch_begin -> dispatch_end (precise)
    post_ns: int = 300  # the rest of userspace until the next run_enter
    lock_span: bool = False  # emit lock_begin/lock_acquired around the BQL wait
    preempted_ns: int = 0  # runnable, off CPU, inside the post part


@dataclass
class SyntheticTrace:
    rows: list[dict[str, Any]] = field(default_factory=list)
    threads: list[dict[str, Any]] = field(default_factory=list)

    def add(self, ts: int, tid: int, event: str, **cols: Any) -> None:
        self.rows.append({"ts_ns": ts, "tid": tid, "cpu": cols.pop("cpu", tid % 2), "event": event, **cols})

    def vcpu(self, tid: int, index: int, exits: list[ExitScript], start_ns: int = 1_000_000) -> int:
        """Emit ``exits`` for one vCPU thread; returns the time of the final
        run_enter (which opens a cycle that never closes)."""
        self.threads.append({"tid": tid, "name": f"CPU {index}/KVM", "role": "vcpu", "vcpu": index})
        t = start_ns
        for x in exits:
            self.add(t, tid, "run_enter")
            t += x.kernel_ns
            self.add(t, tid, "pio", addr=x.port, size=4, write=x.write, value=0)
            t += x.emulator_ns // 2
            self.add(t, tid, "userspace_exit", value=2)
            t += x.emulator_ns - x.emulator_ns // 2
            self.add(t, tid, "run_exit", value=0)
            t += x.pre_lock_ns
            if x.lock_span:
                self.add(t, tid, "lock_begin", addr=BQL_WORD, name="BQL")
            if x.bql_futex_ns:
                self.add(t, tid, "futex_enter", addr=BQL_WORD, value=128)
                self.add(t + 1, tid, "sched_out", value=1, peer_tid=0)
                self.add(t + x.bql_futex_ns - 1, tid, "sched_in", peer_tid=0)
                t += x.bql_futex_ns
                self.add(t, tid, "futex_exit", value=0)
            if x.lock_span:
                self.add(t, tid, "lock_acquired", addr=BQL_WORD, name="BQL")
            if x.other_futex_ns:
                self.add(t, tid, "futex_enter", addr=OTHER_WORD, value=128)
                t += x.other_futex_ns
                self.add(t, tid, "futex_exit", value=0)
            if x.device_ns:
                self.add(t, tid, "dispatch_begin", addr=x.port, size=4, write=x.write)
                t += x.device_ns
                self.add(t, tid, "dispatch_end", addr=x.port, size=4, write=x.write)
            if x.preempted_ns:
                self.add(t + 1, tid, "sched_out", value=0, peer_tid=999)
                self.add(t + 1 + x.preempted_ns, tid, "sched_in", peer_tid=999)
            t += x.post_ns
        self.add(t, tid, "run_enter")
        return t

    def trace(self, bql_identified: bool = True, **meta: Any) -> Trace:
        df = normalize_events(pd.DataFrame(self.rows))
        m: dict[str, Any] = {
            "schema_version": 1,
            "tsc_hz": TSC_HZ,
            "threads": self.threads,
            "locks": [{"name": "BQL", "futex_uaddr": BQL_WORD if bql_identified else None,
                       "method": "synthetic", "identified": bql_identified}],
            "lost_events": {"total": 0, "per_cpu": {}},
            "kvm_flavour": "unknown",
            "notes": [],
        }
        m.update(meta)
        return Trace(events=df, meta=m)


def expected_total(x: ExitScript) -> int:
    return x.kernel_ns + x.emulator_ns + x.pre_lock_ns + x.bql_futex_ns + x.other_futex_ns + x.device_ns + x.post_ns
