/* ACPI discovery for the benchmark guest.
 *
 * Field offsets follow the ACPI specification (6.x, sections 5.2.5 RSDP,
 * 5.2.7 RSDT, 5.2.8 XSDT, 5.2.9 FADT, 5.2.12 MADT).  Tables are read in
 * place: paging is off, so physical addresses are pointers. */
#include <stddef.h>
#include <stdint.h>

#include "acpi.h"
#include "lib.h"

#define EBDA_SEG_PTR       0x40e       /* BDA word: EBDA segment */
#define EBDA_SCAN_LEN      1024
#define BIOS_ROM_START     0xe0000
#define BIOS_ROM_END       0x100000
#define DEFAULT_LAPIC_ADDR 0xfee00000u

#define SDT_HEADER_LEN     36

/* FADT */
#define FADT_PM_TMR_BLK    76          /* uint32 port */
#define FADT_PM_TMR_LEN    91          /* uint8, 4 when present */
#define FADT_FLAGS         112         /* uint32 */
#define FADT_TMR_VAL_EXT   (1u << 8)   /* 32-bit counter instead of 24 */
#define FADT_X_PM_TMR_BLK  208         /* GAS, ACPI 2.0+ */
#define GAS_SPACE_SYSTEM_IO 1

/* MADT */
#define MADT_LAPIC_ADDR    36          /* uint32 */
#define MADT_ENTRIES       44
#define MADT_LOCAL_APIC    0
#define MADT_LAPIC_OVERRIDE 5
#define MADT_LOCAL_X2APIC  9
#define MADT_ENABLED       (1u << 0)

static uint8_t rd8(uint32_t addr)
{
    return *(const volatile uint8_t *)(uintptr_t)addr;
}

static uint16_t rd16(uint32_t addr)
{
    return (uint16_t)(rd8(addr) | rd8(addr + 1) << 8);
}

static uint32_t rd32(uint32_t addr)
{
    return (uint32_t)rd16(addr) | (uint32_t)rd16(addr + 2) << 16;
}

static uint64_t rd64(uint32_t addr)
{
    return (uint64_t)rd32(addr) | (uint64_t)rd32(addr + 4) << 32;
}

static int checksum_ok(uint32_t addr, uint32_t len)
{
    uint8_t sum = 0;
    uint32_t i;

    for (i = 0; i < len; i++)
        sum = (uint8_t)(sum + rd8(addr + i));
    return sum == 0;
}

static int sig_is(uint32_t addr, const char *sig, size_t n)
{
    return memcmp((const void *)(uintptr_t)addr, sig, n) == 0;
}

/* "RSD PTR " on a 16-byte boundary with a valid ACPI 1.0 checksum (20 bytes)
 * and, for revision >= 2, a valid extended checksum over its length. */
static int rsdp_valid(uint32_t addr)
{
    if (!sig_is(addr, "RSD PTR ", 8) || !checksum_ok(addr, 20))
        return 0;
    if (rd8(addr + 15) >= 2) {
        uint32_t len = rd32(addr + 20);

        if (len < 36 || len > 4096 || !checksum_ok(addr, len))
            return 0;
    }
    return 1;
}

static uint32_t scan_rsdp(uint32_t start, uint32_t end)
{
    uint32_t a;

    for (a = start & ~15u; a + 20 <= end; a += 16)
        if (rsdp_valid(a))
            return a;
    return 0;
}

static uint32_t find_rsdp(void)
{
    uint32_t ebda = (uint32_t)rd16(EBDA_SEG_PTR) << 4;
    uint32_t a = 0;

    /* The EBDA must sit in conventional memory below the VGA hole. */
    if (ebda >= 0x80000 && ebda < 0xa0000)
        a = scan_rsdp(ebda, ebda + EBDA_SCAN_LEN);
    if (!a)
        a = scan_rsdp(BIOS_ROM_START, BIOS_ROM_END);
    return a;
}

/* A system description table at addr with a sane length and checksum. */
static int sdt_valid(uint32_t addr)
{
    uint32_t len;

    if (addr == 0)
        return 0;
    len = rd32(addr + 4);
    return len >= SDT_HEADER_LEN && len < (1u << 20) && checksum_ok(addr, len);
}

/* Find a table by signature through the RSDT (32-bit entries) or XSDT
 * (64-bit entries, usable only below 4 GiB here). */
static uint32_t find_table(const struct acpi_info *info, const char *sig)
{
    uint32_t len = rd32(info->root_addr + 4);
    uint32_t esz = info->root_is_xsdt ? 8 : 4;
    uint32_t off;

    for (off = SDT_HEADER_LEN; off + esz <= len; off += esz) {
        uint64_t t = esz == 8 ? rd64(info->root_addr + off) : rd32(info->root_addr + off);

        if (t == 0 || t >= 0x100000000ull)
            continue;
        if (sig_is((uint32_t)t, sig, 4) && sdt_valid((uint32_t)t))
            return (uint32_t)t;
    }
    return 0;
}

