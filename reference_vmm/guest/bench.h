/* The benchmarks: a table of named operations each vCPU times in a loop. */
#ifndef VMTRACE_GUEST_BENCH_H
#define VMTRACE_GUEST_BENCH_H

#include <stdint.h>

/* The blk benches' command-line parameters (cmdline.c sets the defaults). */
struct blk_params {
    uint32_t qd;               /* requests in flight per vCPU */
    uint32_t seed;             /* random sectors and the blk_verify pattern */
    uint32_t write_sector;     /* blk_verify: first sector written with the pattern */
    uint32_t write_blocks;     /*   and how many 4 KiB blocks */
    uint32_t read_sector;      /* blk_verify: first sector only read */
    uint32_t read_blocks;
    uint32_t timeout_ms;       /* blk_malformed: how long to wait for an answer */
    uint32_t readers;          /* blk_mixed: vCPUs that read, 0 = half (rounded up) */
    uint32_t hammer;           /* blk_mixed: what the others hammer (HAMMER_*) */
};

/* blk_mixed's hammers: a device every VMM serves under its big lock. */
#define HAMMER_PMTIMER 0       /* inl from the FADT's PM timer port */
#define HAMMER_SERIAL  1       /* outb to COM1's scratch register (no output) */

/* What a benchmark may use from the platform, filled in by main.c. */
struct bench_env {
    uint16_t pm_port;          /* ACPI PM timer port from the FADT */
    uint32_t pm_mask;          /* 0xffffff (24-bit counter) or 0xffffffff */
    int nvcpus;                /* vCPUs that run the bench, the BSP included */
    const uint8_t *apic_ids;   /* [nvcpus], vcpu 0 = the BSP */
    uint32_t iterations;
    uint32_t warmup;
    uint32_t mem_top;          /* end of RAM from the multiboot info, 0 if unknown */
    struct blk_params blk;
};

struct bench {
    const char *name;
    int in_all;                /* run by bench=all */
    /* Once, on the BSP, after the vCPUs are chosen and before any AP starts;
     * NULL if nothing to prepare.  Returns 0, or -1 with *err set (the run
     * then ends with status 2). */
    int (*setup)(const struct bench_env *env, const char **err);
    /* On every vCPU at once: warmup ops, then the timed ops.  Returns the TSC
     * cycles of the timed part.  vcpu 0 is the BSP. */
    uint64_t (*run)(int vcpu, uint32_t warmup, uint32_t iterations);
    /* On the BSP after the result and summary records: print the bench's
     * check or warning records, if any; NULL if none.  Returns 0, or the
     * exit status when the bench failed after begin (blk: a stalled device). */
    int (*report)(void);
    /* 1: report prints the result and summary records itself (the blk
     * benches count requests per vCPU and add IOPS); main.c prints none. */
    int own_records;
};

/* Port read by inl_vmm: claimed by no device on QEMU pc or q35, so each read
 * goes out of KVM to the VMM's userspace and comes back as all ones. */
#define UNCLAIMED_PORT 0x0e00

/* Port read by inl_kernel: ELCR1 of the PIC, emulated inside KVM when the VMM
 * creates the in-kernel irqchip (KVM_CREATE_IRQCHIP).  Read with a one-byte
 * `inb`: KVM matches an access to an in-kernel device only if it lies inside
 * the device's range (0x4d0-0x4d1 for the ELCRs), so a 4-byte `inl` here goes
 * to userspace, and a 2-byte `inw` is answered with zeros plus a "pic: non
 * byte read" message in the host's kernel log. */
#define KERNEL_PORT 0x04d0

/* Minimum number of PM-timer reads the BSP checks for monotonicity. */
#define PMTIMER_CHECK_READS 1000

/* The table, terminated by an entry with a NULL name. */
extern const struct bench bench_table[];

const struct bench *bench_find(const char *name, uint32_t len);

void bench_set_env(const struct bench_env *env);

#endif
