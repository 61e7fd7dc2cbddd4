"""Batched logging and metric history: /api/v1/runs/{run_id}/batch and /metrics/..."""

from __future__ import annotations

import numpy as np
from aiohttp import web

from kiseki.models import LogBatch, LogBatchResult, MetricHistory
from kiseki_server.appkeys import STORES
from kiseki_server.handlers.runs import run_id_of
from kiseki_server.http_io import json_response, model_response, query_int, query_str, read_model
from kiseki_server.metric_codec import Points
from kiseki_server.routing import PAGING, Query, Route
from kiseki_server.telemetry import TELEMETRY

MAX_HISTORY_PAGE = 1_000_000
DEFAULT_HISTORY_PAGE = 100_000
_NON_FINITE = {np.inf: "Infinity", -np.inf: "-Infinity"}


def _values(values: np.ndarray) -> object:
    """float64 values for JSON: the array itself, or a list with NaN/Infinity spelled as strings."""
    if np.isfinite(values).all():
        return values
    return [v if np.isfinite(v) else ("NaN" if v != v else _NON_FINITE[v]) for v in values.tolist()]


def history_body(key: str, points: Points, next_page_token: str | None = None) -> dict[str, object]:
    return {
        "key": key,
        "steps": points.steps,
        "timestamps": points.timestamps,
        "values": _values(points.values),
        "next_page_token": next_page_token,
    }


async def log_batch(request: web.Request) -> web.Response:
    run_id = run_id_of(request)
    body = await read_model(request, LogBatch)
    result = await request.app[STORES].metrics.log_batch(run_id, body)
    request.app[TELEMETRY].observe_batch(applied=result.applied, points=result.points)
    return model_response(result)


def _key(request: web.Request) -> str:
    key = query_str(request, "key", required=True)
    assert key is not None
    return key


async def history(request: web.Request) -> web.Response:
    run_id = run_id_of(request)
    stores = request.app[STORES]
    page = await stores.metrics.history(
        run_id,
        _key(request),
        max_results=query_int(
            request, "max_results", default=DEFAULT_HISTORY_PAGE, lo=1, hi=MAX_HISTORY_PAGE
        ),
        page_token=query_str(request, "page_token"),
    )
    if not len(page.points):
        await stores.runs.get(run_id)  # an unknown run is a 404, an unlogged key an empty history
    return json_response(history_body(page.key, page.points, page.next_page_token))


async def downsampled(request: web.Request) -> web.Response:
    run_id = run_id_of(request)
    key = _key(request)
    stores = request.app[STORES]
    max_points = query_int(request, "max_points", default=1000, lo=10, hi=100_000)
    points = await stores.metrics.downsampled(run_id, key, max_points=max_points)
    if not len(points):
        await stores.runs.get(run_id)
    return json_response(history_body(key, points))


_KEY = Query("key", "string", "Metric key.", required=True)
ROUTES = [
    Route(
        "POST",
        "/api/v1/runs/{run_id}/batch",
        log_batch,
        "Log params, tags and metric points in one all-or-nothing batch (idempotent by batch_id)",
        LogBatch,
        LogBatchResult,
    ),
    Route(
        "GET",
        "/api/v1/runs/{run_id}/metrics/history",
        history,
        "A metric's points in (step, timestamp, arrival) order, paged",
        response=MetricHistory,
        query=(_KEY, *PAGING),
    ),
    Route(
        "GET",
        "/api/v1/runs/{run_id}/metrics/downsampled",
        downsampled,
        "At most max_points points of a metric keeping its shape (first, last, min and max per bucket)",
        response=MetricHistory,
        query=(_KEY, Query("max_points", "integer", "10 to 100000; default 1000.")),
    ),
]
