/* ACPI discovery: RSDP -> RSDT/XSDT -> FADT (PM timer) and MADT (CPUs). */
#ifndef VMTRACE_GUEST_ACPI_H
#define VMTRACE_GUEST_ACPI_H

#include <stdint.h>

#define MAX_CPUS 64

struct acpi_info {
    uint32_t rsdp_addr;
    uint32_t root_addr;        /* RSDT or XSDT */
    int root_is_xsdt;
    uint16_t pm_tmr_port;      /* 0 if the FADT has none */
    uint32_t pm_tmr_mask;      /* 0xffffff, or 0xffffffff with TMR_VAL_EXT */
    uint32_t lapic_addr;       /* from the MADT, else 0xFEE00000 */
    int have_madt;
    int ncpus;                 /* enabled processors, in MADT order */
    uint8_t apic_ids[MAX_CPUS];
    int cpus_ignored;          /* enabled entries beyond MAX_CPUS or x2APIC-only */
};

/* Fill *info; returns 0, or -1 with *err set to a reason for the error line. */
int acpi_probe(struct acpi_info *info, const char **err);

#endif
