"""virtio-blk: read, write, flush and get-id requests on a raw image.

A request is one descriptor chain: a 16-byte header the device reads
(``type`` u32, ``ioprio`` u32, ``sector`` u64), the data buffers, and a
status byte the device writes, the last byte of the chain.  What the device
answers follows QEMU's ``virtio_blk_handle_request``:

* a chain with no readable or no writable buffer, or a header shorter than
  16 bytes, breaks the device (``virtio_error``);
* ``T_IN`` / ``T_OUT`` (the BARRIER bit ignored): the data are the writable
  buffers for a read, the readable ones after the header for a write.  A
  range that is not a whole number of sectors, starts past the end of the
  disk or runs past it completes with VIRTIO_BLK_S_IOERR without touching the
  image; a host I/O error also gives S_IOERR;
* ``T_FLUSH``: ``fdatasync`` of the image;
* ``T_GET_ID``: the serial, NUL-terminated only if shorter than 20 bytes;
* anything else (SCSI, discard, write-zeroes: not offered) is S_UNSUPP.

A request whose data buffers point the "wrong" way is not an error in QEMU:
a write whose data the driver marked device-writable has no readable data
(a 0-byte write) and completes with S_OK, and so here.

The used length reported for every completed request is the size of all its
writable buffers, status byte included, as QEMU reports it.  The reads and
writes of a batch go to the disk together (see ``process_queue``);
completions are pushed to the used ring one by one as the disk finishes them
(a polling driver sees each at once) and the interrupt is raised once per
batch.
"""

from __future__ import annotations

import collections
import struct

from vmtrace import probes

from ...block import SECTOR_SIZE, BlockBackend
from ...memory.dma import GuestMemory
from .device import VIRTIO_F_ANY_LAYOUT, VIRTIO_RING_F_INDIRECT_DESC, VirtIODevice
from .virtqueue import VirtioError, VirtQueue, VirtQueueElement

__all__ = [
    "VirtIOBlock",
    "VIRTIO_ID_BLOCK",
    "VIRTIO_BLK_T_IN",
    "VIRTIO_BLK_T_OUT",
    "VIRTIO_BLK_T_FLUSH",
    "VIRTIO_BLK_T_GET_ID",
    "VIRTIO_BLK_T_BARRIER",
    "VIRTIO_BLK_S_OK",
    "VIRTIO_BLK_S_IOERR",
    "VIRTIO_BLK_S_UNSUPP",
    "VIRTIO_BLK_F_SEG_MAX",
    "VIRTIO_BLK_F_BLK_SIZE",
    "VIRTIO_BLK_F_FLUSH",
    "VIRTIO_BLK_ID_BYTES",
    "BLK_CONFIG_LEN",
]

VIRTIO_ID_BLOCK = 2

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_BARRIER = 0x80000000

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9  # VIRTIO_BLK_F_WCE in legacy drivers: the disk has a write cache

VIRTIO_BLK_ID_BYTES = 20
#: capacity .. num_queues of ``struct virtio_blk_config``: everything before the
#: discard/write-zeroes fields, which belong to features not offered.
BLK_CONFIG_LEN = 36
_REQUEST_MAX_SECTORS = 0x7FFFFFFF >> 9  # QEMU's BDRV_REQUEST_MAX_SECTORS
_OUTHDR = struct.Struct("<IIQ")
_MAX_BATCH = 32

_IO_REGION = {False: "virtio-blk-read", True: "virtio-blk-write"}
#: The probe span of one request, from its pop off the avail ring to its push
#: on the used ring (``addr``: the avail ring index it was taken from).
REQUEST_REGION = "virtio-blk-req"


def _take_front(sg: list[memoryview], n: int) -> tuple[bytes, list[memoryview]]:
    """The first ``n`` bytes of ``sg`` (fewer if it is shorter) and views of the rest."""
    head = bytearray()
    rest: list[memoryview] = []
    for v in sg:
        need = n - len(head)
        if need > 0:
            head += v[:need]
            if len(v) > need:
                rest.append(v[need:])
        else:
            rest.append(v)
    return bytes(head), rest


def _scatter(sg: list[memoryview], data: bytes) -> None:
    pos = 0
    for v in sg:
        if pos >= len(data):
            return
        n = min(len(v), len(data) - pos)
        v[:n] = data[pos : pos + n]
        pos += n


