/* ACPI PM timer and the TSC calibrated against it. */
#ifndef VMTRACE_GUEST_TIMER_H
#define VMTRACE_GUEST_TIMER_H

#include <stdint.h>

#define PM_TIMER_HZ 3579545u

/* Remember the PM timer port and counter mask (24 or 32 bits). */
void pmtimer_setup(uint16_t port, uint32_t mask);

/* 1 if the counter advances across up to a few thousand reads. */
int pmtimer_ticks(void);

/* Measure TSC ticks per second over ~ms milliseconds of PM-timer time. */
uint64_t tsc_calibrate(uint32_t ms);

/* Busy-wait on the TSC (needs tsc_calibrate first). */
void udelay(uint32_t us);

/* TSC ticks per second, 0 before calibration. */
uint64_t tsc_hz(void);

#endif
