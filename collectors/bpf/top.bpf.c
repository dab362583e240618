// vmtrace top's kernel side: the exit breakdown aggregated in the kernel.
//
// No record leaves the kernel.  Each vCPU thread's KVM_RUN cycle is cut at
// the same named boundaries the analysis uses (analyses/partition.py,
// DESIGN.md): run_enter, the exit's decode (kvm_pio/kvm_mmio/kvm_msr) or
// else its userspace_exit, run_exit, blocking futex waits between run_exit
// and the next run_enter, kvm_entry/kvm_exit where the host fires them.  At
// the next run_enter the cycle's components are added to a map keyed by
// (tid, exit kind, port or address): a count, sums and log2 histograms.
// Userspace reads the maps once per interval; the counters only grow, so a
// reader never races a writer into a torn reset.
//
// The Python twin of this state machine is vmtrace/top/replay.py; tests run
// both over the same runs and check them against the analysis.  Constants
// come in with -D from vmtrace/top/boundaries.py: component indices (C_*),
// the exit-kind codes (KIND_*), the KVM_EXIT reasons each decode agrees
// with, and the futex ops that block.

#include <uapi/linux/ptrace.h>

#define KVM_RUN_CMD 0xAE80
#define NR_IOCTL 16   // x86_64 syscall numbers: KVM here is x86 only
#define NR_FUTEX 202
#define SLOTS 65536

enum phase { P_NONE = 0, P_RUN = 1, P_USER = 2 };

// One thread's cycle in progress.  Direct-mapped by tid & (SLOTS-1), as
// vmtrace.bpf.c does, holding the full tid so another thread in the same
// slot starts afresh instead of inheriting a stranger's cycle.
struct tstate {
    u32 tid;
    u32 target;      // tgid of a traced process whose slot this is
    u8 phase;
    u8 kind;         // KIND_PIO/MMIO/MSR of the exit's decode, 0 none
    u8 write;
    u8 ndec;         // decodes seen in this cycle
    u8 has_reason;
    u8 prev_io;      // the previous cycle ended with KVM_EXIT_IO/MMIO
    u8 pad[2];
    s32 reason;
    u32 futex_op;
    u64 addr;
    u64 t_enter, t_dec, t_uexit, t_exit;
    u64 t_kentry_c, t_kentry, t_kexit;
    u64 lock_ns, bql_ns;
    u64 f_start, f_uaddr;
    // A closed cycle waiting for its name: an IO/MMIO exit with no decode
    // of its own (upstream KVM traces a read when the next KVM_RUN
    // completes it), named by that completion, as the analysis does.
    u8 pending;
    u64 pkind, paddr;
    u64 pv[NCOMP];
};

struct akey {
    u32 tid;
    u32 kind;        // see vmtrace/top/boundaries.py: kind_code()
    u64 addr;
};

struct aval {
    u64 count;
    u64 sum[NCOMP];
    u32 hist[NCOMP * HBUCKETS];  // flat: bcc's ctypes mirror mis-sizes 2-D arrays
};

struct wval {
    u64 waits;
    u64 ns;
};

BPF_ARRAY(slots, struct tstate, SLOTS);
BPF_HASH(aggs, struct akey, struct aval, AGG_KEYS);
BPF_HASH(words, u64, struct wval, WORD_KEYS);
BPF_PERCPU_ARRAY(zero_aval, struct aval, 1);
BPF_ARRAY(bql_word, u64, 1);
BPF_ARRAY(dropped, u64, 1);            // cycles or waits a full map refused
BPF_HASH(bql_pending, u32, u8, 4096);  // inside the BQL lock function

static __always_inline struct tstate *slot_of(u32 id) {
    int i = id & (SLOTS - 1);
    return slots.lookup(&i);
}

static __always_inline int is_target(void) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tstate *s = slot_of(tgid);
    return tgid != 0 && s && s->target == tgid;
}

