/* The virtio-blk benchmarks, on the driver in virtio_blk.c.
 *
 *   blk_randread / blk_randwrite  every vCPU keeps qd random 4 KiB requests in
 *                                 flight until it has completed `iterations`
 *                                 (after `warmup` untimed ones)
 *   blk_verify                    write a pattern (a function of sector and
 *                                 seed), flush, read it back, read another
 *                                 region; print one checksum per region
 *   blk_malformed                 on the BSP: one malformed request of each
 *                                 kind, on a freshly reset device, and what
 *                                 the device answered
 *
 * On a host that emulates every guest instruction (PVM: ~1000 TSC cycles
 * each) the driver's own path is a visible part of each request's cost; it
 * is the same path on every VMM, so comparisons between VMMs and modes hold. */
#include <stddef.h>
#include <stdint.h>

#include "acpi.h"
#include "blk_bench.h"
#include "console.h"
#include "io.h"
#include "lib.h"
#include "smp.h"
#include "timer.h"
#include "virtio_blk.h"

struct vcpu_stats {
    uint64_t t0, t1;
    uint32_t requests;         /* timed requests */
    uint32_t errors;           /* completions whose status was not OK, warmup included */
    uint8_t last_error;
    uint8_t stalled;
};

/* The requests one vCPU issues: k = 0 .. n-1, each prepared on a free slot
 * of its own and completed (status in the slot) in any order. */
struct job {
    uint32_t n;
    void (*prepare)(struct blk_slot *s, uint32_t k, int vcpu);
    void (*complete)(struct blk_slot *s, uint32_t k, int vcpu);
};

static struct bench_env env;
static const char *bench_name;
static uint32_t rand_type;                 /* VIRTIO_BLK_T_IN or _OUT */
static int verifying;                      /* blk_verify: print checksums */
static uint32_t disk_blocks;               /* whole 4 KiB blocks on the disk */
static uint64_t stall_ticks, answer_ticks;
static uint32_t rng[MAX_CPUS];
static struct vcpu_stats stats[MAX_CPUS];
static struct barrier phase;

static uint32_t written_hash[BLK_VERIFY_MAX_BLOCKS], read_hash[BLK_VERIFY_MAX_BLOCKS];
static volatile uint32_t readback_bad;      /* blocks that did not read back as written */
static int flush_status = -2;              /* -2: not sent (no FLUSH feature) */

/* ---- shared -------------------------------------------------------------- */

static int common_setup(const struct bench_env *e, const char *name, uint32_t qd, const char **err)
{
    int v;

    env = *e;
    bench_name = name;
    if (qd > BLK_MAX_QD) {
        *err = "qd must be at most 64";
        return -1;
    }
    if (blk_init(e->nvcpus, qd, e->mem_top, err))
        return -1;
    if (blk.capacity < BLK_SECTORS_PER_BLOCK) {
        *err = "the disk is smaller than one 4 KiB block";
        return -1;
    }
    disk_blocks = blk.capacity / BLK_SECTORS_PER_BLOCK > 0xffffffffull
                      ? 0xffffffffu : (uint32_t)(blk.capacity / BLK_SECTORS_PER_BLOCK);
    stall_ticks = tsc_hz() / 1000 * BLK_STALL_MS;
    answer_ticks = tsc_hz() / 1000 * e->blk.timeout_ms;
    for (v = 0; v < e->nvcpus; v++) {
        rng[v] = (e->blk.seed * BLK_PATTERN_SECTOR_MUL) ^ ((uint32_t)(v + 1) * BLK_PATTERN_WORD_MUL);
        if (!rng[v])
            rng[v] = 1;                      /* xorshift's one fixed point */
    }
    return 0;
}

/* Keep qd requests of this vCPU in flight until all n have completed.
 * Returns 0, or -1 if nothing completed for BLK_STALL_MS. */
