/* blk_mixed: virtio-blk reads while other vCPUs hammer a device that takes
 * the VMM's big lock.
 *
 *   vCPUs 0 .. readers-1   blk_randread's loop: qd random 4 KiB reads in
 *                          flight, `warmup` untimed then `iterations` timed
 *   the others (hammers)   from the start barrier until the last reader is
 *                          done: the PM timer (`inl`, hammer=pmtimer) or
 *                          COM1's scratch register (`outb`, hammer=serial)
 *
 * Why: the virtio-blk dataplane (an IOThread with its own AioContext) only
 * pays off when the BQL is contended.  With every vCPU polling its used ring
 * nobody else wants the lock, so the main loop takes it for free; here the
 * hammers keep it busy, as vCPUs doing port I/O do on a real guest.  QEMU up
 * to 10.1 serves both devices under the BQL; the reference VMM serves the
 * PM timer under it in `bql` and `2013` locking and the UART in every mode. */
#include <stddef.h>
#include <stdint.h>

#include "acpi.h"
#include "blk_bench.h"
#include "console.h"
#include "io.h"
#include "lib.h"

#define UART_SCR 7             /* 16550 scratch register: stored, never output */
#define REPEAT8(x) x x x x x x x x

struct hammer_stats {
    uint64_t ops, cycles;
};

static struct bench_env env;
static int nreaders;
static volatile uint32_t readers_done;
static struct hammer_stats hstats[MAX_CPUS];

int blk_setup_mixed(const struct bench_env *e, const char **err)
{
    env = *e;
    nreaders = e->blk.readers ? (int)e->blk.readers : (e->nvcpus + 1) / 2;
    if (nreaders > e->nvcpus) {
        *err = "readers is more than the number of vCPUs";
        return -1;
    }
    readers_done = 0;
    return blk_setup_reads(e, "blk_mixed", err);
}

/* Until the last reader is done: the flag is read once per 8 accesses so
 * the loop is almost only exits, as in inl_pmtimer's timed loop. */
static uint64_t __attribute__((noinline)) hammer_pmtimer(uint16_t port, uint32_t readers)
{
    uint64_t ops = 0;

    while (__atomic_load_n(&readers_done, __ATOMIC_ACQUIRE) < readers) {
        REPEAT8(inl(port);)
        ops += 8;
    }
    return ops;
}

static uint64_t __attribute__((noinline)) hammer_serial(uint32_t readers)
{
    uint64_t ops = 0;

    while (__atomic_load_n(&readers_done, __ATOMIC_ACQUIRE) < readers) {
        REPEAT8(outb(COM1_PORT + UART_SCR, (uint8_t)ops);)
        ops += 8;
    }
    return ops;
}

uint64_t run_blk_mixed(int vcpu, uint32_t warmup, uint32_t iterations)
{
    struct hammer_stats *h = &hstats[vcpu];
    uint64_t t0, cycles;

    if (vcpu < nreaders) {
        cycles = run_blk_rand(vcpu, warmup, iterations);
        __atomic_add_fetch(&readers_done, 1, __ATOMIC_RELEASE);
        return cycles;
    }
    t0 = rdtsc();
    h->ops = env.blk.hammer == HAMMER_SERIAL ? hammer_serial((uint32_t)nreaders)
                                              : hammer_pmtimer(env.pm_port, (uint32_t)nreaders);
    h->cycles = rdtsc() - t0;
    return h->cycles;
}

static void print_hammers(void)
{
    int v;
    const char *target = env.blk.hammer == HAMMER_SERIAL ? "serial" : "pmtimer";
    uint32_t port = env.blk.hammer == HAMMER_SERIAL ? COM1_PORT + UART_SCR : env.pm_port;

    for (v = nreaders; v < env.nvcpus; v++)
        kprintf("VMTRACE-BENCH hammer bench=blk_mixed vcpu=%d apic_id=%u target=%s port=0x%x "
                "ops=%llu cycles=%llu cycles_per_op=%llu\n", v, env.apic_ids[v], target, port,
                hstats[v].ops, hstats[v].cycles,
                hstats[v].ops ? div_round(hstats[v].cycles, hstats[v].ops) : 0);
}

int report_blk_mixed(void)
{
    return report_blk_readers(nreaders, print_hammers);
}
