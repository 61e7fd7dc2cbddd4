"""Where the SDK sends requests: `set_tracking_uri`, else `KISEKI_TRACKING_URI`, else the local default."""

from __future__ import annotations

import os

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"

_tracking_uri: str | None = None


def set_tracking_uri(uri: str) -> None:
    """Send everything that follows to the kiseki server at `uri` (e.g. http://tracking.internal:5000)."""
    global _tracking_uri
    if not uri.startswith(("http://", "https://")):
        raise ValueError(f"tracking URI must be an http(s) URL of a kiseki server, got {uri!r}")
    _tracking_uri = uri.rstrip("/")


def get_tracking_uri() -> str:
    return _tracking_uri or os.environ.get("KISEKI_TRACKING_URI", "").rstrip("/") or DEFAULT_TRACKING_URI