static int run_job(int vcpu, const struct job *j)
{
    struct blk_slot *mine = &blk.slots[(uint32_t)vcpu * blk.qd], *s;
    uint16_t ready[BLK_MAX_QD];
    uint32_t issued = 0, done = 0, n = 0, i;

    for (i = 0; i < blk.qd && issued < j->n; i++, issued++) {
        mine[i].tag = issued;
        j->prepare(&mine[i], issued, vcpu);
        ready[n++] = mine[i].head;
    }
    if (n)
        blk_publish(ready, n);
    while (done < j->n) {
        s = blk_wait_completion(vcpu, stall_ticks);
        if (!s)
            return -1;
        n = 0;
        do {                                 /* everything completed so far, one publish */
            j->complete(s, s->tag, vcpu);
            done++;
            if (issued < j->n) {
                s->tag = issued;
                j->prepare(s, issued++, vcpu);
                ready[n++] = s->head;
            }
        } while ((s = blk_pop_completion(vcpu)));
        if (n)
            blk_publish(ready, n);
    }
    return 0;
}

static void count_status(struct blk_slot *s, int vcpu)
{
    if (s->status != VIRTIO_BLK_S_OK) {
        stats[vcpu].errors++;
        stats[vcpu].last_error = s->status;
    }
}

static void fill_pattern(uint32_t *w, uint32_t sector)
{
    uint32_t s, i;

    for (s = 0; s < BLK_SECTORS_PER_BLOCK; s++) {
        uint32_t base = BLK_PATTERN(env.blk.seed, sector + s, 0), step = 0;

        for (i = 0; i < BLK_SECTOR_SIZE / 4; i++, step += BLK_PATTERN_WORD_MUL)
            *w++ = base ^ step;
    }
}

static uint32_t hash_block(const uint32_t *w)
{
    uint32_t h = BLK_FNV_OFFSET, i;

    for (i = 0; i < BLK_BLOCK_SIZE / 4; i++)
        h = (h ^ w[i]) * BLK_FNV_PRIME;
    return h;
}

/* hash_block, and whether the block holds the pattern for sector. */
static uint32_t hash_block_check(const uint32_t *w, uint32_t sector, int *matches)
{
    uint32_t h = BLK_FNV_OFFSET, diff = 0, s, i;

    for (s = 0; s < BLK_SECTORS_PER_BLOCK; s++) {
        uint32_t base = BLK_PATTERN(env.blk.seed, sector + s, 0), step = 0;

        for (i = 0; i < BLK_SECTOR_SIZE / 4; i++, step += BLK_PATTERN_WORD_MUL, w++) {
            h = (h ^ *w) * BLK_FNV_PRIME;
            diff |= *w ^ base ^ step;
        }
    }
    *matches = diff == 0;
    return h;
}

static uint32_t hash_words(const uint32_t *w, uint32_t n)
{
    uint32_t h = BLK_FNV_OFFSET, i;

    for (i = 0; i < n; i++)
        h = (h ^ w[i]) * BLK_FNV_PRIME;
    return h;
}

/* ---- blk_randread, blk_randwrite ----------------------------------------- */

static void prepare_random(struct blk_slot *s, uint32_t k, int vcpu)
{
    uint32_t x = rng[vcpu];

    (void)k;
    x ^= x << 13;                            /* xorshift32 (Marsaglia 2003) */
    x ^= x >> 17;
    x ^= x << 5;
    rng[vcpu] = x;
    blk_prepare(s, rand_type, (uint64_t)(x % disk_blocks) * BLK_SECTORS_PER_BLOCK);
}

static void complete_counted(struct blk_slot *s, uint32_t k, int vcpu)
{
    (void)k;
    count_status(s, vcpu);
}

int blk_setup_reads(const struct bench_env *e, const char *name, const char **err)
{
    rand_type = VIRTIO_BLK_T_IN;
    return common_setup(e, name, e->blk.qd, err);
}

int blk_setup_randread(const struct bench_env *e, const char **err)
{
    return blk_setup_reads(e, "blk_randread", err);
}

int blk_setup_randwrite(const struct bench_env *e, const char **err)
{
    uint32_t i;

    rand_type = VIRTIO_BLK_T_OUT;
    if (common_setup(e, "blk_randwrite", e->blk.qd, err))
        return -1;
    if (blk.read_only) {
        *err = "the disk is read-only (VIRTIO_BLK_F_RO)";
        return -1;
    }
    /* Filled once: what the writes carry does not matter, only that it is
     * not the same page of zeros a host might special-case. */
    for (i = 0; i < blk.nslots; i++)
        fill_pattern(blk.slots[i].data, i * BLK_SECTORS_PER_BLOCK);
    return 0;
}

