/* PCI configuration mechanism #1: write the enable bit, bus, device,
 * function and dword-aligned register to CONFIG_ADDRESS (0xcf8), then access
 * CONFIG_DATA (0xcfc + the low two bits of the register).  An empty slot
 * reads as all ones, which is how enumeration finds devices.  Only bus 0 is
 * scanned: the benchmark machines put every device there. */
#include <stdint.h>

#include "io.h"
#include "pci.h"

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA    0xcfc

static uint32_t config_address(struct pci_fn f, uint8_t reg)
{
    return 0x80000000u | ((uint32_t)f.bus << 16) | ((uint32_t)f.dev << 11) |
           ((uint32_t)f.fn << 8) | (reg & 0xfc);
}

uint32_t pci_read32(struct pci_fn f, uint8_t reg)
{
    outl(PCI_CONFIG_ADDRESS, config_address(f, reg));
    return inl(PCI_CONFIG_DATA);
}

uint16_t pci_read16(struct pci_fn f, uint8_t reg)
{
    outl(PCI_CONFIG_ADDRESS, config_address(f, reg));
    return inw((uint16_t)(PCI_CONFIG_DATA + (reg & 2)));
}

void pci_write32(struct pci_fn f, uint8_t reg, uint32_t v)
{
    outl(PCI_CONFIG_ADDRESS, config_address(f, reg));
    outl(PCI_CONFIG_DATA, v);
}

void pci_write16(struct pci_fn f, uint8_t reg, uint16_t v)
{
    outl(PCI_CONFIG_ADDRESS, config_address(f, reg));
    outw((uint16_t)(PCI_CONFIG_DATA + (reg & 2)), v);
}

int pci_find(uint16_t vendor, uint16_t device, struct pci_fn *out)
{
    struct pci_fn f = { 0, 0, 0 };
    uint32_t want = ((uint32_t)device << 16) | vendor;

    for (f.dev = 0; f.dev < 32; f.dev++) {
        uint32_t id;
        int nfn;

        f.fn = 0;
        id = pci_read32(f, PCI_VENDOR_ID);
        if ((id & 0xffff) == 0xffff)
            continue;
        /* Bit 7 of the header type: functions 1-7 may exist. */
        nfn = (pci_read32(f, PCI_HEADER_TYPE & 0xfc) >> 16) & 0x80 ? 8 : 1;
        for (; f.fn < nfn; f.fn++) {
            if (f.fn)
                id = pci_read32(f, PCI_VENDOR_ID);
            if (id == want) {
                *out = f;
                return 0;
            }
        }
    }
    return -1;
}

int pci_io_bar0(struct pci_fn f, uint16_t *base, const char **err)
{
    uint32_t bar = pci_read32(f, PCI_BAR0), size_mask;

    if (!(bar & 1)) {
        *err = "BAR0 is a memory BAR, not the I/O BAR of a legacy virtio-pci device";
        return -1;
    }
    if ((bar & 0xfffc) == 0) {
        /* Sizing (PCI 3.0, 6.2.5.1): write all ones, the read-back's low
         * writable bits give the size.  Then place it at the fallback base,
         * which is aligned for any BAR up to 16 KiB. */
        pci_write32(f, PCI_BAR0, 0xffffffffu);
        size_mask = pci_read32(f, PCI_BAR0) & 0xfffc;
        if (size_mask == 0 || (uint16_t)(~size_mask + 1) > 0x4000) {
            *err = "BAR0 sizing returned no usable I/O size";
            return -1;
        }
        pci_write32(f, PCI_BAR0, PCI_FALLBACK_IO_BASE);
        bar = pci_read32(f, PCI_BAR0);
        if ((bar & 0xfffc) != PCI_FALLBACK_IO_BASE) {
            *err = "BAR0 did not take the address the guest assigned";
            return -1;
        }
    }
    *base = (uint16_t)(bar & 0xfffc);
    return 0;
}
