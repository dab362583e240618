"""Event loops: AioContext bottom halves, timers and fd handlers; IOThread and MainLoop."""

from __future__ import annotations

import os
import threading
import time

from vmtrace.reference_vmm.bql import BigLock
from vmtrace.reference_vmm.iothread import AioContext, IOThread, MainLoop


def test_bottom_half_runs_in_the_iothread_without_the_bql() -> None:
    bql = BigLock("test")
    t = IOThread("iothread7")
    t.start()
    ran: list[tuple[str, bool]] = []
    done = threading.Event()

    def bh() -> None:
        ran.append((threading.current_thread().name, bql.locked()))
        done.set()

    try:
        t.ctx.bh_schedule(bh)
        assert done.wait(5)
        assert ran == [("IO iothread7", False)]
        with open(f"/proc/self/task/{t.native_id}/comm") as f:
            assert f.read().strip() == "IO iothread7"
    finally:
        t.stop()
    assert not t.is_alive()


def test_fd_handler_is_called_when_readable() -> None:
    ctx = AioContext()
    r, w = os.pipe()
    got: list[bytes] = []
    ctx.set_fd_handler(r, lambda: got.append(os.read(r, 16)))
    try:
        ctx.poll(0)
        assert got == []
        os.write(w, b"x")
        ctx.poll(1)
        assert got == [b"x"]
    finally:
        ctx.set_fd_handler(r, None)
        ctx.close()
        os.close(r)
        os.close(w)


def test_timers_fire_in_deadline_order() -> None:
    ctx = AioContext()
    order: list[str] = []
    ctx.timer_after(0.03, lambda: order.append("late"))
    ctx.timer_after(0.01, lambda: order.append("early"))
    deadline = time.monotonic() + 2
    while len(order) < 2 and time.monotonic() < deadline:
        ctx.poll(0.1)
    ctx.close()
    assert order == ["early", "late"]


def test_main_loop_dispatches_under_the_bql_and_quits() -> None:
    bql = BigLock("test")
    loop = MainLoop(bql)
    held: list[bool] = []
    loop.every(0.01, lambda: held.append(bql.locked()))
    threading.Timer(0.1, loop.quit).start()
    assert loop.run(timeout_s=5) is True
    loop.close()
    assert held and all(held)


def test_main_loop_timeout() -> None:
    loop = MainLoop(BigLock("test"))
    t0 = time.monotonic()
    assert loop.run(timeout_s=0.05) is False
    assert time.monotonic() - t0 < 1
    loop.close()
