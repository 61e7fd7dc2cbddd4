"""One background event loop per process, on a daemon thread, that drives the async core for sync callers."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kiseki-io", daemon=True)
        self.thread.start()

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
