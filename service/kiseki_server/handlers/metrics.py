"""Batched logging and metric history: /api/v1/runs/{run_id}/batch and /metrics/..."""

from __future__ import annotations

import io

import numpy as np
import orjson
from aiohttp import web

from kiseki.models import LogBatch, LogBatchResult, MetricHistory
from kiseki_server.appkeys import STORES
from kiseki_server.auth.policy import EDIT_PATH, READ_PATH
from kiseki_server.handlers.runs import run_id_of
from kiseki_server.http_io import model_response, query_int, query_str, read_model
from kiseki_server.metric_codec import Float64Array, Int64Array, Points
from kiseki_server.routing import Query, Route, paging
from kiseki_server.telemetry import TELEMETRY

MAX_HISTORY_PAGE = 1_000_000
DEFAULT_HISTORY_PAGE = 100_000
_NON_FINITE = {np.inf: "Infinity", -np.inf: "-Infinity"}


def _values(values: Float64Array) -> Float64Array | list[float | str]:
    """float64 values for JSON: the array itself, or a list with NaN/Infinity spelled as strings."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    spelled: list[float | str] = values.tolist()
    for i in np.flatnonzero(~finite).tolist():
        v = float(values[i])
        spelled[i] = "NaN" if v != v else _NON_FINITE[v]
    return spelled


_SLICE = 50_000
"""Numbers per `orjson.dumps` call when writing a big history: orjson holds the GIL for a whole call, so
a thread writing 40 MB in one call would stall the event loop as surely as writing it on the loop."""


def _json_array(items: Int64Array | Float64Array | list[float | str]) -> list[bytes | memoryview]:
    """The pieces of a JSON array, one `orjson.dumps` call per slice (without its brackets)."""
    pieces: list[bytes | memoryview] = [b"["]
    for i in range(0, len(items), _SLICE):
        if i:
            pieces.append(b",")
        pieces.append(
            memoryview(orjson.dumps(items[i : i + _SLICE], option=orjson.OPT_SERIALIZE_NUMPY))[1:-1]
        )
    pieces.append(b"]")
    return pieces


def history_json(key: str, points: Points, next_page_token: str | None = None) -> bytes:
    """A history as the JSON of `MetricHistory`, written slice by slice so that the thread writing a big
    one hands the GIL back to the event loop between slices."""
    return b"".join(
        (
            b'{"key":',
            orjson.dumps(key),
            b',"steps":',
            *_json_array(points.steps),
            b',"timestamps":',
            *_json_array(points.timestamps),
            b',"values":',
            *_json_array(_values(points.values)),
            b',"next_page_token":',
            orjson.dumps(next_page_token),
            b"}",
        )
    )


_STREAM_BYTES = 8 * 1024 * 1024
"""Bodies above this go out from a BytesIO, which aiohttp writes 64 KiB at a time yielding in between:
handing the transport 40 MB in one write copies it on the event loop (~50 ms); below, one write is cheaper
than the yields."""


async def _history_response(
    request: web.Request, key: str, points: Points, next_page_token: str | None = None
) -> web.Response:
    """The JSON of a history, written in a thread when it is big."""
    metrics = request.app[STORES].metrics
    body = await metrics.off_loop(len(points), history_json, key, points, next_page_token)
    if len(body) <= _STREAM_BYTES:
        return web.Response(body=body, content_type="application/json")
    return web.Response(body=io.BytesIO(body), content_type="application/json")


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
    return await _history_response(request, page.key, page.points, page.next_page_token)


async def downsampled(request: web.Request) -> web.Response:
    run_id = run_id_of(request)
    key = _key(request)
    stores = request.app[STORES]
    max_points = query_int(request, "max_points", default=1000, lo=10, hi=100_000)
    points = await stores.metrics.downsampled(run_id, key, max_points=max_points)
    if not len(points):
        await stores.runs.get(run_id)
    return await _history_response(request, key, points)


_KEY = Query("key", "string", "Metric key.", required=True)
ROUTES = [
    Route(
        "POST",
        "/api/v1/runs/{run_id}/batch",
        log_batch,
        "Log params, tags and metric points in one all-or-nothing batch (idempotent by batch_id)",
        LogBatch,
        LogBatchResult,
        access=EDIT_PATH,
    ),
    Route(
        "GET",
        "/api/v1/runs/{run_id}/metrics/history",
        history,
        "A metric's points in (step, timestamp, arrival) order, paged",
        response=MetricHistory,
        query=(_KEY, *paging(MAX_HISTORY_PAGE, default=DEFAULT_HISTORY_PAGE)),
        access=READ_PATH,
    ),
    Route(
        "GET",
        "/api/v1/runs/{run_id}/metrics/downsampled",
        downsampled,
        "At most max_points points of a metric keeping its shape (first, last, min and max per bucket)",
        response=MetricHistory,
        query=(
            _KEY,
            Query(
                "max_points",
                "integer",
                "10 to 100000; default 1000.",
                rules={"minimum": 10, "maximum": 100_000},
            ),
        ),
        access=READ_PATH,
    ),
]
