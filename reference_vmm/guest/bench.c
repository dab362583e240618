/* The benchmarks.  Each timed loop is `rdtsc; K times { op }; rdtsc` after
 * `warmup` untimed ops, run by every vCPU at once between two barriers
 * (main.c).  To add a benchmark, write its setup and run functions and add a
 * row to bench_table; the virtio-blk ones live in blk_bench.c. */
#include <stddef.h>
#include <stdint.h>

#include "bench.h"
#include "blk_bench.h"
#include "contend_bench.h"
#include "console.h"
#include "io.h"
#include "lib.h"

static struct bench_env env;

/* Left by the BSP's run for its report. */
static int pmtimer_monotonic;
static uint32_t unclaimed_value;

void bench_set_env(const struct bench_env *e)
{
    env = *e;
}

/* ---- timed loops --------------------------------------------------------- */

/* The timed loops are unrolled by 8 so that the loop's own instructions (an
 * increment, a compare and a branch per pass) add little to each op.  That
 * matters where the guest's instructions are not free: on a PVM host KVM
 * runs every instruction of this guest through its instruction emulator. */
#define UNROLL 8
#define REPEAT8(x) x x x x x x x x

#define DEFINE_PORT_LOOPS(warm_fn, time_fn, read)                              \
    static void __attribute__((noinline)) warm_fn(uint16_t port, uint32_t n)   \
    {                                                                          \
        uint32_t i;                                                            \
                                                                               \
        for (i = 0; i < n; i++)                                                \
            read(port);                                                        \
    }                                                                          \
                                                                               \
    static uint64_t __attribute__((noinline)) time_fn(uint16_t port, uint32_t n) \
    {                                                                          \
        uint64_t t0, t1;                                                       \
        uint32_t i;                                                            \
                                                                               \
        t0 = rdtsc();                                                          \
        for (i = n / UNROLL; i; i--) {                                         \
            REPEAT8(read(port);)                                               \
        }                                                                      \
        for (i = n % UNROLL; i; i--)                                           \
            read(port);                                                        \
        t1 = rdtsc();                                                          \
        return t1 - t0;                                                        \
    }

DEFINE_PORT_LOOPS(warm_inl, time_inl, inl)
DEFINE_PORT_LOOPS(warm_inb, time_inb, inb)

/* ---- inl_pmtimer ------------------------------------------------------------ */

/* Reads whose modular step from the previous read exceeds half the counter
 * range (over 2 s at 24 bits) went backwards. */
static int __attribute__((noinline)) pmtimer_reads_monotonic(uint16_t port, uint32_t mask, uint32_t n)
{
    uint32_t i, prev = inl(port) & mask, now;
    int ok = 1;

    for (i = 0; i < n; i++) {
        now = inl(port) & mask;
        if (((now - prev) & mask) > (mask >> 1))
            ok = 0;
        prev = now;
    }
    return ok;
}

/* The BSP checks the counter during its warmup, while the other vCPUs read
 * it too, so the timed loop stays the same on every vCPU. */
static uint64_t run_inl_pmtimer(int vcpu, uint32_t warmup, uint32_t n)
{
    if (vcpu == 0)
        pmtimer_monotonic = pmtimer_reads_monotonic(
            env.pm_port, env.pm_mask, warmup > PMTIMER_CHECK_READS ? warmup : PMTIMER_CHECK_READS);
    else
        warm_inl(env.pm_port, warmup);
    return time_inl(env.pm_port, n);
}

static int report_inl_pmtimer(void)
{
    kprintf("VMTRACE-BENCH check pmtimer_monotonic=%d\n", pmtimer_monotonic);
    return 0;
}

/* ---- inl_vmm, inl_kernel ---------------------------------------------------- */

static uint64_t run_inl_vmm(int vcpu, uint32_t warmup, uint32_t n)
{
    if (vcpu == 0)
        unclaimed_value = inl(UNCLAIMED_PORT);
    warm_inl(UNCLAIMED_PORT, warmup);
    return time_inl(UNCLAIMED_PORT, n);
}

static int report_inl_vmm(void)
{
    if (unclaimed_value != 0xffffffffu)
        kprintf("VMTRACE-BENCH warning msg=\"port 0x%x read 0x%x, not all ones: "
                "does a device claim it?\"\n", UNCLAIMED_PORT, unclaimed_value);
    return 0;
}

static uint64_t run_inl_kernel(int vcpu, uint32_t warmup, uint32_t n)
{
    (void)vcpu;
    warm_inb(KERNEL_PORT, warmup);
    return time_inb(KERNEL_PORT, n);
}

/* ---- cpuid ------------------------------------------------------------------ */

static inline void cpuid0(void)
{
    uint32_t a, b, c, d;

    cpuid(0, &a, &b, &c, &d);
}

static uint64_t run_cpuid(int vcpu, uint32_t warmup, uint32_t n)
{
    uint64_t t0, t1;
    uint32_t i;

    (void)vcpu;
    for (i = 0; i < warmup; i++)
        cpuid0();
    t0 = rdtsc();
    for (i = n / UNROLL; i; i--) {
        REPEAT8(cpuid0();)
    }
    for (i = n % UNROLL; i; i--)
        cpuid0();
    t1 = rdtsc();
    return t1 - t0;
}

/* ---- the table ------------------------------------------------------------- */

const struct bench bench_table[] = {
    /* name            in_all  setup                run                report              own_records */
    { "inl_pmtimer",   1,      NULL,                run_inl_pmtimer,   report_inl_pmtimer, 0 },
    { "inl_vmm",       1,      NULL,                run_inl_vmm,       report_inl_vmm,     0 },
    { "inl_kernel",    1,      NULL,                run_inl_kernel,    NULL,               0 },
    { "cpuid",         1,      NULL,                run_cpuid,         NULL,               0 },
    /* contend_bench.c: vCPU 0 writes to COM1, the others read the PM timer */
    { "serial_pmtimer", 0,     contend_setup,       run_serial_pmtimer, NULL,              0 },
    /* ... vCPU 0 makes QEMU zero-fill 256 KiB by fw_cfg DMA, under the BQL */
    { "fwcfg_pmtimer", 0,      fwcfg_setup,         run_fwcfg_pmtimer, NULL,               0 },
    /* virtio-blk (blk_bench.c): not in "all", they need a disk */
    { "blk_randread",  0,      blk_setup_randread,  run_blk_rand,      report_blk,         1 },
    { "blk_randwrite", 0,      blk_setup_randwrite, run_blk_rand,      report_blk,         1 },
    { "blk_verify",    0,      blk_setup_verify,    run_blk_verify,    report_blk,         1 },
    { "blk_malformed", 0,      blk_setup_malformed, run_blk_malformed, report_malformed,   1 },
    { "blk_mixed",     0,      blk_setup_mixed,     run_blk_mixed,     report_blk_mixed,   1 },
    { NULL, 0, NULL, NULL, NULL, 0 },
};

const struct bench *bench_find(const char *name, uint32_t len)
{
    const struct bench *b;

    for (b = bench_table; b->name; b++)
        if (str_eq_n(name, len, b->name))
            return b;
    return NULL;
}
