"""Serving the app on a port until SIGTERM or SIGINT, then shutting down gracefully.

On a signal aiohttp's `run_app` closes the listener and at once marks every connection as closing; from
then on it drops the bytes that still arrive, so a request whose body was still uploading (a big batch)
can never finish: it hangs for the whole shutdown timeout and then fails (aiohttp issue #2298). So we
drain first: stop accepting connections, let every request in progress finish, body included, answering
each with `Connection: close` so keep-alive clients reconnect (to another replica), and only then hand over
to aiohttp's cleanup, which closes idle connections and runs the app's cleanup (Postgres pool, storage
clients). A second signal cuts the wait short.

Slow clients: aiohttp has no deadline for receiving a request, so a client that opens connections and
sends its headers (or a body) a byte at a time would hold them for good (slowloris). Each connection here
is a `_WatchedHandler`, and a watchdog drops those that take longer than `http_header_timeout` to send a
request line and headers, or whose body stalls for `http_body_timeout` (a body that waits because the
handler is not reading it yet is not stalled: the connection's reading is paused then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kiseki_server.appkeys import SETTINGS

log = logging.getLogger(__name__)

CLEANUP_GRACE_SECONDS = 1.0
"""What aiohttp's own shutdown gives requests that slipped in after the drain (in practice none)."""
MAX_REQUEST_LINE_BYTES = 32 * 1024
"""Longest request line accepted. aiohttp's 8190 is shorter than URLs the service itself hands out: a
signed local-store URL for a 1,000-character non-ASCII artifact path is ~12 KB once percent-encoded."""
LINGERING_SECONDS = 5.0
"""How long aiohttp goes on reading (and discarding) a body its handler did not read, such as a refused
batch, so that the connection can serve the next request."""
WATCHDOG_PERIOD = 1.0


class _WatchedHandler(web.RequestHandler):
    """aiohttp's connection protocol, noting what the watchdog needs: since when a request head is
    awaited (the connection's start, or the first byte of a next request), the body being received, and
    when bytes last arrived."""

    __slots__ = ("body", "head_since", "last_data")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.head_since: float | None = self._loop.time()
        self.last_data = self.head_since
        self.body: Any = None
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        now = self.last_data = self._loop.time()
        if self._request_count != heads:  # a request head was completed
            self.head_since = None
            self.body = self._messages[-1][1] if self._messages else None
        elif self.head_since is None and (self.body is None or self.body.is_eof()):
            self.head_since = now  # the first bytes of the next request on a keep-alive connection

    def overdue(self, now: float, *, header_timeout: float, body_timeout: float) -> str | None:
        """Why this connection should be dropped now, if it should."""
        if self.head_since is not None:
            return "request head" if now - self.head_since > header_timeout else None
        if self.body is None or self.body.is_eof():
            return None
        if getattr(self, "_reading_paused", False):  # the handler has not read what came; not the client
            self.last_data = now
            return None
        return "request body" if now - self.last_data > body_timeout else None


async def _watch(server: web.Server, *, header_timeout: float, body_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(WATCHDOG_PERIOD, header_timeout / 2, body_timeout / 2))
        now = loop.time()
        for connection in server.connections:
            if not isinstance(connection, _WatchedHandler):
                continue
            why = connection.overdue(now, header_timeout=header_timeout, body_timeout=body_timeout)
            if why is not None:
                log.debug("dropping a connection from %s: its %s is too slow", connection.peername, why)
                connection.force_close()


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
    settings = app[SETTINGS]
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=CLEANUP_GRACE_SECONDS)
    await runner.setup()
    watchdog: asyncio.Task[None] | None = None
    try:
        server = runner.server
        assert server is not None

        def connection() -> _WatchedHandler:
            return _WatchedHandler(
                server,
                loop=loop,
                access_log=None,  # type: ignore[arg-type]  # None: no access lines (ours are in telemetry)
                keepalive_timeout=settings.http_keepalive_timeout,
                lingering_time=LINGERING_SECONDS,
                max_line_size=MAX_REQUEST_LINE_BYTES,
            )

        listener = await loop.create_server(connection, host, port, reuse_port=reuse_port)
        watchdog = asyncio.create_task(
            _watch(
                server, header_timeout=settings.http_header_timeout, body_timeout=settings.http_body_timeout
            )
        )
        on_listening()
        await stop.wait()
        deadline = time.monotonic() + shutdown_timeout
        listener.close()
        drain = app[DRAIN]
        if not await drain.wait(until=deadline, interrupted=force):
            log.warning("shutting down with %d requests still in progress", drain.active)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
