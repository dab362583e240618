/* ACPI PM timer (3.579545 MHz, 24-bit or 32-bit free-running counter) and
 * TSC calibration against it. */
#include <stdint.h>

#include "io.h"
#include "timer.h"

static uint16_t pm_port;
static uint32_t pm_mask = 0xffffff;
static uint64_t tsc_per_sec;

void pmtimer_setup(uint16_t port, uint32_t mask)
{
    pm_port = port;
    pm_mask = mask;
}

static uint32_t pm_read(void)
{
    return inl(pm_port) & pm_mask;
}

int pmtimer_ticks(void)
{
    uint32_t first = pm_read();
    int i;

    for (i = 0; i < 5000; i++)
        if (pm_read() != first)
            return 1;
    return 0;
}

uint64_t tsc_calibrate(uint32_t ms)
{
    uint32_t target = (uint32_t)((uint64_t)PM_TIMER_HZ * ms / 1000);
    uint32_t elapsed = 0, prev, now;
    uint64_t t0, t1;

    /* The TSC is sampled right after each PM timer read, so both ends of
     * the interval carry the same read latency. */
    prev = pm_read();
    t0 = rdtsc();
    do {
        now = pm_read();
        t1 = rdtsc();
        elapsed += (now - prev) & pm_mask;   /* modular: handles the wrap */
        prev = now;
    } while (elapsed < target);

    tsc_per_sec = (t1 - t0) * PM_TIMER_HZ / elapsed;
    return tsc_per_sec;
}

uint64_t tsc_hz(void)
{
    return tsc_per_sec;
}

void udelay(uint32_t us)
{
    uint64_t start = rdtsc();
    uint64_t ticks = tsc_per_sec * us / 1000000;

    while (rdtsc() - start < ticks)
        cpu_relax();
}
