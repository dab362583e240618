// vmtrace's kernel side for the bcc backend.
//
// Every probe filters in the kernel to the target's process tree and appends
// a fixed-size record to a per-CPU chunk; a full chunk goes to the ring buffer
// in one copy.  Batching is what keeps the observer effect low: userspace
// wakes once per CHUNK_RECS events instead of once per event.
//
// The record layout is mirrored once, as a numpy dtype, in bcc_backend.py.
// EV_* codes are passed in with -D from vmtrace.schema.EVENT_TYPES; HAVE_*
// flags say which tracepoints this host has; CHUNK_RECS comes from
// bcc_backend.py, which decodes the chunks.

#include <uapi/linux/ptrace.h>

#define KVM_RUN_CMD 0xAE80
#define NR_IOCTL 16   // x86_64 syscall numbers: KVM here is x86 only
#define NR_FUTEX 202

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

// lost: records this CPU could not hand to the ring buffer so far.  Every
// chunk carries the running count, so userspace finds each gap (the count
// grew between two chunks of a CPU) and its size without a record of its own
// and without touching anything on the hot path: it changes only when a
// chunk is dropped.
struct chunk {
    u32 n;
    u32 cpu;
    u64 lost;
    struct rec recs[CHUNK_RECS];
};

BPF_RINGBUF_OUTPUT(rb, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(chunks, struct chunk, 1);
BPF_HASH(targets, u32, u8, 1024);   // tgids being traced (the full list)
// The hot path asks "is this a target / a known thread / inside KVM_RUN?" on
// every ioctl, futex and context switch of the host.  Hash maps answer that
// with locking and hashing; these direct-mapped arrays (slot = id & 0xffff,
// holding the full id so another id in the same slot never matches) answer
// with one load.  Two live target threads sharing a slot would shadow each
// other; with pid_max 4M that needs 64 target threads in one slot's class.
#define SLOTS 65536
struct slot {
    u32 target;  // tgid of a traced process
    u32 seen;    // tid of a target thread already named
    u32 run;     // tid of a thread inside ioctl(KVM_RUN)
};
BPF_ARRAY(slots, struct slot, SLOTS);
BPF_ARRAY(bql_word, u64, 1);         // the BQL's futex word, once identified
BPF_HASH(bql_pending, u32, u8, 4096);  // inside the BQL lock function

static __always_inline struct slot *slot_of(u32 id) {
    int i = id & (SLOTS - 1);
    return slots.lookup(&i);
}

#define SLOT_HAS(field, id) slot_has_##field(id)
#define SLOT_SET(field, id, value) slot_set_##field(id, value)
#define SLOT_FIELD(field)                                                    \
    static __always_inline int slot_has_##field(u32 id) {                    \
        struct slot *s = slot_of(id);                                        \
        /* id 0 (the idle task) would match an empty slot's zero */          \
        return id != 0 && s && s->field == id;                               \
    }                                                                        \
    static __always_inline void slot_set_##field(u32 id, u32 value) {        \
        struct slot *s = slot_of(id);                                        \
        if (s)                                                               \
            s->field = value;                                                \
    }
SLOT_FIELD(target)
SLOT_FIELD(seen)
SLOT_FIELD(run)

static __always_inline int is_target(void) {
    return SLOT_HAS(target, bpf_get_current_pid_tgid() >> 32);
}

static __always_inline void flush_chunk(struct chunk *c) {
    // No wakeup: a woken consumer lands on this CPU (wake-affine) and
    // preempts the vCPU thread.  The consumer polls on a timer instead.
    if (rb.ringbuf_output(c, sizeof(*c), BPF_RB_NO_WAKEUP) != 0)
        c->lost += c->n;
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
    if (!SLOT_HAS(seen, tid)) {
        SLOT_SET(seen, tid, tid);
        char comm[16] = {};
        bpf_get_current_comm(comm, sizeof(comm));
        emit_comm(tid, comm);
    }
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = args->parent_pid;
    u32 child = args->child_pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (SLOT_HAS(target, tgid) || SLOT_HAS(target, parent)) {
        u8 one = 1;
        targets.update(&child, &one);
        SLOT_SET(target, child, child);
    }
    return 0;
}

