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

/* ---- fwcfg_pmtimer ----------------------------------------------------------
 *
 * QEMU's fw_cfg DMA interface (docs/specs/fw_cfg.rst): the guest writes the
 * big-endian physical address of a FWCfgDmaAccess to port 0x514 (the low
 * half, at 0x518, starts the transfer) and QEMU performs it before the
 * write returns, under the BQL.  A read of an item that does not exist
 * fills the guest buffer with zeros: a hold of the BQL whose length the
 * guest chooses (FWCFG_HOLD_BYTES), with no host I/O.  The reference VMM
 * has no fw_cfg; the bench then ends with an error. */
#define FW_CFG_PORT_SEL      0x510
#define FW_CFG_PORT_DATA     0x511
#define FW_CFG_PORT_DMA_HI   0x514
#define FW_CFG_PORT_DMA_LO   0x518
#define FW_CFG_SIGNATURE     0x0000
#define FW_CFG_ID            0x0001
#define FW_CFG_ID_DMA        0x2u
#define FW_CFG_ABSENT_KEY    0x3fffu     /* below FW_CFG_FILE_FIRST+count: never assigned */
#define FW_CFG_DMA_CTL_READ   0x02u
#define FW_CFG_DMA_CTL_SELECT 0x08u
#define FWCFG_HOLD_BYTES     (4u * 1024u * 1024u)
#define FWCFG_OPS_DIVISOR    16u

struct fw_cfg_dma_access {
    uint32_t control;                  /* big-endian, as every field */
    uint32_t length;
    uint32_t address_hi;
    uint32_t address_lo;
} __attribute__((packed));

static volatile struct fw_cfg_dma_access dma_access __attribute__((aligned(16)));
static uint8_t fill_buffer[FWCFG_HOLD_BYTES] __attribute__((aligned(4096)));

static inline uint32_t be32(uint32_t v)
{
    return __builtin_bswap32(v);
}

static uint32_t fw_cfg_read32(uint16_t key)
{
    uint32_t v = 0;
    int i;

    outw(FW_CFG_PORT_SEL, key);
    for (i = 0; i < 4; i++)
        v |= (uint32_t)inb(FW_CFG_PORT_DATA) << (8 * i);
    return v;
}

int fwcfg_setup(const struct bench_env *env, const char **err)
{
    pm_port = env->pm_port;
    if (fw_cfg_read32(FW_CFG_SIGNATURE) != 0x554d4551u) {   /* "QEMU" */
        *err = "fwcfg_pmtimer needs QEMU's fw_cfg (port 0x510): this VMM has none";
        return -1;
    }
    if (!(fw_cfg_read32(FW_CFG_ID) & FW_CFG_ID_DMA)) {
        *err = "fwcfg_pmtimer needs the fw_cfg DMA interface";
        return -1;
    }
    return 0;
}

static inline void fw_cfg_fill(void)
{
    dma_access.control = be32((FW_CFG_ABSENT_KEY << 16) | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ);
    dma_access.length = be32(FWCFG_HOLD_BYTES);
    dma_access.address_hi = 0;
    dma_access.address_lo = be32((uint32_t)(uintptr_t)fill_buffer);
    outl(FW_CFG_PORT_DMA_HI, 0);
    outl(FW_CFG_PORT_DMA_LO, be32((uint32_t)(uintptr_t)&dma_access));
}

static uint64_t __attribute__((noinline)) time_fwcfg(uint32_t n)
{
    uint64_t t0, t1;
    uint32_t i;

    t0 = rdtsc();
    for (i = 0; i < n; i++)
        fw_cfg_fill();
    t1 = rdtsc();
    return t1 - t0;
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

static uint64_t __attribute__((noinline)) time_pmtimer(uint32_t n);

uint64_t run_fwcfg_pmtimer(int vcpu, uint32_t warmup, uint32_t n)
{
    uint32_t i;

    /* A fill is ~100x a PM-timer read: vCPU 0 does 1/FWCFG_OPS_DIVISOR of
     * the ops, so that it is still filling while the others read. */
    if (vcpu == 0) {
        for (i = 0; i < warmup / FWCFG_OPS_DIVISOR; i++)
            fw_cfg_fill();
        return time_fwcfg(n / FWCFG_OPS_DIVISOR ? n / FWCFG_OPS_DIVISOR : 1);
    }
    for (i = 0; i < warmup; i++)
        inl(pm_port);
    return time_pmtimer(n);
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
