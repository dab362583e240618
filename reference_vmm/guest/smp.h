/* Local APIC (xAPIC MMIO), AP start-up and the barrier the vCPUs meet at. */
#ifndef VMTRACE_GUEST_SMP_H
#define VMTRACE_GUEST_SMP_H

#include <stdint.h>

#include "acpi.h"

/* Physical page the real-mode trampoline is copied to; the SIPI vector is
 * TRAMP_BASE >> 12.  The Makefile passes the same value to nasm. */
#ifndef TRAMP_BASE
#define TRAMP_BASE 0x8000
#endif

struct barrier {
    volatile uint32_t count;
    volatile uint32_t generation;
};

/* Put the local APIC in xAPIC mode at lapic_addr and software-enable it.
 * Returns 0, or -1 with *err set. */
int lapic_setup(uint32_t lapic_addr, const char **err);

/* This CPU's local APIC ID (xAPIC ID register). */
uint32_t lapic_id(void);

/* INIT, SIPI, SIPI to each of the n APIC IDs, then wait up to timeout_ms for
 * them to reach ap_main.  Returns how many arrived. */
int smp_start_aps(const uint8_t *apic_ids, int n, uint32_t timeout_ms);

/* Called on each AP once it has a stack; defined by main.c. */
void ap_main(void);

/* Mark this AP as arrived (ap_main calls it once). */
void smp_ap_arrived(void);

/* Block until n CPUs have called barrier_wait on b; reusable. */
void barrier_wait(struct barrier *b, uint32_t n);

#endif
