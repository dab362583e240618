"""Synthetic traces with known answers, for unit tests of the analyses.

``ExitScript`` describes one vCPU exit as the durations of its parts; the
builder emits the raw events a collector would, so an analysis must recover
exactly those durations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from vmtrace.schema import EVENT_COLUMNS, SCHEMA_VERSION
from vmtrace.trace import Trace, normalize_events

BQL_WORD = 0x5555_0000_1000
OTHER_WORD = 0x5555_0000_2000
TSC_HZ = 2_000_000_000  # 2 cycles per ns keeps expected values easy
FUTEX_WAIT_PRIVATE = 128
FUTEX_WAKE_PRIVATE = 129
VMX_IO_INSTRUCTION = 30


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
    lock_span: bool = False  # lock_begin/lock_acquired around the BQL wait, lock_release after device
    preempted_ns: int = 0  # runnable, off CPU, inside the post part
    waker: int | None = None  # thread whose futex wake call ends the BQL wait
    wake_latency_ns: int = 0  # woken -> back on a CPU, at the end of the BQL wait
    sleep_ns: int = 0  # blocked off CPU on no lock, in the post part after preemption
    lose: tuple[str, ...] = ()  # events of this exit the collector lost (a `lost` marker instead)
    kernel_exits: tuple[int, ...] = ()  # ports of PIO exits the kernel handles inside kernel_ns
    guest_ns: int = 0  # with kvm_entry/kvm_exit: guest mode time at the end of kernel_ns
    kernel_preempted_ns: int = 0  # runnable, off CPU, inside KVM_RUN at the start of kernel_ns

    def __post_init__(self) -> None:
        if (self.guest_ns or self.kernel_exits) and self.kernel_ns < self.guest_ns + 3 * len(self.kernel_exits) + 2:
            raise ValueError("kernel_ns must hold the guest time and the kernel-handled exits")
        if self.kernel_preempted_ns and self.kernel_ns < (
            self.kernel_preempted_ns + 3 + self.guest_ns + 3 * len(self.kernel_exits)
        ):
            raise ValueError("kernel_ns must hold the preemption inside KVM_RUN")
        if self.waker is not None and self.bql_futex_ns < self.wake_latency_ns + 4:
            raise ValueError("a woken BQL wait needs bql_futex_ns >= wake_latency_ns + 4")
        off = (self.preempted_ns + 1 if self.preempted_ns else 0) + (self.sleep_ns + 1 if self.sleep_ns else 0)
        if self.post_ns < off:
            raise ValueError("post_ns must leave room for the off-CPU spans inside it")

    @property
    def hold_ns(self) -> int:
        """lock_acquired -> lock_release of the BQL, when lock_span."""
        return self.other_futex_ns + self.device_ns

    @property
    def bql_offcpu_ns(self) -> int:
        """Off CPU inside the BQL wait (sched_out at +1, sched_in at -1)."""
        return self.bql_futex_ns - 2 if self.bql_futex_ns else 0


@dataclass
class ExitSpan:
    """Where one scripted exit landed: what a correct analysis must find."""

    tid: int
    vcpu: int
    start_ns: int
    end_ns: int
    script: ExitScript


@dataclass
class SyntheticTrace:
    rows: list[dict[str, Any]] = field(default_factory=list)
    threads: list[dict[str, Any]] = field(default_factory=list)
    exits: list[ExitSpan] = field(default_factory=list)
    frame: pd.DataFrame | None = None  # events built in bulk (see ``replicate``)

    def add(self, ts: int, tid: int, event: str, **cols: Any) -> None:
        self.rows.append({"ts_ns": ts, "tid": tid, "cpu": cols.pop("cpu", tid % 2), "event": event, **cols})

    def thread(self, tid: int, name: str, role: str, vcpu: int | None = None) -> None:
        if not any(t["tid"] == tid for t in self.threads):
            self.threads.append({"tid": tid, "name": name, "role": role, "vcpu": vcpu})

    def lose(self, ts: int, cpu: int, count: int = 1) -> None:
        """A collector's marker: ``count`` events of ``cpu`` lost before ``ts``."""
        self.add(ts, -1, "lost", cpu=cpu, value=count)

    def futex(
        self,
        ts: int,
        tid: int,
        word: int,
        dur_ns: int,
        op: int = FUTEX_WAIT_PRIVATE,
        ret: int = 0,
        blocked: bool = False,
        waker: int | None = None,
    ) -> int:
        """One futex call of ``tid``; a ``blocked`` wait goes off CPU inside
        it and, with a ``waker``, is ended by that thread's wake call on the
        same word.  Returns the time the call returns."""
        self.add(ts, tid, "futex_enter", addr=word, value=op)
        if blocked:
            self.add(ts + 1, tid, "sched_out", value=1, peer_tid=0)
            if waker is not None:
                self.add(ts + dur_ns - 3, waker, "futex_enter", addr=word, value=FUTEX_WAKE_PRIVATE)
                self.add(ts + dur_ns - 2, tid, "wakeup", peer_tid=waker, cpu=waker % 2)
                self.add(ts + dur_ns - 2, waker, "futex_exit", value=1)
            self.add(ts + dur_ns - 1, tid, "sched_in", peer_tid=0)
        self.add(ts + dur_ns, tid, "futex_exit", value=ret)
        return ts + dur_ns

    def vcpu(self, tid: int, index: int, exits: Sequence[ExitScript], start_ns: int = 1_000_000) -> int:
        """Emit ``exits`` for one vCPU thread; returns the time of the final
        run_enter (which opens a cycle that never closes)."""
        self.thread(tid, f"CPU {index}/KVM", "vcpu", index)
        t = start_ns
        for x in exits:
            if x.waker is not None:
                self.thread(x.waker, "qemu-system-x86", "main")
            end = self._exit(tid, t, x)
            self.exits.append(ExitSpan(tid, index, t, end, x))
            t = end
        self.add(t, tid, "run_enter")
        return t

    def _exit(self, tid: int, t: int, x: ExitScript) -> int:
        cpu = tid % 2

        def emit(ts: int, event: str, **cols: Any) -> None:
            if event in x.lose:
                self.lose(ts, cpu)
            else:
                self.add(ts, tid, event, **cols)

        emit(t, "run_enter")
        if x.kernel_preempted_ns:
            # Preempted in the kernel, as a vCPU thread is when the host has
            # fewer CPUs than vCPUs: what a breakdown would call vmexit.
            emit(t + 1, "sched_out", value=0, peer_tid=998)
            emit(t + 1 + x.kernel_preempted_ns, "sched_in", peer_tid=998)
        # Inside kernel_ns, ending one ns before the decode: the exits the
        # kernel handles itself (3 ns each), then guest_ns in guest mode;
        # where the host fires them, kvm_entry/kvm_exit (IO_INSTRUCTION)
        # around each guest run.
        k = t + x.kernel_ns - 1 - x.guest_ns - 3 * len(x.kernel_exits)
        if x.guest_ns:
            emit(k, "kvm_entry")
        for port in x.kernel_exits:
            if x.guest_ns:
                emit(k + 1, "kvm_exit", value=VMX_IO_INSTRUCTION, addr=0)
            emit(k + 2, "pio", addr=port, size=1, write=True, value=0)
            if x.guest_ns:
                emit(k + 3, "kvm_entry")
            k += 3
        if x.guest_ns:
            emit(k + x.guest_ns, "kvm_exit", value=VMX_IO_INSTRUCTION, addr=0)
        t += x.kernel_ns
        emit(t, "pio", addr=x.port, size=4, write=x.write, value=0)
        t += x.emulator_ns // 2
        emit(t, "userspace_exit", value=2)
        t += x.emulator_ns - x.emulator_ns // 2
        emit(t, "run_exit", value=0)
        t += x.pre_lock_ns
        if x.lock_span:
            emit(t, "lock_begin", addr=BQL_WORD, name="BQL")
        if x.bql_futex_ns:
            emit(t, "futex_enter", addr=BQL_WORD, value=FUTEX_WAIT_PRIVATE)
            emit(t + 1, "sched_out", value=1, peer_tid=0)
            if x.waker is not None:
                woken = t + x.bql_futex_ns - 1 - x.wake_latency_ns
                self.add(woken - 1, x.waker, "futex_enter", addr=BQL_WORD, value=FUTEX_WAKE_PRIVATE)
                emit(woken, "wakeup", peer_tid=x.waker, cpu=x.waker % 2)
                self.add(woken + 1, x.waker, "futex_exit", value=1)
            emit(t + x.bql_futex_ns - 1, "sched_in", peer_tid=0)
            t += x.bql_futex_ns
            emit(t, "futex_exit", value=0)
        if x.lock_span:
            emit(t, "lock_acquired", addr=BQL_WORD, name="BQL")
        if x.other_futex_ns:
            emit(t, "futex_enter", addr=OTHER_WORD, value=FUTEX_WAIT_PRIVATE)
            t += x.other_futex_ns
            emit(t, "futex_exit", value=0)
        if x.device_ns:
            emit(t, "dispatch_begin", addr=x.port, size=4, write=x.write)
            t += x.device_ns
            emit(t, "dispatch_end", addr=x.port, size=4, write=x.write)
        if x.lock_span:
            emit(t, "lock_release", addr=BQL_WORD, name="BQL")
        off = t
        if x.preempted_ns:
            emit(off + 1, "sched_out", value=0, peer_tid=999)
            emit(off + 1 + x.preempted_ns, "sched_in", peer_tid=999)
            off += 1 + x.preempted_ns
        if x.sleep_ns:
            emit(off + 1, "sched_out", value=1, peer_tid=0)
            emit(off + 1 + x.sleep_ns, "wakeup", peer_tid=0)
            emit(off + 1 + x.sleep_ns, "sched_in", peer_tid=0)
        return t + x.post_ns

    def shuffle_by_cpu(self, seed: int = 0) -> None:
        """Deliver rows the way per-CPU buffers do: each CPU's rows in order,
        chunks of a few rows from the CPUs interleaved in no time order."""
        rng = np.random.default_rng(seed)
        per_cpu: dict[int, list[dict[str, Any]]] = {}
        for r in self.rows:
            per_cpu.setdefault(r["cpu"], []).append(r)
        queues = {cpu: list(reversed(rows)) for cpu, rows in per_cpu.items()}
        out: list[dict[str, Any]] = []
        while queues:
            cpu = list(queues)[rng.integers(len(queues))]
            for _ in range(int(rng.integers(1, 8))):
                if not queues[cpu]:
                    break
                out.append(queues[cpu].pop())
            if not queues[cpu]:
                del queues[cpu]
        self.rows = out

    def trace(self, bql_identified: bool = True, **meta: Any) -> Trace:
        df = normalize_events(self.frame if self.frame is not None else pd.DataFrame(self.rows))
        m: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tsc_hz": TSC_HZ,
            "threads": self.threads,
            "locks": [
                {
                    "name": "BQL",
                    "futex_uaddr": BQL_WORD if bql_identified else None,
                    "method": "synthetic",
                    "identified": bql_identified,
                }
            ],
            "lost_events": {"total": 0, "per_cpu": {}},
            "kvm_flavour": "unknown",
            "notes": [],
        }
        m.update(meta)
        return Trace(events=df, meta=m)