uint64_t run_blk_rand(int vcpu, uint32_t warmup, uint32_t n)
{
    struct job j = { warmup, prepare_random, complete_counted };
    struct vcpu_stats *st = &stats[vcpu];

    if (warmup && run_job(vcpu, &j)) {
        st->stalled = 1;
        return 0;
    }
    j.n = n;
    st->t0 = rdtsc();
    if (run_job(vcpu, &j))
        st->stalled = 1;
    st->t1 = rdtsc();
    st->requests = n;
    return st->t1 - st->t0;
}

/* ---- blk_verify ------------------------------------------------------------ */

/* Block i of a region goes to vCPU i % nvcpus: this vCPU's k-th is block
 * vcpu + k * nvcpus. */
static uint32_t share_of(uint32_t blocks, int vcpu)
{
    uint32_t v = (uint32_t)vcpu, nv = (uint32_t)env.nvcpus;

    return blocks > v ? (blocks - v + nv - 1) / nv : 0;
}

static uint32_t block_of(uint32_t k, int vcpu)
{
    return (uint32_t)vcpu + k * (uint32_t)env.nvcpus;
}

static uint32_t write_sector_of(uint32_t k, int vcpu)
{
    return env.blk.write_sector + block_of(k, vcpu) * BLK_SECTORS_PER_BLOCK;
}

static void prepare_write(struct blk_slot *s, uint32_t k, int vcpu)
{
    uint32_t sector = write_sector_of(k, vcpu);

    fill_pattern(s->data, sector);
    blk_prepare(s, VIRTIO_BLK_T_OUT, sector);
}

static void prepare_readback(struct blk_slot *s, uint32_t k, int vcpu)
{
    blk_prepare(s, VIRTIO_BLK_T_IN, write_sector_of(k, vcpu));
}

static void complete_readback(struct blk_slot *s, uint32_t k, int vcpu)
{
    int matches = 0;

    count_status(s, vcpu);
    written_hash[block_of(k, vcpu)] = hash_block_check(s->data, write_sector_of(k, vcpu), &matches);
    if (!matches || s->status != VIRTIO_BLK_S_OK)
        __atomic_add_fetch(&readback_bad, 1, __ATOMIC_RELAXED);
}

static void prepare_read(struct blk_slot *s, uint32_t k, int vcpu)
{
    blk_prepare(s, VIRTIO_BLK_T_IN, env.blk.read_sector + block_of(k, vcpu) * BLK_SECTORS_PER_BLOCK);
}

static void complete_read(struct blk_slot *s, uint32_t k, int vcpu)
{
    count_status(s, vcpu);
    read_hash[block_of(k, vcpu)] = hash_block(s->data);
}

static int region_ok(uint32_t sector, uint32_t blocks, const char *what, const char **err)
{
    if (blocks > BLK_VERIFY_MAX_BLOCKS) {
        *err = what[0] == 'w' ? "write_blocks is over 1024" : "read_blocks is over 1024";
        return -1;
    }
    if ((uint64_t)sector + (uint64_t)blocks * BLK_SECTORS_PER_BLOCK > blk.capacity) {
        *err = what[0] == 'w' ? "write_sector + 8 * write_blocks is past the end of the disk"
                              : "read_sector + 8 * read_blocks is past the end of the disk";
        return -1;
    }
    return 0;
}

int blk_setup_verify(const struct bench_env *e, const char **err)
{
    verifying = 1;
    if (common_setup(e, "blk_verify", e->blk.qd, err))
        return -1;
    if (region_ok(e->blk.write_sector, e->blk.write_blocks, "write", err) ||
        region_ok(e->blk.read_sector, e->blk.read_blocks, "read", err))
        return -1;
    if (e->blk.write_blocks && blk.read_only) {
        *err = "the disk is read-only (VIRTIO_BLK_F_RO)";
        return -1;
    }
    return 0;
}

/* Write, barrier, flush (BSP), barrier, read back, read: every vCPU meets
 * the barriers even after a stall, so none is left waiting. */
