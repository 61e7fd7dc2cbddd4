"""The local-folder store of the embedded default: the service itself serves signed upload/download URLs.

Layout under the root folder: each run's files at `<root>/<experiment_id>/<run_id>/artifacts/<path>`
(the run's artifact_uri), and unfinished uploads in `<root>/.kiseki-uploads/<run_id>/`, on the same
filesystem so that a finished file is renamed into place, never seen half-written. Bodies are streamed
to and from disk; no file is ever held in memory whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import AsyncIterable, Iterator
from pathlib import Path, PurePosixPath

import orjson

from kiseki.models import ArtifactPurge, CompletedPart, FileInfo, RunInfo, UploadPart
from kiseki_server.artifacts.paths import is_inside, parse_file_uri
from kiseki_server.artifacts.signing import Grant, UrlSigner
from kiseki_server.artifacts.store import ArtifactStore, PartLayout, RunArtifacts
from kiseki_server.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from kiseki_server.pagination import decode_token, encode_token

STAGING = ".kiseki-uploads"
_WRITE_BUFFER = 1024 * 1024
_COPY_BUFFER = 8 * 1024 * 1024
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_ETAG = re.compile(r'"?([0-9a-f]{32})"?')


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

    @property
    def description(self) -> str:
        return f"local artifact storage at {self.root}"

    # --- where things are -----------------------------------------------------------------------------

    def _folder(self, artifact_uri: str) -> str | None:
        try:
            folder = parse_file_uri(artifact_uri)
        except ValueError:
            return None
        root = PurePosixPath(self.root)
        if not folder.is_relative_to(root) or folder == root:
            return None
        relative = folder.relative_to(root)
        return None if relative.parts[0] == STAGING else relative.as_posix()

    def _path(self, run: RunArtifacts, path: str) -> Path:
        """The file or folder of normalised artifact `path` ('' is the run's folder)."""
        folder = self.root / run.folder
        return folder / path if path else folder

    def _staging(self, run: RunArtifacts) -> Path:
        return self.root / STAGING / run.run_id

    def _upload_dir(self, run: RunArtifacts, path: str, upload_id: str) -> tuple[Path, PartLayout]:
        """An unfinished multipart upload of `path`: its folder and part layout (404 if there is none)."""
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise InvalidInput(
                f"upload_id {upload_id[:100]!r} is not an id this service issued", field="upload_id"
            )
        missing = NotFound(f"no unfinished multipart upload {upload_id!r} of '{path}'", field="upload_id")
        folder = self._staging(run) / upload_id
        try:
            manifest = orjson.loads((folder / "manifest.json").read_bytes())
        except FileNotFoundError:
            raise missing from None
        if manifest["path"] != path:
            raise missing
        return folder, PartLayout(size=manifest["size"], part_size=manifest["part_size"])

    @contextlib.contextmanager
    def _storage(self) -> Iterator[None]:
        """Storage faults (missing root, full disk, I/O errors) as a 503 naming the storage."""
        if not self.root.is_dir():
            raise ServiceUnavailable(f"{self.description} is unavailable: the folder is missing")
        try:
            yield
        except OSError as exc:
            raise ServiceUnavailable(f"{self.description} failed: {exc.strerror or exc}") from exc

    async def ping(self) -> None:
        """The root folder exists and this process may write to it (checked in a thread: it may be NFS)."""
        usable = await asyncio.to_thread(
            lambda: self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)
        )
        if not usable:
            raise ServiceUnavailable(f"{self.description} is unavailable: the folder is missing or read-only")

    def _check_writable(self, run: RunArtifacts, path: str) -> None:
        """409 early, when a file of the run sits where `path` needs a folder or the other way round."""
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
        with self._storage():
            self._check_writable(run, path)
        return self.signer.url(origin, Grant("PUT", run.run_id, path, expires, size=size))

    async def _start_multipart(self, run: RunArtifacts, path: str, layout: PartLayout) -> str:
        upload_id = secrets.token_hex(16)
        with self._storage():
            self._check_writable(run, path)
            folder = self._staging(run) / upload_id
            folder.mkdir(parents=True)
            manifest = {"path": path, "size": layout.size, "part_size": layout.part_size}
            (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
        return upload_id

    async def _part_urls(
        self, run: RunArtifacts, path: str, upload_id: str, numbers: list[int], expires: int, origin: str
    ) -> list[UploadPart]:
        with self._storage():
            _, layout = self._upload_dir(run, path, upload_id)
        parts = []
        for i, number in enumerate(numbers):
            if number > layout.count:
                raise InvalidInput(
                    f"part_numbers.{i}: the upload has {layout.count} parts, not {number}",
                    field=f"part_numbers.{i}",
                )
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
        self, run: RunArtifacts, path: str, upload_id: str, parts: list[CompletedPart]
    ) -> FileInfo:
        with self._storage():
            folder, layout = self._upload_dir(run, path, upload_id)
            if len(parts) != layout.count:
                raise InvalidInput(
                    f"the upload has {layout.count} parts but parts lists {len(parts)}", field="parts"
                )
            files = []
            for i, part in enumerate(parts):
                match = _ETAG.fullmatch(part.etag)
                file = folder / f"part-{part.part_number:05d}.{match[1]}" if match else None
                if file is None or not file.is_file():
                    raise InvalidInput(
                        f"part {part.part_number} was never uploaded with ETag {part.etag}",
                        field=f"parts.{i}.etag",
                    )
                files.append(file)
            assembled = folder / "assembled"
            await asyncio.to_thread(_concatenate, files, assembled)
            await asyncio.to_thread(self._place, run, assembled, path)
            await asyncio.to_thread(shutil.rmtree, folder, True)
        return FileInfo(path=path, is_dir=False, file_size=layout.size)

    async def _abort(self, run: RunArtifacts, path: str, upload_id: str) -> None:
        with self._storage():
            folder, _ = self._upload_dir(run, path, upload_id)
            await asyncio.to_thread(shutil.rmtree, folder)

    async def _stat(self, run: RunArtifacts, path: str) -> FileInfo | None:
        with self._storage():
            try:
                found = self._path(run, path).stat()
            except (FileNotFoundError, NotADirectoryError):
                return None
        if stat.S_ISDIR(found.st_mode):
            return FileInfo(path=path, is_dir=True)
        return FileInfo(path=path, is_dir=False, file_size=found.st_size)

    async def _list(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None
    ) -> tuple[list[FileInfo], str | None]:
        after = decode_token(page_token, str)[0] if page_token else ""
        with self._storage():
            entries = await asyncio.to_thread(_scan, self._path(run, path), path)
        page = [e for e in entries if e.path > after][: max_results + 1]
        more = len(page) > max_results
        page = page[:max_results]
        return page, encode_token(page[-1].path) if more else None

    async def _walk(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None
    ) -> tuple[list[FileInfo], str | None]:
        after = decode_token(page_token, str)[0] if page_token else ""
        with self._storage():
            files = await asyncio.to_thread(_walk, self._path(run, ""), path)
        page = [f for f in files if f.path > after][: max_results + 1]
        more = len(page) > max_results
        page = page[:max_results]
        return page, encode_token(page[-1].path) if more else None

    async def _download_url(self, run: RunArtifacts, path: str, expires: int, origin: str) -> str:
        return self.signer.url(origin, Grant("GET", run.run_id, path, expires))

    async def _purge(self, run: RunArtifacts) -> ArtifactPurge:
        with self._storage():
            files = await asyncio.to_thread(_walk, self._path(run, ""), "")
            uploads = await asyncio.to_thread(_subfolders, self._staging(run))
            for folder in (self._path(run, ""), self._staging(run)):
                await asyncio.to_thread(shutil.rmtree, folder, True)
        return ArtifactPurge(deleted_files=len(files), aborted_uploads=uploads)

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
        with self._storage():
            if grant.upload_id is not None:
                folder, _ = self._upload_dir(where, grant.path, grant.upload_id)
            else:
                folder = self._staging(where)
                folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"incoming-{secrets.token_hex(8)}"
            try:
                written = await _spool(body, tmp, limit=grant.size)
                if written != grant.size:
                    raise InvalidInput(f"the body had {written} bytes; this URL takes exactly {grant.size}")
                if grant.part_number is None:
                    await asyncio.to_thread(self._place, where, tmp, grant.path)
                    return None
                etag = secrets.token_hex(16)
                prefix = f"part-{grant.part_number:05d}."
                for older in folder.glob(prefix + "*"):
                    older.unlink(missing_ok=True)
                os.replace(tmp, folder / (prefix + etag))
                return f'"{etag}"'
            finally:
                tmp.unlink(missing_ok=True)

    def readable(self, run: RunInfo, grant: Grant) -> Path:
        """The file a signed GET asks for (404 when it is not there)."""
        with self._storage():
            file = self._path(self.locate(run), grant.path)
            if not file.is_file():
                raise NotFound(f"run {run.run_id} has no file at '{grant.path}'", field="path")
        return file

    def _place(self, run: RunArtifacts, source: Path, path: str) -> None:
        """Rename a finished file into place (same filesystem: atomic)."""
        target = self._path(run, path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            self._check_writable(run, path)
            raise


async def _spool(body: AsyncIterable[bytes], target: Path, *, limit: int) -> int:
    """Write `body` to `target` in ~1 MiB writes off the event loop; its length (over `limit` is a 400)."""
    written = 0
    buffer = bytearray()
    file = await asyncio.to_thread(open, target, "xb")
    try:
        async for chunk in body:
            written += len(chunk)
            if written > limit:
                raise InvalidInput(f"the body has more than the {limit} bytes this URL takes")
            buffer += chunk
            if len(buffer) >= _WRITE_BUFFER:
                await asyncio.to_thread(file.write, buffer)
                buffer = bytearray()
        if buffer:
            await asyncio.to_thread(file.write, buffer)
    finally:
        await asyncio.to_thread(file.close)
    return written


def _concatenate(parts: list[Path], target: Path) -> None:
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, _COPY_BUFFER)


