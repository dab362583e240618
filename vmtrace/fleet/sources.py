"""Where the fleet's traces are: local files, directories and globs, or
fsspec URLs (``s3://bucket/run-*/`` ...) where the filesystem package for
that scheme is installed.

The client only lists; each worker opens the traces it is given, so trace
bytes never pass through the client.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vmtrace.errors import VmtraceError

__all__ = ["TRACE_SUFFIX", "expand_sources", "is_url", "local_copy", "content_id"]

#: What a directory's traces are called (``vmtrace record -o x.vmtrace``).
TRACE_SUFFIX = ".vmtrace"
_GLOB_CHARS = set("*?[")


def is_url(source: str) -> bool:
    """Whether ``source`` names a file through fsspec (``scheme://``) rather
    than a local path; ``file://`` URLs count as local."""
    return "://" in source and not source.startswith("file://")


def _strip_file_scheme(source: str) -> str:
    return source[len("file://") :] if source.startswith("file://") else source


def _expand_local(spec: str) -> list[str]:
    path = _strip_file_scheme(spec)
    if any(ch in path for ch in _GLOB_CHARS):
        hits = sorted(glob.glob(path, recursive=True))
        files = [h for h in hits if os.path.isfile(h)]
        dirs = [h for h in hits if os.path.isdir(h)]
        for d in dirs:
            files += _traces_under(Path(d))
        if not files:
            raise VmtraceError(f"no trace files match {spec}")
        return files
    p = Path(path)
    if p.is_dir():
        files = _traces_under(p)
        if not files:
            raise VmtraceError(f"no *{TRACE_SUFFIX} files under directory {spec}")
        return files
    if not p.exists():
        raise VmtraceError(f"no such trace file or directory: {spec}")
    return [str(p)]


def _traces_under(d: Path) -> list[str]:
    return sorted(str(p) for p in d.rglob(f"*{TRACE_SUFFIX}") if p.is_file())


def _filesystem(url: str) -> Any:  # fsspec is untyped: (filesystem, path)
    """The fsspec filesystem and path of ``url``, or a one-line error
    naming the package its scheme needs."""
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:
        raise VmtraceError(f"{url}: reading URLs needs the fsspec package") from None
    scheme = url.split("://", 1)[0]
    try:
        return url_to_fs(url)
    except ImportError as err:
        raise VmtraceError(
            f"{url}: the {scheme}:// filesystem needs a package that is not installed ({str(err).splitlines()[0]})"
        ) from None
    except ValueError:
        known = ", ".join(sorted(fsspec.available_protocols())[:12])
        raise VmtraceError(f"{url}: unknown URL scheme {scheme!r} (fsspec knows {known}, ...)") from None


def _expand_url(spec: str) -> list[str]:
    fs, path = _filesystem(spec)
    try:
        if any(ch in path for ch in _GLOB_CHARS):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if p.endswith(TRACE_SUFFIX)]
        elif fs.exists(path):
            found = [path]
        else:
            raise VmtraceError(f"no such trace file or directory: {spec}")
    except VmtraceError:
        raise
    except Exception as err:  # any backend's listing failure is the user's to fix
        raise VmtraceError(
            f"cannot list {spec}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    if not found:
        raise VmtraceError(f"no trace files at {spec}")
    return sorted(p if "://" in p else fs.unstrip_protocol(p) for p in found)


def expand_sources(specs: list[str]) -> list[str]:
    """Every trace named by ``specs`` (files, directories searched for
    ``*.vmtrace``, globs, URLs), once each, in the order given (a
    directory's or glob's files sorted); local paths made absolute.  Raises ``VmtraceError`` when a
    spec matches nothing."""
    if not specs:
        raise VmtraceError("no traces given: name trace files, directories, globs or URLs")
    out: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        for source in _expand_url(spec) if is_url(spec) else _expand_local(spec):
            # Absolute: a cluster's workers do not share the client's cwd.
            key = source if is_url(source) else os.path.abspath(source)
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


@contextmanager
def local_copy(source: str) -> Iterator[Path]:
    """A local path holding ``source``: the file itself, or for a URL a
    temporary copy the worker fetched, removed on exit."""
    if not is_url(source):
        yield Path(_strip_file_scheme(source))
        return
    fs, path = _filesystem(source)
    fd, tmp = tempfile.mkstemp(prefix="vmtrace-fleet-", suffix=TRACE_SUFFIX)
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield Path(tmp)
    finally:
        os.unlink(tmp)


def content_id(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256: the same trace copied
    to two places is one trace."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
