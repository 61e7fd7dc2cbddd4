"""MLflow's tracking REST API over kiseki's stores: the unmodified `mlflow` client works against kiseki.

A translation layer only: every handler parses MLflow's message, calls the same stores kiseki's own API
uses and writes MLflow's JSON back; errors are MLflow's `{"error_code", "message"}`. See docs/mlflow.md.
"""

from __future__ import annotations

from aiohttp import web

from kiseki_server.mlflow import artifacts, datasets, experiments, metrics, runs, unsupported
from kiseki_server.mlflow.errors import MlflowHandler, mlflow_handler

__all__ = ["LIMITED", "STREAMED", "add_routes"]

_TRACKING: list[tuple[str, str, MlflowHandler]] = [
    *experiments.ROUTES,
    *runs.ROUTES,
    *datasets.ROUTES,
    *metrics.ROUTES,
    *unsupported.ROUTES,
    *artifacts.TRACKING_ROUTES,
]
_WRAPPED: dict[MlflowHandler, MlflowHandler] = {
    handler: mlflow_handler(handler) for _, _, handler in (*_TRACKING, *artifacts.ROUTES)
}
_NOT_SERVED = mlflow_handler(unsupported.not_served)
_SERVER_INFO = mlflow_handler(unsupported.server_info)

STREAMED = frozenset({_WRAPPED[artifacts.upload]})
"""Handlers that stream their body (artifact uploads): the request size limit does not apply."""
LIMITED = frozenset({_WRAPPED[runs.log_batch], _WRAPPED[runs.log_metric]})
"""Writes that wait for a turn of the ingest limiter, like kiseki's own batches."""


def add_routes(app: web.Application) -> None:
    """Register MLflow's routes (after kiseki's own, none of which they overlap) and its aliases."""
    for prefix in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"):
        for method, path, handler in _TRACKING:
            app.router.add_route(method, f"{prefix}/{path}", _WRAPPED[handler])
    for prefix in ("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts"):
        for method, path, handler in artifacts.ROUTES:
            app.router.add_route(method, f"{prefix}/{path}", _WRAPPED[handler])
    for prefix in ("/api/3.0/mlflow", "/ajax-api/3.0/mlflow"):
        app.router.add_get(f"{prefix}/server-info", _SERVER_INFO)
    for prefix in (
        "/api/2.0/mlflow",
        "/ajax-api/2.0/mlflow",
        "/api/3.0/mlflow",
        "/ajax-api/3.0/mlflow",
        "/api/2.0/mlflow-artifacts",
        "/ajax-api/2.0/mlflow-artifacts",
    ):
        app.router.add_route("*", prefix + "/{tail:.*}", _NOT_SERVED)
