"""One background event loop per process, on a daemon thread, that drives the async core for sync callers."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="kiseki-io", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        # Python runs signal handlers in the main thread only. A SIGTERM or SIGINT the kernel handed to
        # this thread would wait, unhandled, while the main thread blocks in C — a multiprocessing Pool
        # worker waiting for its next task never wakes, so `Pool.terminate()` hangs. Blocked here (and
        # in the threads this loop starts, which inherit the mask), they always reach the main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result from the calling (non-loop) thread."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("kiseki's sync client cannot be called from its own I/O thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self.thread


_shared: LoopThread | None = None
_lock = threading.Lock()


def shared_loop() -> LoopThread:
    global _shared
    with _lock:
        if _shared is None:
            _shared = LoopThread()
        return _shared


def _forget_after_fork() -> None:
    # A forked child has no copy of the I/O thread: it starts its own on first use.
    global _shared, _lock
    _shared = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