// The calling thread's state, claimed for it when another thread held it.
static __always_inline struct tstate *mine(u32 tid) {
    struct tstate *s = slot_of(tid);
    if (!s)
        return 0;
    if (s->tid != tid) {
        u32 target = s->target;
        __builtin_memset(s, 0, sizeof(*s));
        s->tid = tid;
        s->target = target;
    }
    return s;
}

static __always_inline u32 log2_bucket(u64 v) {
    // 0 for 0, else 1 + floor(log2(v)): bucket b holds [2^(b-1), 2^b).
    u32 r = 0;
    if (v == 0)
        return 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    r += 1;
    return r < HBUCKETS ? r : HBUCKETS - 1;
}

static __always_inline void add(struct aval *v, int c, u64 ns) {
    if (c < 0 || c >= NCOMP)
        return;
    v->sum[c] += ns;
    u32 b = log2_bucket(ns);
    if (b < HBUCKETS)
        v->hist[c * HBUCKETS + b] += 1;
}

static __always_inline void drop(void) {
    int zero = 0;
    u64 *d = dropped.lookup(&zero);
    if (d)
        __sync_fetch_and_add(d, 1);
}

static __always_inline int decode_agrees(struct tstate *s) {
    if (!s->has_reason)
        return 1;
    if (s->kind == KIND_PIO)
        return s->reason == REASON_IO;
    if (s->kind == KIND_MMIO)
        return s->reason == REASON_MMIO;
    if (s->kind == KIND_MSR)
        return s->reason == REASON_RDMSR || s->reason == REASON_WRMSR;
    return 0;
}

static __always_inline void commit(struct tstate *s) {
    struct akey key = {};
    key.tid = s->tid;
    key.kind = (u32)s->pkind;
    key.addr = s->paddr;
    s->pending = 0;
    int zero = 0;
    struct aval *init = zero_aval.lookup(&zero);
    if (!init)
        return;
    struct aval *v = aggs.lookup_or_try_init(&key, init);
    if (!v) {
        drop();
        return;
    }
    v->count += 1;
#pragma unroll
    for (int c = 0; c < NCOMP; c++)
        add(v, c, s->pv[c]);
}

// The cycle that began at s->t_enter ends now, at the next run_enter.
static __always_inline void close_cycle(struct tstate *s, u64 now) {
    u64 t_dec;
    int named = s->kind && decode_agrees(s);
    s->paddr = 0;
    if (named) {
        s->pkind = s->kind;
        s->paddr = s->addr;
        t_dec = s->t_dec;
    } else if (s->has_reason) {
        s->pkind = s->reason >= 0 ? KIND_REASON + (u32)s->reason : KIND_ERRNO + (u32)(-s->reason);
        t_dec = s->t_uexit;
    } else {
        s->pkind = KIND_UNKNOWN;
        t_dec = s->t_exit;
    }
    u64 guest = (s->t_kexit && s->t_kentry) ? s->t_kexit - s->t_kentry : 0;
    u64 user = now - s->t_exit;
    u64 lock = s->lock_ns < user ? s->lock_ns : user;
    u64 bql = s->bql_ns < lock ? s->bql_ns : lock;
    s->pv[C_GUEST] = guest;
    s->pv[C_VMEXIT] = t_dec - s->t_enter - guest;
    s->pv[C_EMULATOR] = s->t_exit - t_dec;
    s->pv[C_DISPATCH] = user - lock;
    s->pv[C_LOCK_WAIT] = lock;
    s->pv[C_BQL_WAIT] = bql;
    s->pv[C_TOTAL] = now - s->t_enter;
    s->pending = 1;
    int unnamed_io = !named && s->has_reason && (s->reason == REASON_IO || s->reason == REASON_MMIO);
    if (!unnamed_io)
        commit(s);
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = args->parent_pid;
    u32 child = args->child_pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tstate *p = slot_of(tgid);
    struct tstate *q = slot_of(parent);
    if ((p && p->target == tgid) || (q && q->target == parent)) {
        struct tstate *c = slot_of(child);
        if (c)
            c->target = child;
    }
    return 0;
}

