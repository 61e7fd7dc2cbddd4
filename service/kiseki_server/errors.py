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
ErrorShape = Callable[[int, str, str, dict[str, str] | None], web.Response]
ERROR_SHAPES: web.AppKey[tuple[tuple[tuple[str, ...], ErrorShape], ...]] = web.AppKey("error_shapes")
"""(path prefixes, renderer of (status, code, message, headers)) for APIs with an error body of their own:
MLflow's routes answer `{"error_code", "message"}` even when a middleware refuses them (set by mlflow)."""


class KisekiError(Exception):
    status = 500
    code = "INTERNAL_ERROR"
    retry_after: int | None = None
    """Seconds a client should wait before retrying, sent as `Retry-After` (503s)."""

    def __init__(self, message: str, *, field: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidInput(KisekiError):
    status = 400
    code = "INVALID_PARAMETER_VALUE"


class Unauthenticated(KisekiError):
    """No credential, or one that is unknown, expired, revoked or of a disabled user."""

    status = 401
    code = "UNAUTHENTICATED"


class Forbidden(KisekiError):
    status = 403
    code = "PERMISSION_DENIED"


class UnsupportedMediaType(KisekiError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class TooManyRequests(KisekiError):
    status = 429
    code = "TOO_MANY_REQUESTS"
    retry_after: int | None = 60


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
    """A backend the service depends on (Postgres, artifact storage) cannot be reached, or the service is
    too busy to take the request now; retrying after `retry_after` seconds may help."""

    status = 503
    code = "SERVICE_UNAVAILABLE"
    retry_after: int | None = 1


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, field=field))
    return web.json_response(text=body.model_dump_json(), status=status, headers=headers)


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


_KEPT_HEADERS = ("Allow",)
"""Headers of aiohttp's own errors that the JSON (or HTML) answer keeps: a 405 says what is allowed."""


def _respond(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    for prefixes, shape in request.app.get(ERROR_SHAPES, ()):
        if request.path.startswith(prefixes):
            return shape(status, code, message, headers)
    page = request.app.get(ERROR_PAGE)
    if page is not None and not request.path.startswith("/api/"):
        response = page(request, status, message)
        response.headers.update(headers or {})
        return response
    return error_response(status, code, message, field, headers=headers)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except KisekiError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        if isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = 'Bearer realm="kiseki"'
        return _respond(request, exc.status, exc.code, exc.message, exc.field, headers=headers or None)
    except pydantic.ValidationError as exc:
        err = validation_error(exc)
        return _respond(request, err.status, err.code, err.message, err.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"method {exc.method} is not allowed here; allowed: {allowed}"
        elif exc.status == 413:
            message = (
                f"request body is larger than the limit of {request.app[SETTINGS].max_request_bytes} bytes"
            )
        kept = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
        code = _HTTP_CODES.get(exc.status, "HTTP_ERROR")
        return _respond(request, exc.status, code, message, headers=kept or None)
    except ConnectionResetError:
        # The client went away (or was dropped for stalling) before sending its whole body: nobody is
        # left to answer and nothing went wrong here, so no traceback.
        log.debug("client gone during %s %s", request.method, request.path)
        return error_response(400, "CLIENT_DISCONNECTED", "the connection closed before the request was read")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _respond(request, 500, "INTERNAL_ERROR", "internal server error; the service log has details")