def expected_total(x: ExitScript) -> int:
    return x.kernel_ns + x.emulator_ns + x.pre_lock_ns + x.bql_futex_ns + x.other_futex_ns + x.device_ns + x.post_ns


def replicate(
    templates: Sequence[ExitScript],
    sequences: dict[int, np.ndarray],
    start_ns: int = 1_000_000,
    waker_offset: int = 10_000,
) -> SyntheticTrace:
    """A large trace, vectorised: vCPU ``tid`` runs exits ``templates[i]`` for
    ``i`` in ``sequences[tid]``, exactly as ``SyntheticTrace.vcpu`` would emit
    them (each template is emitted once and its rows are shifted in time).
    A template's waker becomes thread ``tid + waker_offset``, so vCPUs never
    share one.  Returns a SyntheticTrace whose ``frame`` holds the events
    (``rows`` and ``exits`` stay empty: 10M dicts would not fit)."""
    tmpl_rows = []
    tmpl_len = []
    placeholder_self, placeholder_waker = 1, 3
    for x in templates:
        scratch = SyntheticTrace()
        y = replace(x, waker=placeholder_waker) if x.waker is not None else x
        tmpl_len.append(scratch._exit(placeholder_self, 0, y))
        tmpl_rows.append(pd.DataFrame(scratch.rows))
    proto = pd.concat(tmpl_rows, ignore_index=True)
    counts = np.array([len(r) for r in tmpl_rows])
    offsets = np.concatenate(([0], np.cumsum(counts)))
    lengths = np.asarray(tmpl_len, dtype=np.int64)
    cols = {
        c: proto[c].to_numpy() if c in proto else np.full(len(proto), None, dtype=object)
        for c in EVENT_COLUMNS
        if c not in ("ts_ns", "tid", "cpu")
    }
    p_ts = proto["ts_ns"].to_numpy(dtype=np.int64)
    p_self = proto["tid"].to_numpy() == placeholder_self
    p_lost = proto["tid"].to_numpy() < 0
    p_woken = (
        (proto["peer_tid"] == placeholder_waker).fillna(False).to_numpy(dtype=bool)
        if "peer_tid" in proto
        else np.zeros(len(proto), dtype=bool)
    )
    parts = []
    threads = []
    for index, (tid, seq) in enumerate(sequences.items()):
        seq = np.asarray(seq, dtype=np.int64)
        starts = start_ns + np.concatenate(([0], np.cumsum(lengths[seq])[:-1]))
        n_rows = counts[seq]
        # Row j of exit k is template row offsets[seq[k]] + j.
        exit_of_row = np.repeat(np.arange(len(seq)), n_rows)
        within = np.arange(n_rows.sum()) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
        src = offsets[seq][exit_of_row] + within
        waker = tid + waker_offset
        tids = np.where(p_self[src], tid, np.where(p_lost[src], -1, waker))
        # A wakeup fires on its waker's CPU; a lost marker is on the vCPU's.
        cpu = np.where(p_woken[src], waker % 2, np.where(p_lost[src], tid % 2, tids % 2))
        part = {"ts_ns": p_ts[src] + starts[exit_of_row], "tid": tids, "cpu": cpu}
        part.update({c: v[src] for c, v in cols.items()})
        part["peer_tid"] = np.where(p_woken[src], waker, part["peer_tid"])
        fin = start_ns + int(lengths[seq].sum())
        parts.append(pd.DataFrame(part))
        parts.append(pd.DataFrame({"ts_ns": [fin], "tid": [tid], "cpu": [tid % 2], "event": ["run_enter"]}))
        threads.append({"tid": tid, "name": f"CPU {index}/KVM", "role": "vcpu", "vcpu": index})
        if any(templates[i].waker is not None for i in np.unique(seq)):
            threads.append({"tid": tid + waker_offset, "name": "qemu-system-x86", "role": "main", "vcpu": None})
    out = SyntheticTrace(threads=threads)
    out.frame = pd.concat(parts, ignore_index=True)
    return out


