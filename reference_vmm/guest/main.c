/* vmtrace benchmark guest: the BSP's flow and the APs' loop.
 *
 *   parse the command line -> ACPI (PM timer port, CPUs) -> calibrate the TSC
 *   -> start the APs -> for each bench: barrier, timed loop on every vCPU,
 *   barrier, BSP prints -> exit through isa-debug-exit.
 *
 * Records on COM1 follow the grammar in README.md. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "acpi.h"
#include "bench.h"
#include "cmdline.h"
#include "console.h"
#include "io.h"
#include "lib.h"
#include "smp.h"
#include "timer.h"

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2badb002u
#define MULTIBOOT_INFO_MEMORY      (1u << 0)
#define MULTIBOOT_INFO_CMDLINE     (1u << 2)

/* isa-debug-exit: QEMU exits with (value << 1) | 1 on a write here. */
#define DEBUG_EXIT_PORT 0xf4

#define STATUS_OK         0
#define STATUS_PLATFORM   2    /* no ACPI / PM timer, a bench setup failed, or a device stalled */
#define STATUS_SMP        3    /* local APIC unusable or APs did not arrive */
#define STATUS_USAGE      4    /* bad command-line value */

#define CALIBRATE_MS      50
/* Generous: a VMM whose vCPU threads start one after the other, on a host
 * with more runnable threads than CPUs, has been seen to start the last AP
 * more than 1 s after the BSP (the reference VMM on CPython 3.13t, 8 vCPUs,
 * 2 CPUs, load average 9); the wait ends as soon as every AP is in. */
#define AP_TIMEOUT_MS     5000

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower, mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
};

/* Shared between the BSP and the APs; written by the BSP before the APs start. */
static struct options opts;
static int nvcpus;
static uint8_t vcpu_apic_id[MAX_CPUS];
static uint64_t vcpu_cycles[MAX_CPUS];
static struct barrier start_line, finish_line;

static char raw_cmdline[CMDLINE_MAX];
static uint32_t mem_top;       /* end of RAM above 1 MiB, 0 if the loader did not say */
static struct acpi_info acpi;
static uint32_t final_status = STATUS_OK;

static void __attribute__((noreturn)) finish(uint32_t status)
{
    kprintf("VMTRACE-BENCH end status=%u\n", status);
    outl(DEBUG_EXIT_PORT, status);
    halt_forever();            /* no debug-exit device: stop here */
}

static void __attribute__((noreturn)) fail(uint32_t status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void __attribute__((noreturn)) fail(uint32_t status, const char *fmt, ...)
{
    va_list ap;

    kprintf("VMTRACE-BENCH error msg=\"");
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
    kprintf("\"\n");
    finish(status);
}

/* Copy the command line out of loader memory before anything else runs:
 * the blk benches reuse the memory after the image, where QEMU puts it. */
static void copy_cmdline(uint32_t magic, const struct multiboot_info *mbi)
{
    const char *src;
    size_t i;

    raw_cmdline[0] = '\0';
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC || !mbi)
        return;
    if (mbi->flags & MULTIBOOT_INFO_MEMORY && mbi->mem_upper < (0xffffffffu >> 10) - 1024)
        mem_top = 0x100000u + (mbi->mem_upper << 10);
    if (!(mbi->flags & MULTIBOOT_INFO_CMDLINE) || !mbi->cmdline)
        return;
    src = (const char *)(uintptr_t)mbi->cmdline;
    for (i = 0; i + 1 < sizeof(raw_cmdline) && src[i]; i++)
        raw_cmdline[i] = src[i];
    raw_cmdline[i] = '\0';
}

static int vcpu_of_apic_id(uint32_t id)
{
    int i;

    for (i = 0; i < nvcpus; i++)
        if (vcpu_apic_id[i] == id)
            return i;
    return -1;
}

/* Every vCPU runs the same sequence of benches, meeting at the two barriers. */
static void run_benches(int vcpu, void (*report)(const struct bench *))
{
    int i;

    for (i = 0; i < opts.nbench; i++) {
        const struct bench *b = opts.benches[i];

        barrier_wait(&start_line, (uint32_t)nvcpus);
        vcpu_cycles[vcpu] = b->run(vcpu, opts.warmup, opts.iterations);
        barrier_wait(&finish_line, (uint32_t)nvcpus);
        if (report)
            report(b);
    }
}

void ap_main(void)
{
    int vcpu = vcpu_of_apic_id(lapic_id());

    if (vcpu <= 0)
        halt_forever();        /* not one we asked for */
    smp_ap_arrived();
    run_benches(vcpu, NULL);
    halt_forever();
}

