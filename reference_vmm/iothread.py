"""Event loops: an AioContext, the IOThreads that run one, and the main loop.

In QEMU every event loop is an ``AioContext``: file-descriptor handlers,
bottom halves (callbacks scheduled from any thread) and timers, polled by
one thread.  The *main loop* runs the main context in the process's main
thread and takes the BQL around the work it dispatches (timers, monitor,
device callbacks); an *IOThread* (thread name ``IO <id>``) runs its own
context without the BQL, which is what virtio-blk dataplane uses.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable

from .bql import BigLock
from .memory.rcu import rcu_unregister_thread
from .vcpu import set_thread_name

__all__ = ["AioContext", "IOThread", "MainLoop"]


class AioContext:
    """File-descriptor handlers, bottom halves and timers, polled by one thread."""

    def __init__(self, lock: BigLock | None = None) -> None:
        self._sel = selectors.DefaultSelector()
        self._notify_r, self._notify_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._notify_r, selectors.EVENT_READ, None)
        # Bottom halves come from any thread (a vCPU, another IOThread):
        # a list under a lock of its own, swapped out whole by the poller.
        self._bh: list[Callable[[], None]] = []
        self._bh_lock = threading.Lock()
        # Timers belong to the context's own thread (heapq is not atomic:
        # two threads pushing at once could break the heap order).
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.lock = lock  # the main context dispatches under the BQL; IOThreads do not

    def set_fd_handler(self, fd: int, on_read: Callable[[], None] | None) -> None:
        """``aio_set_fd_handler``: call ``on_read`` when ``fd`` is readable (None removes).

        Any thread may call it while the context's thread polls (QEMU takes
        ``ctx->list_lock``): the selector's epoll set is the kernel's, and
        its fd-to-handler map is a dict, each store and lookup one atomic
        step on every CPython build.  A handler removed while its event is
        being dispatched may run once more; callers check their own state
        under their own lock (``VirtIOPCIProxy.detach``)."""
        if on_read is None:
            self._sel.unregister(fd)
        else:
            self._sel.register(fd, selectors.EVENT_READ, on_read)
        self.notify()

    def bh_schedule(self, func: Callable[[], None]) -> None:
        """``aio_bh_schedule_oneshot``: run ``func`` once, soon, in this context's thread."""
        with self._bh_lock:
            self._bh.append(func)
        self.notify()

    def timer_after(self, delay_s: float, func: Callable[[], None]) -> None:
        """Run ``func`` once after ``delay_s`` (timers are added from the context's thread)."""
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), func))
        self.notify()

    def notify(self) -> None:
        """``aio_notify``: wake the polling thread."""
        try:
            os.write(self._notify_w, b"\0")
        except BlockingIOError:
            pass  # already pending

    def _run(self, func: Callable[[], None]) -> None:
        try:
            if self.lock is not None:
                with self.lock:
                    func()
            else:
                func()
        except Exception as e:
            print(f"reference-vmm: event loop callback {func!r} failed: {e!r}", file=sys.stderr)

    def poll(self, max_wait_s: float | None) -> None:
        """``aio_poll``: wait for events (at most ``max_wait_s``) and dispatch them."""
        wait = max_wait_s
        if self._timers:
            due = max(0.0, self._timers[0][0] - time.monotonic())
            wait = due if wait is None else min(wait, due)
        for key, _ in self._sel.select(wait):
            if key.data is None:
                try:
                    os.read(self._notify_r, 4096)
                except BlockingIOError:
                    pass
            else:
                self._run(key.data)
        with self._bh_lock:
            bhs, self._bh = self._bh, []
        for func in bhs:
            self._run(func)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, func = heapq.heappop(self._timers)
            self._run(func)

    def close(self) -> None:
        self._sel.close()
        os.close(self._notify_r)
        os.close(self._notify_w)


class IOThread(threading.Thread):
    """A thread named ``IO <id>`` that polls its own AioContext without the BQL."""

    def __init__(self, ident: str = "iothread0") -> None:
        super().__init__(name=f"IO {ident}", daemon=True)
        self.ctx = AioContext(lock=None)
        self._stop_requested = False

    def run(self) -> None:
        set_thread_name(self.name)
        try:
            while not self._stop_requested:
                self.ctx.poll(None)
        finally:
            rcu_unregister_thread()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the loop to end and wait for the thread."""
        self._stop_requested = True
        self.ctx.notify()
        self.join(timeout)
        self.ctx.close()


class MainLoop:
    """The main loop (``main_loop_wait``), run in the process's main thread.

    Work it dispatches runs under the BQL, as in QEMU.  :meth:`run` returns
    when :meth:`quit` is called (from any thread) or after ``timeout_s``.
    """

    def __init__(self, bql: BigLock) -> None:
        self.ctx = AioContext(lock=bql)
        self._quit = threading.Event()

    def quit(self) -> None:
        """``qemu_system_shutdown_request``: make :meth:`run` return."""
        self._quit.set()
        self.ctx.notify()

    def every(self, period_s: float, func: Callable[[], None]) -> None:
        """A periodic timer (re-armed after each run)."""

        def tick() -> None:
            func()
            self.ctx.timer_after(period_s, tick)

        self.ctx.timer_after(period_s, tick)

    def run(self, timeout_s: float | None = None) -> bool:
        """Poll until :meth:`quit`; False when ``timeout_s`` expired first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._quit.is_set():
            wait = 0.5
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, left)
            self.ctx.poll(wait)
        return True

    def close(self) -> None:
        self.ctx.close()
