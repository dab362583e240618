"""Which QEMU runs a bench: Debian's 7.2, the private 10.0, or a path.

``--qemu`` takes a version this project installs (``7.2``: Debian's
``/usr/bin/qemu-system-x86_64``; ``10.0``: the prefix that
``scripts/install_qemu10.sh`` fills from bookworm-backports) or the path of
any ``qemu-system-x86_64``.  A binary inside such a private prefix needs
``-L PREFIX/share``: without it, QEMU 10.0 loads Debian 7.2's firmware from
``/usr/share/qemu`` (an option ROM of the wrong version for ``-kernel``).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import VmtraceError

__all__ = ["QemuBinary", "KNOWN_VERSIONS", "qemu10_prefix", "resolve_qemu", "available_qemus", "firmware_dir"]

#: The versions ``--qemu`` names, oldest first.
KNOWN_VERSIONS = ("7.2", "10.0")
_DEBIAN_QEMU = "/usr/bin/qemu-system-x86_64"
_VERSION = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class QemuBinary:
    """A QEMU to run: ``path`` as given (a symlink stays one), ``version``
    ("10.0.2") from its ``--version``, ``firmware_dir`` for ``-L`` or None
    (the binary's built-in data directory is right)."""

    path: str
    version: str
    firmware_dir: str | None

    @property
    def short_version(self) -> str:
        """Major.minor: "10.0"."""
        return ".".join(self.version.split(".")[:2])

    def args(self) -> list[str]:
        """What goes right after the binary on its command line."""
        return ["-L", self.firmware_dir] if self.firmware_dir else []


def qemu10_prefix() -> Path:
    """Where ``scripts/install_qemu10.sh`` puts QEMU 10.0 (same rule)."""
    env = os.environ.get("VMTRACE_QEMU10_PREFIX")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "vmtrace" / "qemu-10.0"


def firmware_dir(binary: str) -> str | None:
    """``PREFIX/share`` when ``binary`` (or what it links to) lies in a
    private prefix with its own firmware; None for a system install."""
    for p in (Path(binary), Path(os.path.realpath(binary))):
        for up in list(p.parents)[:4]:
            if (up / "share" / "bios-256k.bin").is_file():
                return str(up / "share")
    return None


def _known_path(version: str) -> Path:
    if version == "7.2":
        return Path(_DEBIAN_QEMU)
    return qemu10_prefix() / "bin" / "qemu-system-x86_64"


def resolve_qemu(spec: str | None) -> QemuBinary:
    """The QEMU ``spec`` names: None (``qemu-system-x86_64`` on PATH), a
    version in KNOWN_VERSIONS, or a path.  Raises VmtraceError, saying how to
    install it, when it is absent or is not the version named."""
    if spec is None or spec == "":
        found = shutil.which("qemu-system-x86_64")
        if not found:
            raise VmtraceError("qemu-system-x86_64 is not on PATH: install Debian's qemu-system-x86")
        path = found
    elif _VERSION.match(spec):
        if spec not in KNOWN_VERSIONS:
            raise VmtraceError(
                f"--qemu {spec}: vmtrace knows QEMU {', '.join(KNOWN_VERSIONS)}; give a path for another"
            )
        path = str(_known_path(spec))
        if not os.access(path, os.X_OK):
            how = (
                "install Debian's qemu-system-x86"
                if spec == "7.2"
                else "run scripts/install_qemu10.sh (scripts/setup.sh does)"
            )
            raise VmtraceError(f"QEMU {spec} is not installed at {path}: {how}")
    else:
        path = spec
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise VmtraceError(f"--qemu {spec}: not an executable file")
    # Imported here: the table above is read by the tests' conftest, which
    # also loads under the free-threaded interpreter, where pyelftools (which
    # collectors.qemu needs) is not installed.
    from .collectors.qemu import qemu_version

    version = qemu_version(os.path.realpath(path))
    if version is None:
        raise VmtraceError(f"{path} did not say its version (`--version`): is it a qemu-system binary?")
    binary = QemuBinary(path, version, firmware_dir(path))
    if spec and _VERSION.match(spec) and binary.short_version != spec:
        raise VmtraceError(f"{path} is QEMU {version}, not {spec}")
    return binary


def available_qemus() -> list[str]:
    """The KNOWN_VERSIONS installed on this host, oldest first."""
    out = []
    for v in KNOWN_VERSIONS:
        try:
            resolve_qemu(v)
        except VmtraceError:
            continue
        out.append(v)
    return out
