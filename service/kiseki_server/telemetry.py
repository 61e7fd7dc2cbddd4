"""Prometheus instruments, and the middleware that counts, times and (optionally) logs every request.

One `Telemetry` per app, with a registry of its own. Under `kiseki server --workers N` the values live in
prometheus-client's multiprocess files (a folder the parent creates and hands to each worker), so
`/metrics`, whichever worker answers it, reports the sum over all workers: counters and histograms add
up, pool gauges are summed over the live workers.

Cost per request when access logs are off: two clock reads, a request id, a dict look-up for the label
set, one counter increment and one histogram observation, about 4 µs (bench/RESULTS.md, "Operations").
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from random import getrandbits
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from kiseki_server.logs import ACCESS_LOGGER, REQUEST_ID
from kiseki_server.serving import Drain

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED = "(unmatched)"
"""The route label of requests no route matched (404s, 405s): raw paths would explode the label set."""

OTHER_METHOD = "OTHER"
"""The method label of requests with a non-standard method (TRACE, PROPFIND, ...)."""

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (0, 1, 10, 100, 1_000, 10_000, 100_000)
POOL_SAMPLE_SECONDS = 1.0
RESTARTS_FILE = "worker-restarts.txt"
"""In the multiprocess folder: how often the `--workers` supervisor restarted a dead worker (it serves no
HTTP itself, so it leaves the count where whichever worker answers /metrics finds it)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access_log = logging.getLogger(ACCESS_LOGGER)


class Telemetry:
    """The service's instruments; `multiprocess_dir` set means values are shared through its files."""

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is not None and not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                "prometheus-client was imported without PROMETHEUS_MULTIPROC_DIR set; worker processes "
                "must inherit it from the parent that created the folder"
            )
        self.multiprocess_dir = multiprocess_dir
        self.registry = registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "kiseki_http_requests",
            "HTTP requests served, by method, route template and status.",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            "kiseki_http_request_duration_seconds",
            "Time from the request's arrival at the app to its response, by route template and status.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batches = Counter(
            "kiseki_log_batches",
            "Batches logged to POST /runs/{run_id}/batch; applied=false: a retry of a batch already stored.",
            ("applied",),
            registry=registry,
        )
        self.points = Counter(
            "kiseki_metric_points_ingested",
            "Metric points stored (retried batches count once).",
            (),
            registry=registry,
        )
        self.batch_points = Histogram(
            "kiseki_log_batch_points",
            "Metric points per stored batch.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.pool_open = Gauge(
            "kiseki_db_pool_connections",
            "Open Postgres connections in the pool (summed over worker processes).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_in_use = Gauge(
            "kiseki_db_pool_connections_in_use",
            "Postgres connections checked out of the pool (summed over worker processes).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_max = Gauge(
            "kiseki_db_pool_max_connections",
            "Most connections the pool may open (summed over worker processes).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._applied = self.batches.labels("true")
        self._repeated = self.batches.labels("false")

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request; methods outside the standard set share the label "OTHER" (any token is a
        valid HTTP method, and each would otherwise make series of its own)."""
        if method not in _METHODS:
            method = OTHER_METHOD
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = self._request_children[key] = (
                self.requests.labels(*labels),
                self.latency.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, *, applied: bool, points: int) -> None:
        if applied:
            self._applied.inc()
            self.points.inc(points)
            self.batch_points.observe(points)
        else:
            self._repeated.inc()

    def sample_pool(self, pool: asyncpg.Pool) -> None:
        size = pool.get_size()
        self.pool_open.set(size)
        self.pool_in_use.set(size - pool.get_idle_size())
        self.pool_max.set(pool.get_max_size())

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper asked for (Prometheus text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        if self.multiprocess_dir is None:
            return encoder(self.registry), content_type
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        merged.register(_WorkerRestarts(Path(self.multiprocess_dir) / RESTARTS_FILE))
        return encoder(merged), content_type

    async def sample_pool_forever(self, pool: asyncpg.Pool) -> None:
        """Keep the pool gauges current while the app runs (a task the app factory starts).

        Sampled, not updated on every acquire: asyncpg has no hooks, and a scrape reaches only one worker,
        so each worker writes its own figures and the scrape sums them.
        """
        while True:
            self.sample_pool(pool)
            await asyncio.sleep(POOL_SAMPLE_SECONDS)


class _WorkerRestarts(Collector):
    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        try:
            count = int(self.path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            count = 0
        family = CounterMetricFamily(
            "kiseki_worker_restarts", "Worker processes the --workers supervisor restarted after they died."
        )
        family.add_metric([], count)
        yield family


TELEMETRY = web.AppKey("telemetry", Telemetry)


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _VALID_REQUEST_ID.fullmatch(given):
        return given
    return f"{getrandbits(64):016x}"


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


def middleware(telemetry: Telemetry, drain: Drain, *, log_access: bool) -> Middleware:
    """The outermost middleware: request id in and out, request metrics, access lines if asked, and the
    count of requests in progress that a graceful shutdown waits for."""
    clock = time.perf_counter

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        drain.active += 1
        request_id = _request_id(request)
        token = REQUEST_ID.set(request_id)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
                if drain.draining:
                    response.force_close()  # this replica is going away: reconnect elsewhere
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        finally:
            seconds = clock() - started
            telemetry.observe_request(request.method, _route(request), status, seconds)
            if log_access:
                # Still percent-encoded (no newlines to forge lines with), and never the query string,
                # which may hold secrets such as the signatures of artifact URLs.
                path = request.rel_url.raw_path
                duration_ms = round(seconds * 1000, 2)
                access_log.info(
                    "%s %s %d %.2f ms",
                    request.method,
                    path,
                    status,
                    duration_ms,
                    extra={
                        "method": request.method,
                        "path": path,
                        "status": status,
                        "duration_ms": duration_ms,
                    },
                )
            REQUEST_ID.reset(token)
            drain.leave()

    return observe
