"""tracefs as a collector uses it: private instances, event formats, uprobes.

Everything vmtrace creates in tracefs carries its owner's pid in its name, so
that a crashed recorder's leftovers can be found and removed later
(``cleanup_stale``):

* instances ``instances/vmtrace-<owner pid>-<n>`` (events are enabled only in
  these; the top-level instance's ``set_event`` and ``tracing_on`` are never
  written),
* uprobe groups ``vmtrace_<owner pid>_<n>`` in the top-level
  ``uprobe_events``, which is shared with every other tool on the host: it is
  only ever appended to (``O_APPEND``, never truncated), and a group is removed
  probe by probe with ``-:group/name``.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from vmtrace.errors import HostError
from vmtrace.procs import pid_alive

__all__ = [
    "Field",
    "EventFormat",
    "parse_format",
    "write_file",
    "read_file",
    "Instance",
    "add_uprobe",
    "uprobe_names",
    "remove_uprobe_group",
    "cleanup_stale",
    "INSTANCE_PREFIX",
    "UPROBE_GROUP_PREFIX",
]

INSTANCE_PREFIX = "vmtrace-"
UPROBE_GROUP_PREFIX = "vmtrace_"
# Recorders' instances are vmtrace-<pid>-<n>; doctor's vmtrace-doctor-<pid>.
_INSTANCE_RE = re.compile(r"^vmtrace-(?:(\d+)-\d+|doctor-(\d+))$")
_GROUP_RE = re.compile(r"^vmtrace_(\d+)_\d+$")


@dataclass(frozen=True)
class Field:
    """One field of a trace event record: byte ``offset`` and ``size`` in the
    record, ``signed``, and the C declaration's type (``"char[16]"`` ...)."""

    name: str
    ctype: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class EventFormat:
    """The layout of one event's records, from ``events/SYSTEM/EVENT/format``."""

    system: str
    name: str
    id: int
    fields: dict[str, Field]

    @property
    def key(self) -> str:
        return f"{self.system}:{self.name}"

    def to_json(self) -> dict[str, object]:
        return {
            "system": self.system,
            "name": self.name,
            "id": self.id,
            "fields": {f.name: [f.ctype, f.offset, f.size, f.signed] for f in self.fields.values()},
        }

    @classmethod
    def from_json(cls, obj: dict) -> EventFormat:
        fields = {n: Field(n, v[0], int(v[1]), int(v[2]), bool(v[3])) for n, v in obj["fields"].items()}
        return cls(obj["system"], obj["name"], int(obj["id"]), fields)


_FIELD_RE = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<sig>-?\d+);")


def parse_format(text: str, system: str = "") -> EventFormat:
    """Parse the text of an event's ``format`` file.

    ``text`` str: the file's content; ``system`` str: the event's system
    (the file does not name it).
    """
    name = re.search(r"^name:\s*(\S+)", text, re.M)
    ident = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not name or not ident:
        raise ValueError("not an event format file (no name/ID)")
    fields: dict[str, Field] = {}
    for m in _FIELD_RE.finditer(text):
        decl = m.group("decl").strip()
        arr = re.match(r"^(?P<type>.*?)\s*(?P<name>\w+)\s*(?P<dim>\[[^\]]*\])?$", decl)
        if not arr:
            continue
        fname = arr.group("name")
        ctype = arr.group("type") + (arr.group("dim") or "")
        fields[fname] = Field(fname, ctype, int(m.group("off")), int(m.group("size")), m.group("sig") == "1")
    return EventFormat(system, name.group(1), int(ident.group(1)), fields)


def _error_log_tail(tracefs: Path) -> str:
    try:
        lines = (tracefs / "error_log").read_text().strip().splitlines()
    except OSError:
        return ""
    return (" (tracefs error_log: " + " | ".join(line.strip() for line in lines[-3:]) + ")") if lines else ""


def write_file(path: Path, value: str, append: bool = False, tracefs: Path | None = None) -> None:
    """Write ``value`` to a tracefs control file.

    ``append`` bool: open with O_APPEND and without O_TRUNC (for files that
    hold a list shared with others, such as ``uprobe_events``).  Raises
    ``HostError`` naming the file and the kernel's complaint.
    """
    flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
    data = value.encode() if value.endswith("\n") or not value else (value + "\n").encode()
    try:
        fd = os.open(path, flags)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as err:
        hint = _error_log_tail(tracefs) if tracefs else ""
        raise HostError(f"writing {value.strip()!r} to {path} failed: {err.strerror}{hint}") from err


def read_file(path: Path) -> str:
    return Path(path).read_text()


