/* A polled virtio-blk driver on the legacy virtio-pci interface, written
 * from the virtio specification (0.9.5, and the "legacy interface" sections
 * of virtio 1.x: 4.1.4.8 for the I/O BAR layout, 2.7 for the split
 * virtqueue, 5.2 for the block device).
 *
 * No interrupts: the guest runs with IF=0 and never enables MSI-X, so it
 * polls the used ring.  It sets VRING_AVAIL_F_NO_INTERRUPT so that the device
 * skips raising INTx at all (raising one still costs the VMM an irqfd or
 * KVM_IRQ_LINE per completion, which is not what the benchmark measures),
 * and it sets the PCI command register's INTx-disable bit for a device that
 * ignores the hint.  The ISR is read only where the device's interrupt state
 * is reported (blk_read_isr): reading it acknowledges, and doing it per
 * request would add a port exit to every request.
 *
 * Sharing one virtqueue among vCPUs: the descriptor table is cut into fixed
 * three-descriptor slots, qd per vCPU, each slot always owned by one vCPU, so
 * descriptors need no allocator and no lock.  Two spinlocks guard the two
 * pieces of shared driver state: avail_lock the avail ring's index (publish),
 * used_lock the last used index read (harvest).  A harvester hands each used
 * entry to the owning vCPU's completion queue (one producer, the harvester
 * under used_lock; one consumer, the owner), so a vCPU never scans slots it
 * does not own and harvesting is never waited for: a vCPU that finds
 * used_lock taken just polls its own queue again. */
#include <stddef.h>
#include <stdint.h>

#include "acpi.h"
#include "io.h"
#include "lib.h"
#include "pci.h"
#include "virtio_blk.h"

#define CQ_SIZE BLK_MAX_QD                 /* >= qd: a vCPU never has more in flight */
#define RESET_POLLS 100000

struct completion_queue {
    volatile uint32_t head;                /* written by the harvester */
    uint32_t tail;                         /* the owner's */
    struct blk_slot *ring[CQ_SIZE];
};

struct blk_dev blk;

extern char __bss_end[];
static uintptr_t next_free;
static struct completion_queue cqs[MAX_CPUS];
static volatile uint32_t avail_lock, used_lock;
static uint16_t avail_idx;                 /* next free avail entry; under avail_lock */
static uint16_t last_used;                 /* next used entry to read; under used_lock */
static uint8_t *ring_mem;
static uint32_t ring_bytes;
static struct blk_slot slot_table[BLK_MAX_SLOTS];

static inline void spin_lock(volatile uint32_t *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(l, __ATOMIC_RELAXED))
            cpu_relax();
}

static inline int spin_trylock(volatile uint32_t *l)
{
    return !__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE);
}