class _Request:
    """A request between its pop and its push: the element (its views of
    guest RAM stay alive until the push), the status byte and the data."""

    __slots__ = ("elem", "avail", "status_buf", "in_len", "views", "is_write", "size")

    def __init__(self, elem: VirtQueueElement, avail: int, status_buf: memoryview, in_len: int) -> None:
        self.elem = elem
        self.avail = avail
        self.status_buf = status_buf
        self.in_len = in_len
        self.views: list[memoryview] = []
        self.is_write = False
        self.size = 0


class VirtIOBlock(VirtIODevice):
    """A virtio-blk device on ``backend`` with one queue of ``queue_size`` entries."""

    def __init__(self, backend: BlockBackend, mem: GuestMemory, serial: str = "", queue_size: int = 256) -> None:
        features = (
            1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_F_ANY_LAYOUT
        )
        self.backend = backend
        self.serial = serial.encode()[:VIRTIO_BLK_ID_BYTES]
        #: Completed requests by outcome: read, write, flush, get-id, unsupported,
        #: ioerr-range (bad sector range), ioerr-host (the host I/O failed).
        self.requests: collections.Counter[str] = collections.Counter()
        self.bytes_read = 0
        self.bytes_written = 0
        super().__init__("virtio-blk", VIRTIO_ID_BLOCK, BLK_CONFIG_LEN, features, mem, [queue_size])

    def reset(self) -> None:
        super().reset()
        self.backend.writethrough = False  # as virtio_blk_reset: back to the disk's own cache mode

    def set_status(self, value: int) -> None:
        super().set_status(value)
        if value & 4:  # DRIVER_OK: as QEMU, a driver that cannot flush gets a write-through disk
            self.backend.writethrough = not self.has_feature(VIRTIO_BLK_F_FLUSH)

    def get_config(self) -> bytes:
        cfg = bytearray(BLK_CONFIG_LEN)
        struct.pack_into("<QII", cfg, 0, self.backend.sectors, 0, self.queues[0].num - 2)  # capacity, size_max, seg_max
        struct.pack_into("<I", cfg, 20, SECTOR_SIZE)  # blk_size
        cfg[32] = 0 if self.backend.writethrough else 1  # wce
        struct.pack_into("<H", cfg, 34, 1)  # num_queues
        return bytes(cfg)

    # -- requests ----------------------------------------------------------------------------
    def process_queue(self, vq: VirtQueue) -> bool:
        """QEMU's ``virtio_blk_handle_vq``: drain the ring with notifications off, then recheck.

        Reads and writes are queued while the ring is drained and go to the
        disk together (QEMU's ``blk_io_plug``/``blk_io_unplug``; a batch is
        started every ``_MAX_BATCH`` requests, as linux-aio's ``aio-max-batch``),
        then each completes -- status, used ring -- as its I/O does.  A flush
        or any other request waits for the queued I/O first, so a flush covers
        every write before it.
        """
        completed = False
        traced = probes.enabled
        pending: list[_Request] = []
        try:
            while True:
                vq.set_notification(False)
                while True:
                    avail = vq.last_avail_idx
                    if traced:
                        # One span per request, pop to push, keyed by its avail index:
                        # the batch's span alone cannot say where each request is.
                        if vq.empty():
                            break
                        probes.dispatch_begin(avail, 0, False, REQUEST_REGION)
                    try:
                        elem = vq.pop()
                        if elem is None:
                            if traced:
                                probes.dispatch_end(avail, 0, False, REQUEST_REGION)
                            break
                        req = self._start_request(vq, elem, avail, pending)
                    except BaseException:
                        if traced:
                            probes.dispatch_end(avail, 0, False, REQUEST_REGION)
                        raise
                    completed = True
                    if req is not None:
                        pending.append(req)
                        if len(pending) % _MAX_BATCH == 0:
                            self.backend.submit()
                self._complete_io(vq, pending)
                vq.set_notification(True)
                if vq.empty():  # a request may have arrived after the last pop but before re-enabling
                    break
        except VirtioError as e:
            # What was taken before the bad request completes, as it did when
            # each request completed before the next was popped.
            self._complete_io(vq, pending)
            vq.set_notification(True)
            self.virtio_error(e)
        return completed

    def _start_request(
        self, vq: VirtQueue, elem: VirtQueueElement, avail: int, pending: list[_Request]
    ) -> _Request | None:
        """Parse one request; a read or write is queued and returned, anything
        else completes here (after the queued I/O).  Raises VirtioError for a
        request that breaks the device (its element released)."""
        try:
            out_sg, in_sg = elem.out_sg, elem.in_sg
            if not out_sg or not in_sg:
                raise VirtioError("missing-headers", "virtio-blk missing headers")
            header, out_data = _take_front(out_sg, _OUTHDR.size)
            if len(header) < _OUTHDR.size:
                raise VirtioError("outhdr-too-short", "virtio-blk request outhdr too short")
        except VirtioError:
            elem.release()
            raise
        in_len = sum(len(v) for v in in_sg)
        last = in_sg[-1]
        req = _Request(elem, avail, last[len(last) - 1 :], in_len)
        in_data = in_sg[:-1] + ([last[: len(last) - 1]] if len(last) > 1 else [])
        req.views = out_data + in_data
        rtype, _ioprio, sector = _OUTHDR.unpack(header)
        kind = rtype & ~(VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_BARRIER)
        if kind == VIRTIO_BLK_T_IN:
            req.is_write = bool(rtype & VIRTIO_BLK_T_OUT)
            data = out_data if req.is_write else in_data
            req.size = sum(len(v) for v in data)
            if self._range_ok(sector, req.size):
                if probes.enabled:
                    probes.dispatch_begin(avail, 0, req.is_write, _IO_REGION[req.is_write])
                self.backend.queue(req.is_write, sector * SECTOR_SIZE, data, req)
                return req
            self.requests["ioerr-range"] += 1
            status = VIRTIO_BLK_S_IOERR
        elif kind == VIRTIO_BLK_T_FLUSH:
            self._complete_io(vq, pending)
            status = self._flush()
        elif kind == VIRTIO_BLK_T_GET_ID:
            room = sum(len(v) for v in in_data)
            serial = self.serial + b"\0"
            _scatter(in_data, serial[: min(len(serial), room, VIRTIO_BLK_ID_BYTES)])
            self.requests["get-id"] += 1
            status = VIRTIO_BLK_S_OK
        else:
            self.requests["unsupported"] += 1
            status = VIRTIO_BLK_S_UNSUPP
        self._complete(vq, req, status)
        return None

    def _range_ok(self, sector: int, size: int) -> bool:
        """``virtio_blk_sect_range_ok``."""
        nb = size // SECTOR_SIZE
        if size % SECTOR_SIZE or nb > _REQUEST_MAX_SECTORS:
            return False
        total = self.backend.sectors
        return sector <= total and nb <= total - sector

    def _complete_io(self, vq: VirtQueue, pending: list[_Request]) -> None:
        """Wait for the queued reads and writes, completing each as it finishes."""
        if not pending:
            return
        traced = probes.enabled
        for req, err in self.backend.completions():
            assert isinstance(req, _Request)
            if traced:
                probes.dispatch_end(req.avail, 0, req.is_write, _IO_REGION[req.is_write])
            if err is not None:
                self.requests["ioerr-host"] += 1
                status = VIRTIO_BLK_S_IOERR
            elif req.is_write:
                self.requests["write"] += 1
                self.bytes_written += req.size
                status = VIRTIO_BLK_S_OK
            else:
                self.requests["read"] += 1
                self.bytes_read += req.size
                status = VIRTIO_BLK_S_OK
            self._complete(vq, req, status)
        pending.clear()

    def _complete(self, vq: VirtQueue, req: _Request, status: int) -> None:
        """Write the status byte and return the request on the used ring
        (not on a device the driver broke meanwhile, as ``virtqueue_fill``)."""
        req.status_buf[0] = status
        req.status_buf.release()
        for v in req.views:
            v.release()
        if self.broken:
            req.elem.release()
        else:
            vq.push(req.elem, req.in_len)
        if probes.enabled:
            probes.dispatch_end(req.avail, 0, False, REQUEST_REGION)

    def _flush(self) -> int:
        traced = probes.enabled
        if traced:
            probes.dispatch_begin(0, 0, True, "virtio-blk-flush")
        try:
            self.backend.flush()
        except OSError:
            self.requests["ioerr-host"] += 1
            return VIRTIO_BLK_S_IOERR
        finally:
            if traced:
                probes.dispatch_end(0, 0, True, "virtio-blk-flush")
        self.requests["flush"] += 1
        return VIRTIO_BLK_S_OK
