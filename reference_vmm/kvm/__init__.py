"""KVM bindings: ctypes structures, ioctl numbers, fd wrappers and typed exits.

Layering as in rust-vmm: :mod:`.bindings` (raw layouts) -> :mod:`.ioctls`
(request numbers) -> :mod:`.system` (``Kvm -> VmFd -> VcpuFd``) ->
:mod:`.exits` (what ``VcpuFd.run()`` returns).
"""

from .system import Kvm, VcpuFd, VmFd

__all__ = ["Kvm", "VmFd", "VcpuFd"]