static inline void spin_unlock(volatile uint32_t *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

/* One `rep stosl`: on a host that emulates every guest instruction, a
 * byte loop over a 12 KiB ring costs tens of milliseconds. */
static void zero_words(void *p, uint32_t bytes)
{
    uint32_t n = bytes / 4;

    __asm__ volatile("rep stosl" : "+D"(p), "+c"(n) : "a"(0) : "memory");
}

void *blk_alloc(uint32_t size, uint32_t mem_top, const char **err)
{
    uintptr_t p;

    if (!next_free)
        next_free = ((uintptr_t)__bss_end + 4095) & ~(uintptr_t)4095;
    p = next_free;
    if (mem_top && p + size > mem_top) {
        *err = "not enough guest RAM after the image for the virtqueue and buffers";
        return NULL;
    }
    next_free = (p + size + 4095) & ~(uintptr_t)4095;
    return (void *)p;
}

/* Legacy split-ring layout for a queue of q entries, aligned to 4096:
 * descriptors, then the avail ring, then (on the next page) the used ring. */
static uint32_t used_offset(uint32_t q)
{
    return (16 * q + 2 * (3 + q) + 4095) & ~4095u;
}

static uint32_t ring_size(uint32_t q)
{
    return used_offset(q) + ((2 * 3 + 8 * q + 4095) & ~4095u);
}

uint8_t blk_device_status(void)
{
    return inb((uint16_t)(blk.io + VIRTIO_PCI_STATUS));
}

uint8_t blk_read_isr(void)
{
    return inb((uint16_t)(blk.io + VIRTIO_PCI_ISR));
}

static void set_status(uint8_t s)
{
    outb((uint16_t)(blk.io + VIRTIO_PCI_STATUS), s);
}

static void chain_slots(void)
{
    uint32_t i;

    for (i = 0; i < blk.nslots; i++) {
        struct blk_slot *s = &blk.slots[i];
        volatile struct vring_desc *d = &blk.desc[s->head];

        d[0].addr = (uintptr_t)&s->hdr;
        d[0].len = sizeof(s->hdr);
        d[0].flags = VRING_DESC_F_NEXT;
        d[0].next = (uint16_t)(s->head + 1);
        d[1].addr = (uintptr_t)s->data;
        d[1].len = BLK_BLOCK_SIZE;
        d[1].flags = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;
        d[1].next = (uint16_t)(s->head + 2);
        d[2].addr = (uintptr_t)&s->status;
        d[2].len = 1;
        d[2].flags = VRING_DESC_F_WRITE;
        d[2].next = 0;
    }
}

/* Reset, ACKNOWLEDGE, DRIVER, features, queue 0, DRIVER_OK (virtio 1.x
 * 3.1.2, "legacy interface: device initialization": no FEATURES_OK). */
static int start_device(int first, const char **err)
{
    uint16_t io = blk.io;
    uint32_t i;
    uint8_t st;

    set_status(0);
    for (i = 0; i < RESET_POLLS && blk_device_status() != 0; i++)
        cpu_relax();
    if (blk_device_status() != 0) {
        *err = "the device status did not read 0 after reset";
        return -1;
    }
    set_status(VIRTIO_STATUS_ACKNOWLEDGE);
    set_status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);

    blk.host_features = inl((uint16_t)(io + VIRTIO_PCI_HOST_FEATURES));
    /* Only FLUSH: with it QEMU keeps its write cache on and the guest
     * flushes once at the end; without it every write is written through. */
    blk.guest_features = blk.host_features & (1u << VIRTIO_BLK_F_FLUSH);
    outl((uint16_t)(io + VIRTIO_PCI_GUEST_FEATURES), blk.guest_features);
    blk.can_flush = !!blk.guest_features;
    blk.read_only = !!(blk.host_features & (1u << VIRTIO_BLK_F_RO));
    blk.capacity = inl((uint16_t)(io + VIRTIO_PCI_CONFIG)) |
                   ((uint64_t)inl((uint16_t)(io + VIRTIO_PCI_CONFIG + 4)) << 32);

    outw((uint16_t)(io + VIRTIO_PCI_QUEUE_SEL), 0);
    if (first) {
        blk.qsize = inw((uint16_t)(io + VIRTIO_PCI_QUEUE_NUM));
        if (blk.qsize == 0) {
            *err = "queue 0 does not exist (QUEUE_NUM reads 0)";
            return -1;
        }
        if (blk.qsize & (blk.qsize - 1) || blk.qsize > BLK_MAX_QUEUE_SIZE) {
            *err = "queue 0's size is not a power of two up to 1024";
            return -1;
        }
        if (blk.nslots * BLK_DESC_PER_SLOT > blk.qsize) {
            *err = "vcpus * qd * 3 descriptors do not fit in the device's queue "
                   "(QEMU's has 256: vcpus * qd <= 85)";
            return -1;
        }
    } else if (inw((uint16_t)(io + VIRTIO_PCI_QUEUE_NUM)) != blk.qsize) {
        *err = "the queue size changed across a reset";
        return -1;
    }
    if (inl((uint16_t)(io + VIRTIO_PCI_QUEUE_PFN)) != 0) {
        *err = "queue 0 is still in use after reset (QUEUE_PFN is not 0)";
        return -1;
    }

    zero_words(ring_mem, ring_bytes);
    blk.desc = (volatile struct vring_desc *)ring_mem;
    blk.avail = (volatile uint16_t *)(ring_mem + 16 * blk.qsize);
    blk.used_hdr = (volatile uint16_t *)(ring_mem + used_offset(blk.qsize));
    blk.used_ring = (volatile struct vring_used_elem *)(ring_mem + used_offset(blk.qsize) + 4);
    blk.avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
    avail_idx = 0;
    last_used = 0;
    for (i = 0; i < MAX_CPUS; i++)
        cqs[i].head = cqs[i].tail = 0;
    chain_slots();
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    outl((uint16_t)(io + VIRTIO_PCI_QUEUE_PFN), (uint32_t)((uintptr_t)ring_mem >> 12));

    set_status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK);
    st = blk_device_status();
    if (st & (VIRTIO_STATUS_FAILED | VIRTIO_STATUS_NEEDS_RESET) || !(st & VIRTIO_STATUS_DRIVER_OK)) {
        *err = "the device did not accept DRIVER_OK";
        return -1;
    }
    return 0;
}

int blk_init(int nvcpus, uint32_t qd, uint32_t mem_top, const char **err)
{
    uint32_t cmd, i;

    if (pci_find(VIRTIO_PCI_VENDOR, VIRTIO_PCI_DEVICE_BLK, &blk.pci)) {
        *err = "no virtio-blk PCI device (1af4:1001) on bus 0: give the VMM a legacy "
               "virtio-blk-pci device (QEMU: disable-modern=on)";
        return -1;
    }
    if (pci_io_bar0(blk.pci, &blk.io, err))
        return -1;
    cmd = pci_read16(blk.pci, PCI_COMMAND);
    pci_write16(blk.pci, PCI_COMMAND,
                (uint16_t)(cmd | PCI_COMMAND_IO | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE));

    /* The queue size is only known once the device is reset and queue 0
     * selected, but the ring must exist before DRIVER_OK: size it for the
     * largest legacy queue. */
    ring_bytes = ring_size(BLK_MAX_QUEUE_SIZE);
    ring_mem = blk_alloc(ring_bytes, mem_top, err);
    if (!ring_mem)
        return -1;

    blk.qd = qd;
    blk.nslots = (uint32_t)nvcpus * qd;
    blk.slots = slot_table;
    if (blk.nslots > BLK_MAX_SLOTS) {
        *err = "vcpus * qd is over the guest's 256 request slots";
        return -1;
    }
    for (i = 0; i < blk.nslots; i++) {
        struct blk_slot *s = &blk.slots[i];

        s->owner = (uint8_t)(i / qd);
        s->head = (uint16_t)(i * BLK_DESC_PER_SLOT);
        s->data = blk_alloc(BLK_BLOCK_SIZE, mem_top, err);
        if (!s->data)
            return -1;
    }
    if (start_device(1, err)) {
        set_status(VIRTIO_STATUS_FAILED);   /* the driver gave up (virtio 1.x 2.1) */
        return -1;
    }
    return 0;
}

