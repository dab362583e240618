"""Errors that the CLI turns into one line on stderr and exit status 2."""

from __future__ import annotations

__all__ = [
    "VmtraceError",
    "TraceFileError",
    "MetadataError",
    "OutputError",
    "UsageError",
    "HostError",
    "TargetError",
    "MissingEventsError",
    "TraceWarning",
]


class VmtraceError(Exception):
    """A failure the user can act on; ``str(err)`` says what to do."""


class TraceFileError(VmtraceError):
    """A trace file is missing, truncated, corrupt or of a newer schema."""


class MetadataError(TraceFileError):
    """A trace's metadata does not match the declared schema (``vmtrace.meta``);
    ``field`` is the dotted path of the first bad field, such as
    ``threads[2].tid``."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"trace metadata field {field} {problem}" if field else f"the trace metadata {problem}")


class OutputError(VmtraceError):
    """An output path cannot be written (``vmtrace.outputs``)."""


class UsageError(VmtraceError):
    """A command-line value is out of range or malformed; the CLI adds which
    command's ``--help`` to read."""


class HostError(VmtraceError):
    """The host lacks something recording needs (root, tracefs, BPF, KVM)."""


class TargetError(VmtraceError):
    """The target command or PID cannot be traced."""


class MissingEventsError(VmtraceError):
    """An analysis needs events the trace does not have."""

    def __init__(self, analysis: str, missing: list[str], present: list[str]) -> None:
        self.missing = missing
        self.present = present
        super().__init__(
            f"{analysis} needs events {', '.join(missing)}; this trace has {', '.join(present) or 'no events'}"
        )


class TraceWarning(UserWarning):
    """A trace was read with a repair (exact duplicate rows dropped, ...):
    the answer is right, but the file is not as vmtrace wrote it."""
