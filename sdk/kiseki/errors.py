"""Typed errors carrying the server's message, so callers can catch what they can handle."""

from __future__ import annotations


class KisekiError(Exception):
    """Base of every error the SDK raises."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field


class InvalidInput(KisekiError):
    """The server rejected a request as malformed or invalid (400, 413, 422); `field` names the culprit."""


class NotFound(KisekiError):
    """The experiment, run, tag or artifact does not exist (404)."""


class Conflict(KisekiError):
    """The request conflicts with stored state (409): a param changed, a name taken, a deleted run."""


class ServerUnavailable(KisekiError):
    """No tracking server answered (or it kept failing) within the retry budget."""


def error_for_status(
    status: int, message: str, *, code: str | None = None, field: str | None = None
) -> KisekiError:
    kind: type[KisekiError]
    if status == 404:
        kind = NotFound
    elif status == 409:
        kind = Conflict
    elif status in (400, 413, 422):
        kind = InvalidInput
    elif status >= 500 or status == 429:
        kind = ServerUnavailable
    else:
        kind = KisekiError
    return kind(message, status=status, code=code, field=field)
