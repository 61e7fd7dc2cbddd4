"""Serving the app on a port until SIGTERM or SIGINT, then shutting down gracefully.

On a signal aiohttp's `run_app` closes the listener and at once marks every connection as closing; from
then on it drops the bytes that still arrive, so a request whose body was still uploading (a big batch)
can never finish: it hangs for the whole shutdown timeout and then fails (aiohttp issue #2298). So we
drain first: stop accepting connections, let every request in progress finish, body included, answering
each with `Connection: close` so keep-alive clients reconnect (to another replica), and only then hand over
to aiohttp's cleanup, which closes idle connections and runs the app's cleanup (Postgres pool, storage
clients). A second signal cuts the wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

CLEANUP_GRACE_SECONDS = 1.0
"""What aiohttp's own shutdown gives requests that slipped in after the drain (in practice none)."""


class Drain:
    """Requests in progress, counted by the outermost middleware; `draining` once shutdown began."""

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self._changed: asyncio.Event | None = None

    def leave(self) -> None:
        self.active -= 1
        if self._changed is not None:
            self._changed.set()

    async def wait(self, *, until: float, interrupted: asyncio.Event) -> bool:
        """Wait until no request is in progress (True), the monotonic time `until`, or `interrupted`."""
        self.draining = True
        self._changed = asyncio.Event()
        while self.active:
            self._changed.clear()
            remaining = until - time.monotonic()
            if remaining <= 0 or interrupted.is_set():
                return False
            waiters = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(interrupted.wait())]
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return True


DRAIN = web.AppKey("drain", Drain)


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    on_listening: Callable[[], None],
    reuse_port: bool = False,
) -> None:
    """Serve `app` until SIGTERM/SIGINT; in-flight requests get `shutdown_timeout` seconds to finish."""
    asyncio.run(_serve(app, host, port, shutdown_timeout, on_listening, reuse_port))


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    shutdown_timeout: float,
    on_listening: Callable[[], None],
    reuse_port: bool,
) -> None:
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal(name: str) -> None:
        if stop.is_set():
            log.warning("%s again: cutting the graceful shutdown short", name)
            force.set()
        else:
            log.info("%s: stopping; requests in progress get up to %g s", name, shutdown_timeout)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=CLEANUP_GRACE_SECONDS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        await site.start()
        on_listening()
        await stop.wait()
        deadline = time.monotonic() + shutdown_timeout
        await site.stop()
        drain = app[DRAIN]
        if not await drain.wait(until=deadline, interrupted=force):
            log.warning("shutting down with %d requests still in progress", drain.active)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
