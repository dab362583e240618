// vmtrace's kernel side for the bcc backend.
//
// Every probe filters in the kernel to the target's process tree and appends
// a fixed-size record to a per-CPU chunk; a full chunk goes to the ring buffer
// in one copy.  Batching is what keeps the observer effect low: userspace
// wakes once per CHUNK_RECS events instead of once per event.
//
// The record layout is mirrored once, as a numpy dtype, in bcc_backend.py.
// EV_* codes are passed in with -D from vmtrace.schema.EVENT_TYPES; HAVE_*
// flags say which tracepoints this host has.

#include <uapi/linux/ptrace.h>

#define CHUNK_RECS 128
#define KVM_RUN_CMD 0xAE80

struct rec {
    u64 ts;
    u64 addr;
    s64 value;
    u32 tid;
    s32 peer;
    u8 event;
    u8 size;
    u8 write;
    u8 pad[5];
};

struct chunk {
    u32 n;
    u32 cpu;
    struct rec recs[CHUNK_RECS];
};

BPF_RINGBUF_OUTPUT(rb, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(chunks, struct chunk, 1);
BPF_PERCPU_ARRAY(lost, u64, 1);
BPF_HASH(targets, u32, u8, 1024);   // tgids being traced
BPF_HASH(tids, u32, u8, 65536);      // threads of the target seen so far
BPF_HASH(in_run, u32, u8, 4096);     // threads inside ioctl(KVM_RUN)
BPF_ARRAY(bql_word, u64, 1);         // the BQL's futex word, once identified
BPF_HASH(bql_pending, u32, u8, 4096);  // inside the BQL lock function

static __always_inline int is_target(void) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    return targets.lookup(&tgid) != NULL;
}

static __always_inline void flush_chunk(struct chunk *c) {
    // No wakeup: a woken consumer lands on this CPU (wake-affine) and
    // preempts the vCPU thread.  The consumer polls on a timer instead.
    if (rb.ringbuf_output(c, sizeof(*c), BPF_RB_NO_WAKEUP) != 0) {
        int zero = 0;
        u64 *l = lost.lookup(&zero);
        if (l)
            *l += c->n;
    }
    c->n = 0;
}

static __always_inline void emit(u32 tid, u8 event, u64 addr, s64 value, u8 size, u8 write, s32 peer) {
    int zero = 0;
    struct chunk *c = chunks.lookup(&zero);
    if (!c)
        return;
    u32 n = c->n;
    if (n >= CHUNK_RECS)
        n = 0;
    struct rec *r = &c->recs[n];
    r->ts = bpf_ktime_get_ns();
    r->addr = addr;
    r->value = value;
    r->tid = tid;
    r->peer = peer;
    r->event = event;
    r->size = size;
    r->write = write;
    c->n = n + 1;
    c->cpu = bpf_get_smp_processor_id();
    if (c->n >= CHUNK_RECS)
        flush_chunk(c);
}

static __always_inline u32 cur_tid(void) {
    return (u32)bpf_get_current_pid_tgid();
}

// A thread's name travels as one record: 16 bytes of comm in addr+value,
// the thread's process id in peer (a thread whose tid is its tgid is a
// process's main thread).
static __always_inline void emit_comm(u32 tid, const char *comm16) {
    u64 words[2] = {};
    bpf_probe_read_kernel(words, 16, comm16);
    emit(tid, EV_COMM, words[0], (s64)words[1], 0, 0, bpf_get_current_pid_tgid() >> 32);
}

static __always_inline void note_thread(u32 tid) {
    u8 one = 1;
    if (tids.lookup(&tid) == NULL) {
        tids.update(&tid, &one);
        char comm[16] = {};
        bpf_get_current_comm(comm, sizeof(comm));
        emit_comm(tid, comm);
    }
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = args->parent_pid;
    u32 child = args->child_pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (targets.lookup(&tgid) || targets.lookup(&parent)) {
        u8 one = 1;
        targets.update(&child, &one);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_ioctl) {
    if (args->cmd != KVM_RUN_CMD || !is_target())
        return 0;
    u32 tid = cur_tid();
    u8 one = 1;
    note_thread(tid);
    in_run.update(&tid, &one);
    emit(tid, EV_RUN_ENTER, 0, 0, 0, 0, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl) {
    u32 tid = cur_tid();
    if (in_run.lookup(&tid) == NULL)
        return 0;
    in_run.delete(&tid);
    emit(tid, EV_RUN_EXIT, 0, args->ret, 0, 0, 0);
    return 0;
}

#ifdef HAVE_KVM_ENTRY
TRACEPOINT_PROBE(kvm, kvm_entry) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_KVM_ENTRY, args->rip, 0, 0, 0, 0);
    return 0;
}
#endif