uint64_t run_blk_verify(int vcpu, uint32_t warmup, uint32_t iterations)
{
    struct job wr = { share_of(env.blk.write_blocks, vcpu), prepare_write, complete_counted };
    struct job rb = { share_of(env.blk.write_blocks, vcpu), prepare_readback, complete_readback };
    struct job rd = { share_of(env.blk.read_blocks, vcpu), prepare_read, complete_read };
    struct vcpu_stats *st = &stats[vcpu];
    uint32_t nv = (uint32_t)env.nvcpus;
    int stalled;

    (void)warmup;
    (void)iterations;
    st->t0 = rdtsc();
    stalled = run_job(vcpu, &wr);
    barrier_wait(&phase, nv);
    if (vcpu == 0 && !stalled && blk.can_flush)
        flush_status = blk_sync_request(VIRTIO_BLK_T_FLUSH, 0, stall_ticks);
    barrier_wait(&phase, nv);
    if (!stalled)
        stalled = run_job(vcpu, &rb);
    if (!stalled)
        stalled = run_job(vcpu, &rd);
    st->t1 = rdtsc();
    st->requests = wr.n + rb.n + rd.n;
    st->stalled = (uint8_t)!!stalled;
    return st->t1 - st->t0;
}

/* ---- records ---------------------------------------------------------------- */

static void print_blkdev(void)
{
    kprintf("VMTRACE-BENCH blkdev bench=%s pci=%02x:%02x.%x io=0x%x queue_size=%u "
            "capacity=%llu host_features=0x%08x features=0x%08x flush=%d isr=0x%x "
            "bogus_used=%u\n", bench_name, blk.pci.bus, blk.pci.dev, blk.pci.fn, blk.io,
            blk.qsize, blk.capacity, blk.host_features, blk.guest_features, blk.can_flush,
            blk_read_isr(), blk.bogus_used);
}

int report_blk(void)
{
    return report_blk_readers(env.nvcpus, NULL);
}

int report_blk_readers(int nreaders, void (*more)(void))
{
    uint64_t hz = tsc_hz(), sum = 0, tmin = ~0ull, tmax = 0, iops;
    uint32_t total = 0, errors = 0, timed = 0;
    uint8_t last_error = 0;
    int v, stalled = -1;

    for (v = 0; v < nreaders; v++) {
        struct vcpu_stats *st = &stats[v];
        uint64_t cycles = st->t1 - st->t0, per = 0;

        iops = 0;
        if (st->requests && cycles) {
            per = div_round(cycles, st->requests);
            iops = div_round((uint64_t)st->requests * hz, cycles);
            sum += per;
            timed++;
            if (st->t0 < tmin)
                tmin = st->t0;
            if (st->t1 > tmax)
                tmax = st->t1;
        }
        total += st->requests;
        errors += st->errors;
        if (st->errors)
            last_error = st->last_error;
        if (st->stalled && stalled < 0)
            stalled = v;
        kprintf("VMTRACE-BENCH result bench=%s vcpu=%d apic_id=%u iterations=%u cycles=%llu "
                "cycles_per_op=%llu cycles_per_request=%llu iops=%llu qd=%u errors=%u\n",
                bench_name, v, env.apic_ids[v], st->requests, cycles, per, per, iops, blk.qd,
                st->errors);
    }
    /* Overall IOPS over the span from the first vCPU's start to the last
     * one's end (the TSCs of KVM's vCPUs are synchronised). */
    iops = timed && tmax > tmin ? div_round((uint64_t)total * hz, tmax - tmin) : 0;
    kprintf("VMTRACE-BENCH summary bench=%s vcpus=%d iterations=%llu requests=%u "
            "cycles_per_op=%llu cycles_per_request=%llu iops=%llu qd=%u errors=%u",
            bench_name, env.nvcpus, div_round(total, (uint64_t)nreaders), total,
            timed ? div_round(sum, timed) : 0, timed ? div_round(sum, timed) : 0, iops, blk.qd,
            errors);
    if (nreaders != env.nvcpus)
        kprintf(" readers=%d", nreaders);
    kprintf("\n");
    if (more)
        more();
    print_blkdev();

    if (verifying) {
        if (env.blk.write_blocks)
            kprintf("VMTRACE-BENCH checksum bench=%s region=written sector=%u blocks=%u "
                    "seed=%u fnv=0x%08x\n", bench_name, env.blk.write_sector,
                    env.blk.write_blocks, env.blk.seed,
                    hash_words(written_hash, env.blk.write_blocks));
        if (env.blk.read_blocks)
            kprintf("VMTRACE-BENCH checksum bench=%s region=read sector=%u blocks=%u "
                    "fnv=0x%08x\n", bench_name, env.blk.read_sector, env.blk.read_blocks,
                    hash_words(read_hash, env.blk.read_blocks));
        if (env.blk.write_blocks)
            kprintf("VMTRACE-BENCH check blk_readback_ok=%d\n", readback_bad == 0);
        if (flush_status != -2)
            kprintf("VMTRACE-BENCH check blk_flush_ok=%d\n", flush_status == VIRTIO_BLK_S_OK);
    }
    if (errors)
        kprintf("VMTRACE-BENCH warning msg=\"%u requests completed with a status other than "
                "OK (one was %u)\"\n", errors, last_error);
    if (stalled >= 0) {
        kprintf("VMTRACE-BENCH error msg=\"vcpu %d: no request completed for %u ms: the "
                "device stopped answering\"\n", stalled, BLK_STALL_MS);
        return 2;
    }
    return 0;
}