int blk_restart(const char **err)
{
    return start_device(0, err);
}

void blk_publish(const uint16_t *heads, uint32_t n)
{
    uint16_t mask = (uint16_t)(blk.qsize - 1), idx;
    uint32_t i;

    spin_lock(&avail_lock);
    idx = avail_idx;
    for (i = 0; i < n; i++)
        blk.avail[2 + ((idx + i) & mask)] = heads[i];
    /* x86 keeps stores in order; the fence keeps the compiler from moving
     * the ring entries after the index that publishes them. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    avail_idx = (uint16_t)(idx + n);
    blk.avail[1] = avail_idx;
    spin_unlock(&avail_lock);
    /* Store-load ordering: the device must see the new index before we read
     * its NO_NOTIFY flag, or a device that just re-enabled notifications
     * and found the ring empty would never be told (virtio 1.x 2.7.13). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!(blk.used_hdr[0] & VRING_USED_F_NO_NOTIFY))
        outw((uint16_t)(blk.io + VIRTIO_PCI_QUEUE_NOTIFY), 0);
}

void blk_publish_raw(uint16_t head, uint16_t step)
{
    spin_lock(&avail_lock);
    blk.avail[2 + (avail_idx & (blk.qsize - 1))] = head;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    avail_idx = (uint16_t)(avail_idx + step);
    blk.avail[1] = avail_idx;
    spin_unlock(&avail_lock);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    outw((uint16_t)(blk.io + VIRTIO_PCI_QUEUE_NOTIFY), 0);
}

uint32_t blk_harvest(void)
{
    uint16_t mask = (uint16_t)(blk.qsize - 1), end;
    uint32_t moved = 0;

    if (blk.used_hdr[1] == last_used || !spin_trylock(&used_lock))
        return 0;
    end = blk.used_hdr[1];
    __atomic_thread_fence(__ATOMIC_ACQUIRE);   /* entries after the index */
    for (; last_used != end; last_used++) {
        volatile struct vring_used_elem *e = &blk.used_ring[last_used & mask];
        uint32_t id = e->id, slot = id / BLK_DESC_PER_SLOT;
        struct completion_queue *cq;
        struct blk_slot *s;

        if (id % BLK_DESC_PER_SLOT || slot >= blk.nslots) {
            blk.bogus_used++;
            continue;
        }
        s = &blk.slots[slot];
        cq = &cqs[s->owner];
        if (cq->head - __atomic_load_n(&cq->tail, __ATOMIC_RELAXED) >= CQ_SIZE) {
            blk.bogus_used++;               /* more completions than requests */
            continue;
        }
        s->used_len = e->len;
        cq->ring[cq->head % CQ_SIZE] = s;
        __atomic_store_n(&cq->head, cq->head + 1, __ATOMIC_RELEASE);
        moved++;
    }
    spin_unlock(&used_lock);
    return moved;
}

struct blk_slot *blk_pop_completion(int vcpu)
{
    struct completion_queue *cq = &cqs[vcpu];
    struct blk_slot *s;

    if (__atomic_load_n(&cq->head, __ATOMIC_ACQUIRE) == cq->tail)
        return NULL;
    s = cq->ring[cq->tail % CQ_SIZE];
    __atomic_store_n(&cq->tail, cq->tail + 1, __ATOMIC_RELEASE);
    return s;
}

struct blk_slot *blk_wait_completion(int vcpu, uint64_t timeout)
{
    uint64_t start = rdtsc();
    struct blk_slot *s;

    while (!(s = blk_pop_completion(vcpu))) {
        if (!blk_harvest() && rdtsc() - start > timeout)
            return NULL;
    }
    return s;
}

int blk_sync_request(uint32_t type, uint64_t sector, uint64_t timeout)
{
    struct blk_slot *s = &blk.slots[0], *done;
    volatile struct vring_desc *d = &blk.desc[s->head];

    if (type == VIRTIO_BLK_T_FLUSH) {
        s->hdr.type = type;
        s->hdr.sector = 0;
        s->status = BLK_STATUS_UNWRITTEN;
        d[0].next = (uint16_t)(s->head + 2);   /* header -> status */
    } else {
        blk_prepare(s, type, sector);
    }
    blk_publish(&s->head, 1);
    done = blk_wait_completion(0, timeout);
    d[0].next = (uint16_t)(s->head + 1);
    if (!done)
        return -1;
    return done->status;
}
