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


class InvalidInput(KisekiError, ValueError):
    """Input the server refuses (400, 413, 422), or that the SDK refused at the call before queueing it
    (a bad key, value or step); `field` names the culprit. A `ValueError`, so generic handlers catch it."""


class InvalidType(InvalidInput, TypeError):
    """An argument of the wrong type at the call (None or 'abc' as a metric value, a non-string key)."""


class NotFound(KisekiError):
    """The experiment, run, tag or artifact does not exist (404)."""


class Conflict(KisekiError):
    """The request conflicts with stored state (409): a param changed, a name taken, a deleted run."""


class UnsafeArtifactPath(KisekiError):
    """A download was refused because the server listed a path outside the destination folder."""


class NotKisekiServer(KisekiError):
    """The tracking URI answers, but not as a kiseki server's base URL (an API route gave a plain 404)."""


class Unauthenticated(KisekiError):
    """The server wants a credential (401): none was sent, or the token is unknown, expired or revoked.
    Never retried; the message names the fix (KISEKI_TRACKING_TOKEN, or the client's `token=`)."""


class PermissionDenied(KisekiError):
    """The credential works but may not do this (403): a read-scoped token writing, or no permission on
    the experiment. Never retried; the message says what is missing."""


class ServerUnavailable(KisekiError):
    """No tracking server answered (or it kept failing) within the retry budget."""


def error_for_status(
    status: int, message: str, *, code: str | None = None, field: str | None = None
) -> KisekiError:
    kind: type[KisekiError]
    if status == 401:
        kind = Unauthenticated
    elif status == 403:
        kind = PermissionDenied
    elif status == 404:
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
