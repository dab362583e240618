/* PCI configuration mechanism #1 (ports 0xcf8/0xcfc) on bus 0. */
#ifndef VMTRACE_GUEST_PCI_H
#define VMTRACE_GUEST_PCI_H

#include <stdint.h>

#define PCI_VENDOR_ID        0x00
#define PCI_COMMAND          0x04
#define PCI_HEADER_TYPE      0x0e
#define PCI_BAR0             0x10
#define PCI_SUBSYSTEM_ID     0x2e

#define PCI_COMMAND_IO           (1u << 0)
#define PCI_COMMAND_MASTER       (1u << 2)
#define PCI_COMMAND_INTX_DISABLE (1u << 10)

/* Where the guest puts an I/O BAR that no firmware assigned: SeaBIOS starts
 * its I/O window here too, and nothing on QEMU pc/q35 or the reference VMM
 * claims it. */
#define PCI_FALLBACK_IO_BASE 0xc000

struct pci_fn {
    uint8_t bus, dev, fn;
};

uint32_t pci_read32(struct pci_fn f, uint8_t reg);
uint16_t pci_read16(struct pci_fn f, uint8_t reg);
void pci_write32(struct pci_fn f, uint8_t reg, uint32_t v);
void pci_write16(struct pci_fn f, uint8_t reg, uint16_t v);

/* Find vendor:device on bus 0 (every slot, every function of a
 * multi-function device).  Returns 0 and fills *out, or -1. */
int pci_find(uint16_t vendor, uint16_t device, struct pci_fn *out);

/* The I/O port base of BAR0, assigning PCI_FALLBACK_IO_BASE when the BAR is
 * unassigned (no firmware ran).  Returns 0, or -1 with *err set when BAR0 is
 * not an I/O BAR. */
int pci_io_bar0(struct pci_fn f, uint16_t *base, const char **err);

#endif
