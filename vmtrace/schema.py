"""The trace schema: the one contract between collectors and analyses.

A vmtrace trace is a single Parquet file (zstd) readable by pandas, DuckDB or
polars without vmtrace installed.  It holds one row per event (the columns in
``EVENT_COLUMNS``) and, in the Parquet key-value metadata under ``vmtrace``, a
JSON object described by ``METADATA_KEYS``.

Every collector writes *raw events* in this schema; every analysis reads only
these columns.  Times are integer nanoseconds of CLOCK_MONOTONIC (what
``bpf_ktime_get_ns``, tracefs' ``mono`` clock and ``time.monotonic_ns`` all
read), so kernel and userspace events of one trace share a time base.

Event rows (``event`` column, the meaning of the per-event columns beside it):

==================  ==========================================================
run_enter           vCPU thread enters ioctl(KVM_RUN)
run_exit            ... leaves it; ``value`` = ioctl return (negative errno)
kvm_entry           about to enter guest mode (only where the host fires it)
kvm_exit            guest mode left; ``value`` = exit reason, ``addr`` = info1
pio                 kvm_pio: ``addr`` = port, ``size``, ``write``, ``value``
mmio                kvm_mmio: ``addr`` = guest physical address, ``size`` ...
msr                 kvm_msr: ``addr`` = MSR index, ``write``, ``value``
userspace_exit      kvm_userspace_exit: ``value`` = KVM_EXIT_* reason (or
                    negative errno when the run was interrupted)
futex_enter         sys_enter_futex: ``addr`` = uaddr, ``value`` = op
futex_exit          sys_exit_futex: ``value`` = return value
sched_out           thread switched out: ``value`` = prev_state (0 runnable),
                    ``peer_tid`` = next tid
sched_in            thread switched in: ``peer_tid`` = previous tid
wakeup              sched_wakeup of ``tid``; ``peer_tid`` = waker tid
lock_begin          userspace: thread starts to take lock ``name`` at ``addr``;
                    ``value`` = index into metadata ``callsites`` (the
                    caller's file:line, QEMU's BQL) or NA
lock_acquired       ... got it
lock_release        ... released it
dispatch_begin      userspace: device callback starts; ``addr`` = port/address,
                    ``size``, ``write``, ``name`` = MemoryRegion name
dispatch_end        ... returns
lost                collector marker: ``value`` events recorded on ``cpu``
                    were lost between the previous event of that CPU and
                    ``ts_ns`` (the first event after the gap, or when the
                    loss was noticed); ``tid`` = -1; ``value`` NA when the
                    kernel said "some" without a count.  Analyses distrust any
                    span across such a gap (see analyses.lost.lost_windows)
==================  ==========================================================

Schema 2 added ``lost``; a schema-1 trace reads as one with no markers (its
metadata ``lost_events`` still counts what was lost, without saying where).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "SCHEMA_VERSION",
    "EVENT_TYPES",
    "EVENT_CODE",
    "EVENT_COLUMNS",
    "METADATA_KEYS",
    "KVM_RUN",
    "KVM_EXIT_REASONS",
    "FUTEX_OPS",
    "ROLE_VCPU",
    "ROLE_MAIN",
    "ROLE_IOTHREAD",
    "ROLE_WORKER",
    "ROLE_OTHER",
    "THREAD_ROLES",
    "role_rank",
]

SCHEMA_VERSION: Final = 2

#: Event names in the order of their category codes in every trace file.
EVENT_TYPES: Final[tuple[str, ...]] = (
    "run_enter",
    "run_exit",
    "kvm_entry",
    "kvm_exit",
    "pio",
    "mmio",
    "msr",
    "userspace_exit",
    "futex_enter",
    "futex_exit",
    "sched_out",
    "sched_in",
    "wakeup",
    "lock_begin",
    "lock_acquired",
    "lock_release",
    "dispatch_begin",
    "dispatch_end",
    # New types go last: the codes of the others are stable across versions.
    "lost",
)

#: Event name -> its category code (its place in ``EVENT_TYPES``): what
#: ``events["event"].cat.codes`` holds, and what collectors write.  The one
#: spelling of the mapping; analyses compare codes, not strings, on big traces.
EVENT_CODE: Final[dict[str, int]] = {name: i for i, name in enumerate(EVENT_TYPES)}

#: Column name -> pandas dtype.  Nullable columns use pandas' masked dtypes.
EVENT_COLUMNS: Final[dict[str, str]] = {
    "ts_ns": "int64",  # CLOCK_MONOTONIC nanoseconds
    "tid": "int32",  # kernel thread id
    "cpu": "int16",  # CPU the event fired on (-1 for userspace probes)
    "event": "category",  # one of EVENT_TYPES
    "addr": "UInt64",  # port / GPA / MSR / futex uaddr / lock address
    "size": "UInt8",  # access size in bytes
    "write": "boolean",  # direction of a pio/mmio/msr access
    "value": "Int64",  # data, reason, futex op or return value
    "peer_tid": "Int32",  # other thread of a sched event
    "name": "category",  # lock or MemoryRegion name for userspace probes
}

#: Keys of the JSON metadata object stored with every trace.
METADATA_KEYS: Final[dict[str, str]] = {
    "schema_version": "int: SCHEMA_VERSION of the writer",
    "vmtrace_version": "str",
    "created": "str: ISO 8601 UTC time the trace was written",
    "host": "dict: kernel release, hostname, cpus",
    "kvm_flavour": "str: vmx | svm | pvm | unknown",
    "tracepoints": "dict: event -> {'available': bool, 'fired': int}",
    "backend": "str: bcc | ftrace | none",
    "mode": "str: default | precise",
    "clock": "str: 'CLOCK_MONOTONIC'",
    "tsc_hz": "int: host TSC frequency used to turn ns into cycles",
    "tsc_hz_source": "str: how tsc_hz was obtained",
    "target": "dict: command (list[str]) or null, pid, exit_status, vmm (qemu | reference | other), vmm_version",
    "threads": "list[dict]: tid, name, role (vcpu|main|iothread|worker|other), vcpu (int or null)",
    "lost_events": "dict: total, per_cpu {cpu: count}",
    "locks": "list[dict]: name, futex_uaddr (int), method (how it was identified), identified (bool)",
    "futex_names": "dict: hex futex word -> lock name the target reported (optional; e.g. GIL)",
    "probes": "dict: which uprobes were attached, and for how long",
    "start_ns": "int: CLOCK_MONOTONIC when recording started",
    "end_ns": "int: ... when it stopped",
    "interrupted": "bool: stopped by a signal",
    "bench": "dict or null: guest-measured results when made by `vmtrace bench --record`",
    "notes": "list[str]: what this host could not separate, and why",
    "callsites": "list[str] (optional): 'file:line' call sites of the BQL, indexed by lock_begin's value",
    "callsite_sampling": "dict (optional): mode full | sampled; sampled adds duty, period_ns, windows [[start_ns, end_ns]]",
}

#: ioctl(KVM_RUN) = _IO(KVMIO=0xAE, 0x80).
KVM_RUN: Final = (0xAE << 8) | 0x80

KVM_EXIT_REASONS: Final[dict[int, str]] = {
    0: "UNKNOWN",
    1: "EXCEPTION",
    2: "IO",
    3: "HYPERCALL",
    4: "DEBUG",
    5: "HLT",
    6: "MMIO",
    7: "IRQ_WINDOW_OPEN",
    8: "SHUTDOWN",
    9: "FAIL_ENTRY",
    10: "INTR",
    17: "INTERNAL_ERROR",
    24: "SYSTEM_EVENT",
    29: "X86_RDMSR",
    30: "X86_WRMSR",
}

#: futex op numbers (low 7 bits, without FUTEX_PRIVATE_FLAG) that block.
FUTEX_OPS: Final[dict[int, str]] = {
    0: "WAIT",
    1: "WAKE",
    4: "CMP_REQUEUE",
    5: "WAKE_OP",
    6: "LOCK_PI",
    7: "UNLOCK_PI",
    9: "WAIT_BITSET",
    10: "WAKE_BITSET",
    11: "WAIT_REQUEUE_PI",
}
FUTEX_CMD_MASK: Final = 0x7F
FUTEX_WAIT_OPS: Final = frozenset({0, 6, 9, 11})
#: ... and those that wake waiters on uaddr.
FUTEX_WAKE_OPS: Final = frozenset({1, 4, 5, 7, 10})

ROLE_VCPU: Final = "vcpu"
ROLE_MAIN: Final = "main"
ROLE_IOTHREAD: Final = "iothread"
ROLE_WORKER: Final = "worker"
ROLE_OTHER: Final = "other"

#: Thread roles in the order reports list them, each with the label a reader
#: sees (vCPUs first: they are what the exit breakdown is about).  A role not
#: in the table sorts after all of these (``role_rank``).
THREAD_ROLES: Final[dict[str, str]] = {
    ROLE_VCPU: "vCPU",
    ROLE_MAIN: "main loop",
    ROLE_IOTHREAD: "IOThread",
    ROLE_WORKER: "worker",
    ROLE_OTHER: "other",
}

_ROLE_RANK: Final[dict[str, int]] = {role: i for i, role in enumerate(THREAD_ROLES)}


def role_rank(role: object) -> int:
    """Place of ``role`` in ``THREAD_ROLES``; an unknown role ranks last."""
    return _ROLE_RANK.get(str(role), len(_ROLE_RANK))
