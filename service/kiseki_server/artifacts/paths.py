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

STAGING = ".kiseki-uploads"
"""Folder (local) or key prefix (S3) under the artifact root for unfinished uploads: never a run's."""
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


def _segments(path: str) -> list[str]:
    """`path` split on '/', with empty and '.' parts dropped and '..' resolved lexically (never above '/').

    Filesystems and filesystem-backed S3 servers (SeaweedFS stores `a//b` as `a/b`) treat these forms as
    the same place, so every location is compared and addressed in this one form.
    """
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return segments


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, normalised key prefix without slashes at either end) of `s3://bucket[/prefix]`."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not an s3://bucket[/prefix] URI: {uri!r}")
    return parts.netloc, "/".join(_segments(parts.path))


def parse_file_uri(uri: str) -> PurePosixPath:
    """The absolute, lexically normalised folder of `file:///path` (percent-escapes decoded)."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"not a file:///absolute/path URI: {uri!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a file:// URI of an artifact folder takes no query or fragment: {uri!r}")
    return PurePosixPath("/", *_segments(unquote(parts.path)))


def location_parts(uri: str) -> tuple[str, str, tuple[str, ...]]:
    """(scheme, bucket or '', path segments) of an artifact location, normalised exactly as the stores
    address storage; ValueError when no store could serve `uri`."""
    scheme = urlsplit(uri).scheme
    if scheme == "s3":
        bucket, key = parse_s3_uri(uri)
        return "s3", bucket, tuple(key.split("/")) if key else ()
    if scheme == "file":
        return "file", "", parse_file_uri(uri).parts[1:]
    raise ValueError(f"not an s3:// or file:// URI: {uri!r}")


def location_under(uri: str, root: str) -> tuple[str, ...] | None:
    """The segments of `uri` below `root` (() when it is the root itself), or None when it lies outside.

    The one test of "is this inside the service's root" for both the stores (which serve only runs
    inside) and the check on custom experiment locations (which must stay outside): they cannot disagree.
    """
    try:
        scheme, bucket, segments = location_parts(uri)
        root_scheme, root_bucket, root_segments = location_parts(root)
    except ValueError:
        return None
    if (scheme, bucket) != (root_scheme, root_bucket) or segments[: len(root_segments)] != root_segments:
        return None
    return segments[len(root_segments) :]
