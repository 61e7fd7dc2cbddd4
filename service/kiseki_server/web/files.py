"""The run page's artifact browser: one folder level at a time, download links and small previews.

Bytes never pass through the page: download links go to `/runs/{id}/artifacts/download?path=`, which
redirects to the store's presigned (S3) or signed (local) URL, and image previews load through that
same link. Text previews are read through the URL the store hands out, only their first
`TEXT_PREVIEW_BYTES`, and shown as escaped text (an HTML or SVG artifact is never rendered as markup).
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web

from kiseki.models import FileInfo, RunInfo
from kiseki_server.appkeys import ARTIFACTS, SETTINGS
from kiseki_server.artifacts import ArtifactStore, LocalArtifactStore
from kiseki_server.artifacts.paths import normalize
from kiseki_server.errors import InvalidInput, KisekiError, NotFound

TEXT_PREVIEW_BYTES = 64 * 1024
IMAGE_PREVIEW_MAX_BYTES = 20 * 1024 * 1024
TEXT_SUFFIXES = frozenset(
    {".txt", ".log", ".md", ".rst", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf"}
    | {".csv", ".tsv", ".py", ".sh", ".sql", ".xml", ".html", ".htm", ".svg", ".js", ".css", ".ipynb"}
    | {".out", ".err", ".env", ".properties"}
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".avif"})
LISTING_PAGE = 500
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10)


def origin(request: web.Request) -> str:
    """The base URL clients reach this service at (the local store's URLs point back here)."""
    public = request.app[SETTINGS].public_url
    return public.rstrip("/") if public else f"{request.scheme}://{request.host}"


def preview_kind(path: str, size: int | None) -> Literal["text", "image"] | None:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES and (size or 0) <= IMAGE_PREVIEW_MAX_BYTES:
        return "image"
    if suffix in TEXT_SUFFIXES or not suffix:
        return "text"
    return None


@dataclass(frozen=True, slots=True)
class Crumb:
    name: str
    path: str


@dataclass(frozen=True, slots=True)
class Preview:
    path: str
    kind: Literal["text", "image"]
    text: str | None = None
    truncated: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    folder: str
    crumbs: list[Crumb]
    entries: list[FileInfo]
    next_page_token: str | None
    preview: Preview | None
    error: str | None = None


def crumbs(folder: str) -> list[Crumb]:
    parts = folder.split("/") if folder else []
    return [Crumb(part, "/".join(parts[: i + 1])) for i, part in enumerate(parts)]


async def file_url(request: web.Request, run: RunInfo, path: str) -> str:
    """The store's download URL of the file at `path`: 404 when there is none, 400 for a folder."""
    target = normalize(path)
    listing = await request.app[ARTIFACTS].download_urls(
        run, target, max_results=1, page_token=None, origin=origin(request)
    )
    if len(listing.files) != 1 or listing.files[0].path != target:
        if listing.files:
            raise InvalidInput(f"'{target}' is a folder; download its files one by one", field="path")
        raise NotFound(f"run {run.run_id} has no file at '{target}'", field="path")
    return listing.files[0].url


async def _read_head(request: web.Request, store: ArtifactStore, run: RunInfo, url: str) -> bytes:
    """The first bytes behind a download URL. A local-store URL points back at this service: it is
    checked and read here like the data route would, rather than over a loopback request to ourselves
    (which a port mapping or proxy in front of the service could make unreachable)."""
    if isinstance(store, LocalArtifactStore) and url.startswith(origin(request) + "/api/"):
        query = dict(parse_qsl(urlsplit(url).query))
        grant = store.signer.verify("GET", run.run_id, normalize(query.get("path", "")), query)
        file = await store.readable(run, grant)

        def read() -> bytes:
            with file.open("rb") as f:
                return f.read(TEXT_PREVIEW_BYTES + 1)

        return await asyncio.to_thread(read)
    headers = {"Range": f"bytes=0-{TEXT_PREVIEW_BYTES}"}
    async with (
        aiohttp.ClientSession(timeout=_FETCH_TIMEOUT) as session,
        session.get(url, headers=headers) as response,
    ):
        if response.status not in (200, 206):
            raise KisekiError(f"storage answered {response.status} {response.reason}")
        # read(n) returns what one chunk holds, maybe less than n: collect up to the limit (a storage
        # server that ignores Range must not make the preview read the whole file).
        head = bytearray()
        while len(head) <= TEXT_PREVIEW_BYTES:
            chunk = await response.content.read(TEXT_PREVIEW_BYTES + 1 - len(head))
            if not chunk:
                break
            head += chunk
        return bytes(head)


async def preview(request: web.Request, run: RunInfo, path: str) -> Preview:
    """A preview of the file at `path`: an image loads through the download route; text is read here."""
    kind = preview_kind(path, None) or "text"
    if kind == "image":
        return Preview(path, "image")
    try:
        url = await file_url(request, run, path)
        head = await _read_head(request, request.app[ARTIFACTS], run, url)
    except (KisekiError, aiohttp.ClientError, TimeoutError) as exc:
        message = exc.message if isinstance(exc, KisekiError) else f"storage did not answer: {exc}"
        return Preview(path, "text", error=message)
    truncated = len(head) > TEXT_PREVIEW_BYTES
    head = head[:TEXT_PREVIEW_BYTES]
    if b"\x00" in head[:8192]:
        return Preview(path, "text", error="a binary file: download it instead")
    return Preview(path, "text", text=head.decode("utf-8", errors="replace"), truncated=truncated)


async def listing(
    request: web.Request, run: RunInfo, folder: str, page_token: str | None, view: str | None
) -> Listing:
    """One level of the run's artifacts under `folder`, and the preview of `view` if one is asked for.
    Storage trouble (unreachable, a run outside the store's root, nothing at the path) becomes a
    message in the listing rather than a failed page."""
    try:
        folder = normalize(folder, allow_root=True)
        files = await request.app[ARTIFACTS].list_files(
            run, folder, max_results=LISTING_PAGE, page_token=page_token
        )
        shown = await preview(request, run, normalize(view)) if view else None
    except KisekiError as exc:
        return Listing(folder, crumbs(folder), [], None, None, error=exc.message)
    return Listing(folder, crumbs(folder), files.files, files.next_page_token, shown)