#ifdef HAVE_KVM_EXIT
TRACEPOINT_PROBE(kvm, kvm_exit) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_KVM_EXIT, args->info1, args->exit_reason, 0, 0, 0);
    return 0;
}
#endif

TRACEPOINT_PROBE(kvm, kvm_pio) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_PIO, args->port, args->val, args->size, args->rw != 0, 0);
    return 0;
}

TRACEPOINT_PROBE(kvm, kvm_mmio) {
    if (!is_target())
        return 0;
    // KVM_TRACE_MMIO_WRITE is 2
    emit(cur_tid(), EV_MMIO, args->gpa, args->val, args->len, args->type == 2, 0);
    return 0;
}

TRACEPOINT_PROBE(kvm, kvm_msr) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_MSR, args->ecx, args->data, 0, args->write != 0, 0);
    return 0;
}

TRACEPOINT_PROBE(kvm, kvm_userspace_exit) {
    if (!is_target())
        return 0;
    s64 v = args->errno < 0 ? (s64)args->errno : (s64)args->reason;
    emit(cur_tid(), EV_USERSPACE_EXIT, 0, v, 0, 0, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_futex) {
    if (!is_target())
        return 0;
    u32 tid = cur_tid();
    note_thread(tid);
    emit(tid, EV_FUTEX_ENTER, (u64)args->uaddr, args->op, 0, 0, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_FUTEX_EXIT, 0, args->ret, 0, 0, 0);
    return 0;
}

#ifdef WITH_SCHED
TRACEPOINT_PROBE(sched, sched_switch) {
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;
    if (is_target()) {
        note_thread(prev);
        emit(prev, EV_SCHED_OUT, 0, args->prev_state, 0, 0, next);
    }
    if (next != 0 && tids.lookup(&next))
        emit(next, EV_SCHED_IN, 0, 0, 0, 0, prev);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    u32 pid = args->pid;
    if (tids.lookup(&pid) == NULL)
        return 0;
    emit(pid, EV_WAKEUP, 0, 0, 0, 0, cur_tid());
    return 0;
}
#endif

TRACEPOINT_PROBE(task, task_rename) {
    if (!is_target())
        return 0;
    emit_comm(args->pid, args->newcomm);
    return 0;
}

// --- uprobes on the VMM (QEMU) --------------------------------------------

// Identification: the first qemu_mutex_lock_impl() a thread calls inside the
// BQL lock function locks the BQL; its QemuMutex starts with the futex word.
int bql_lock_enter(struct pt_regs *ctx) {
    if (!is_target())
        return 0;
    u32 tid = cur_tid();
    u8 one = 1;
    bql_pending.update(&tid, &one);
#ifdef PRECISE
    int zero = 0;
    u64 *w = bql_word.lookup(&zero);
    emit(tid, EV_LOCK_BEGIN, w ? *w : 0, 0, 0, 0, 0);
#endif
    return 0;
}

int mutex_lock_enter(struct pt_regs *ctx) {
    u32 tid = cur_tid();
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

#ifdef PRECISE
int bql_lock_return(struct pt_regs *ctx) {
    if (!is_target())
        return 0;
    int zero = 0;
    u64 *w = bql_word.lookup(&zero);
    emit(cur_tid(), EV_LOCK_ACQUIRED, w ? *w : 0, 0, 0, 0, 0);
    return 0;
}

int bql_unlock_enter(struct pt_regs *ctx) {
    if (!is_target())
        return 0;
    int zero = 0;
    u64 *w = bql_word.lookup(&zero);
    emit(cur_tid(), EV_LOCK_RELEASE, w ? *w : 0, 0, 0, 0, 0);
    return 0;
}

// memory_region_dispatch_read(mr, addr, pval, op, attrs) and
// memory_region_dispatch_write(mr, addr, data, op, attrs): op's low bits are
// log2 of the access size.
int dispatch_read_enter(struct pt_regs *ctx) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_DISPATCH_BEGIN, PT_REGS_PARM2(ctx), 0, 1 << (PT_REGS_PARM4(ctx) & 3), 0, 0);
    return 0;
}

int dispatch_write_enter(struct pt_regs *ctx) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_DISPATCH_BEGIN, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx),
         1 << (PT_REGS_PARM4(ctx) & 3), 1, 0);
    return 0;
}

int dispatch_return(struct pt_regs *ctx) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_DISPATCH_END, 0, 0, 0, 0, 0);
    return 0;
}
#endif