// The syscall decoding below repeats vmtrace.bpf.c's on purpose: bcc
// compiles each program from one source, and top aggregates where record
// streams, so the two share the boundaries (vmtrace/top/boundaries.py), not
// the handlers.
RAW_TRACEPOINT_PROBE(sys_enter) {
    long nr = (long)ctx->args[1];
    if (nr != NR_IOCTL && nr != NR_FUTEX)
        return 0;
    if (!is_target())
        return 0;
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    u64 a0 = 0, a1 = 0;
    bpf_probe_read_kernel(&a0, sizeof(a0), &regs->di);
    bpf_probe_read_kernel(&a1, sizeof(a1), &regs->si);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 now = bpf_ktime_get_ns();
    if (nr == NR_IOCTL) {
        if ((u32)a1 != KVM_RUN_CMD)
            return 0;
        struct tstate *s = mine(tid);
        if (!s)
            return 0;
        if (s->pending)
            commit(s);
        if (s->phase == P_USER) {
            close_cycle(s, now);
            s->prev_io = s->has_reason && (s->reason == REASON_IO || s->reason == REASON_MMIO);
        } else {
            s->prev_io = 0;
        }
        s->phase = P_RUN;
        s->t_enter = now;
        s->kind = 0;
        s->ndec = 0;
        s->has_reason = 0;
        s->t_kentry_c = 0;
        s->t_kentry = 0;
        s->t_kexit = 0;
        s->lock_ns = 0;
        s->bql_ns = 0;
    } else {
        struct tstate *s = mine(tid);
        if (!s)
            return 0;
        s->f_start = now;
        s->f_uaddr = a0;
        s->futex_op = (u32)a1 & FUTEX_CMD_MASK;
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit) {
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = 0;
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    if (nr != NR_IOCTL && nr != NR_FUTEX)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct tstate *s = slot_of(tid);
    if (!s || s->tid != tid)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (nr == NR_IOCTL) {
        if (s->phase != P_RUN)
            return 0;
        if (s->pending)
            commit(s);
        s->phase = P_USER;
        s->t_exit = now;
        return 0;
    }
    if (!s->f_start)
        return 0;
    u64 dur = now - s->f_start;
    u64 uaddr = s->f_uaddr;
    s->f_start = 0;
    if (!FUTEX_BLOCKS(s->futex_op))
        return 0;
    int zero = 0;
    u64 *bql = bql_word.lookup(&zero);
    int on_bql = bql && *bql && *bql == uaddr;
    if (s->phase == P_USER) {
        s->lock_ns += dur;
        if (on_bql)
            s->bql_ns += dur;
    }
    struct wval fresh = {};
    struct wval *w = words.lookup_or_try_init(&uaddr, &fresh);
    if (!w) {
        drop();
        return 0;
    }
    __sync_fetch_and_add(&w->waits, 1);
    __sync_fetch_and_add(&w->ns, dur);
    return 0;
}

static __always_inline struct tstate *running(void) {
    if (!is_target())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct tstate *s = slot_of(tid);
    if (!s || s->tid != tid || s->phase != P_RUN)
        return 0;
    return s;
}

// A decode: the exit's own is the last one before run_exit.  KVM traces a
// userspace read again when the next KVM_RUN completes it (upstream, and
// this project's PVM host); that completion (first decode of a cycle after
// an IO/MMIO exit, a read, before any kvm_exit) repeats the previous exit
// and is not this cycle's.  COMPLETIONS says the host does that (the
// analysis reads it off the trace: analyses/runs.py).
static __always_inline void on_decode(u8 kind, u64 addr, u8 write, u64 val) {
    struct tstate *s = running();
    if (!s)
        return;
    u8 first = s->ndec == 0;
    if (s->ndec < 255)
        s->ndec += 1;
    if (COMPLETIONS && first && !write && s->prev_io && !s->t_kexit) {
        if (s->pending) {
            s->pkind = kind;
            s->paddr = addr;
            commit(s);
        }
        return;
    }
    if (s->pending)
        commit(s);
    s->kind = kind;
    s->addr = addr;
    s->write = write;
    s->t_dec = bpf_ktime_get_ns();
}

static __always_inline u64 read_value(u32 size, const void *data) {
    u64 val = 0;
    if (!data)
        return 0;
    if (size >= 8)
        bpf_probe_read_kernel(&val, 8, data);
    else if (size >= 4)
        bpf_probe_read_kernel(&val, 4, data);
    else if (size >= 2)
        bpf_probe_read_kernel(&val, 2, data);
    else if (size == 1)
        bpf_probe_read_kernel(&val, 1, data);
    return val;
}

// kvm_pio(rw, port, size, count, const void *data)
RAW_TRACEPOINT_PROBE(kvm_pio) {
    u32 size = (u32)ctx->args[2];
    u64 val = read_value(size, (const void *)ctx->args[4]);
    on_decode(KIND_PIO, (u32)ctx->args[1], (u32)ctx->args[0] != 0, val);
    return 0;
}

// kvm_mmio(int type, int len, u64 gpa, void *val); KVM_TRACE_MMIO_WRITE is 2
RAW_TRACEPOINT_PROBE(kvm_mmio) {
    u32 len = (u32)ctx->args[1];
    u64 val = read_value(len, (const void *)ctx->args[3]);
    on_decode(KIND_MMIO, ctx->args[2], (int)ctx->args[0] == 2, val);
    return 0;
}

// kvm_msr(unsigned write, u32 ecx, u64 data, bool exception)
RAW_TRACEPOINT_PROBE(kvm_msr) {
    on_decode(KIND_MSR, (u32)ctx->args[1], (u32)ctx->args[0] != 0, 1);
    return 0;
}

// kvm_userspace_exit(u32 reason, int errno)
RAW_TRACEPOINT_PROBE(kvm_userspace_exit) {
    struct tstate *s = running();
    if (!s)
        return 0;
    int err = (int)ctx->args[1];
    s->reason = err < 0 ? err : (s32)(u32)ctx->args[0];
    s->has_reason = 1;
    s->t_uexit = bpf_ktime_get_ns();
    return 0;
}

#ifdef HAVE_KVM_ENTRY
TRACEPOINT_PROBE(kvm, kvm_entry) {
    struct tstate *s = running();
    if (s)
        s->t_kentry_c = bpf_ktime_get_ns();
    return 0;
}
#endif

#ifdef HAVE_KVM_EXIT
TRACEPOINT_PROBE(kvm, kvm_exit) {
    struct tstate *s = running();
    if (s) {
        if (s->pending)
            commit(s);
        s->t_kexit = bpf_ktime_get_ns();
        s->t_kentry = s->t_kentry_c;
    }
    return 0;
}
#endif

// --- naming the BQL, as record does (collectors/bpf/vmtrace.bpf.c) --------
// The first qemu_mutex_lock_impl() a thread calls inside the BQL lock
// function locks the BQL; its QemuMutex starts with the futex word.
int bql_lock_enter(struct pt_regs *ctx) {
    if (!is_target())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u8 one = 1;
    bql_pending.update(&tid, &one);
    return 0;
}

int mutex_lock_enter(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (bql_pending.lookup(&tid) == NULL)
        return 0;
    bql_pending.delete(&tid);
    int zero = 0;
    u64 addr = PT_REGS_PARM1(ctx);
    u64 *w = bql_word.lookup(&zero);
    if (w && *w == 0)
        *w = addr;
    return 0;
}
