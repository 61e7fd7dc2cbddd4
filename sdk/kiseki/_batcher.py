"""Background batching of params, tags and metric points.

`log_*` calls only append to in-memory buffers (microseconds); a task on the event loop sends them as
batches when enough points are queued (`max_batch_points`) or every `flush_interval` seconds, and on
`flush()`. Every batch carries a fresh id, and the transport retries it with the same id, so a retry is
applied once. Memory is bounded: past `max_pending_points` queued items, callers wait for sends to catch up.
Input is checked and converted before it is queued (`kiseki._input`), so a bad call raises at once and
never spoils a batch. When the retry budget runs out (or a send is cancelled on the way out of the
process), the batches go to the spool (`kiseki._spool`) with their ids rather than being dropped; so do
those the server refuses for the token's sake (401/403), since the data is not at fault: `kiseki sync`
with a working token sends them later. That is logged once per client, and the error is raised like any
other. An error that cannot be retried is kept and raised by the next call for that run, or by `flush()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import time_ns
from typing import Any

from kiseki import _input
from kiseki._input import VALID_KEYS, check_key, to_int, to_timestamp, to_value
from kiseki._spool import Spool, counts, describe
from kiseki.errors import Conflict, KisekiError, PermissionDenied, ServerUnavailable, Unauthenticated

SendBatch = Callable[[str, dict[str, Any]], Awaitable[None]]
log = logging.getLogger("kiseki")


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


@dataclass(eq=False)
class _Send:
    """One run's buffer on its way to the server."""

    run_id: str
    buffer: _RunBuffer
    finished: bool = False


