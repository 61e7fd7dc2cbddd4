"""What the service refuses early, so oversized requests and overload cannot pile up.

- A body whose declared `Content-Length` exceeds `max_request_bytes` gets its 413 before a byte of it is
  read (aiohttp itself only notices while reading, after tens of MiB). Chunked bodies are still cut off
  at the limit while they are read. Streamed uploads (the local artifact store's signed PUTs, which the
  upload grant bounds) are exempt.
- Batches, the one heavy write, go through a per-process `Limiter`: `ingest_concurrency` processed at
  once, up to `ingest_queue` more (and `ingest_queue_bytes` of bodies in all) admitted to receive their
  bodies and wait at most `ingest_queue_timeout` seconds for a turn; beyond that an immediate 503 with
  `Retry-After`, before the body is read. Waiting batches hold no Postgres connection, so the connections
  the limiter leaves free keep small reads fast while ingest saturates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager

from aiohttp import HttpVersion11, web
from aiohttp.typedefs import Middleware

from kiseki_server.errors import PayloadTooLarge, ServiceUnavailable, error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Overloaded(ServiceUnavailable):
    """Too many requests of this kind are in progress or waiting; retrying later may succeed."""


class Limiter:
    """At most `concurrency` holders at once; `queue` more may be admitted and wait, each for at most
    `timeout` seconds; beyond that, `Overloaded` at once.

    Admission and the turn are separate steps so that a caller can do slow client-bound work in between
    (receiving the body) without holding a turn: a slow uploader must not keep others from being served.
    """

    def __init__(
        self, *, concurrency: int, queue: int, queue_bytes: int, timeout: float, retry_after: int
    ) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self.queue_bytes = queue_bytes
        self.timeout = timeout
        self.retry_after = retry_after
        self.admitted = 0
        self.admitted_bytes = 0
        self._turns = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def admission(self, what: str, size: int) -> AsyncIterator[None]:
        """Admit one request of `size` bytes (its body) if there is room for it, or refuse it now."""
        full = self.admitted >= self.concurrency + self.queue
        if full or (self.admitted and self.admitted_bytes + size > self.queue_bytes):
            raise Overloaded(
                f"the service is busy: {self.admitted} {what} ({self.admitted_bytes} bytes) are in progress "
                "or waiting; retry shortly",
                retry_after=self.retry_after,
            )
        self.admitted += 1
        self.admitted_bytes += size
        try:
            yield
        finally:
            self.admitted -= 1
            self.admitted_bytes -= size

    @asynccontextmanager
    async def turn(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.timeout):
                await self._turns.acquire()
        except TimeoutError:
            raise Overloaded(
                f"the service is busy: no turn for these {what} within {self.timeout:g} s; retry shortly",
                retry_after=self.retry_after,
            ) from None
        try:
            yield
        finally:
            self._turns.release()


def _too_large(request: web.Request, limit: int) -> bool:
    length = request.content_length
    return length is not None and length > limit


def _refusal(limit: int) -> web.Response:
    response = error_response(
        413, PayloadTooLarge.code, f"request body is larger than the limit of {limit} bytes"
    )
    response.force_close()  # the client need not send the rest: this connection ends after the answer
    return response


def middleware(
    *, max_request_bytes: int, streamed: Collection[Handler], limited: Collection[Handler], limiter: Limiter
) -> Middleware:
    """Refuses oversized declared bodies at once and makes batch handlers (`limited`) wait their turn.

    Sits inside the error middleware, which turns the limiter's 503s into JSON answers.
    """

    @web.middleware
    async def limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        target = request.match_info.handler
        if target not in streamed and _too_large(request, max_request_bytes):
            return _refusal(max_request_bytes)
        if target in limited:
            # A chunked body of unknown length counts as the largest allowed.
            size = request.content_length if request.content_length is not None else max_request_bytes
            async with limiter.admission("batches", size):
                await request.read()  # kept by aiohttp for the handler; the 413 of a chunked body is here
                async with limiter.turn("batches"):
                    return await handler(request)
        return await handler(request)

    return limits


def expect_handler(max_request_bytes: int) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """`Expect: 100-continue` with a declared body over the limit gets its 413 instead of a go-ahead."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if _too_large(request, max_request_bytes):
            return _refusal(max_request_bytes)
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers['Expect']}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response proper
        return None

    return expect