class Instance:
    """A tracefs instance (``instances/NAME``) with its own buffers and events.

    ``tracefs`` Path: the tracefs mount; ``name`` str: the instance name.
    """

    def __init__(self, tracefs: Path, name: str) -> None:
        self.tracefs = tracefs
        self.name = name
        self.path = tracefs / "instances" / name

    def create(self) -> None:
        try:
            self.path.mkdir()
        except OSError as err:
            raise HostError(
                f"cannot create tracefs instance {self.path}: {err.strerror}; "
                "tracefs instances need root and CONFIG_TRACING"
            ) from err

    def exists(self) -> bool:
        return self.path.is_dir()

    def write(self, rel: str, value: str) -> None:
        write_file(self.path / rel, value, tracefs=self.tracefs)

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def event_dir(self, tracepoint: str) -> Path:
        system, event = tracepoint.split(":")
        return self.path / "events" / system / event

    def enable(self, tracepoint: str, filter_expr: str | None = None) -> None:
        """Enable ``tracepoint`` ("system:event") in this instance, with a
        kernel-side filter expression when given."""
        d = self.event_dir(tracepoint)
        if filter_expr:
            write_file(d / "filter", filter_expr, tracefs=self.tracefs)
        write_file(d / "enable", "1", tracefs=self.tracefs)

    def disable(self, tracepoint: str) -> None:
        try:
            write_file(self.event_dir(tracepoint) / "enable", "0", tracefs=self.tracefs)
        except HostError:
            pass

    def format(self, tracepoint: str) -> EventFormat:
        system = tracepoint.split(":")[0]
        return parse_format((self.event_dir(tracepoint) / "format").read_text(), system)

    def remove(self, attempts: int = 50) -> None:
        """Turn everything off and rmdir the instance (retried while busy:
        a reader that is closing may still hold a buffer for a moment)."""
        if not self.exists():
            return
        for rel, value in (("tracing_on", "0"), ("events/enable", "0"), ("set_event_pid", "")):
            try:
                self.write(rel, value)
            except HostError:
                pass
        last: OSError | None = None
        for _ in range(attempts):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as err:
                if err.errno not in (errno.EBUSY, errno.EAGAIN):
                    raise HostError(f"cannot remove tracefs instance {self.path}: {err.strerror}") from err
                last = err
                time.sleep(0.02)
        raise HostError(
            f"cannot remove tracefs instance {self.path}: {last.strerror if last else 'busy'}; "
            f"close readers of it and run `rmdir {self.path}`"
        )


def add_uprobe(tracefs: Path, kind: str, group: str, name: str, binary: str, offset: int, args: str = "") -> str:
    """Append one uprobe definition to the top-level ``uprobe_events``.

    ``kind`` "p" (entry) or "r" (return); ``offset`` int: file offset of the
    function in ``binary``; ``args`` str: fetch args such as ``"mutex=%di:x64"``.
    Returns "group:name", the tracepoint name it creates.
    """
    spec = f"{kind}:{group}/{name} {binary}:0x{offset:x}" + (f" {args}" if args else "")
    write_file(tracefs / "uprobe_events", spec, append=True, tracefs=tracefs)
    return f"{group}:{name}"


def uprobe_names(tracefs: Path) -> list[tuple[str, str]]:
    """(group, name) of every probe in the top-level ``uprobe_events``."""
    try:
        text = (tracefs / "uprobe_events").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        m = re.match(r"^[pr]:(\S+?)/(\S+)\s", line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def _disable_everywhere(tracefs: Path, group: str) -> None:
    """Disable group's events in the top level and every instance (a probe
    that is enabled anywhere cannot be removed)."""
    roots = [tracefs] + [p for p in (tracefs / "instances").glob("*") if p.is_dir()]
    for root in roots:
        gdir = root / "events" / group
        if not gdir.is_dir():
            continue
        for ev in gdir.iterdir():
            enable = ev / "enable"
            try:
                if enable.exists() and enable.read_text().strip() not in ("0", ""):
                    write_file(enable, "0")
            except (OSError, HostError):
                pass


def remove_uprobe_group(tracefs: Path, group: str, attempts: int = 50) -> None:
    """Remove every probe of ``group`` (disable first, then ``-:group/name``),
    leaving every other line of ``uprobe_events`` untouched."""
    _disable_everywhere(tracefs, group)
    for g, name in uprobe_names(tracefs):
        if g != group:
            continue
        for i in range(attempts):
            try:
                write_file(tracefs / "uprobe_events", f"-:{g}/{name}", append=True)
                break
            except HostError as err:
                cause = err.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.ENOENT:
                    break
                if i == attempts - 1:
                    raise HostError(
                        f"cannot remove uprobe {g}/{name}: {cause}; "
                        f"run `echo '-:{g}/{name}' >> {tracefs}/uprobe_events`"
                    ) from err
                _disable_everywhere(tracefs, group)
                time.sleep(0.02)


def cleanup_stale(tracefs: Path | None = None) -> list[str]:
    """Remove vmtrace instances and uprobe groups whose owner process is dead.

    ``tracefs`` Path or None (the mounted tracefs).  Returns what was removed,
    e.g. ``["instance vmtrace-1234-0", "uprobe group vmtrace_1234_0"]``.
    Leftovers of a live recorder, and everything not named by vmtrace, are
    left alone.
    """
    if tracefs is None:
        from .host import tracefs_path

        tracefs = tracefs_path()
        if tracefs is None:
            return []
    removed: list[str] = []
    groups = sorted(
        {g for g, _ in uprobe_names(tracefs) if (m := _GROUP_RE.match(g)) and not pid_alive(int(m.group(1)))}
    )
    for group in groups:
        remove_uprobe_group(tracefs, group)
        removed.append(f"uprobe group {group}")
    inst_dir = tracefs / "instances"
    for path in sorted(inst_dir.glob(INSTANCE_PREFIX + "*")) if inst_dir.is_dir() else []:
        m = _INSTANCE_RE.match(path.name)
        if m and not pid_alive(int(m.group(1) or m.group(2))):
            Instance(tracefs, path.name).remove()
            removed.append(f"instance {path.name}")
    return removed
