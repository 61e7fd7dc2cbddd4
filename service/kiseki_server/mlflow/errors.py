"""MLflow's error shape, `{"error_code": ..., "message": ...}`, with the status codes its client acts on.

kiseki's stores raise `KisekiError`s; `mlflow_handler` translates them here, once, for every MLflow route,
so the service's own error middleware (the `{"error": {...}}` shape of /api/v1) never sees them. MLflow's
client reads `error_code`: e.g. `get_experiment_by_name` turns RESOURCE_DOES_NOT_EXIST into None, and it
retries 429/5xx, so a client mistake must never be a 5xx.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import orjson
import pydantic
from aiohttp import web

from kiseki_server.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    KisekiError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    validation_error,
)

log = logging.getLogger(__name__)

MlflowHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def error_body(code: str, message: str, status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error_code": code, "message": message}),
        status=status,
        content_type="application/json",
    )


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
    if isinstance(exc, Forbidden):
        return MlflowError("PERMISSION_DENIED", exc.message, 403)
    if isinstance(exc, PayloadTooLarge):
        return MlflowError("INVALID_PARAMETER_VALUE", exc.message, 413)
    if isinstance(exc, ServiceUnavailable):
        return MlflowError("TEMPORARILY_UNAVAILABLE", exc.message, 503)
    return MlflowError("INTERNAL_ERROR", exc.message, exc.status if exc.status >= 500 else 500)


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
            return error_body(err.code, err.message, err.status)
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