static void report(const struct bench *b)
{
    uint64_t sum = 0;
    uint32_t status;
    int i;

    if (b->own_records) {
        status = b->report();
        if (status && final_status == STATUS_OK)
            final_status = status;
        return;
    }
    for (i = 0; i < nvcpus; i++) {
        uint64_t per_op = div_round(vcpu_cycles[i], opts.iterations);

        sum += per_op;
        kprintf("VMTRACE-BENCH result bench=%s vcpu=%d apic_id=%u iterations=%u cycles=%llu "
                "cycles_per_op=%llu\n", b->name, i, vcpu_apic_id[i], opts.iterations,
                vcpu_cycles[i], per_op);
    }
    kprintf("VMTRACE-BENCH summary bench=%s vcpus=%d iterations=%u cycles_per_op=%llu\n",
            b->name, nvcpus, opts.iterations, div_round(sum, (uint64_t)nvcpus));
    if (b->report) {
        status = (uint32_t)b->report();
        if (status && final_status == STATUS_OK)
            final_status = status;
    }
}

/* vCPU 0 is the BSP; the others follow in MADT order, up to the vcpus= cap. */
static void choose_vcpus(uint32_t bsp_id)
{
    int i;

    nvcpus = 0;
    vcpu_apic_id[nvcpus++] = (uint8_t)bsp_id;
    for (i = 0; i < acpi.ncpus; i++) {
        if (acpi.apic_ids[i] == bsp_id)
            continue;
        if (opts.vcpus && (uint32_t)nvcpus >= opts.vcpus)
            break;
        vcpu_apic_id[nvcpus++] = acpi.apic_ids[i];
    }
}

void kmain(uint32_t magic, const struct multiboot_info *mbi);

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
    struct bench_env env;
    const char *err = NULL;
    uint32_t bsp_id;
    int i, bsp_listed = 0, arrived;

    copy_cmdline(magic, mbi);
    console_init();
    kprintf("\nvmtrace-guest: VM-exit benchmark guest (multiboot, 32-bit, polled COM1)\n");
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC)
        kprintf("VMTRACE-BENCH warning msg=\"not started by a multiboot loader "
                "(magic 0x%x): no command line\"\n", magic);

    if (cmdline_parse(raw_cmdline, &opts, &err))
        fail(STATUS_USAGE, "%s", err);

    if (acpi_probe(&acpi, &err))
        fail(STATUS_PLATFORM, "%s", err);
    pmtimer_setup(acpi.pm_tmr_port, acpi.pm_tmr_mask);
    if (!pmtimer_ticks())
        fail(STATUS_PLATFORM, "ACPI PM timer at port 0x%x does not count", acpi.pm_tmr_port);
    tsc_calibrate(CALIBRATE_MS);

    if (lapic_setup(acpi.lapic_addr, &err))
        fail(STATUS_SMP, "%s", err);
    bsp_id = lapic_id();
    if (!acpi.have_madt)
        kprintf("VMTRACE-BENCH warning msg=\"no ACPI MADT: running on the BSP only\"\n");
    if (acpi.cpus_ignored)
        kprintf("VMTRACE-BENCH warning msg=\"%d enabled CPUs ignored (over %d, or APIC ID "
                ">= 255)\"\n", acpi.cpus_ignored, MAX_CPUS);
    for (i = 0; i < acpi.ncpus; i++)
        bsp_listed |= acpi.apic_ids[i] == bsp_id;
    if (acpi.have_madt && !bsp_listed)
        fail(STATUS_SMP, "the BSP (APIC ID %u) is not an enabled CPU in the MADT", bsp_id);
    choose_vcpus(bsp_id);
    if (opts.vcpus > (uint32_t)nvcpus)
        kprintf("VMTRACE-BENCH warning msg=\"vcpus=%u but the MADT lists %d CPUs: using %d\"\n",
                opts.vcpus, nvcpus, nvcpus);

    env.pm_port = acpi.pm_tmr_port;
    env.pm_mask = acpi.pm_tmr_mask;
    env.nvcpus = nvcpus;
    env.apic_ids = vcpu_apic_id;
    env.iterations = opts.iterations;
    env.warmup = opts.warmup;
    env.mem_top = mem_top;
    env.blk = opts.blk;
    bench_set_env(&env);
    for (i = 0; i < opts.nbench; i++)
        if (opts.benches[i]->setup && opts.benches[i]->setup(&env, &err))
            fail(STATUS_PLATFORM, "%s setup: %s", opts.benches[i]->name, err);

    arrived = smp_start_aps(vcpu_apic_id + 1, nvcpus - 1, AP_TIMEOUT_MS);
    if (arrived != nvcpus - 1)
        fail(STATUS_SMP, "%d of %d APs arrived within %u ms", arrived, nvcpus - 1,
             AP_TIMEOUT_MS);

    kprintf("VMTRACE-BENCH begin vcpus=%d tsc_hz=%llu pm_port=0x%x cmdline=\"", nvcpus,
            tsc_hz(), acpi.pm_tmr_port);
    console_write_quoted(opts.args, strlen(opts.args));
    kprintf("\"\n");

    run_benches(0, report);
    finish(final_status);
}
