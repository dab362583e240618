"""The boundaries top cuts an exit at, and the constants its BPF side uses.

They are the analysis's (``analyses/partition.py``, DESIGN.md), named once
here for both halves of top: the BPF program gets them as ``-D`` flags
(``cflags``) and ``replay`` uses them in Python.  A test checks that
``COMPONENTS`` is the analysis's partition with ``device`` folded into
``dispatch`` (top places no uprobes on the device callbacks) plus the
``bql_wait`` share and the ``total``.

==========  ============================================================
vmexit      run_enter -> decode (else userspace_exit, else run_exit),
            less guest
guest       last kvm_entry -> last kvm_exit before run_exit (0 where
            the host does not fire them: then it is inside vmexit)
emulator    decode -> run_exit
lock_wait   blocking futex waits between run_exit and the next run_enter
bql_wait    the part of lock_wait on the BQL's futex word
dispatch    run_exit -> next run_enter, less lock_wait
total       run_enter -> next run_enter
==========  ============================================================

This module imports nothing from collectors or analyses: both sides of the
layering read it.
"""

from __future__ import annotations

from typing import Final

from vmtrace.schema import FUTEX_CMD_MASK, FUTEX_WAIT_OPS

__all__ = [
    "BOUNDARIES",
    "COMPONENTS",
    "SHOWN",
    "HBUCKETS",
    "KIND_UNKNOWN",
    "KIND_PIO",
    "KIND_MMIO",
    "KIND_MSR",
    "KIND_REASON",
    "KIND_ERRNO",
    "DECODE_KINDS",
    "REASON_OF_DECODE",
    "cflags",
    "log2_bucket",
    "bucket_bounds",
]

#: The named events a cycle is cut at, in the order they happen.
BOUNDARIES: Final = (
    "run_enter",
    "kvm_entry",
    "kvm_exit",
    "decode",
    "userspace_exit",
    "run_exit",
    "futex_enter",
    "futex_exit",
    "run_enter",
)

#: Index order of the kernel's sums and histograms.
COMPONENTS: Final = ("guest", "vmexit", "emulator", "dispatch", "lock_wait", "bql_wait", "total")

#: The components shown as columns (total is their sum; bql_wait is a part
#: of lock_wait, shown apart as the issue's "BQL").
SHOWN: Final = ("vmexit", "emulator", "dispatch", "lock_wait", "bql_wait")

#: log2 buckets: 0 holds 0 ns, bucket b >= 1 holds [2**(b-1), 2**b) ns; the
#: last also holds everything above (2**46 ns is 19 hours).
HBUCKETS: Final = 48

# Exit kinds: a decode's event, a KVM_EXIT reason, or an errno that
# interrupted KVM_RUN (analyses/runs.py names them the same way).
KIND_UNKNOWN: Final = 0
KIND_PIO: Final = 1
KIND_MMIO: Final = 2
KIND_MSR: Final = 3
KIND_REASON: Final = 0x100
KIND_ERRNO: Final = 0x10000
DECODE_KINDS: Final = {KIND_PIO: "pio", KIND_MMIO: "mmio", KIND_MSR: "msr"}

#: The KVM_EXIT_* reasons each decode kind ends KVM_RUN with (a decode of
#: another kind is an exit the kernel handled, not this one).
REASON_OF_DECODE: Final = {KIND_PIO: (2,), KIND_MMIO: (6,), KIND_MSR: (29, 30)}

#: Keys per map: exits kinds x ports x threads, and futex words.
AGG_KEYS: Final = 4096
WORD_KEYS: Final = 4096


def cflags(completions: bool = True) -> list[str]:
    """The ``-D`` flags ``collectors/bpf/top.bpf.c`` is compiled with (the
    loader adds ``HAVE_KVM_ENTRY``/``HAVE_KVM_EXIT`` for what the host has).
    ``completions``: the host's KVM traces a userspace read again when the
    next KVM_RUN completes it (upstream KVM does, and so does this project's
    PVM host); that decode then names the previous exit, not its own."""
    flags = [f"-DC_{name.upper()}={i}" for i, name in enumerate(COMPONENTS)]
    flags += [
        f"-DNCOMP={len(COMPONENTS)}",
        f"-DHBUCKETS={HBUCKETS}",
        f"-DAGG_KEYS={AGG_KEYS}",
        f"-DWORD_KEYS={WORD_KEYS}",
    ]
    flags += [
        f"-DKIND_UNKNOWN={KIND_UNKNOWN}",
        f"-DKIND_PIO={KIND_PIO}",
        f"-DKIND_MMIO={KIND_MMIO}",
        f"-DKIND_MSR={KIND_MSR}",
        f"-DKIND_REASON={KIND_REASON}",
        f"-DKIND_ERRNO={KIND_ERRNO}",
    ]
    flags += [
        f"-DREASON_IO={REASON_OF_DECODE[KIND_PIO][0]}",
        f"-DREASON_MMIO={REASON_OF_DECODE[KIND_MMIO][0]}",
        f"-DREASON_RDMSR={REASON_OF_DECODE[KIND_MSR][0]}",
        f"-DREASON_WRMSR={REASON_OF_DECODE[KIND_MSR][1]}",
    ]
    blocks = "||".join(f"(op)=={op}" for op in sorted(FUTEX_WAIT_OPS))
    flags.append(f"-DCOMPLETIONS={int(completions)}")
    flags += [f"-DFUTEX_CMD_MASK={FUTEX_CMD_MASK}", f"-DFUTEX_BLOCKS(op)=({blocks})"]
    return flags


def log2_bucket(ns: int) -> int:
    """The histogram bucket of ``ns`` (as ``log2_bucket`` in the BPF side)."""
    return min(int(ns).bit_length(), HBUCKETS - 1) if ns > 0 else 0


def bucket_bounds(b: int) -> tuple[float, float]:
    """[low, high) nanoseconds of bucket ``b`` (the last is open above)."""
    if b == 0:
        return 0.0, 1.0
    high = float("inf") if b == HBUCKETS - 1 else float(2**b)
    return float(2 ** (b - 1)), high