/* ---- blk_malformed ------------------------------------------------------------ */

/* Far above any guest RAM and any MMIO a PC places, inside 2^48. */
#define FAR_ADDRESS 0x10000000000ull
#define UNKNOWN_TYPE 0x54

enum malformed_kind {
    M_DATA_ADDR_OUTSIDE_RAM,
    M_HDR_ADDR_OUTSIDE_RAM,
    M_STATUS_ADDR_OUTSIDE_RAM,
    M_DATA_AND_STATUS_OUTSIDE_RAM,
    M_CHAIN_LOOP,
    M_NEXT_OUT_OF_RANGE,
    M_AVAIL_HEAD_OUT_OF_RANGE,
    M_AVAIL_IDX_TOO_FAR,
    M_SECTOR_PAST_END,
    M_SECTOR_STRADDLES_END,
    M_HDR_DEVICE_WRITABLE,
    M_HDR_TOO_SHORT,
    M_READ_DATA_DEVICE_READABLE,
    M_WRITE_DATA_DEVICE_WRITABLE,
    M_STATUS_DEVICE_READABLE,
    M_NO_STATUS_DESC,
    M_DATA_LEN_NOT_SECTOR_MULTIPLE,
    M_UNKNOWN_TYPE,
    M_KINDS
};

static const char *const kind_names[M_KINDS] = {
    "data_addr_outside_ram", "hdr_addr_outside_ram", "status_addr_outside_ram",
    "data_and_status_outside_ram",
    "chain_loop", "next_out_of_range", "avail_head_out_of_range", "avail_idx_too_far",
    "sector_past_end", "sector_straddles_end", "hdr_device_writable", "hdr_too_short",
    "read_data_device_readable", "write_data_device_writable", "status_device_readable",
    "no_status_desc", "data_len_not_sector_multiple", "unknown_type",
};

struct malformed_result {
    uint8_t reset_ok;
    uint8_t answered;
    uint8_t status;
    uint8_t then_ok;
    uint8_t device_status;
    uint32_t used_id, used_len;
};

static struct malformed_result mres[M_KINDS];
static int alive_after = -1;

int blk_setup_malformed(const struct bench_env *e, const char **err)
{
    /* Slot 0 carries the malformed chain, slot 1 the follow-up request. */
    return common_setup(e, "blk_malformed", e->blk.qd < 2 ? 2 : e->blk.qd, err);
}

/* Change slot 0's well-formed read of sector 0 into kind k.  Returns the
 * avail index step (1 unless the kind is about the index). */