// The syscalls come through the raw sys_enter/sys_exit tracepoints.  Any
// syscall tracepoint already sends every syscall of the host down the
// tracing path; the per-syscall ones then build a perf record of the
// arguments for the program.  The raw ones hand over the registers, and a
// syscall that is neither ioctl nor futex leaves after one compare.
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
    u32 tid = cur_tid();
    if (nr == NR_IOCTL) {
        if ((u32)a1 != KVM_RUN_CMD)
            return 0;
        note_thread(tid);
        SLOT_SET(run, tid, tid);
        emit(tid, EV_RUN_ENTER, 0, 0, 0, 0, 0);
    } else {
        note_thread(tid);
        emit(tid, EV_FUTEX_ENTER, a0, (s32)a1, 0, 0, 0);
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit) {
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = 0;
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    s64 ret = (s64)ctx->args[1];
    u32 tid = cur_tid();
    if (nr == NR_IOCTL) {
        if (!SLOT_HAS(run, tid))
            return 0;
        SLOT_SET(run, tid, 0);
        emit(tid, EV_RUN_EXIT, 0, ret, 0, 0, 0);
    } else if (nr == NR_FUTEX && is_target()) {
        emit(tid, EV_FUTEX_EXIT, 0, ret, 0, 0, 0);
    }
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

// The kvm events use raw tracepoints: the program gets the tracepoint's own
// arguments, and the kernel skips formatting a perf record nobody reads.
// That record-building was most of the per-exit cost of these probes.

// An access's data, 1 to 8 bytes; the branches give the verifier constant sizes.
static __always_inline void read_value(u64 *val, u32 size, const void *data) {
    if (size >= 8)
        bpf_probe_read_kernel(val, 8, data);
    else if (size >= 4)
        bpf_probe_read_kernel(val, 4, data);
    else if (size >= 2)
        bpf_probe_read_kernel(val, 2, data);
    else if (size == 1)
        bpf_probe_read_kernel(val, 1, data);
}

// One handler per tracepoint, alike in shape (filter, read the arguments,
// emit): deliberate, as for the probes below; each tracepoint lays out its
// arguments differently, and that difference is the handler.
// kvm_pio(rw, port, size, count, const void *data)
RAW_TRACEPOINT_PROBE(kvm_pio) {
    if (!is_target())
        return 0;
    u32 size = (u32)ctx->args[2];
    u64 val = 0;
    const void *data = (const void *)ctx->args[4];
    if (data)
        read_value(&val, size, data);
    emit(cur_tid(), EV_PIO, (u32)ctx->args[1], val, size, (u32)ctx->args[0] != 0, 0);
    return 0;
}

// kvm_mmio(int type, int len, u64 gpa, void *val); KVM_TRACE_MMIO_WRITE is 2
RAW_TRACEPOINT_PROBE(kvm_mmio) {
    if (!is_target())
        return 0;
    u32 len = (u32)ctx->args[1];
    u64 val = 0;
    const void *data = (const void *)ctx->args[3];
    if (data)
        read_value(&val, len, data);
    emit(cur_tid(), EV_MMIO, ctx->args[2], val, len, (int)ctx->args[0] == 2, 0);
    return 0;
}

// kvm_msr(unsigned write, u32 ecx, u64 data, bool exception)
RAW_TRACEPOINT_PROBE(kvm_msr) {
    if (!is_target())
        return 0;
    emit(cur_tid(), EV_MSR, (u32)ctx->args[1], ctx->args[2], 0, (u32)ctx->args[0] != 0, 0);
    return 0;
}

// kvm_userspace_exit(u32 reason, int errno)
RAW_TRACEPOINT_PROBE(kvm_userspace_exit) {
    if (!is_target())
        return 0;
    int err = (int)ctx->args[1];
    s64 v = err < 0 ? (s64)err : (s64)(u32)ctx->args[0];
    emit(cur_tid(), EV_USERSPACE_EXIT, 0, v, 0, 0, 0);
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
    if (next != 0 && SLOT_HAS(seen, next))
        emit(next, EV_SCHED_IN, 0, 0, 0, 0, prev);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    u32 pid = args->pid;
    if (!SLOT_HAS(seen, pid))
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

// Call sites: QEMU passes the caller's __FILE__ and __LINE__ to the BQL
// function (qemu_mutex_lock_iothread_impl(file, line) up to 8.x,
// bql_lock_impl(file, line) since 9.0).  lock_begin carries the file
// pointer in addr and the line in value; each distinct pointer's string is
// read once into site_files (the strings are constants in QEMU's .rodata,
// so the pointer names the file for the life of the process).  sites_on[0]
// is 1 while call sites are recorded: always with PRECISE or full
// CALLSITES, inside the sampling windows otherwise.
#if defined(PRECISE) || defined(CALLSITES)
#define SITE_FILE_LEN 128
struct site_file {
    char name[SITE_FILE_LEN];
};
BPF_HASH(site_files, u64, struct site_file, 1024);
BPF_ARRAY(sites_on, u32, 1);

static __always_inline int recording_sites(void) {
    int zero = 0;
    u32 *on = sites_on.lookup(&zero);
    return on && *on;
}
#endif

// Identification: the first qemu_mutex_lock_impl() a thread calls inside the
// BQL lock function locks the BQL; its QemuMutex starts with the futex word.
int bql_lock_enter(struct pt_regs *ctx) {
    if (!is_target())
        return 0;
    u32 tid = cur_tid();
    u8 one = 1;
    bql_pending.update(&tid, &one);
#if defined(PRECISE) || defined(CALLSITES)
    if (!recording_sites())
        return 0;
    u64 file = PT_REGS_PARM1(ctx);
    if (file && site_files.lookup(&file) == NULL) {
        struct site_file sf = {};
        bpf_probe_read_user_str(sf.name, sizeof(sf.name), (const void *)file);
        site_files.update(&file, &sf);
    }
    emit(tid, EV_LOCK_BEGIN, file, (s32)PT_REGS_PARM2(ctx), 0, 0, 0);
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

#if defined(PRECISE) || defined(CALLSITES)
// One program per probe point, each a few lines alike (filter, look up, emit):
// deliberate.  bcc attaches a function by name, with no argument to tell the
// points apart, and a macro would hide which event each one emits.
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
#endif

#ifdef PRECISE

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
