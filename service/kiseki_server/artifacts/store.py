"""What every artifact store does, whatever holds the bytes.

The base class validates requests (paths, part lists), picks single or multipart uploads and decides
what is a 404 or a 400, so both stores answer the same way; the S3 and local stores implement the
primitives underneath. Stores return the wire models from `kiseki.models`.
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kiseki.models import (
    MAX_PARTS,
    ArtifactDownload,
    ArtifactList,
    ArtifactPurge,
    ArtifactUpload,
    CompletedPart,
    DownloadList,
    FileInfo,
    MultipartAbort,
    MultipartAborted,
    MultipartComplete,
    MultipartUpload,
    PartUrls,
    PartUrlsRequest,
    RunInfo,
    UploadFile,
    UploadPart,
    UploadPlan,
)
from kiseki_server.artifacts.paths import normalize
from kiseki_server.errors import Conflict, InvalidInput, NotFound

FIRST_PART_URLS = 100
"""Part URLs handed out with a new multipart upload; the rest come from the parts endpoint."""
PLAN_PART_URLS = 1000
"""Part URLs one upload plan hands out in all (more only if it has more multipart files: each gets at
least one). Signing is CPU work on the event loop (~0.2 ms per S3 URL), and 1,000 huge files of 100
parts each would hold it for half a minute."""
_CONCURRENCY = 16
"""Storage calls one request may have in flight (e.g. starting the multipart uploads of a batch)."""
MiB = 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunArtifacts:
    """A run's artifact folder as a store sees it: `folder` is relative to the artifact root."""

    run_id: str
    folder: str
    uri: str


@dataclass(frozen=True, slots=True)
class PartLayout:
    """How a file of `size` bytes splits into parts: all `part_size` bytes except the last."""

    size: int
    part_size: int

    @property
    def count(self) -> int:
        return max(1, math.ceil(self.size / self.part_size))

    def part_bytes(self, number: int) -> int:
        return min(self.part_size, self.size - (number - 1) * self.part_size)


async def gather_bounded(calls: Iterable[Awaitable[T]], limit: int = _CONCURRENCY) -> list[T]:
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with semaphore:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


