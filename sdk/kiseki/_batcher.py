"""Background batching of params, tags and metric points.

`log_*` calls only append to in-memory buffers (microseconds); a task on the event loop sends them as
batches when enough points are queued (`max_batch_points`) or every `flush_interval` seconds, and on
`flush()`. Every batch carries a fresh id, and the transport retries it with the same id, so a retry is
applied once. Memory is bounded: past `max_pending_points` queued items, callers wait for sends to catch up.
An error that cannot be retried is kept and raised by the next call for that run, or by `flush()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kiseki.errors import Conflict, KisekiError, ServerUnavailable

SendBatch = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class _RunBuffer:
    metrics: dict[str, tuple[list[int], list[float], list[int]]] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    size: int = 0

    def bodies(self, max_points: int) -> list[tuple[dict[str, Any], int]]:
        """Request bodies with the items each carries: params and tags first, on their own, so that a
        rejected param (409) never takes metric points down with it."""
        out: list[tuple[dict[str, Any], int]] = []
        if self.params or self.tags:
            out.append(
                (
                    {
                        "params": [{"key": k, "value": v} for k, v in self.params.items()],
                        "tags": [{"key": k, "value": v} for k, v in self.tags.items()],
                    },
                    len(self.params) + len(self.tags),
                )
            )
        columns: dict[str, Any] = {}
        count = 0
        for key, (steps, values, stamps) in self.metrics.items():
            start = 0
            while start < len(values):
                take = min(len(values) - start, max_points - count)
                end = start + take
                columns[key] = {
                    "steps": steps[start:end],
                    "values": values[start:end],
                    "timestamps": stamps[start:end],
                }
                count += take
                start = end
                if count >= max_points:
                    out.append(({"metric_columns": columns}, count))
                    columns, count = {}, 0
        if columns:
            out.append(({"metric_columns": columns}, count))
        for body, _ in out:
            body["batch_id"] = str(uuid.uuid4())
        return out


class Batcher:
    def __init__(
        self,
        send: SendBatch,
        *,
        max_batch_points: int = 10_000,
        flush_interval: float = 1.0,
        max_pending_points: int = 1_000_000,
    ) -> None:
        self._send = send
        self._max_batch = max_batch_points
        self._interval = flush_interval
        self._max_pending = max_pending_points
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._buffers: dict[str, _RunBuffer] = {}
        self._pending = 0
        self._errors: dict[str | None, KisekiError] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._kicked = False
        self._task: asyncio.Task[None] | None = None
        self._send_lock: asyncio.Lock | None = None
        self._closing = False

    # --- any thread ----------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop the sends run on (called on that loop)."""
        self._loop = loop
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._task = loop.create_task(self._run(), name="kiseki-batcher")

    def full(self) -> bool:
        return self._pending >= self._max_pending

    def add_metric(
        self, run_id: str, key: str, value: float, step: int, timestamp: int, *, wait: bool
    ) -> None:
        # The hot path of every log_metric call: keep it to dict lookups and appends.
        with self._lock:
            if self._errors or self._pending >= self._max_pending:
                self._admit(run_id, wait)
            buffer = self._buffers.get(run_id)
            if buffer is None:
                buffer = self._buffers[run_id] = _RunBuffer()
            columns = buffer.metrics.get(key)
            if columns is None:
                columns = buffer.metrics[key] = ([], [], [])
            columns[0].append(step)
            columns[1].append(value)
            columns[2].append(timestamp)
            buffer.size += 1
            self._pending += 1
            if self._pending < self._max_batch or self._kicked:
                return
            self._kicked = True
        self._kick()

    def add_param(self, run_id: str, key: str, value: str, *, wait: bool) -> None:
        with self._lock:
            self._admit(run_id, wait)
            buffer = self._buffers.setdefault(run_id, _RunBuffer())
            old = buffer.params.setdefault(key, value)
            if old != value:
                raise Conflict(
                    f"param '{key}' was already logged with value {old!r}; params are immutable "
                    f"and cannot be changed to {value!r}",
                    field=f"params.{key}",
                )
            buffer.size += 1
            self._pending += 1

    def add_tag(self, run_id: str, key: str, value: str, *, wait: bool) -> None:
        with self._lock:
            self._admit(run_id, wait)
            buffer = self._buffers.setdefault(run_id, _RunBuffer())
            buffer.tags[key] = value
            buffer.size += 1
            self._pending += 1

    def raise_errors(self, run_id: str | None = None) -> None:
        """Raise (once) the error a background send hit for `run_id`, or for any run when None."""
        with self._lock:
            self._raise_locked(run_id)

    def _raise_locked(self, run_id: str | None) -> None:
        if run_id is None:
            if self._errors:
                key = next(iter(self._errors))
                raise self._errors.pop(key)
        elif run_id in self._errors:
            raise self._errors.pop(run_id)

    def _admit(self, run_id: str, wait: bool) -> None:
        self._raise_locked(run_id)
        if self._pending >= self._max_pending:
            if not wait:
                raise RuntimeError("batcher is full; await AsyncClient.flush() first")
            self._kick()
            self._space.wait_for(lambda: self._pending < self._max_pending)

    def _kick(self) -> None:
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # --- the event loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            with self._lock:
                self._kicked = False
            await self.send_pending()

    async def send_pending(self) -> None:
        """Send everything queued so far; returns once it is stored (or failed, with the error kept)."""
        assert self._send_lock is not None
        async with self._send_lock:
            with self._lock:
                taken, self._buffers = self._buffers, {}
            if taken:
                await asyncio.gather(*(self._send_run(run_id, buffer) for run_id, buffer in taken.items()))

    async def wait_for_space(self) -> None:
        while self.full():
            await self.send_pending()

    async def _send_run(self, run_id: str, buffer: _RunBuffer) -> None:
        lost = 0
        first_error: KisekiError | None = None
        try:
            for i, (body, count) in enumerate(bodies := buffer.bodies(self._max_batch)):
                try:
                    await self._send(run_id, body)
                except ServerUnavailable as exc:
                    # Retries are exhausted: the rest would fail the same way.
                    lost += sum(c for _, c in bodies[i:])
                    first_error = first_error or exc
                    break
                except Exception as exc:
                    # Rejected (e.g. a changed param): only this batch is lost; the others still go.
                    lost += count
                    first_error = first_error or (
                        exc if isinstance(exc, KisekiError) else KisekiError(f"{type(exc).__name__}: {exc}")
                    )
        finally:
            with self._lock:
                if first_error is not None:
                    first_error.message = (
                        f"{first_error.message} ({lost} queued items of run {run_id} were not stored)"
                    )
                    first_error.args = (first_error.message,)
                    self._errors.setdefault(run_id, first_error)
                self._pending -= buffer.size
                self._space.notify_all()

    async def close(self) -> None:
        """Send what is queued and stop the background task."""
        if self._task is None:
            return
        self._closing = True
        self._kick()
        await self._task  # it finishes its current send rather than abandoning it half-way
        self._task = None
        await self.send_pending()
