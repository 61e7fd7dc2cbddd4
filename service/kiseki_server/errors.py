"""Domain errors carry their HTTP status; one middleware turns every error into a response: JSON under
/api/, the run browser's HTML error page elsewhere (when the app has one, see `ERROR_PAGE`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pydantic
from aiohttp import web

from kiseki.models import ErrorDetail, ErrorResponse
from kiseki_server.appkeys import SETTINGS

log = logging.getLogger(__name__)

ErrorPage = Callable[[web.Request, int, str], web.Response]
ERROR_PAGE: web.AppKey[ErrorPage] = web.AppKey("error_page")
"""Renders (request, status, message) as an HTML page for paths outside /api/ (set by the run browser)."""


class KisekiError(Exception):
    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(KisekiError):
    status = 400
    code = "INVALID_PARAMETER_VALUE"


class Forbidden(KisekiError):
    status = 403
    code = "PERMISSION_DENIED"


class NotFound(KisekiError):
    status = 404
    code = "RESOURCE_DOES_NOT_EXIST"


class Conflict(KisekiError):
    status = 409
    code = "RESOURCE_CONFLICT"


class PayloadTooLarge(KisekiError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class Unprocessable(KisekiError):
    status = 422
    code = "INVALID_PARAMETER_VALUE"


class ServiceUnavailable(KisekiError):
    """A backend the service depends on (e.g. artifact storage) cannot be reached; retrying may help."""

    status = 503
    code = "SERVICE_UNAVAILABLE"


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, field=field))
    return web.json_response(text=body.model_dump_json(), status=status)


def validation_error(exc: pydantic.ValidationError, *, prefix: str = "") -> Unprocessable:
    """The first problem of a pydantic error, with its field path as `a.b.0.c`."""
    first = exc.errors(include_url=False)[0]
    path = ".".join(str(part) for part in first["loc"])
    field = f"{prefix}{path}" if path else (prefix.rstrip(".") or None)
    message = first["msg"]
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return Unprocessable(f"{field}: {message}" if field else message, field=field)


_HTTP_CODES = {
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


def _respond(
    request: web.Request, status: int, code: str, message: str, field: str | None = None
) -> web.Response:
    page = request.app.get(ERROR_PAGE)
    if page is not None and not request.path.startswith("/api/"):
        return page(request, status, message)
    return error_response(status, code, message, field)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except KisekiError as exc:
        return _respond(request, exc.status, exc.code, exc.message, exc.field)
    except pydantic.ValidationError as exc:
        err = validation_error(exc)
        return _respond(request, err.status, err.code, err.message, err.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = (
                f"request body is larger than the limit of {request.app[SETTINGS].max_request_bytes} bytes"
            )
        return _respond(request, exc.status, _HTTP_CODES.get(exc.status, "HTTP_ERROR"), message)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _respond(request, 500, "INTERNAL_ERROR", "internal server error; the service log has details")