class Batcher:
    def __init__(
        self,
        send: SendBatch,
        *,
        max_batch_points: int = 10_000,
        flush_interval: float = 1.0,
        max_pending_points: int = 1_000_000,
        spool: Spool | None = None,
    ) -> None:
        self._send = send
        self._spool = spool
        self.last_send_ok = True
        """False once a send round had to spool: the server is away, so flush() does not drain the spool."""
        self._inflight: dict[asyncio.Task[None], _Send] = {}
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
        self._told_refused = False

    # --- any thread ----------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop the sends run on (called on that loop)."""
        self._loop = loop
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._task = loop.create_task(self._run(), name="kiseki-batcher")

    def full(self) -> bool:
        return self._pending >= self._max_pending

    def add_metric(self, run_id: str, key: Any, value: Any, step: Any, timestamp: Any, *, wait: bool) -> None:
        """Queue one point, checked and converted first (raises `InvalidInput` naming the key)."""
        # The hot path of every log_metric call: plain str/float/int take a few type checks, anything else
        # the slow path of kiseki._input. The int64 bounds are literals: no global lookups.
        if key.__class__ is not str or key not in VALID_KEYS:
            key = check_key(key, "metric")
        if value.__class__ is not float:
            value = to_value(key, value)
        if step is None:
            step = 0
        elif step.__class__ is not int or not -9_223_372_036_854_775_808 <= step <= 9_223_372_036_854_775_807:
            step = to_int(key, "step", step)
        if timestamp is None:
            timestamp = time_ns() // 1_000_000
        elif timestamp.__class__ is not int or not 0 <= timestamp <= 9_223_372_036_854_775_807:
            timestamp = to_timestamp(key, timestamp)
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

    def add_metrics(self, run_id: str, metrics: object, step: Any, timestamp: Any, *, wait: bool) -> None:
        """Queue several points of one step: all of them, or (on bad input) none."""
        points = []
        for key, value in _input.items(metrics, "metrics"):
            key = check_key(key, "metric")
            points.append((key, to_value(key, value)))
        if points:  # the one step and timestamp are converted once; an error names the first key
            first = points[0][0]
            step = 0 if step is None else to_int(first, "step", step)
            timestamp = time_ns() // 1_000_000 if timestamp is None else to_timestamp(first, timestamp)
        with self._lock:
            self._admit(run_id, wait)
            buffer = self._buffer(run_id)
            for key, value in points:
                columns = buffer.metrics.get(key)
                if columns is None:
                    columns = buffer.metrics[key] = ([], [], [])
                columns[0].append(step)
                columns[1].append(value)
                columns[2].append(timestamp)
            buffer.size += len(points)
            self._pending += len(points)
            if self._pending < self._max_batch or self._kicked:
                return
            self._kicked = True
        self._kick()

    def add_param(self, run_id: str, key: object, value: object, *, wait: bool) -> None:
        self.add_params(run_id, {key: value}, wait=wait)

    def add_params(self, run_id: str, params: object, *, wait: bool) -> None:
        """Queue params (values str()-ed): all of them, or (on bad input or a changed value) none."""
        checked = dict(_input.param(k, v) for k, v in _input.items(params, "params"))
        with self._lock:
            self._admit(run_id, wait)
            buffer = self._buffer(run_id)
            for key, value in checked.items():
                old = buffer.params.get(key, value)
                if old != value:
                    raise Conflict(
                        f"param '{key}' was already logged with value {old!r}; params are immutable "
                        f"and cannot be changed to {value!r}",
                        field=f"params.{key}",
                    )
            fresh = checked.keys() - buffer.params.keys()
            buffer.params.update(checked)
            buffer.size += len(fresh)
            self._pending += len(fresh)

    def add_tag(self, run_id: str, key: object, value: object, *, wait: bool) -> None:
        self.add_tags(run_id, {key: value}, wait=wait)

    def add_tags(self, run_id: str, tags: object, *, wait: bool) -> None:
        """Queue tags (values str()-ed): all of them, or (on bad input) none."""
        checked = dict(_input.tag(k, v) for k, v in _input.items(tags, "tags"))
        with self._lock:
            self._admit(run_id, wait)
            buffer = self._buffer(run_id)
            buffer.tags.update(checked)
            buffer.size += len(checked)
            self._pending += len(checked)

    def _buffer(self, run_id: str) -> _RunBuffer:
        buffer = self._buffers.get(run_id)
        if buffer is None:
            buffer = self._buffers[run_id] = _RunBuffer()
        return buffer

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
        task = asyncio.current_task()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            with self._lock:
                self._kicked = False
            try:
                await self.send_pending()
            except asyncio.CancelledError:
                # flush_before_exit cancelled the sends (they spooled their batches), not this task.
                if task is not None and task.cancelling():
                    raise

    async def send_pending(self) -> None:
        """Send everything queued so far; returns once it is stored, spooled, or failed (error kept)."""
        assert self._send_lock is not None and self._loop is not None
        async with self._send_lock:
            with self._lock:
                taken, self._buffers = self._buffers, {}
            if not taken:
                return
            sends = {_Send(run_id, buffer) for run_id, buffer in taken.items()}
            tasks = {self._loop.create_task(self._send_run(send)): send for send in sends}
            self._inflight.update(tasks)
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    self._inflight.pop(task, None)

    async def wait_for_space(self) -> None:
        while self.full():
            await self.send_pending()

    async def flush_before_exit(self, seconds: float) -> None:
        """Send what is queued within `seconds`; whatever is not stored by then, in-flight batches
        included (their ids make a second send harmless), goes to the spool. For SIGTERM."""
        if self._loop is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.send_pending(), seconds)
            return
        inflight = dict(self._inflight)
        for task in inflight:
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        with self._lock:
            taken, self._buffers = self._buffers, {}
        # Sends cancelled before they began, and what was queued meanwhile, go to the spool unsent.
        left = [send for send in inflight.values() if not send.finished]
        left += [_Send(run_id, buffer) for run_id, buffer in taken.items()]
        for send in left:
            try:
                self._spool_rest(send.run_id, send.buffer.bodies(self._max_batch), None)
            finally:
                send.finished = True
                with self._lock:
                    self._pending -= send.buffer.size
                    self._space.notify_all()

    async def _send_run(self, send: _Send) -> None:
        run_id, buffer = send.run_id, send.buffer
        lost = 0
        first_error: KisekiError | None = None
        refused: KisekiError | None = None
        bodies = buffer.bodies(self._max_batch)
        done = 0
        try:
            unavailable: KisekiError | None = None
            for body, count in bodies:
                try:
                    await self._send(run_id, body)
                except ServerUnavailable as exc:
                    unavailable = exc  # the retry budget is spent: the rest would fail the same way
                    break
                except (Unauthenticated, PermissionDenied) as exc:
                    unavailable = refused = exc  # the token, not the data: every batch would be refused
                    break
                except Exception as exc:
                    # Refused (e.g. a changed param): only this batch is lost; the others still go.
                    lost += count
                    first_error = first_error or (
                        exc if isinstance(exc, KisekiError) else KisekiError(f"{type(exc).__name__}: {exc}")
                    )
                done += 1
            if unavailable is not None:
                quiet = refused is not None and self._told_refused
                not_spooled = self._spool_rest(run_id, bodies[done:], unavailable, quiet=quiet)
                if not_spooled is not None:
                    lost += sum(c for _, c in bodies[done:])
                    first_error = first_error or not_spooled
                elif refused is not None:
                    self._told_refused = True
                    assert self._spool is not None
                    totals = [sum(t) for t in zip(*(counts(b) for b, _ in bodies[done:]), strict=True)]
                    refused.message = (
                        f"{refused.message} ({describe(*totals)} of run {run_id} were saved to the spool at "
                        f"{self._spool.folder}; once the token works, `kiseki sync` or the next flush of a "
                        "client with it sends them)"
                    )
                    refused.args = (refused.message,)
                    with self._lock:
                        self._errors.setdefault(run_id, refused)
            else:
                self.last_send_ok = True
        except asyncio.CancelledError:
            self._spool_rest(run_id, bodies[done:], None)
            raise
        finally:
            send.finished = True
            with self._lock:
                if first_error is not None:
                    first_error.message = (
                        f"{first_error.message} ({lost} queued items of run {run_id} were not stored)"
                    )
                    first_error.args = (first_error.message,)
                    self._errors.setdefault(run_id, first_error)
                self._pending -= buffer.size
                self._space.notify_all()

    def _spool_rest(
        self,
        run_id: str,
        bodies: list[tuple[dict[str, Any], int]],
        cause: KisekiError | None,
        *,
        quiet: bool = False,
    ) -> KisekiError | None:
        """Save unsent batches to the spool and say so (`quiet`: only on the debug log); returns the error
        to keep when that failed."""
        if not bodies:
            return None
        self.last_send_ok = False
        reason = cause.message.rstrip(".") if cause is not None else "the process is exiting"
        if self._spool is None:
            return cause or KisekiError(f"{len(bodies)} batches of run {run_id} could not be sent")
        paths = []
        try:
            for body, _ in bodies:
                paths.append(self._spool.write(run_id, body))
        except OSError as exc:
            failed = KisekiError(
                f"{reason}; and saving the batches to the spool at {self._spool.folder} failed: {exc}"
            )
            log.error("kiseki: %s", failed.message)
            return failed
        totals = [sum(t) for t in zip(*(counts(body) for body, _ in bodies), strict=True)]
        (log.debug if quiet else log.warning)(
            "kiseki: %s. Saved %s of run %s to the spool at %s (%d files); they are sent by the next "
            "flush or exit of a client for this server, or with `kiseki sync`.",
            reason,
            describe(*totals),
            run_id,
            self._spool.folder,
            len(paths),
        )
        return None

    async def close(self) -> None:
        """Send what is queued and stop the background task."""
        if self._task is None:
            return
        self._closing = True
        self._kick()
        await self._task  # it finishes its current send rather than abandoning it half-way
        self._task = None
        await self.send_pending()
