"""Trace metadata: the declared schema, checked once when a trace is read.

The JSON object under the Parquet key ``vmtrace`` (see ``schema.METADATA_KEYS``)
is described here as dataclasses.  ``validate_meta`` walks a decoded object
against them, migrates an older schema version to the current one, and
raises ``MetadataError`` naming the first bad field (``threads[2].tid must
be an integer, not 'x'``), so no analysis, renderer or export ever meets a
``tsc_hz`` of ``"fast"``.  Fields the schema does not declare are kept as
they are (a newer writer of the same schema version may add some); every
declared field may be absent, and most may be ``null``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import MetadataError
from .schema import SCHEMA_VERSION

__all__ = [
    "TraceMeta",
    "Host",
    "Target",
    "ThreadInfo",
    "LockInfo",
    "LostEvents",
    "BenchInfo",
    "MIGRATIONS",
    "validate_meta",
    "parse_meta",
]

#: Constraint keys a field's metadata may carry: ``min`` (inclusive lower
#: bound of a number), ``hex_keys`` (a dict whose keys are integers written
#: as strings, such as "0x5555a000").
_NONNEG = {"min": 0}
_U64_MAX = (1 << 64) - 1


@dataclass
class Host:
    kernel: str | None = None
    hostname: str | None = None
    cpus: int | None = field(default=None, metadata=_NONNEG)
    machine: str | None = None


@dataclass
class Tracepoint:
    available: bool | None = None
    fired: int | None = field(default=None, metadata=_NONNEG)


@dataclass
class Target:
    command: list[str] | None = None
    pid: int | None = None
    exit_status: int | None = None
    vmm: str | None = None
    binary: str | None = None
    vmm_version: str | None = None


@dataclass
class ThreadInfo:
    tid: int = field(default=0, metadata={"min": 1, "max": (1 << 31) - 1, "required": True})
    name: str | None = None
    role: str | None = None
    vcpu: int | None = field(default=None, metadata={"min": 0, "max": (1 << 15) - 1})
    pid: int | None = None


@dataclass
class LockInfo:
    name: str | None = None
    futex_uaddr: int | None = field(default=None, metadata={"min": 0, "max": _U64_MAX})
    method: str | None = None
    identified: bool | None = None


@dataclass
class LostEvents:
    total: int = field(default=0, metadata=_NONNEG)  # analyses read it as .get("total", 0)
    per_cpu: dict[str, int] | None = field(default=None, metadata={"min": 0})


@dataclass
class BenchInfo:
    """What ``vmtrace bench --record`` stores (``bench.BenchResult.to_json``);
    the fields the analyses read are typed, the rest kept as written."""

    vmm: str | None = None
    bench: str | None = None
    vcpus: int | None = field(default=None, metadata=_NONNEG)
    iterations: int | None = field(default=None, metadata=_NONNEG)
    tsc_hz: int | None = field(default=None, metadata=_NONNEG)
    cycles_per_op: float | None = None
    per_vcpu: list[float] | None = None
    pm_port: int | None = field(default=None, metadata={"min": 0, "max": _U64_MAX})
    exit_status: int | None = None
    wall_s: float | None = None
    locking: str | None = None
    command: list[str] | None = None
    blkdev: dict[str, Any] | None = None


@dataclass
class TraceMeta:
    schema_version: int = field(default=SCHEMA_VERSION, metadata={"min": 1, "required": True})
    vmtrace_version: str | None = None
    created: str | None = None
    host: Host | None = None
    kvm_flavour: str | None = None
    tracepoints: dict[str, Tracepoint] | None = None
    backend: str | None = None
    mode: str | None = None
    clock: str | None = None
    tsc_hz: float | None = field(default=None, metadata=_NONNEG)
    tsc_hz_source: str | None = None
    target: Target | None = None
    threads: list[ThreadInfo] | None = None
    lost_events: LostEvents | None = None
    locks: list[LockInfo] | None = None
    futex_names: dict[str, str] | None = field(default=None, metadata={"hex_keys": True})
    probes: dict[str, Any] | None = None
    start_ns: int | None = field(default=None, metadata=_NONNEG)
    end_ns: int | None = field(default=None, metadata=_NONNEG)
    interrupted: bool | None = None
    bench: BenchInfo | None = None
    notes: list[str] | None = None


def _migrate_1(meta: dict[str, Any]) -> dict[str, Any]:
    # Schema 2 added the `lost` event row; the metadata did not change (a
    # schema-1 trace's lost_events still counts what was lost).
    return meta


#: from-version -> function turning that version's metadata into the next one's.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _migrate_1}

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list"
    if origin is dict or hint is dict:
        return "an object"
    if dataclasses.is_dataclass(hint):
        return "an object"
    return _NAMES.get(hint, str(hint))


def _check(value: Any, hint: Any, where: str, meta: typing.Mapping[str, Any]) -> Any:
    """``value`` checked against ``hint``; returns the typed value (a
    dataclass instance for a nested object)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            if meta.get("required"):
                raise MetadataError(where, "is required")
            return None
        return _check(value, args[0], where, meta)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise MetadataError(where, f"must be true or false, not {_show(value)}")
        return value
    if hint in (int, float):
        ok = isinstance(value, int) if hint is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise MetadataError(where, f"must be {_NAMES[hint]}, not {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise MetadataError(where, f"must be a finite number, not {_show(value)}")
        if "min" in meta and value < meta["min"]:
            raise MetadataError(where, f"must be at least {meta['min']}, not {_show(value)}")
        if "max" in meta and value > meta["max"]:
            raise MetadataError(where, f"must be at most {meta['max']}, not {_show(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise MetadataError(where, f"must be a string, not {_show(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise MetadataError(where, f"must be a list, not {_show(value)}")
        (item,) = typing.get_args(hint)
        return [_check(v, item, f"{where}[{i}]", meta) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MetadataError(where, f"must be an object, not {_show(value)}")
        _, item = typing.get_args(hint)
        if meta.get("hex_keys"):
            for key in value:
                try:
                    int(key, 0)
                except ValueError:
                    raise MetadataError(
                        f"{where}[{_show(key)}]", "must be keyed by an address such as '0x5555a000'"
                    ) from None
        return {k: _check(v, item, f"{where}[{_show(k)}]", meta) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _object(value, typing.cast(type, hint), where)
    raise TypeError(f"undeclared schema type {hint!r}")  # a bug in this module, not in the file


def _object(value: Any, cls: type, where: str) -> Any:
    if not isinstance(value, dict):
        raise MetadataError(where, f"must be an object, not {_show(value)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        if f.name not in value:
            if f.metadata.get("required"):
                raise MetadataError(name, "is required")
            continue
        kwargs[f.name] = _check(value[f.name], hints[f.name], name, f.metadata)
    return cls(**kwargs)


def parse_meta(obj: Any) -> TraceMeta:
    """The typed view of a trace's metadata (already migrated): raises
    ``MetadataError`` naming the first field that does not match."""
    return typing.cast(TraceMeta, _object(obj, TraceMeta, ""))


def validate_meta(obj: Any) -> dict[str, Any]:
    """Check a decoded metadata object against ``TraceMeta``, migrating it
    from an older schema version first; returns the (migrated) dict, whose
    every declared field now has its declared type.

    Raises ``MetadataError`` for a non-object, a schema version that is not
    an integer from 1 to ``SCHEMA_VERSION`` (newer ones get their own
    message from ``read_trace``), or any field of the wrong type or range.
    """
    if not isinstance(obj, dict):
        raise MetadataError("", f"must be a JSON object, not {_show(obj)}")
    version = obj.get("schema_version")
    if "schema_version" not in obj or version is None:
        raise MetadataError("schema_version", "is required")
    if isinstance(version, bool) or not isinstance(version, int):
        raise MetadataError("schema_version", f"must be an integer, not {_show(version)}")
    if version < 1:
        raise MetadataError("schema_version", f"must be from 1 to {SCHEMA_VERSION}, not {version}")
    meta = dict(obj)
    while meta["schema_version"] < SCHEMA_VERSION:
        v = meta["schema_version"]
        meta = MIGRATIONS[v](meta)
        meta["schema_version"] = v + 1
    parse_meta(meta)
    # The file's own version stays visible: a report may say what wrote it.
    meta["schema_version"] = version
    return meta