# ----------------------------------------------------------------------------
# virtio-blk requests, as the reference VMM reports them through its probes

NOTIFY_PORT = 0xC010
GIL_WORD = 0x5555_0000_3000


@dataclass
class BlkRequest:
    """One request of a batch: pop -> ``pre_ns`` -> disk span (``kind``
    read/write/flush; none for ``other``) of ``disk_ns``, with a GIL wait of
    ``gil_ns`` at its end -> ``post_ns`` -> push; then ``gap_ns`` to the
    next pop."""

    kind: str = "read"
    pre_ns: int = 300
    disk_ns: int = 5000
    gil_ns: int = 0
    post_ns: int = 200
    gap_ns: int = 50


@dataclass
class BlkBatch:
    """One batch of the servicing thread.  ``kick``: the vCPU thread whose
    notify write starts it (None: no kick), ``kick_at`` where that write is
    relative to the pickup (default ``-notify_ns``; set it to put the kick
    somewhere else, e.g. inside the previous batch), ``wake_ns`` kick ->
    the wakeup of the servicing thread.  ``bql``: the BQL is taken before
    the batch (``bql_wait_ns`` from lock_begin to lock_acquired, a futex
    wait on its word inside when > 2), ``entry_ns`` from the acquisition
    (or the pickup) to the batch span, ``first_pop_ns`` from there to the
    first pop, ``irq_ns`` an interrupt ``tail_gap_ns`` after the last push
    (0: none), ``preempt_ns`` a runnable off-CPU span in the first gap."""

    requests: list[BlkRequest] = field(default_factory=lambda: [BlkRequest()])
    kick: int | None = 11
    notify_ns: int = 2000
    kick_at: int | None = None
    wake_ns: int = 500
    bql: bool = False
    bql_wait_ns: int = 0
    entry_ns: int = 100
    first_pop_ns: int = 150
    irq_ns: int = 0
    tail_gap_ns: int = 40
    preempt_ns: int = 0
    exit_ns: int = 80
    aio: bool = False  # pop every request and queue its I/O, then complete them as the disk does
    aio_order: tuple[int, ...] = ()  # completion order with aio (default: pop order)


