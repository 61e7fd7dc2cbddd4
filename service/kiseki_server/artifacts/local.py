"""The local-folder store of the embedded default: the service itself serves signed upload/download URLs.

Layout under the root folder: each run's files at `<root>/<experiment_id>/<run_id>/artifacts/<path>`
(the run's artifact_uri), and unfinished uploads in `<root>/.kiseki-uploads/<run_id>/`, on the same
filesystem so that a finished file is renamed into place, never seen half-written. Bodies are streamed
to and from disk; no file is ever held in memory whole.

Every filesystem call runs in a worker thread, never on the event loop (a slow or network filesystem must
not stall the service); long jobs (purges, aborts, assembling multipart files) also take one of
`_BULK_JOBS` slots, so they cannot occupy every thread that quick requests need. A page of a listing
reads its folders once and stats only the entries on the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

import orjson

from kiseki.models import ArtifactPurge, CompletedPart, FileInfo, RunInfo, UploadPart
from kiseki_server.artifacts.paths import STAGING, location_under, parse_file_uri
from kiseki_server.artifacts.signing import Grant, UrlSigner
from kiseki_server.artifacts.store import ArtifactStore, PartLayout, RunArtifacts
from kiseki_server.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from kiseki_server.pagination import decode_token, encode_token

_WRITE_BUFFER = 1024 * 1024
_COPY_BUFFER = 8 * 1024 * 1024
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_ETAG = re.compile(r'"?([0-9a-f]{32})"?')
_BULK_JOBS = 2
"""Long filesystem jobs at a time per store; the default thread pool has only cpu_count + 4 threads."""

P = ParamSpec("P")
T = TypeVar("T")


class LocalArtifactStore(ArtifactStore):
    def __init__(
        self,
        *,
        root_uri: str,
        signer: UrlSigner,
        url_expiry_seconds: int,
        multipart_threshold: int,
        part_size: int,
    ) -> None:
        super().__init__(
            root_uri=root_uri,
            url_expiry_seconds=url_expiry_seconds,
            multipart_threshold=multipart_threshold,
            part_size=part_size,
        )
        self.root = Path(parse_file_uri(root_uri))
        self.signer = signer
        self._bulk = asyncio.Semaphore(_BULK_JOBS)

    @property
    def description(self) -> str:
        return f"local artifact storage at {self.root}"

    # --- off the event loop ---------------------------------------------------------------------------

    def _guarded(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work` with storage faults (missing root, full disk, I/O errors) as a 503 naming the storage."""
        if not self.root.is_dir():
            raise ServiceUnavailable(f"{self.description} is unavailable: the folder is missing")
        try:
            return work(*args, **kwargs)
        except OSError as exc:
            raise ServiceUnavailable(f"{self.description} failed: {exc.strerror or exc}") from exc

    async def _fs(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run filesystem work in a worker thread (guarded as above)."""
        return await asyncio.to_thread(self._guarded, work, *args, **kwargs)  # type: ignore[arg-type]

    async def _fs_bulk(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like `_fs`, for work that may take long: at most `_BULK_JOBS` of these run at once."""
        async with self._bulk:
            return await self._fs(work, *args, **kwargs)

    async def ping(self) -> None:
        """The root folder exists and this process may write to it (checked in a thread: it may be NFS)."""
        usable = await asyncio.to_thread(
            lambda: self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)
        )
        if not usable:
            raise ServiceUnavailable(f"{self.description} is unavailable: the folder is missing or read-only")

    # --- where things are -----------------------------------------------------------------------------

    def _folder(self, artifact_uri: str) -> str | None:
        below = location_under(artifact_uri, self.root_uri)
        if not below or below[0] == STAGING:
            return None
        return "/".join(below)

    def _path(self, run: RunArtifacts, path: str) -> Path:
        """The file or folder of normalised artifact `path` ('' is the run's folder)."""
        folder = self.root / run.folder
        return folder / path if path else folder

    def _staging(self, run: RunArtifacts) -> Path:
        return self.root / STAGING / run.run_id

    def _upload_folder(self, run: RunArtifacts, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise InvalidInput(
                f"upload_id {upload_id[:100]!r} is not an id this service issued", field="upload_id"
            )
        return self._staging(run) / upload_id

    def _read_layout(self, run: RunArtifacts, path: str, upload_id: str) -> PartLayout:
        """(In a thread.) The layout of an unfinished multipart upload of `path`; 404 if there is none."""
        missing = NotFound(f"no unfinished multipart upload {upload_id!r} of '{path}'", field="upload_id")
        try:
            manifest = orjson.loads((self._upload_folder(run, upload_id) / "manifest.json").read_bytes())
        except FileNotFoundError:
            raise missing from None
        if manifest["path"] != path:
            raise missing
        return PartLayout(size=manifest["size"], part_size=manifest["part_size"])

    def _check_writable(self, run: RunArtifacts, path: str) -> None:
        """(In a thread.) 409 early, when a file of the run sits where `path` needs a folder or the other
        way round."""
        target = self._path(run, path)
        if target.is_dir():
            raise Conflict(f"'{path}' is a folder of run {run.run_id}; it can't become a file", field="path")
        parts = path.split("/")
        for i in range(1, len(parts)):
            ancestor = self._path(run, "/".join(parts[:i]))
            if ancestor.exists() and not ancestor.is_dir():
                raise Conflict(
                    f"'{ancestor.relative_to(self._path(run, ''))}' is a file of run {run.run_id}; it "
                    f"can't hold '{path}'",
                    field="path",
                )

    # --- primitives -----------------------------------------------------------------------------------

    async def _upload_url(self, run: RunArtifacts, path: str, size: int, expires: int, origin: str) -> str:
        await self._fs(self._check_writable, run, path)
        return self.signer.url(origin, Grant("PUT", run.run_id, path, expires, size=size))

    async def _start_multipart(self, run: RunArtifacts, path: str, layout: PartLayout) -> str:
        upload_id = secrets.token_hex(16)
        manifest = orjson.dumps({"path": path, "size": layout.size, "part_size": layout.part_size})

        def start() -> None:
            self._check_writable(run, path)
            folder = self._upload_folder(run, upload_id)
            folder.mkdir(parents=True)
            (folder / "manifest.json").write_bytes(manifest)

        await self._fs(start)
        return upload_id

    async def _upload_layout(self, run: RunArtifacts, path: str, upload_id: str) -> PartLayout:
        self._upload_folder(run, upload_id)  # a malformed id is a 400 before any filesystem call
        return await self._fs(self._read_layout, run, path, upload_id)

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
        parts = []
        for number in numbers:
            grant = Grant(
                "PUT",
                run.run_id,
                path,
                expires,
                size=layout.part_bytes(number),
                upload_id=upload_id,
                part_number=number,
            )
            parts.append(UploadPart(part_number=number, url=self.signer.url(origin, grant)))
        return parts

    async def _complete(
        self, run: RunArtifacts, path: str, upload_id: str, layout: PartLayout, parts: list[CompletedPart]
    ) -> FileInfo:
        def complete() -> None:
            folder = self._upload_folder(run, upload_id)
            self._read_layout(run, path, upload_id)  # still there: not completed or aborted meanwhile
            files = []
            for i, part in enumerate(parts):
                match = _ETAG.fullmatch(part.etag)
                file = folder / _part_name(part.part_number) / match[1] if match else None
                if file is None or not file.is_file():
                    raise InvalidInput(
                        f"part {part.part_number} was never uploaded with ETag {part.etag}",
                        field=f"parts.{i}.etag",
                    )
                files.append(file)
            assembled = folder / "assembled"
            _concatenate(files, assembled)
            self._place(run, assembled, path)
            shutil.rmtree(folder, ignore_errors=True)

        await self._fs_bulk(complete)
        return FileInfo(path=path, is_dir=False, file_size=layout.size)

    async def _abort(self, run: RunArtifacts, path: str, upload_id: str) -> None:
        def abort() -> None:
            self._read_layout(run, path, upload_id)
            shutil.rmtree(self._upload_folder(run, upload_id))

        await self._fs_bulk(abort)

    async def _stat(self, run: RunArtifacts, path: str) -> FileInfo | None:
        return await self._fs(_stat, self._path(run, path), path)

    async def _list(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None
    ) -> tuple[list[FileInfo], str | None]:
        after = decode_token(page_token, str)[0] if page_token else ""
        page = await self._fs(_scan_page, self._path(run, path), path, after, max_results + 1)
        more = len(page) > max_results
        page = page[:max_results]
        return [entry for _, entry in page], encode_token(page[-1][0]) if more else None

    async def _walk(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None
    ) -> tuple[list[FileInfo], str | None]:
        after = decode_token(page_token, str)[0] if page_token else ""
        page = await self._fs(_walk_page, self._path(run, path), path, after, max_results + 1)
        more = len(page) > max_results
        page = page[:max_results]
        return page, encode_token(page[-1].path) if more else None

    async def _download_url(self, run: RunArtifacts, path: str, expires: int, origin: str) -> str:
        return self.signer.url(origin, Grant("GET", run.run_id, path, expires))

    async def _purge(self, run: RunArtifacts) -> ArtifactPurge:
        def purge() -> ArtifactPurge:
            files = _count_files(self._path(run, ""))
            uploads = _subfolders(self._staging(run))
            for folder in (self._path(run, ""), self._staging(run)):
                shutil.rmtree(folder, ignore_errors=True)
            return ArtifactPurge(deleted_files=files, aborted_uploads=uploads)

        return await self._fs_bulk(purge)

    # --- bytes, for the signed URLs -------------------------------------------------------------------

    async def receive(
        self, run: RunInfo, grant: Grant, body: AsyncIterable[bytes], content_length: int | None
    ) -> str | None:
        """Store the body a signed PUT carries; the part's ETag for a part, else None."""
        assert grant.size is not None
        if content_length is not None and content_length != grant.size:
            raise InvalidInput(
                f"Content-Length is {content_length} but this URL takes exactly {grant.size} bytes"
            )
        where = self.locate(run)
        if grant.upload_id is not None:
            self._upload_folder(where, grant.upload_id)

        def open_incoming() -> tuple[Path, BinaryIO]:
            if grant.upload_id is not None:
                self._read_layout(where, grant.path, grant.upload_id)
                folder = self._upload_folder(where, grant.upload_id)
            else:
                folder = self._staging(where)
                folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"incoming-{secrets.token_hex(8)}"
            return tmp, tmp.open("xb")

        def store(tmp: Path) -> str | None:
            if grant.part_number is None:
                self._place(where, tmp, grant.path)
                return None
            assert grant.upload_id is not None
            etag = secrets.token_hex(16)
            versions = self._upload_folder(where, grant.upload_id) / _part_name(grant.part_number)
            versions.mkdir(exist_ok=True)
            with os.scandir(versions) as older:  # an earlier upload of this part: at most a few
                for entry in older:
                    os.unlink(entry.path)
            os.replace(tmp, versions / etag)
            return f'"{etag}"'

        tmp, file = await self._fs(open_incoming)
        try:
            written = await _spool(body, lambda data: self._fs(file.write, data), limit=grant.size)
            await self._fs(file.close)
            if written != grant.size:
                raise InvalidInput(f"the body had {written} bytes; this URL takes exactly {grant.size}")
            return await self._fs(store, tmp)
        finally:
            await asyncio.to_thread(_discard, file, tmp)

    async def readable(self, run: RunInfo, grant: Grant) -> Path:
        """The file a signed GET asks for (404 when it is not there)."""
        file = self._path(self.locate(run), grant.path)
        if not await self._fs(file.is_file):
            raise NotFound(f"run {run.run_id} has no file at '{grant.path}'", field="path")
        return file

    def _place(self, run: RunArtifacts, source: Path, path: str) -> None:
        """(In a thread.) Rename a finished file into place (same filesystem: atomic)."""
        target = self._path(run, path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            self._check_writable(run, path)
            raise


def _part_name(number: int) -> str:
    """The folder holding part `number` of an upload: one file, named by the ETag of its latest upload."""
    return f"part-{number:05d}"


async def _spool(
    body: AsyncIterable[bytes], write: Callable[[bytes], Awaitable[object]], *, limit: int
) -> int:
    """Pass `body` to `write` in ~1 MiB pieces; its length (over `limit` is a 400)."""
    written = 0
    buffer = bytearray()
    async for chunk in body:
        written += len(chunk)
        if written > limit:
            raise InvalidInput(f"the body has more than the {limit} bytes this URL takes")
        buffer += chunk
        if len(buffer) >= _WRITE_BUFFER:
            await write(bytes(buffer))
            buffer = bytearray()
    if buffer:
        await write(bytes(buffer))
    return written


def _discard(file: BinaryIO, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        file.close()
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _concatenate(parts: list[Path], target: Path) -> None:
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, _COPY_BUFFER)


def _stat(target: Path, path: str) -> FileInfo | None:
    try:
        found = target.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISDIR(found.st_mode):
        return FileInfo(path=path, is_dir=True)
    return FileInfo(path=path, is_dir=False, file_size=found.st_size)


def _entries(folder: Path) -> list[tuple[str, os.DirEntry[str]]]:
    """(sort key, entry) of the files and folders in `folder`, in path order: a folder sorts as
    'name/', which puts everything under it exactly where its paths fall among its siblings'."""
    try:
        with os.scandir(folder) as it:
            found = []
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    found.append((entry.name + "/", entry))
                elif entry.is_file(follow_symlinks=False):
                    found.append((entry.name, entry))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort(key=lambda e: e[0])
    return found


def _scan_page(folder: Path, prefix: str, after: str, limit: int) -> list[tuple[str, FileInfo]]:
    """Up to `limit` (sort key, entry) of `folder` whose keys (paths under `prefix`, a folder's with a
    trailing '/', which is S3's key order) sort after `after`. Only those entries are stat'ed, so a page
    of a huge folder costs one directory read, not a stat per file."""
    page: list[tuple[str, FileInfo]] = []
    for key, entry in _entries(folder):
        key = f"{prefix}/{key}" if prefix else key
        if key <= after:
            continue
        if len(page) == limit:
            break
        if key.endswith("/"):
            page.append((key, FileInfo(path=key[:-1], is_dir=True)))
        else:
            size = entry.stat(follow_symlinks=False).st_size
            page.append((key, FileInfo(path=key, is_dir=False, file_size=size)))
    return page


def _walk_page(top: Path, prefix: str, after: str, limit: int) -> list[FileInfo]:
    """Up to `limit` regular files under `top` (paths under `prefix`) sorting after `after`, in path order.
    Folders whose whole subtree sorts before `after` are skipped unread, and the walk stops once the page
    is full, so paging through a big tree reads each folder about once rather than the tree per page."""
    page: list[FileInfo] = []

    def visit(folder: Path, relative: str) -> bool:
        for key, entry in _entries(folder):
            path = f"{relative}/{key}" if relative else key
            if path.endswith("/"):
                if after >= path and not after.startswith(path):
                    continue
                if not visit(Path(entry.path), path[:-1]):
                    return False
            elif path > after:
                page.append(
                    FileInfo(path=path, is_dir=False, file_size=entry.stat(follow_symlinks=False).st_size)
                )
                if len(page) == limit:
                    return False
        return True

    visit(top, prefix)
    return page


def _count_files(top: Path) -> int:
    """Regular files under `top` (no stat calls: the directory entries' types suffice)."""
    count = 0
    folders = [top]
    while folders:
        for _, entry in _entries(folders.pop()):
            if entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            else:
                count += 1
    return count


def _subfolders(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for entry in entries if entry.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return 0
