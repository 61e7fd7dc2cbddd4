"""Artifact transfers: bytes go straight between this machine and storage through presigned URLs.

Uploads ask the service for a plan (one PUT URL per file, or a multipart upload for big files), then send
files and parts in parallel with an exact Content-Length; a failed multipart upload is aborted so no
orphan parts are left. Downloads stream each file to a temporary name beside its target and rename it
when complete, so an interrupted download never leaves a truncated file behind. A download never writes
outside its destination: if the server lists a path that would land elsewhere once resolved (`..`, an
absolute path, a symlink out of the folder), the whole download is refused before any byte is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp

from kiseki._http import Transport, dumps
from kiseki.errors import KisekiError, NotFound, ServerUnavailable, UnsafeArtifactPath
from kiseki.models import (
    ArtifactList,
    ArtifactUpload,
    DownloadList,
    FileInfo,
    MultipartUpload,
    PartUrls,
    UploadPlan,
)

_PLAN_CHUNK = 1000  # files per upload-plan request (the service's limit)
_CHUNK = 1 << 20


def artifact_files(local_dir: Path, artifact_path: str | None) -> Iterator[tuple[Path, str]]:
    """(local file, artifact path) for every file under `local_dir`, in a stable order."""
    prefix = PurePosixPath(artifact_path) if artifact_path else PurePosixPath()
    for root, dirs, files in os.walk(local_dir):
        dirs.sort()
        for name in sorted(files):
            local = Path(root) / name
            yield local, str(prefix / local.relative_to(local_dir).as_posix())


class _Progress:
    """A tqdm byte counter when stderr is a terminal and tqdm is installed; otherwise nothing."""

    def __init__(self, total: int, description: str) -> None:
        self._bar: Any = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class ArtifactTransfer:
    def __init__(self, http: Transport, *, concurrency: int = 8) -> None:
        self._http = http
        self._concurrency = concurrency

    def _base(self, run_id: str) -> str:
        return f"/api/v1/runs/{run_id}/artifacts"

    # --- listing -------------------------------------------------------------------------------------

    async def list_files(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        files: list[FileInfo] = []
        token: str | None = None
        while True:
            params = {"path": path or "", **({"page_token": token} if token else {})}
            page = ArtifactList.model_validate(
                await self._http.request("GET", self._base(run_id), params=params)
            )
            files += page.files
            if not (token := page.next_page_token):
                return files

    # --- uploads -------------------------------------------------------------------------------------

    async def upload(self, run_id: str, files: list[tuple[Path, str]]) -> None:
        sizes = await asyncio.to_thread(lambda: [local.stat().st_size for local, _ in files])
        progress = _Progress(sum(sizes), "upload")
        gate = asyncio.Semaphore(self._concurrency)
        try:
            async with aiohttp.ClientSession() as storage:
                for start in range(0, len(files), _PLAN_CHUNK):
                    chunk = files[start : start + _PLAN_CHUNK]
                    body = {
                        "files": [
                            {"path": p, "size": s} for (_, p), s in zip(chunk, sizes[start:], strict=False)
                        ]
                    }
                    plan = UploadPlan.model_validate(
                        await self._http.request("POST", f"{self._base(run_id)}/uploads", body=dumps(body))
                    )
                    await asyncio.gather(
                        *(
                            self._upload_one(storage, gate, run_id, local, item, progress)
                            for (local, _), item in zip(chunk, plan.uploads, strict=True)
                        )
                    )
        finally:
            progress.close()

    async def _upload_one(
        self,
        storage: aiohttp.ClientSession,
        gate: asyncio.Semaphore,
        run_id: str,
        local: Path,
        item: ArtifactUpload,
        progress: _Progress,
    ) -> None:
        if item.url is not None:
            async with gate:
                with local.open("rb") as f:
                    await _put(storage, item.url, f, item.size)
            progress.update(item.size)
            return
        assert item.multipart is not None
        await self._upload_parts(storage, gate, run_id, local, item, item.multipart, progress)

    async def _upload_parts(
        self,
        storage: aiohttp.ClientSession,
        gate: asyncio.Semaphore,
        run_id: str,
        local: Path,
        item: ArtifactUpload,
        upload: MultipartUpload,
        progress: _Progress,
    ) -> None:
        path, size = item.path, item.size
        urls = {p.part_number: p.url for p in upload.parts}
        missing = [n for n in range(1, upload.part_count + 1) if n not in urls]
        for start in range(0, len(missing), 1000):
            more = PartUrls.model_validate(
                await self._http.request(
                    "POST",
                    f"{self._base(run_id)}/uploads/parts",
                    json={
                        "path": path,
                        "upload_id": upload.upload_id,
                        "part_numbers": missing[start : start + 1000],
                    },
                )
            )
            urls.update({p.part_number: p.url for p in more.parts})

        async def part(number: int) -> dict[str, Any]:
            offset = (number - 1) * upload.part_size
            length = min(upload.part_size, size - offset)
            async with gate:
                data = await asyncio.to_thread(_read_range, local, offset, length)
                etag = await _put(storage, urls[number], data, length)
            progress.update(length)
            return {"part_number": number, "etag": etag}

        try:
            parts = await asyncio.gather(*(part(n) for n in range(1, upload.part_count + 1)))
            await self._http.request(
                "POST",
                f"{self._base(run_id)}/uploads/complete",
                json={"path": path, "upload_id": upload.upload_id, "parts": parts},
                idempotent=True,
            )
        except BaseException:
            await self._abort(run_id, path, upload.upload_id)
            raise

    async def _abort(self, run_id: str, path: str, upload_id: str) -> None:
        with contextlib.suppress(KisekiError):  # the upload's own error is the one worth raising
            await self._http.request(
                "POST", f"{self._base(run_id)}/uploads/abort", json={"path": path, "upload_id": upload_id}
            )

    # --- downloads -----------------------------------------------------------------------------------

    async def download(self, run_id: str, path: str, dst: Path) -> Path:
        """Download the file or folder at `path` under `dst`; returns the local file or folder."""
        clean = path.strip("/")
        files: list[tuple[str, int, str]] = []
        token: str | None = None
        while True:
            params = {"path": clean, **({"page_token": token} if token else {})}
            page = DownloadList.model_validate(
                await self._http.request("GET", f"{self._base(run_id)}/download", params=params)
            )
            files += [(f.path, f.file_size, f.url) for f in page.files]
            if not (token := page.next_page_token):
                break
        if not files:
            raise NotFound(f"run {run_id} has no artifacts at '{clean or '/'}'", field="path")
        targets = _targets(dst, [rel for rel, _, _ in files])
        progress = _Progress(sum(size for _, size, _ in files), "download")
        gate = asyncio.Semaphore(self._concurrency)
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_read=300)
            ) as storage:

                async def one(target: Path, url: str) -> None:
                    async with gate:
                        await _get(storage, url, target, progress.update)

                await asyncio.gather(
                    *(one(target, url) for target, (_, _, url) in zip(targets, files, strict=True))
                )
        finally:
            progress.close()
        return dst / clean if clean else dst


def _targets(dst: Path, paths: list[str]) -> list[Path]:
    """Where each listed file goes, resolved; refuses (naming them) paths that would land outside `dst`.
    The service never lists such paths: a listing with one comes from a broken or hostile server."""
    root = dst.resolve()
    targets: list[Path] = []
    refused: list[str] = []
    for rel in paths:
        target = (root / rel).resolve()
        if target == root or not target.is_relative_to(root):
            refused.append(rel)
        else:
            targets.append(target)
    if refused:
        shown = ", ".join(repr(p) for p in refused[:10])
        if len(refused) > 10:
            shown += f" and {len(refused) - 10} more"
        raise UnsafeArtifactPath(
            f"refusing to download: the server listed artifact paths that would be written outside {root}: "
            f"{shown}. Nothing was downloaded.",
            field="path",
        )
    return targets


def _read_range(local: Path, offset: int, length: int) -> bytes:
    with local.open("rb") as f:
        f.seek(offset)
        return f.read(length)


async def _put(storage: aiohttp.ClientSession, url: str, data: Any, length: int) -> str:
    """PUT bytes to a presigned URL; returns the ETag storage answered with."""
    headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream"}
    try:
        async with storage.put(url, data=data, headers=headers) as r:
            if r.status >= 300:
                text = (await r.text())[:300]
                raise _storage_error(r.status, f"storage refused an upload ({r.status}): {text}")
            return r.headers.get("ETag", "").strip()
    except aiohttp.ClientError as exc:
        raise ServerUnavailable(f"could not reach artifact storage at {_host(url)}: {exc}") from exc


async def _get(
    storage: aiohttp.ClientSession, url: str, target: Path, advance: Callable[[int], None]
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        async with storage.get(url) as r:
            if r.status >= 300:
                text = (await r.text())[:300]
                raise _storage_error(r.status, f"storage refused a download ({r.status}): {text}")
            with partial.open("wb") as f:
                async for chunk in r.content.iter_chunked(_CHUNK):
                    await _write(f.write, chunk)
                    advance(len(chunk))
        partial.replace(target)
    except aiohttp.ClientError as exc:
        raise ServerUnavailable(f"could not reach artifact storage at {_host(url)}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


async def _write(write: Callable[[bytes], Any], chunk: bytes) -> None:
    # Small chunks are cheaper written inline than handed to a thread.
    if len(chunk) >= _CHUNK:
        await asyncio.to_thread(write, chunk)
    else:
        write(chunk)


def _storage_error(status: int, message: str) -> KisekiError:
    return NotFound(message, status=status) if status == 404 else KisekiError(message, status=status)


def _host(url: str) -> str:
    return url.split("?", 1)[0].split("/")[2] if "://" in url else url
