"""Where the SDK sends requests: `set_tracking_uri`, else `KISEKI_TRACKING_URI`, else the local default; and
the API token it sends there: the client's `token=`, else `KISEKI_TRACKING_TOKEN`."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
DEFAULT_FIRST_CONTACT_TIMEOUT = 10.0
"""Seconds to wait for a server that has never answered in this process before giving up (a wrong URL or
port should fail fast); once a server has answered, outages are ridden out for the full retry budget."""

API_PATH = "/api/v1"
TOKEN_ENV = "KISEKI_TRACKING_TOKEN"

_tracking_uri: str | None = None
_first_contact_timeout: float | None = None


def normalize_tracking_uri(uri: str) -> str:
    """The base URL of a kiseki server: `http(s)://host[:port][/prefix]`, without a trailing slash.

    The API URL `kiseki server` prints (`…/api/v1`) is accepted too and cut back to its base.
    """
    uri = uri.strip()
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"tracking URI must be the http(s) URL of a kiseki server, like {DEFAULT_TRACKING_URI}; "
            f"got {uri!r}"
        )
    path = parts.path.rstrip("/")
    if path.endswith(API_PATH):
        path = path[: -len(API_PATH)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def set_tracking_uri(uri: str, *, first_contact_timeout: float | None = None) -> None:
    """Send everything that follows to the kiseki server at `uri` (e.g. http://tracking.internal:5000).

    `first_contact_timeout`: seconds to wait for that server to answer for the first time (default
    `KISEKI_FIRST_CONTACT_TIMEOUT`, else 10 s).
    """
    global _tracking_uri, _first_contact_timeout
    _tracking_uri = normalize_tracking_uri(uri)
    _first_contact_timeout = first_contact_timeout


def get_tracking_uri() -> str:
    configured = _tracking_uri or os.environ.get("KISEKI_TRACKING_URI", "").strip()
    return normalize_tracking_uri(configured) if configured else DEFAULT_TRACKING_URI


def get_first_contact_timeout() -> float:
    """`set_tracking_uri(..., first_contact_timeout=)`, else `KISEKI_FIRST_CONTACT_TIMEOUT`, else 10 s."""
    if _first_contact_timeout is not None:
        return _first_contact_timeout
    value = os.environ.get("KISEKI_FIRST_CONTACT_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_FIRST_CONTACT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"KISEKI_FIRST_CONTACT_TIMEOUT must be a number of seconds, got {value!r}") from None
    if not seconds >= 0:
        raise ValueError(f"KISEKI_FIRST_CONTACT_TIMEOUT must be >= 0, got {value!r}")
    return seconds


def get_tracking_token() -> str | None:
    """`KISEKI_TRACKING_TOKEN`, or None: no credential, for a server with auth off."""
    return os.environ.get(TOKEN_ENV, "").strip() or None