static void parse_fadt(struct acpi_info *info, uint32_t fadt)
{
    uint32_t len = rd32(fadt + 4);
    uint32_t port = 0;

    if (len >= FADT_PM_TMR_LEN + 1 && rd8(fadt + FADT_PM_TMR_LEN) == 4)
        port = rd32(fadt + FADT_PM_TMR_BLK);
    if (port == 0 && len >= FADT_X_PM_TMR_BLK + 12 &&
        rd8(fadt + FADT_X_PM_TMR_BLK) == GAS_SPACE_SYSTEM_IO) {
        uint64_t x = rd64(fadt + FADT_X_PM_TMR_BLK + 4);

        if (x < 0x10000)
            port = (uint32_t)x;
    }
    info->pm_tmr_port = port < 0x10000 ? (uint16_t)port : 0;
    info->pm_tmr_mask = 0xffffff;
    if (len >= FADT_FLAGS + 4 && (rd32(fadt + FADT_FLAGS) & FADT_TMR_VAL_EXT))
        info->pm_tmr_mask = 0xffffffff;
}

static void add_cpu(struct acpi_info *info, uint32_t apic_id)
{
    int i;

    for (i = 0; i < info->ncpus; i++)
        if (info->apic_ids[i] == apic_id)
            return;                     /* listed twice: count once */
    if (info->ncpus < MAX_CPUS && apic_id < 0xff)
        info->apic_ids[info->ncpus++] = (uint8_t)apic_id;
    else
        info->cpus_ignored++;
}

static void parse_madt(struct acpi_info *info, uint32_t madt)
{
    uint32_t len = rd32(madt + 4);
    uint32_t off = MADT_ENTRIES;

    info->have_madt = 1;
    info->lapic_addr = rd32(madt + MADT_LAPIC_ADDR);
    while (off + 2 <= len) {
        uint8_t type = rd8(madt + off), elen = rd8(madt + off + 1);

        if (elen < 2 || off + elen > len)
            break;
        if (type == MADT_LOCAL_APIC && elen >= 8) {
            if (rd32(madt + off + 4) & MADT_ENABLED)
                add_cpu(info, rd8(madt + off + 3));
        } else if (type == MADT_LOCAL_X2APIC && elen >= 16) {
            /* x2APIC IDs >= 255 cannot be reached through the xAPIC. */
            if (rd32(madt + off + 8) & MADT_ENABLED)
                add_cpu(info, rd32(madt + off + 4));
        } else if (type == MADT_LAPIC_OVERRIDE && elen >= 12) {
            uint64_t a = rd64(madt + off + 4);

            if (a < 0x100000000ull)
                info->lapic_addr = (uint32_t)a;
        }
        off += elen;
    }
    if (info->lapic_addr == 0)
        info->lapic_addr = DEFAULT_LAPIC_ADDR;
}

int acpi_probe(struct acpi_info *info, const char **err)
{
    uint32_t fadt, madt;

    memset(info, 0, sizeof(*info));
    info->lapic_addr = DEFAULT_LAPIC_ADDR;

    info->rsdp_addr = find_rsdp();
    if (!info->rsdp_addr) {
        *err = "ACPI RSDP not found in the EBDA or 0xE0000-0xFFFFF";
        return -1;
    }
    if (rd8(info->rsdp_addr + 15) >= 2 && rd32(info->rsdp_addr + 28) == 0 &&
        sdt_valid(rd32(info->rsdp_addr + 24)) && sig_is(rd32(info->rsdp_addr + 24), "XSDT", 4)) {
        info->root_addr = rd32(info->rsdp_addr + 24);
        info->root_is_xsdt = 1;
    } else if (sdt_valid(rd32(info->rsdp_addr + 16)) && sig_is(rd32(info->rsdp_addr + 16), "RSDT", 4)) {
        info->root_addr = rd32(info->rsdp_addr + 16);
    } else {
        *err = "ACPI RSDP points to no valid RSDT or XSDT";
        return -1;
    }

    fadt = find_table(info, "FACP");
    if (!fadt) {
        *err = "ACPI FADT (FACP) not found";
        return -1;
    }
    parse_fadt(info, fadt);
    if (!info->pm_tmr_port) {
        *err = "ACPI FADT has no PM timer (PM_TMR_BLK and X_PM_TMR_BLK empty)";
        return -1;
    }

    madt = find_table(info, "APIC");
    if (madt)
        parse_madt(info, madt);
    return 0;
}
