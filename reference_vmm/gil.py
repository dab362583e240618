"""Find the futex words of CPython's GIL, so traces can name it.

The GIL is a real lock every vCPU thread of this VMM shares: after KVM_RUN
returns, a thread must take it again before it can run Python code.  A
tracer that ranks futex words by wait time sees it as an anonymous address;
this module finds those addresses so the VMM can report them by name.

CPython 3.11 keeps the GIL in ``_PyRuntime.ceval.gil``
(``Include/internal/pycore_gil.h``)::

    unsigned long interval;        // switch interval, microseconds
    _Py_atomic_address last_holder;  // PyThreadState * of the last holder
    _Py_atomic_int locked;         // 1 while held
    unsigned long switch_number;
    pthread_cond_t cond;           // waiters for the GIL sleep here
    pthread_mutex_t mutex;         // protects the above
    pthread_cond_t switch_cond;    // FORCE_SWITCHING: the dropper waits here
    pthread_mutex_t switch_mutex;

The structure's offset inside ``_PyRuntime`` varies between builds, so it is
found by content and proven: scan ``_PyRuntime`` (an exported symbol of the
interpreter) for ``interval`` == ``sys.getswitchinterval()`` followed by
``last_holder`` == this thread's state and ``locked`` == 1 (we hold the GIL
while running), then change the switch interval and check that the same word
follows.  glibc (2.25+) waits on a condition variable's ``__g_signals[0..1]``
words (offset 40 and 44 of ``pthread_cond_t``) and on ``__g_refs[0..1]``
(offset 16 and 20) while switching groups; a mutex is waited on at offset 0.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["gil_futex_words", "GilNotFound"]

_SCAN_BYTES = 64 * 1024
_COND_SIZE = 48
_MUTEX_SIZE = 40


class GilNotFound(RuntimeError):
    """The GIL structure could not be located and proven on this interpreter."""


def _u64(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def _u32(addr: int) -> int:
    return ctypes.c_uint32.from_address(addr).value


def _find_gil(base: int, tstate: int) -> int:
    interval = int(round(sys.getswitchinterval() * 1e6))
    hits = [
        base + off
        for off in range(0, _SCAN_BYTES - 24, 8)
        if _u64(base + off) == interval and _u64(base + off + 8) == tstate and _u32(base + off + 16) == 1
    ]
    if len(hits) != 1:
        raise GilNotFound(f"expected one GIL candidate in _PyRuntime, found {len(hits)}")
    return hits[0]


def gil_futex_words() -> dict[str, int]:
    """``{"GIL.cond.g_signals0": addr, ...}``: every futex word a GIL waiter may sleep on.

    Raises :class:`GilNotFound` on an interpreter other than CPython 3.11 or
    when the layout cannot be proven.
    """
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        raise GilNotFound(f"only CPython 3.11 is supported, this is {sys.implementation.name} {sys.version.split()[0]}")
    try:
        base = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
    except ValueError as e:
        raise GilNotFound(f"_PyRuntime is not exported by this interpreter: {e}") from None
    get_tstate = ctypes.pythonapi.PyThreadState_Get
    get_tstate.restype = ctypes.c_void_p
    tstate = get_tstate()
    gil = _find_gil(base, tstate)
    # Prove it: the interval word must follow sys.setswitchinterval.
    saved = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.0123)
        moved = _u64(gil) == 12300
    finally:
        sys.setswitchinterval(saved)
    if not moved or _u64(gil) != int(round(saved * 1e6)):
        raise GilNotFound("the GIL candidate does not follow sys.setswitchinterval")
    cond = gil + 32
    mutex = cond + _COND_SIZE
    switch_cond = mutex + _MUTEX_SIZE
    switch_mutex = switch_cond + _COND_SIZE
    return {
        "GIL.cond.g_signals0": cond + 40,
        "GIL.cond.g_signals1": cond + 44,
        "GIL.cond.g_refs0": cond + 16,
        "GIL.cond.g_refs1": cond + 20,
        "GIL.mutex": mutex,
        "GIL.switch_cond.g_signals0": switch_cond + 40,
        "GIL.switch_cond.g_signals1": switch_cond + 44,
        "GIL.switch_mutex": switch_mutex,
    }
