"""MLflow's error shape, `{"error_code": ..., "message": ...}`, with the status codes its client acts on.

kiseki's stores raise `KisekiError`s; `mlflow_handler` translates them here, once, for every MLflow route,
so the service's own error middleware (the `{"error": {...}}` shape of /api/v1) never sees them. MLflow's
client reads `error_code`: e.g. `get_experiment_by_name` turns RESOURCE_DOES_NOT_EXIST into None, and it
retries 429/5xx, so a client mistake must never be a 5xx. The service's error middleware answers in
this shape too (`answer`) when a middleware refuses an MLflow request (401, 403, 415, 429, 503).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import orjson
import pydantic
from aiohttp import web

from kiseki_server.auth.policy import Access
from kiseki_server.errors import (
    Conflict,
    InvalidInput,
    KisekiError,
    NotFound,
    Unprocessable,
    validation_error,
)

log = logging.getLogger(__name__)

MlflowHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MlflowRoute = tuple[str, str, MlflowHandler, Access]
"""(method, path under the prefix, handler, what a caller needs when auth is on)."""

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/", "/api/3.0/mlflow")
"""Paths whose errors are answered in MLflow's shape (the artifact routes share the first prefix)."""

_CODES = {
    "UNAUTHENTICATED": "UNAUTHENTICATED",
    "PERMISSION_DENIED": "PERMISSION_DENIED",
    "TOO_MANY_REQUESTS": "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_DOES_NOT_EXIST": "RESOURCE_DOES_NOT_EXIST",
    "SERVICE_UNAVAILABLE": "TEMPORARILY_UNAVAILABLE",
    "NOT_FOUND": "ENDPOINT_NOT_FOUND",
    "METHOD_NOT_ALLOWED": "ENDPOINT_NOT_FOUND",
}
"""kiseki's error codes → MLflow's (`mlflow.protos.databricks_pb2.ErrorCode`), where they differ in more
than name; any other 4xx is INVALID_PARAMETER_VALUE (a 415 too, as MLflow's own content-type check
answers), any other 5xx INTERNAL_ERROR."""


def mlflow_code(status: int, code: str) -> str:
    found = _CODES.get(code)
    if found is not None:
        return found
    return "INVALID_PARAMETER_VALUE" if status < 500 else "INTERNAL_ERROR"


class MlflowError(Exception):
    """An error in MLflow's own terms (code and HTTP status as MLflow's server answers them)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message, 400)


def not_found(message: str) -> MlflowError:
    return MlflowError("RESOURCE_DOES_NOT_EXIST", message, 404)


def error_body(
    code: str, message: str, status: int, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error_code": code, "message": message}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def answer(status: int, code: str, message: str, headers: dict[str, str] | None) -> web.Response:
    """An error the service's middleware raised (kiseki's `code`) in MLflow's shape, headers kept."""
    return error_body(mlflow_code(status, code), message, status, headers=headers)


def translate(exc: KisekiError) -> MlflowError:
    """kiseki's domain errors in MLflow's vocabulary.

    A taken name is RESOURCE_ALREADY_EXISTS (the client and users test for it); every other conflict
    (a changed param, logging to a deleted run) is what MLflow calls it: INVALID_PARAMETER_VALUE, 400.
    """
    if isinstance(exc, NotFound):
        return not_found(exc.message)
    if isinstance(exc, Conflict):
        if exc.field == "name":
            return MlflowError("RESOURCE_ALREADY_EXISTS", exc.message, 400)
        return invalid(exc.message)
    if isinstance(exc, (InvalidInput, Unprocessable)):
        return invalid(exc.message)
    return MlflowError(mlflow_code(exc.status, exc.code), exc.message, exc.status)


def mlflow_handler(handler: MlflowHandler) -> MlflowHandler:
    """`handler` answering every failure in MLflow's shape; unexpected errors are logged, never shown."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except MlflowError as exc:
            return error_body(exc.code, exc.message, exc.status)
        except KisekiError as exc:
            err = translate(exc)
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
            return error_body(err.code, err.message, err.status, headers=retry)
        except pydantic.ValidationError as exc:
            return error_body("INVALID_PARAMETER_VALUE", validation_error(exc).message, 400)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 413:
                return error_body("INVALID_PARAMETER_VALUE", "request body is too large", 413)
            return error_body(
                "INVALID_PARAMETER_VALUE" if exc.status < 500 else "INTERNAL_ERROR", exc.reason, exc.status
            )
        except Exception:
            log.exception("unhandled error in MLflow route %s %s", request.method, request.path)
            return error_body("INTERNAL_ERROR", "internal server error; the service log has details", 500)

    return wrapped
