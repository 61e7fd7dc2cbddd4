"""MLflow's /mlflow/metrics/get-history over kiseki's packed metric history.

Without `max_results` MLflow's server answers the whole history in one response, and so does this; with
it, pages carry kiseki's exact keyset token (no page token on the last page).
"""

from __future__ import annotations

import math

import numpy as np
import orjson
from aiohttp import web

from kiseki_server.appkeys import STORES
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import READ_HANDLER, Level
from kiseki_server.mlflow.errors import MlflowRoute, invalid
from kiseki_server.mlflow.wire import Lenient, message, run_id_of

MAX_PAGE = 1_000_000
_WHOLE = 2**62


class History(Lenient):
    run_id: str | None = None
    run_uuid: str | None = None
    metric_key: str | None = None
    max_results: int | None = None
    page_token: str | None = None


def _values(values: np.ndarray) -> list[float | str]:
    out: list[float | str] = values.tolist()
    if not np.isfinite(values).all():
        for i in np.flatnonzero(~np.isfinite(values)).tolist():
            v = out[i]
            assert isinstance(v, float)
            out[i] = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return out


async def get_history(request: web.Request) -> web.Response:
    body = await message(request, History)
    run_id = run_id_of(body.run_id or body.run_uuid)
    if not body.metric_key:
        raise invalid("Missing value for required parameter 'metric_key'")
    if body.max_results is not None and not 1 <= body.max_results <= MAX_PAGE:
        raise invalid(f"max_results must be between 1 and {MAX_PAGE}, got {body.max_results}")
    await request.app[AUTHORIZER].require_run(request, run_id, Level.READ)
    stores = request.app[STORES]
    page = await stores.metrics.history(
        run_id, body.metric_key, max_results=body.max_results or _WHOLE, page_token=body.page_token or None
    )
    if not len(page.points):
        await stores.runs.get(run_id)  # an unknown run is a 404, an unlogged key an empty history
    key = page.key
    metrics = [
        {"key": key, "value": v, "timestamp": t, "step": s}
        for s, t, v in zip(
            page.points.steps.tolist(),
            page.points.timestamps.tolist(),
            _values(page.points.values),
            strict=True,
        )
    ]
    answer: dict[str, object] = {"metrics": metrics}
    if page.next_page_token:
        answer["next_page_token"] = page.next_page_token
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


ROUTES: list[MlflowRoute] = [("GET", "metrics/get-history", get_history, READ_HANDLER)]
