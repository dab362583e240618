/* A polled virtio-blk driver over the legacy virtio-pci interface (I/O
 * BAR0), shared by every vCPU through one split virtqueue. */
#ifndef VMTRACE_GUEST_VIRTIO_BLK_H
#define VMTRACE_GUEST_VIRTIO_BLK_H

#include <stdint.h>

#include "pci.h"

/* Transitional (legacy-capable) virtio-blk: what QEMU's virtio-blk-pci with
 * disable-modern=on and the reference VMM both offer. */
#define VIRTIO_PCI_VENDOR      0x1af4
#define VIRTIO_PCI_DEVICE_BLK  0x1001

/* Legacy virtio-pci header, offsets into the I/O BAR (virtio 0.9.5 / virtio
 * 1.x section 4.1.4.8).  MSI-X stays disabled, so the device-specific config
 * starts at 20. */
#define VIRTIO_PCI_HOST_FEATURES  0    /* 32-bit, read */
#define VIRTIO_PCI_GUEST_FEATURES 4    /* 32-bit, write */
#define VIRTIO_PCI_QUEUE_PFN      8    /* 32-bit: ring address >> 12 */
#define VIRTIO_PCI_QUEUE_NUM      12   /* 16-bit, read: the queue size */
#define VIRTIO_PCI_QUEUE_SEL      14   /* 16-bit */
#define VIRTIO_PCI_QUEUE_NOTIFY   16   /* 16-bit: a queue index */
#define VIRTIO_PCI_STATUS         18   /* 8-bit */
#define VIRTIO_PCI_ISR            19   /* 8-bit, read acknowledges */
#define VIRTIO_PCI_CONFIG         20   /* virtio_blk_config: capacity first */

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED      128

#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_FLUSH        9

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4

#define VIRTIO_BLK_S_OK           0
#define VIRTIO_BLK_S_IOERR        1
#define VIRTIO_BLK_S_UNSUPP       2
/* Put in the status byte before a request is published: a value no device
 * writes, so a status still 0xff after completion was never written. */
#define BLK_STATUS_UNWRITTEN      0xff

#define VRING_DESC_F_NEXT         1
#define VRING_DESC_F_WRITE        2
#define VRING_USED_F_NO_NOTIFY    1
#define VRING_AVAIL_F_NO_INTERRUPT 1

#define BLK_SECTOR_SIZE           512
#define BLK_BLOCK_SIZE            4096
#define BLK_SECTORS_PER_BLOCK     (BLK_BLOCK_SIZE / BLK_SECTOR_SIZE)
#define BLK_DESC_PER_SLOT         3      /* header, data, status */

/* Largest legacy queue the guest maps (QEMU's maximum is 1024), and the most
 * requests it keeps in flight over all vCPUs. */
#define BLK_MAX_QUEUE_SIZE        1024
#define BLK_MAX_SLOTS             256
#define BLK_MAX_QD                64

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct virtio_blk_outhdr {
    uint32_t type;
    uint32_t ioprio;                   /* "reserved" in virtio 1.x; 0 */
    uint64_t sector;
};

/* One request's fixed resources: descriptors 3*i (header), 3*i+1 (data),
 * 3*i+2 (status), chained once at start-up, and a 4 KiB data buffer. */
struct blk_slot {
    struct virtio_blk_outhdr hdr;
    volatile uint8_t status;
    uint8_t owner;                     /* vCPU that submits and completes it */
    uint16_t head;                     /* its first descriptor */
    uint32_t tag;                      /* the owner's request number */
    uint32_t used_len;                 /* from the used ring */
    uint32_t *data;
} __attribute__((aligned(32)));

struct blk_dev {
    struct pci_fn pci;
    uint16_t io;
    uint32_t host_features;
    uint32_t guest_features;
    uint64_t capacity;                 /* in 512-byte sectors */
    uint16_t qsize;
    int can_flush;
    int read_only;
    /* The ring, as the guest mapped it. */
    volatile struct vring_desc *desc;
    volatile uint16_t *avail;          /* flags, idx, ring[qsize], used_event */
    volatile uint16_t *used_hdr;       /* flags, idx */
    volatile struct vring_used_elem *used_ring;
    /* Slots: nvcpus * qd of them, vCPU v owning [v*qd, (v+1)*qd). */
    struct blk_slot *slots;
    uint32_t nslots;
    uint32_t qd;
    uint32_t bogus_used;               /* used entries naming no slot's head */
};

extern struct blk_dev blk;

/* Memory for rings and buffers, taken page-aligned from the RAM after the
 * image; mem_top is the end of RAM (0 if unknown).  Returns NULL and sets
 * *err when it would run past mem_top. */
void *blk_alloc(uint32_t size, uint32_t mem_top, const char **err);

/* Find the device, enable I/O and bus mastering, read its features and
 * capacity, set up queue 0 and the slots for nvcpus vCPUs at qd each.
 * Returns 0, or -1 with *err set. */
int blk_init(int nvcpus, uint32_t qd, uint32_t mem_top, const char **err);

/* Reset the device and bring it up again with a fresh, empty ring (the
 * slots keep their buffers).  Returns 0, or -1 with *err set. */
int blk_restart(const char **err);

/* The device status register. */
uint8_t blk_device_status(void);

/* Read (and so acknowledge) the ISR; returns its value. */
uint8_t blk_read_isr(void);

/* Set slot s up as a request of type (VIRTIO_BLK_T_IN or _OUT) at sector. */
static inline void blk_prepare(struct blk_slot *s, uint32_t type, uint64_t sector)
{
    s->hdr.type = type;
    s->hdr.sector = sector;
    s->status = BLK_STATUS_UNWRITTEN;
    blk.desc[s->head + 1].flags =
        (uint16_t)(VRING_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0));
}

/* Put n chains (their head descriptors) on the avail ring and notify the
 * device unless it asked not to be. */
void blk_publish(const uint16_t *heads, uint32_t n);

/* blk_malformed only: put head on the avail ring and move the index by step
 * (1 for a well-formed publish), then notify unconditionally. */
void blk_publish_raw(uint16_t head, uint16_t step);

/* Move new used-ring entries to their owners' completion queues, unless
 * another vCPU is already doing it.  Returns how many it moved. */
uint32_t blk_harvest(void);

/* Pop this vCPU's next completed slot, or NULL. */
struct blk_slot *blk_pop_completion(int vcpu);

/* Wait up to timeout TSC ticks for the completion of any of this vCPU's
 * requests.  Returns the slot, or NULL on timeout.  (Ticks, not ms: the
 * conversion is a 64-bit division, which this path should not pay per
 * request on a host that emulates every guest instruction.) */
struct blk_slot *blk_wait_completion(int vcpu, uint64_t timeout);

/* Send one request on the BSP's first slot and wait for it: a flush when
 * type is VIRTIO_BLK_T_FLUSH (no data descriptor).  Returns the status byte,
 * or -1 on timeout. */
int blk_sync_request(uint32_t type, uint64_t sector, uint64_t timeout);

#endif
