"""The GIL's futex words: found in _PyRuntime and proven against a thread really waiting on it."""

from __future__ import annotations

import ctypes
import sys
import threading

import pytest

from vmtrace.reference_vmm.bql import BigLock, lock_futex_word
from vmtrace.reference_vmm.gil import GilNotFound, gil_futex_words

_SYS_FUTEX = 202  # x86_64

pytestmark = pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the GIL layout is proven for CPython 3.11")


def _syscall_of(tid: int, libc: ctypes.PyDLL) -> list[int]:
    """/proc/self/task/TID/syscall, read without releasing the GIL (PyDLL keeps it)."""
    path = f"/proc/self/task/{tid}/syscall".encode()
    fd = libc.open(path, 0)
    buf = ctypes.create_string_buffer(256)
    n = libc.read(fd, buf, 255)
    libc.close(fd)
    fields = buf.raw[: max(n, 0)].split()
    if not fields or fields[0] in (b"running",):
        return []
    return [int(f, 0) for f in fields[:3]]


def test_a_thread_waiting_for_the_gil_sleeps_on_a_reported_word() -> None:
    words = gil_futex_words()
    libc = ctypes.PyDLL(None)  # calls through PyDLL keep the GIL held
    libc.open.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    tids: list[int] = []
    stop = [False]

    def spinner() -> None:
        tids.append(threading.get_native_id())
        while not stop[0]:
            pass

    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.5)  # once we hold the GIL, keep it long enough to look
    t = threading.Thread(target=spinner)
    try:
        t.start()
        while not tids:
            pass
        # Here we hold the GIL (we run Python); the spinner wants it back.
        seen = []
        for _ in range(20000):
            sc = _syscall_of(tids[0], libc)
            if sc and sc[0] == _SYS_FUTEX:
                seen = sc
                break
        assert seen, "the spinner never blocked in futex while we held the GIL"
        assert seen[1] in words.values(), (hex(seen[1]), {k: hex(v) for k, v in words.items()})
    finally:
        stop[0] = True
        sys.setswitchinterval(saved)
        t.join()


def test_gil_words_are_distinct_from_the_bql() -> None:
    words = gil_futex_words()
    bql = BigLock("x")
    assert bql.futex_addr and bql.futex_addr not in words.values()


def test_lock_futex_word_is_validated() -> None:
    lock = threading.Lock()
    addr = lock_futex_word(lock)
    assert addr
    assert ctypes.c_uint32.from_address(addr).value == 1  # free
    with lock:
        assert ctypes.c_uint32.from_address(addr).value == 0  # held
    assert lock_futex_word(threading.RLock()) == 0  # not a plain Lock: no address claimed


def test_a_thread_blocked_on_the_bql_sleeps_on_its_reported_word() -> None:
    libc = ctypes.PyDLL(None)
    libc.open.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lock = BigLock("test")
    tids: list[int] = []
    lock.lock()

    def contend() -> None:
        tids.append(threading.get_native_id())
        lock.lock()
        lock.unlock()

    t = threading.Thread(target=contend)
    t.start()
    try:
        seen: list[int] = []
        for _ in range(200):
            t.join(0.005)  # lets the thread run into the lock
            if tids:
                sc = _syscall_of(tids[0], libc)
                if sc and sc[0] == _SYS_FUTEX and sc[1] not in gil_futex_words().values():
                    seen = sc
                    break
        assert seen and seen[1] == lock.futex_addr, (seen, hex(lock.futex_addr))
    finally:
        lock.unlock()
        t.join()


def test_gil_not_found_on_other_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "version_info", (3, 12, 0, "final", 0))
    with pytest.raises(GilNotFound):
        gil_futex_words()


def test_lock_futexes_are_named_through_the_probe_api_when_it_offers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmtrace import probes
    from vmtrace.reference_vmm.bql import bql
    from vmtrace.reference_vmm.machine import name_lock_futexes

    named: list[tuple[int, str]] = []
    monkeypatch.setattr(probes, "name_futex", lambda addr, name: named.append((addr, name)), raising=False)
    words = name_lock_futexes()
    assert (bql.futex_addr, "BQL") in named
    gil = {addr for addr, name in named if name == "GIL"}
    assert gil == {v for k, v in words.items() if k.startswith("GIL")} and len(gil) == 8