DISK_NAMES = {"read": "virtio-blk-read", "write": "virtio-blk-write", "flush": "virtio-blk-flush"}


def blk_batch(s: SyntheticTrace, tid: int, pickup: int, b: BlkBatch) -> tuple[int, list[dict[str, Any]]]:
    """Emit batch ``b`` on servicing thread ``tid`` with its pickup at
    ``pickup``; returns the time the batch (and its BQL hold) ended and,
    per request, what a correct per-request analysis must find."""
    cpu = tid % 2
    if b.kick is not None:
        kick = pickup + (b.kick_at if b.kick_at is not None else -b.notify_ns)
        s.add(kick, b.kick, "pio", addr=NOTIFY_PORT, size=2, write=True, value=0)
        if b.kick_at is None:
            s.add(kick + b.wake_ns, tid, "wakeup", peer_tid=b.kick, cpu=b.kick % 2)
    t = pickup
    if b.bql:
        s.add(t, tid, "lock_begin", addr=BQL_WORD, name="BQL", cpu=-1)
        if b.bql_wait_ns > 2:
            s.add(t + 1, tid, "futex_enter", addr=BQL_WORD, value=FUTEX_WAIT_PRIVATE, cpu=cpu)
            s.add(t + b.bql_wait_ns - 1, tid, "futex_exit", value=0, cpu=cpu)
        t += b.bql_wait_ns
        s.add(t, tid, "lock_acquired", addr=BQL_WORD, name="BQL", cpu=-1)
    t += b.entry_ns
    s.add(t, tid, "dispatch_begin", addr=NOTIFY_PORT, size=2, write=True, name="virtio-blk", cpu=-1)
    t += b.first_pop_ns
    rows: list[dict[str, Any]] = []
    gil_so_far = 0
    if b.aio:
        t = _blk_aio(s, tid, t, b, rows)
    for i, r in enumerate([] if b.aio else b.requests):
        pop = t
        s.add(t, tid, "dispatch_begin", addr=i, size=0, write=False, name="virtio-blk-req", cpu=-1)
        t += r.pre_ns
        if r.kind in DISK_NAMES:
            s.add(t, tid, "dispatch_begin", addr=i, size=0, write=r.kind != "read", name=DISK_NAMES[r.kind], cpu=-1)
            if r.gil_ns:
                g = t + r.disk_ns - r.gil_ns
                s.add(g, tid, "futex_enter", addr=GIL_WORD, value=FUTEX_WAIT_PRIVATE, cpu=cpu)
                s.add(g + r.gil_ns, tid, "futex_exit", value=0, cpu=cpu)
            t += r.disk_ns
            s.add(t, tid, "dispatch_end", addr=i, size=0, write=r.kind != "read", name=DISK_NAMES[r.kind], cpu=-1)
        t += r.post_ns
        s.add(t, tid, "dispatch_end", addr=i, size=0, write=False, name="virtio-blk-req", cpu=-1)
        push = t
        gil_mine = r.gil_ns if r.kind in DISK_NAMES else 0
        rows.append(
            {
                "pop": pop,
                "push": push,
                "kind": r.kind if r.kind in DISK_NAMES else "other",
                "processing_ns": r.pre_ns + r.post_ns,
                "disk_ns": (r.disk_ns - r.gil_ns) if r.kind in DISK_NAMES else 0,
                "gil_before": gil_so_far,
                "gil_mine": gil_mine,
            }
        )
        gil_so_far += gil_mine
        gap = r.gap_ns
        if i == 0 and b.preempt_ns:
            s.add(t + 1, tid, "sched_out", value=0, peer_tid=999, cpu=cpu)
            s.add(t + 1 + b.preempt_ns, tid, "sched_in", peer_tid=999, cpu=cpu)
            gap = max(gap, b.preempt_ns + 2)
        t += gap if i + 1 < len(b.requests) else 0
    irq_s = irq_e = None
    if b.irq_ns:
        irq_s = t + b.tail_gap_ns
        irq_e = irq_s + b.irq_ns
        s.add(irq_s, tid, "dispatch_begin", addr=24, size=0, write=True, name="virtio-blk-irq", cpu=-1)
        s.add(irq_e, tid, "dispatch_end", addr=24, size=0, write=True, name="virtio-blk-irq", cpu=-1)
        t = irq_e
    t += b.exit_ns
    s.add(t, tid, "dispatch_end", addr=NOTIFY_PORT, size=2, write=True, name="virtio-blk", cpu=-1)
    if b.bql:
        s.add(t + 1, tid, "lock_release", addr=BQL_WORD, name="BQL", cpu=-1)
        t += 1
    known = b.kick is not None and b.kick_at is None
    kick_ns = pickup - b.notify_ns
    # What the analysis can see as the pickup: the BQL attempt, else the batch span.
    pickup = pickup if b.bql else pickup + b.entry_ns
    start = kick_ns if known else pickup
    expected = []
    for i, row in enumerate(rows):
        # GIL waits of later requests fall inside this one's window only
        # when it ends at the batch's interrupt.
        later = (gil_so_far - row["gil_before"] - row["gil_mine"]) if irq_s is not None else 0
        expected.append(
            {
                "kind": row["kind"],
                "pos": i,
                "notify_ns": pickup - start,
                "bql_wait_ns": b.bql_wait_ns,
                "queued_ns": row["pop"] - pickup - b.bql_wait_ns - row["gil_before"],
                "processing_ns": row["processing_ns"],
                "disk_ns": row["disk_ns"],
                "lock_wait_ns": row["gil_before"] + row["gil_mine"] + later,
                "tail_ns": irq_s - row["push"] - later if irq_s is not None else 0,
                "irq_ns": b.irq_ns,
                "total_ns": (irq_e if irq_e is not None else row["push"]) - start,
                "bql_held_ns": row["push"] - row["pop"] if b.bql else 0,
                "wait_cpu_ns": b.preempt_ns if b.preempt_ns and (i >= 1 or irq_s is not None) else 0,
                "notify_wakeup_ns": b.wake_ns if known else None,
                "notify_known": known,
                "irq_raised": irq_s is not None,
                "bql_taken": b.bql,
            }
        )
    return t, expected


