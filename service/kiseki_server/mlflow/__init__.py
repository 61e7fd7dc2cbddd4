"""MLflow's tracking REST API over kiseki's stores: the unmodified `mlflow` client works against kiseki.

A translation layer only: every handler parses MLflow's message, calls the same stores kiseki's own API
uses and writes MLflow's JSON back; errors are MLflow's `{"error_code", "message"}`, also when the
service's middleware refuses a request (auth, content type, back-pressure). Each route carries the
Access it needs with auth on (MLflow's auth plugin's model); handlers check the experiment permission
once they have parsed the ids out of the body or query. See docs/mlflow.md.
"""

from __future__ import annotations

from aiohttp import web

from kiseki_server.auth.middleware import protect
from kiseki_server.auth.policy import READ, Access
from kiseki_server.errors import ERROR_SHAPES
from kiseki_server.mlflow import artifacts, datasets, experiments, metrics, runs, unsupported
from kiseki_server.mlflow.errors import PREFIXES, MlflowHandler, MlflowRoute, answer, mlflow_handler

__all__ = ["LIMITED", "STREAMED", "add_routes"]

_TRACKING: list[MlflowRoute] = [
    *experiments.ROUTES,
    *runs.ROUTES,
    *datasets.ROUTES,
    *metrics.ROUTES,
    *unsupported.ROUTES,
    *artifacts.TRACKING_ROUTES,
]
_WRAPPED: dict[MlflowHandler, MlflowHandler] = {
    handler: mlflow_handler(handler) for _, _, handler, _ in (*_TRACKING, *artifacts.ROUTES)
}
_NOT_SERVED = mlflow_handler(unsupported.not_served)
_SERVER_INFO = mlflow_handler(unsupported.server_info)

STREAMED = frozenset({_WRAPPED[artifacts.upload]})
"""Handlers that stream their body (artifact uploads): the request size limit does not apply."""
LIMITED = frozenset({_WRAPPED[runs.log_batch], _WRAPPED[runs.log_metric]})
"""Writes that wait for a turn of the ingest limiter, like kiseki's own batches."""


def add_routes(app: web.Application) -> None:
    """Register MLflow's routes (after kiseki's own, none of which they overlap), their aliases and
    their Access, and answer errors under MLflow's prefixes in MLflow's shape."""

    def add(method: str, path: str, handler: MlflowHandler, access: Access) -> None:
        protect(app, app.router.add_route(method, path, handler), access)

    for prefix in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"):
        for method, path, handler, access in _TRACKING:
            add(method, f"{prefix}/{path}", _WRAPPED[handler], access)
    for prefix in ("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts"):
        for method, path, handler, access in artifacts.ROUTES:
            add(method, f"{prefix}/{path}", _WRAPPED[handler], access)
    for prefix in ("/api/3.0/mlflow", "/ajax-api/3.0/mlflow"):
        protect(app, app.router.add_get(f"{prefix}/server-info", _SERVER_INFO), READ)
    for prefix in (
        "/api/2.0/mlflow",
        "/ajax-api/2.0/mlflow",
        "/api/3.0/mlflow",
        "/ajax-api/3.0/mlflow",
        "/api/2.0/mlflow-artifacts",
        "/ajax-api/2.0/mlflow-artifacts",
    ):
        add("*", prefix + "/{tail:.*}", _NOT_SERVED, READ)
    app[ERROR_SHAPES] = (*app.get(ERROR_SHAPES, ()), (PREFIXES, answer))
