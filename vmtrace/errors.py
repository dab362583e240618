"""Errors that the CLI turns into one line on stderr and exit status 2."""

from __future__ import annotations

__all__ = ["VmtraceError", "TraceFileError", "HostError", "TargetError", "MissingEventsError"]


class VmtraceError(Exception):
    """A failure the user can act on; ``str(err)`` says what to do."""


class TraceFileError(VmtraceError):
    """A trace file is missing, truncated, corrupt or of a newer schema."""


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
            f"{analysis} needs events {', '.join(missing)}; this trace has "
            f"{', '.join(present) or 'no events'}"
        )