def _blk_aio(s: SyntheticTrace, tid: int, t: int, b: BlkBatch, rows: list[dict[str, Any]]) -> int:
    """The requests of ``b`` popped one after another, each queueing its I/O
    (``pre_ns`` after its pop), then one wait for the disk (the longest
    ``disk_ns``), then completions in ``aio_order``: ``post_ns`` each from
    its I/O's end to its push.  No GIL waits in this mode."""
    pops, queued = [], []
    for i, r in enumerate(b.requests):
        pops.append(t)
        s.add(t, tid, "dispatch_begin", addr=i, size=0, write=False, name="virtio-blk-req", cpu=-1)
        t += r.pre_ns
        queued.append(t)
        if r.kind in DISK_NAMES:
            s.add(t, tid, "dispatch_begin", addr=i, size=0, write=r.kind != "read", name=DISK_NAMES[r.kind], cpu=-1)
        t += r.gap_ns
    t += max(r.disk_ns for r in b.requests)
    out: dict[int, dict[str, Any]] = {}
    for i in b.aio_order or range(len(b.requests)):
        r = b.requests[i]
        done = t
        if r.kind in DISK_NAMES:
            s.add(t, tid, "dispatch_end", addr=i, size=0, write=r.kind != "read", name=DISK_NAMES[r.kind], cpu=-1)
        t += r.post_ns
        s.add(t, tid, "dispatch_end", addr=i, size=0, write=False, name="virtio-blk-req", cpu=-1)
        disk = done - queued[i] if r.kind in DISK_NAMES else 0
        out[i] = {
            "pop": pops[i],
            "push": t,
            "kind": r.kind if r.kind in DISK_NAMES else "other",
            "processing_ns": t - pops[i] - disk,
            "disk_ns": disk,
            "gil_before": 0,
            "gil_mine": 0,
        }
        t += 5
    rows += [out[i] for i in range(len(b.requests))]
    return t


def blk_trace(
    batches: Sequence[BlkBatch],
    tid: int = 21,
    role: str = "iothread",
    name: str = "IO iothread0",
    spacing_ns: int = 20_000,
    vcpus: Sequence[int] = (11, 12),
) -> tuple[SyntheticTrace, list[dict[str, Any]]]:
    """A trace of ``batches`` on one servicing thread, each pickup
    ``spacing_ns`` after the previous batch ended; the expected rows, in
    order, with ``batch`` numbered from 0."""
    s = SyntheticTrace()
    for i, v in enumerate(vcpus):
        s.thread(v, f"CPU {i}/KVM", "vcpu", i)
        s.add(500, v, "run_enter")
    s.thread(tid, name, role)
    t = 1_000_000
    expected: list[dict[str, Any]] = []
    for k, b in enumerate(batches):
        end, rows = blk_batch(s, tid, t, b)
        expected += [{**r, "batch": k} for r in rows]
        t = end + spacing_ns
    return s, expected