def _scan(folder: Path, prefix: str) -> list[FileInfo]:
    """The entries of `folder` as FileInfo with paths under `prefix`; none when it is not a folder."""
    try:
        with os.scandir(folder) as entries:
            found = []
            for entry in entries:
                path = f"{prefix}/{entry.name}" if prefix else entry.name
                if entry.is_dir(follow_symlinks=False):
                    found.append(FileInfo(path=path, is_dir=True))
                elif entry.is_file(follow_symlinks=False):
                    found.append(FileInfo(path=path, is_dir=False, file_size=entry.stat().st_size))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found, key=lambda f: f.path)


def _walk(run_folder: Path, folder: str) -> list[FileInfo]:
    """Every regular file under `folder` of a run, recursively, ordered by path."""
    found = []
    for dirpath, _, names in os.walk(run_folder / folder if folder else run_folder):
        relative = Path(dirpath).relative_to(run_folder).as_posix()
        for name in names:
            path = name if relative == "." else f"{relative}/{name}"
            info = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and is_inside(path, folder):
                found.append(FileInfo(path=path, is_dir=False, file_size=info.st_size))
    return sorted(found, key=lambda f: f.path)


def _subfolders(folder: Path) -> int:
    try:
        return sum(1 for entry in os.scandir(folder) if entry.is_dir())
    except FileNotFoundError:
        return 0