class ArtifactStore(ABC):
    def __init__(
        self, *, root_uri: str, url_expiry_seconds: int, multipart_threshold: int, part_size: int
    ) -> None:
        self.root_uri = root_uri.rstrip("/")
        self._expiry = url_expiry_seconds
        self._threshold = multipart_threshold
        self._part_size = part_size

    @property
    @abstractmethod
    def description(self) -> str:
        """What and where the storage is, for error messages: 'S3 storage at http://…'."""

    @abstractmethod
    async def ping(self) -> None:
        """Return when the storage answers and can be used; raise ServiceUnavailable saying why not.

        Cheap enough for a readiness probe every few seconds: one request to storage at most.
        """

    # --- primitives ---------------------------------------------------------------------------------

    @abstractmethod
    def _folder(self, artifact_uri: str) -> str | None:
        """The run folder relative to the root, or None when `artifact_uri` is not under this root."""

    @abstractmethod
    async def _upload_url(
        self, run: RunArtifacts, path: str, size: int, expires: int, origin: str
    ) -> str: ...

    @abstractmethod
    async def _start_multipart(self, run: RunArtifacts, path: str, layout: PartLayout) -> str:
        """A new upload id."""

    @abstractmethod
    async def _upload_layout(self, run: RunArtifacts, path: str, upload_id: str) -> PartLayout:
        """The layout an unfinished multipart upload of `path` was planned with; NotFound if none."""

    @abstractmethod
    async def _part_urls(
        self,
        run: RunArtifacts,
        path: str,
        upload_id: str,
        layout: PartLayout,
        numbers: list[int],
        expires: int,
        origin: str,
    ) -> list[UploadPart]:
        """Signed URLs for parts `numbers` (all within the layout), each taking exactly its part's bytes."""

    @abstractmethod
    async def _complete(
        self, run: RunArtifacts, path: str, upload_id: str, layout: PartLayout, parts: list[CompletedPart]
    ) -> FileInfo:
        """Assemble the file from `parts` (one per part of `layout`, in order); a 400 when stored parts
        don't match the layout."""

    @abstractmethod
    async def _abort(self, run: RunArtifacts, path: str, upload_id: str) -> None: ...

    @abstractmethod
    async def _stat(self, run: RunArtifacts, path: str) -> FileInfo | None:
        """The file at `path`, a folder entry when only a folder is there, or None."""

    @abstractmethod
    async def _list(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None
    ) -> tuple[list[FileInfo], str | None]:
        """One level under folder `path`, ordered by path, and the next page's token."""

    @abstractmethod
    async def _walk(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None
    ) -> tuple[list[FileInfo], str | None]:
        """Every file under folder `path`, recursively, ordered by path, and the next page's token."""

    @abstractmethod
    async def _download_url(self, run: RunArtifacts, path: str, expires: int, origin: str) -> str: ...

    @abstractmethod
    async def _purge(self, run: RunArtifacts) -> ArtifactPurge: ...

    # --- the API ------------------------------------------------------------------------------------

    def locate(self, run: RunInfo) -> RunArtifacts:
        folder = self._folder(run.artifact_uri)
        if folder is None:
            raise Conflict(
                f"run {run.run_id} keeps its artifacts at '{run.artifact_uri}', outside this service's "
                f"artifact root '{self.root_uri}', which is the only place it serves",
                field="run_id",
            )
        return RunArtifacts(run_id=run.run_id, folder=folder, uri=run.artifact_uri)

    def layout(self, size: int) -> PartLayout | None:
        """None when `size` goes up in one PUT; else parts of at least the configured size, ≤ 10,000."""
        if size <= self._threshold:
            return None
        part_size = max(self._part_size, math.ceil(size / MAX_PARTS / MiB) * MiB)
        return PartLayout(size=size, part_size=part_size)

    def _expires(self) -> int:
        """Epoch second when URLs signed now stop working."""
        return int(time.time()) + self._expiry

    async def plan_uploads(self, run: RunInfo, files: list[UploadFile], *, origin: str) -> UploadPlan:
        where = self.locate(run)
        paths: dict[str, int] = {}
        for i, file in enumerate(files):
            path = normalize(file.path, field=f"files.{i}.path")
            if path in paths:
                raise InvalidInput(
                    f"files.{i}.path: '{path}' is also files.{paths[path]}.path", field=f"files.{i}.path"
                )
            paths[path] = i
        expires = self._expires()
        multipart = [(path, layout) for path, i in paths.items() if (layout := self.layout(files[i].size))]
        budget = PLAN_PART_URLS
        first_parts: dict[str, int] = {}
        for k, (path, layout) in enumerate(multipart):
            later = len(multipart) - k - 1  # each later file keeps at least one URL
            first_parts[path] = max(1, min(layout.count, FIRST_PART_URLS, budget - later))
            budget -= first_parts[path]

        async def plan(path: str, size: int) -> ArtifactUpload:
            layout = self.layout(size)
            if layout is None:
                url = await self._upload_url(where, path, size, expires, origin)
                return ArtifactUpload(path=path, size=size, url=url, expires_at=expires * 1000)
            upload_id = await self._start_multipart(where, path, layout)
            numbers = list(range(1, first_parts[path] + 1))
            parts = await self._part_urls(where, path, upload_id, layout, numbers, expires, origin)
            multipart = MultipartUpload(
                upload_id=upload_id, part_size=layout.part_size, part_count=layout.count, parts=parts
            )
            return ArtifactUpload(path=path, size=size, multipart=multipart, expires_at=expires * 1000)

        uploads = await gather_bounded(plan(path, files[i].size) for path, i in paths.items())
        return UploadPlan(uploads=uploads)

    async def part_urls(self, run: RunInfo, body: PartUrlsRequest, *, origin: str) -> PartUrls:
        where = self.locate(run)
        path = normalize(body.path)
        layout = await self._upload_layout(where, path, body.upload_id)
        for i, number in enumerate(body.part_numbers):
            if number > layout.count:
                raise InvalidInput(
                    f"part_numbers.{i}: the upload has {layout.count} parts, not {number}",
                    field=f"part_numbers.{i}",
                )
        expires = self._expires()
        parts = await self._part_urls(where, path, body.upload_id, layout, body.part_numbers, expires, origin)
        return PartUrls(parts=parts, expires_at=expires * 1000)

    async def complete_multipart(self, run: RunInfo, body: MultipartComplete) -> FileInfo:
        where = self.locate(run)
        path = normalize(body.path)
        for i, part in enumerate(body.parts):
            if part.part_number != i + 1:
                raise InvalidInput(
                    f"parts must list part numbers 1, 2, 3, … in order; parts.{i} is number "
                    f"{part.part_number}, expected {i + 1}",
                    field=f"parts.{i}.part_number",
                )
        layout = await self._upload_layout(where, path, body.upload_id)
        if len(body.parts) != layout.count:
            raise InvalidInput(
                f"the upload of {layout.size} bytes has {layout.count} parts but parts lists "
                f"{len(body.parts)}",
                field="parts",
            )
        return await self._complete(where, path, body.upload_id, layout, body.parts)

    async def abort_multipart(self, run: RunInfo, body: MultipartAbort) -> MultipartAborted:
        path = normalize(body.path)
        await self._abort(self.locate(run), path, body.upload_id)
        return MultipartAborted(path=path, upload_id=body.upload_id)

    async def list_files(
        self, run: RunInfo, path: str | None, *, max_results: int, page_token: str | None
    ) -> ArtifactList:
        where = self.locate(run)
        folder = normalize(path or "", allow_root=True)
        files, token = await self._list(where, folder, max_results, page_token)
        if not files and folder and page_token is None:
            found = await self._stat(where, folder)
            if found is None:
                raise NotFound(f"run {run.run_id} has no artifact at '{folder}'", field="path")
            if not found.is_dir:
                raise InvalidInput(f"'{folder}' is a file, not a folder: download it instead", field="path")
        return ArtifactList(root_uri=run.artifact_uri, files=files, next_page_token=token)

    async def download_urls(
        self, run: RunInfo, path: str | None, *, max_results: int, page_token: str | None, origin: str
    ) -> DownloadList:
        where = self.locate(run)
        target = normalize(path or "", allow_root=True)
        expires = self._expires()
        files: list[FileInfo] = []
        token = None
        if target and page_token is None:
            found = await self._stat(where, target)
            if found is None:
                raise NotFound(f"run {run.run_id} has no artifact at '{target}'", field="path")
            if not found.is_dir:
                files = [found]
        if not files:
            files, token = await self._walk(where, target, max_results, page_token)
        urls = await gather_bounded(self._download_url(where, f.path, expires, origin) for f in files)
        downloads = [
            ArtifactDownload(path=f.path, file_size=f.file_size or 0, url=url)
            for f, url in zip(files, urls, strict=True)
        ]
        return DownloadList(files=downloads, expires_at=expires * 1000, next_page_token=token)

    async def purge(self, run: RunInfo) -> ArtifactPurge:
        return await self._purge(self.locate(run))

    async def purge_many(self, runs: Sequence[RunInfo]) -> ArtifactPurge:
        """Purge several runs (an experiment's): all of them or, if any lies outside the root, none."""
        where = [self.locate(run) for run in runs]
        done = await gather_bounded(self._purge(run) for run in where)
        return ArtifactPurge(
            deleted_files=sum(d.deleted_files for d in done),
            aborted_uploads=sum(d.aborted_uploads for d in done),
        )
