"""virtio: split virtqueues, the VirtIODevice core, virtio-blk, and the legacy virtio-pci transport."""

from .blk import VirtIOBlock
from .device import VirtIODevice
from .pci import VirtIOPCIProxy
from .virtqueue import VirtioError, VirtQueue, VirtQueueElement

__all__ = ["VirtIOBlock", "VirtIODevice", "VirtIOPCIProxy", "VirtioError", "VirtQueue", "VirtQueueElement"]