static uint16_t make_malformed(enum malformed_kind k, uint16_t *head)
{
    struct blk_slot *s = &blk.slots[0];
    volatile struct vring_desc *d = &blk.desc[s->head];

    blk_prepare(s, VIRTIO_BLK_T_IN, 0);
    *head = s->head;
    switch (k) {
    case M_DATA_ADDR_OUTSIDE_RAM:   d[1].addr = FAR_ADDRESS; break;
    case M_HDR_ADDR_OUTSIDE_RAM:    d[0].addr = FAR_ADDRESS; break;
    case M_STATUS_ADDR_OUTSIDE_RAM: d[2].addr = FAR_ADDRESS; break;
    case M_DATA_AND_STATUS_OUTSIDE_RAM: d[1].addr = FAR_ADDRESS; d[2].addr = FAR_ADDRESS + 8192; break;
    /* status -> data: a loop of device-writable descriptors, so that only a
     * loop check can catch it (back to the header, a device would first see
     * a readable descriptor after writable ones). */
    case M_CHAIN_LOOP:              d[2].flags |= VRING_DESC_F_NEXT; d[2].next = (uint16_t)(s->head + 1); break;
    case M_NEXT_OUT_OF_RANGE:       d[1].next = blk.qsize; break;
    case M_AVAIL_HEAD_OUT_OF_RANGE: *head = (uint16_t)(blk.qsize + 1); break;
    case M_AVAIL_IDX_TOO_FAR:       return (uint16_t)(blk.qsize + 1);
    case M_SECTOR_PAST_END:         s->hdr.sector = blk.capacity; break;
    case M_SECTOR_STRADDLES_END:    s->hdr.sector = blk.capacity - BLK_SECTORS_PER_BLOCK / 2; break;
    case M_HDR_DEVICE_WRITABLE:     d[0].flags |= VRING_DESC_F_WRITE; break;
    case M_HDR_TOO_SHORT:           d[0].len = 8; break;
    case M_READ_DATA_DEVICE_READABLE: d[1].flags &= (uint16_t)~VRING_DESC_F_WRITE; break;
    case M_WRITE_DATA_DEVICE_WRITABLE:
        blk_prepare(s, VIRTIO_BLK_T_OUT, 0);
        d[1].flags |= VRING_DESC_F_WRITE;
        break;
    case M_STATUS_DEVICE_READABLE:  d[2].flags &= (uint16_t)~VRING_DESC_F_WRITE; break;
    case M_NO_STATUS_DESC:          d[1].flags &= (uint16_t)~VRING_DESC_F_NEXT; break;
    case M_DATA_LEN_NOT_SECTOR_MULTIPLE: d[1].len = 1000; break;
    case M_UNKNOWN_TYPE:            s->hdr.type = UNKNOWN_TYPE; break;
    case M_KINDS:                   break;
    }
    return 1;
}

static void try_malformed(enum malformed_kind k, struct malformed_result *r)
{
    struct blk_slot *follow = &blk.slots[1], *s;
    const char *err;
    uint16_t head, step;
    uint64_t start;

    r->reset_ok = blk_restart(&err) == 0;
    if (!r->reset_ok)
        return;
    step = make_malformed(k, &head);
    blk_publish_raw(head, step);
    /* Watch the used index itself: an answer may name a head no slot has. */
    start = rdtsc();
    while (blk.used_hdr[1] == 0 && rdtsc() - start < answer_ticks)
        cpu_relax();
    if (blk.used_hdr[1] != 0) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        r->answered = 1;
        r->used_id = blk.used_ring[0].id;
        r->used_len = blk.used_ring[0].len;
        r->status = blk.slots[0].status;
    }
    /* Does the device still serve a good request, without a reset? */
    blk_prepare(follow, VIRTIO_BLK_T_IN, 0);
    blk_publish(&follow->head, 1);
    while ((s = blk_wait_completion(0, answer_ticks)) && s != follow)
        ;
    r->then_ok = s == follow && follow->status == VIRTIO_BLK_S_OK;
    r->device_status = blk_device_status();
}

uint64_t run_blk_malformed(int vcpu, uint32_t warmup, uint32_t iterations)
{
    const char *err;
    int k;

    (void)warmup;
    (void)iterations;
    if (vcpu != 0)
        return 0;
    for (k = 0; k < M_KINDS; k++)
        try_malformed((enum malformed_kind)k, &mres[k]);
    alive_after = blk_restart(&err) == 0 &&
                  blk_sync_request(VIRTIO_BLK_T_IN, 0, answer_ticks) == VIRTIO_BLK_S_OK;
    return 0;
}

int report_malformed(void)
{
    int k;

    for (k = 0; k < M_KINDS; k++) {
        const struct malformed_result *r = &mres[k];

        kprintf("VMTRACE-BENCH malformed kind=%s reset_ok=%d answered=%d", kind_names[k],
                r->reset_ok, r->answered);
        if (r->answered)
            kprintf(" status=%u used_id=%u used_len=%u", r->status, r->used_id, r->used_len);
        else
            kprintf(" status=none used_id=none used_len=none");
        kprintf(" then_ok=%d needs_reset=%d device_status=0x%x\n", r->then_ok,
                !!(r->device_status & VIRTIO_STATUS_NEEDS_RESET), r->device_status);
    }
    print_blkdev();
    kprintf("VMTRACE-BENCH check blk_alive_after_malformed=%d\n", alive_after == 1);
    return 0;
}
