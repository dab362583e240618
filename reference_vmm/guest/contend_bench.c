/* serial_pmtimer: a BQL that is really contended.
 *
 * The PM-timer read alone barely contends on the BQL here: each exit is long
 * (the guest's instructions are emulated) and the lock is held for a small
 * share of it.  This bench makes one vCPU a long holder: vCPU 0 writes a
 * newline to COM1's transmit register per op, which both VMMs turn into a
 * host write() while holding the BQL (QEMU's 16550 hands each byte to its
 * chardev at once; the reference VMM flushes its serial buffer at every
 * newline).  Every other vCPU reads the PM timer, which takes the BQL on
 * QEMU before 10.2 and on the reference VMM in bql and 2013 mode, and so
 * queues behind the writes.
 *
 * The transmit register is written without polling LSR: both VMMs accept a
 * byte at any time, and a poll would be one more BQL exit per op.  The
 * records main.c prints later are whole lines after these newlines, so the
 * host's parser never sees them mixed with the writes. */
#include <stdint.h>

#include "bench.h"
#include "console.h"
#include "contend_bench.h"
#include "io.h"
#include "lib.h"

#define UNROLL 8
#define REPEAT8(x) x x x x x x x x

static uint16_t pm_port;

int contend_setup(const struct bench_env *env, const char **err)
{
    (void)err;
    pm_port = env->pm_port;
    return 0;
}

static uint64_t __attribute__((noinline)) time_serial(uint32_t n)
{
    uint64_t t0, t1;
    uint32_t i;

    t0 = rdtsc();
    for (i = n / UNROLL; i; i--) {
        REPEAT8(outb(COM1_PORT, '\n');)
    }
    for (i = n % UNROLL; i; i--)
        outb(COM1_PORT, '\n');
    t1 = rdtsc();
    return t1 - t0;
}

static uint64_t __attribute__((noinline)) time_pmtimer(uint32_t n)
{
    uint64_t t0, t1;
    uint32_t i;

    t0 = rdtsc();
    for (i = n / UNROLL; i; i--) {
        REPEAT8(inl(pm_port);)
    }
    for (i = n % UNROLL; i; i--)
        inl(pm_port);
    t1 = rdtsc();
    return t1 - t0;
}

uint64_t run_serial_pmtimer(int vcpu, uint32_t warmup, uint32_t n)
{
    uint32_t i;

    if (vcpu == 0) {
        for (i = 0; i < warmup; i++)
            outb(COM1_PORT, '\n');
        return time_serial(n);
    }
    for (i = 0; i < warmup; i++)
        inl(pm_port);
    return time_pmtimer(n);
}
