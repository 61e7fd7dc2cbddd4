"""Expiring HMAC signatures for the local store's upload and download URLs.

A signature covers everything the URL lets its holder do: method, run, path, expiry and, for uploads,
the exact size (and the upload id and part number of a part), so a URL for one file of one run cannot
read or write any other, nor write more bytes than were declared.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import orjson

from kiseki.models import INT64_MAX, MAX_ARTIFACT_SIZE, MAX_PARTS
from kiseki_server.errors import Forbidden, InvalidInput

KEY_FILE = "artifact-signing.key"


@dataclass(frozen=True, slots=True)
class Grant:
    """One signed permission: `method` on `path` of run `run_id` until epoch second `expires`."""

    method: str
    run_id: str
    path: str
    expires: int
    size: int | None = None
    upload_id: str | None = None
    part_number: int | None = None

    def message(self) -> bytes:
        return orjson.dumps(
            [self.method, self.run_id, self.path, self.expires, self.size, self.upload_id, self.part_number]
        )

    def query(self) -> dict[str, str]:
        fields: dict[str, object] = {
            "path": self.path,
            "expires": self.expires,
            "size": self.size,
            "upload_id": self.upload_id,
            "part_number": self.part_number,
        }
        return {k: str(v) for k, v in fields.items() if v is not None}


class UrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _signature(self, grant: Grant) -> str:
        digest = hmac.new(self._key, grant.message(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def url(self, origin: str, grant: Grant) -> str:
        """`origin` + the data route of `grant`, with its signature in the query string."""
        query = urlencode({**grant.query(), "signature": self._signature(grant)}, safe="/")
        return f"{origin}/api/v1/runs/{grant.run_id}/artifacts/data?{query}"

    def verify(self, method: str, run_id: str, path: str, query: Mapping[str, str]) -> Grant:
        """The grant a request's URL carries; 403 unless its signature is ours and it has not expired.

        `path` is the URL's `path` query parameter, normalised by the caller. A missing or malformed
        parameter is a 400 naming it (this service only ever writes plain decimal numbers in range);
        a signature that is not exactly ours, whatever its form, is a 403.
        """
        expires = _number(query, "expires", INT64_MAX)
        if expires is None:
            raise _lacks("expires")
        grant = Grant(
            method=method,
            run_id=run_id,
            path=path,
            expires=expires,
            size=_number(query, "size", MAX_ARTIFACT_SIZE),
            upload_id=query.get("upload_id"),
            part_number=_number(query, "part_number", MAX_PARTS, lo=1),
        )
        signature = query.get("signature")
        if signature is None:
            raise _lacks("signature")
        # compare_digest takes str only when both are ASCII; bytes it takes always.
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), self._signature(grant).encode()):
            raise Forbidden("the URL's signature does not match this method, run and path")
        if time.time() > grant.expires:
            raise Forbidden("the URL has expired; ask the artifacts API for a fresh one")
        return grant


_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


def _lacks(name: str) -> InvalidInput:
    return InvalidInput(
        f"this URL lacks its '{name}' parameter; ask the artifacts API for a fresh one", field=name
    )


def _number(query: Mapping[str, str], name: str, hi: int, *, lo: int = 0) -> int | None:
    """An integer parameter of a signed URL, None when absent: plain ASCII decimal from `lo` to `hi`
    (as this service writes them, never `+1`, `01` or non-ASCII digits), so a forged one is a clean
    400 rather than a number the signature code cannot take."""
    raw = query.get(name)
    if raw is None:
        return None
    if not _DECIMAL.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise InvalidInput(
            f"URL parameter '{name}' must be a whole number from {lo} to {hi}; got {raw[:40]!r}", field=name
        )
    return int(raw)


def load_or_create_key(data_dir: Path) -> bytes:
    """The signing key kept in `data_dir`, created (mode 0600) on first use so restarts keep URLs valid.

    Creation is atomic: the key is written to a temporary file and hard-linked into place, so processes
    starting together all end up with the one key that won.
    """
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".{KEY_FILE}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no usable signing key; delete it to have a new one made")
    return key.encode()
