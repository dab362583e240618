/* Local APIC and AP start-up.
 *
 * The BSP wakes each AP with the INIT-SIPI-SIPI sequence of the Intel SDM
 * (vol. 3A, 8.4.4 "MP Initialization Example") sent through the xAPIC ICR,
 * pointing the SIPI at a real-mode trampoline (trampoline.asm) copied below
 * 1 MiB.  Delays come from the TSC, calibrated on the PM timer beforehand. */
#include <stddef.h>
#include <stdint.h>

#include "io.h"
#include "lib.h"
#include "smp.h"
#include "timer.h"

#define MSR_APIC_BASE          0x1b
#define APIC_BASE_X2APIC       (1ull << 10)
#define APIC_BASE_ENABLE       (1ull << 11)
#define APIC_BASE_ADDR_MASK    0xfffff000ull

#define LAPIC_ID               0x020
#define LAPIC_SVR              0x0f0
#define LAPIC_ICR_LOW          0x300
#define LAPIC_ICR_HIGH         0x310

#define SVR_APIC_ENABLE        (1u << 8)
#define SVR_SPURIOUS_VECTOR    0xff
#define ICR_DELIVERY_PENDING   (1u << 12)
#define ICR_LEVEL_ASSERT       (1u << 14)
#define ICR_INIT               (5u << 8)
#define ICR_STARTUP            (6u << 8)

#define AP_STACK_SIZE          8192

/* Mirror of the parameter block at offset 8 of trampoline.asm. */
struct tramp_params {
    uint32_t entry;
    uint32_t stacks;
    uint32_t stack_size;
    uint32_t next_slot;
    uint32_t max_slots;
};
#define TRAMP_PARAMS_OFFSET 8

extern const uint8_t trampoline_blob[];
extern const uint8_t trampoline_blob_end[];
extern void ap_start32(void);

static uintptr_t lapic_base;
static volatile uint32_t aps_arrived;
static uint8_t ap_stacks[MAX_CPUS][AP_STACK_SIZE] __attribute__((aligned(16)));

static uint32_t lapic_read(uint32_t reg)
{
    return mmio_read32(lapic_base + reg);
}

static void lapic_write(uint32_t reg, uint32_t v)
{
    mmio_write32(lapic_base + reg, v);
}

int lapic_setup(uint32_t lapic_addr, const char **err)
{
    uint64_t msr = rdmsr(MSR_APIC_BASE);

    if ((msr & APIC_BASE_ENABLE) && (msr & APIC_BASE_X2APIC)) {
        /* x2APIC -> xAPIC must pass through "disabled" (SDM 10.12.5). */
        msr &= ~(APIC_BASE_ENABLE | APIC_BASE_X2APIC);
        wrmsr(MSR_APIC_BASE, msr);
    }
    if ((msr & APIC_BASE_ADDR_MASK) != lapic_addr) {
        *err = "local APIC base in IA32_APIC_BASE differs from the MADT's";
        return -1;
    }
    if (!(msr & APIC_BASE_ENABLE))
        wrmsr(MSR_APIC_BASE, msr | APIC_BASE_ENABLE);
    lapic_base = lapic_addr;
    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | SVR_APIC_ENABLE | SVR_SPURIOUS_VECTOR);
    return 0;
}

uint32_t lapic_id(void)
{
    return lapic_read(LAPIC_ID) >> 24;
}

/* Wait for the previous IPI to leave the ICR (bounded: ~1 ms of polls). */
static void icr_wait_idle(void)
{
    int i;

    for (i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LOW) & ICR_DELIVERY_PENDING); i++)
        cpu_relax();
}

static void send_ipi(uint8_t apic_id, uint32_t icr_low)
{
    icr_wait_idle();
    lapic_write(LAPIC_ICR_HIGH, (uint32_t)apic_id << 24);
    lapic_write(LAPIC_ICR_LOW, icr_low);     /* this write sends it */
    icr_wait_idle();
}

void smp_ap_arrived(void)
{
    __atomic_add_fetch(&aps_arrived, 1, __ATOMIC_RELEASE);
}

static void install_trampoline(void)
{
    size_t len = (size_t)(trampoline_blob_end - trampoline_blob);
    struct tramp_params params = {
        .entry = (uint32_t)(uintptr_t)ap_start32,
        .stacks = (uint32_t)(uintptr_t)ap_stacks,
        .stack_size = AP_STACK_SIZE,
        .next_slot = 0,
        .max_slots = MAX_CPUS,
    };

    memcpy((void *)TRAMP_BASE, trampoline_blob, len);
    memcpy((void *)(TRAMP_BASE + TRAMP_PARAMS_OFFSET), &params, sizeof(params));
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

int smp_start_aps(const uint8_t *apic_ids, int n, uint32_t timeout_ms)
{
    const uint32_t sipi = ICR_STARTUP | ICR_LEVEL_ASSERT | (TRAMP_BASE >> 12);
    uint64_t start, limit;
    int i;

    if (n <= 0)
        return 0;
    install_trampoline();

    for (i = 0; i < n; i++)
        send_ipi(apic_ids[i], ICR_INIT | ICR_LEVEL_ASSERT);
    udelay(10000);
    for (i = 0; i < n; i++)
        send_ipi(apic_ids[i], sipi);
    udelay(200);
    for (i = 0; i < n; i++)                  /* ignored by APs already running */
        send_ipi(apic_ids[i], sipi);
    udelay(200);

    start = rdtsc();
    limit = tsc_hz() / 1000 * timeout_ms;
    while (__atomic_load_n(&aps_arrived, __ATOMIC_ACQUIRE) < (uint32_t)n &&
           rdtsc() - start < limit)
        cpu_relax();
    return (int)__atomic_load_n(&aps_arrived, __ATOMIC_ACQUIRE);
}

void barrier_wait(struct barrier *b, uint32_t n)
{
    uint32_t gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);

    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen)
        cpu_relax();
}
