"""Artifact paths and locations: the one place user-given paths are checked before they reach storage.

An artifact path is relative to its run's artifact root and the same on every store: '/'-separated,
no '..', no absolute or drive-like forms a filesystem could reinterpret. Both stores rely on paths having
passed `normalize`, which is what keeps one run's URLs and files inside that run's own prefix.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from kiseki.models import MAX_ARTIFACT_PATH_LENGTH
from kiseki_server.errors import InvalidInput

MAX_NAME_BYTES = 255
"""Longest path part in UTF-8 bytes: the usual filesystem name limit, applied to S3 too for parity."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize(path: str, *, field: str = "path", allow_root: bool = False) -> str:
    """`path` with '.' parts and one trailing '/' dropped; a 400 naming `field` for anything unsafe.

    The run's root itself is '' and is only accepted where `allow_root` says so (listings, downloads).
    """

    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"{field} {why}; got {path[:200]!r}", field=field)

    if "\x00" in path:
        raise bad("must not contain NUL")
    if _CONTROL.search(path):
        raise bad("must not contain control characters")
    if "\\" in path:
        raise bad("must use '/' as separator, not backslashes")
    if len(path) > MAX_ARTIFACT_PATH_LENGTH:
        raise bad(f"must be at most {MAX_ARTIFACT_PATH_LENGTH} characters")
    if path.startswith("/"):
        raise bad("must be relative to the run's artifact root, not absolute")
    trimmed = path[:-1] if path.endswith("/") else path
    parts = [p for p in trimmed.split("/") if p != "."] if trimmed else []
    for part in parts:
        if part == "":
            raise bad("must not contain empty parts ('//')")
        if part == "..":
            raise bad("must not contain '..'")
        if len(part.encode()) > MAX_NAME_BYTES:
            raise bad(f"has a part longer than {MAX_NAME_BYTES} bytes")
    if not parts and not allow_root:
        raise bad("must name a file, not the run's artifact root")
    return "/".join(parts)


def is_inside(path: str, folder: str) -> bool:
    """Whether normalised `path` is `folder` or lies under it ('' is the root, holding everything)."""
    return not folder or path == folder or path.startswith(folder + "/")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key prefix without slashes at either end) of `s3://bucket[/prefix]`."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not an s3://bucket[/prefix] URI: {uri!r}")
    return parts.netloc, parts.path.strip("/")


def parse_file_uri(uri: str) -> PurePosixPath:
    """The absolute, lexically normalised folder of `file:///path` (percent-escapes decoded)."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"not a file:///absolute/path URI: {uri!r}")
    segments: list[str] = []
    for segment in unquote(parts.path).split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return PurePosixPath("/", *segments)
