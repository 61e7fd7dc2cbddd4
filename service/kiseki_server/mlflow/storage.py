"""Bytes through the service, for MLflow's proxied artifact routes, on both artifact stores.

kiseki's own API never moves artifact bytes itself (clients get presigned URLs), so `ArtifactStore` has
no streaming read/write. MLflow's client PUTs and GETs through the tracking server, so these functions
stream with what each store offers: the local store's `receive`/`readable` (the bodies of its signed
URLs), and for S3 the store's client, with one part in memory at most. Nothing holds a whole file.

The S3 functions reach into `S3ArtifactStore`'s client and key layout (`_client`, `_key`, `_storage`,
`_keys`, `_delete`, `_presign`); they belong on the store as public methods.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import StreamReader, web

from kiseki.models import RunInfo, UploadPart
from kiseki_server.artifacts import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from kiseki_server.artifacts.signing import Grant
from kiseki_server.artifacts.store import gather_bounded
from kiseki_server.errors import InvalidInput, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MIN_PART = 5 * 1024 * 1024
"""S3 parts but the last must be at least 5 MiB."""


async def write(
    store: ArtifactStore, run: RunInfo, path: str, body: StreamReader, length: int | None, part_size: int
) -> None:
    """Store the request body as the file at `path` (normalised, non-empty) of `run`.

    `length` None is a chunked body (requests sends an empty file that way).
    """
    if isinstance(store, LocalArtifactStore):
        if length is not None:
            grant = Grant("PUT", run.run_id, path, expires=0, size=length)
            await store.receive(run, grant, body.iter_chunked(CHUNK), length)
            return
        spooled, size = await _spool(body)
        try:
            grant = Grant("PUT", run.run_id, path, expires=0, size=size)
            await store.receive(run, grant, _chunks(spooled), size)
        finally:
            await asyncio.to_thread(spooled.unlink, True)
    elif isinstance(store, S3ArtifactStore):
        await _s3_write(store, run, path, body, max(part_size, MIN_PART))
    else:
        raise ServiceUnavailable(f"{store.description} cannot take proxied uploads")


async def _spool(body: StreamReader) -> tuple[Path, int]:
    """A body of unknown length in a temporary file (never in memory), and its size."""
    fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="kiseki-mlflow-")
    size = 0
    with await asyncio.to_thread(open, fd, "wb") as out:
        async for chunk in body.iter_chunked(CHUNK):
            size += len(chunk)
            await asyncio.to_thread(out.write, chunk)
    return Path(name), size


async def _chunks(file: Path) -> AsyncIterator[bytes]:
    with file.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


async def _read_part(body: StreamReader, size: int) -> bytes:
    """Up to `size` bytes of the body (fewer only at its end)."""
    part = bytearray()
    while len(part) < size:
        chunk = await body.read(size - len(part))
        if not chunk:
            break
        part += chunk
    return bytes(part)


async def _s3_write(
    store: S3ArtifactStore, run: RunInfo, path: str, body: StreamReader, part_size: int
) -> None:
    """One PUT for a body that fits one part, else a multipart upload holding one part in memory."""
    key = store._key(store.locate(run), path)
    client: Any = store._client
    data = await _read_part(body, part_size)
    if len(data) < part_size:
        with store._storage(field="path"):
            await client.put_object(Bucket=store.bucket, Key=key, Body=data, ContentLength=len(data))
        return
    with store._storage(field="path"):
        upload_id = (await client.create_multipart_upload(Bucket=store.bucket, Key=key))["UploadId"]
    try:
        parts = []
        number = 1
        while data:
            with store._storage(field="path"):
                answer = await client.upload_part(
                    Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            number += 1
            data = await _read_part(body, part_size)
        with store._storage(field="path"):
            await client.complete_multipart_upload(
                Bucket=store.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
    except BaseException:
        with store._storage():
            await client.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
        raise


async def read(store: ArtifactStore, run: RunInfo, path: str, request: web.Request) -> web.StreamResponse:
    """The file at `path` of `run` as a streamed response (404 when there is no file there)."""
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}
    if isinstance(store, LocalArtifactStore):
        file = await store.readable(run, Grant("GET", run.run_id, path, expires=0))
        return web.FileResponse(file, headers=headers)
    if not isinstance(store, S3ArtifactStore):
        raise ServiceUnavailable(f"{store.description} cannot serve proxied downloads")
    key = store._key(store.locate(run), path)
    missing = NotFound(f"run {run.run_id} has no file at '{path}'", field="path")
    with store._storage(missing=missing):
        answer = await store._client.get_object(Bucket=store.bucket, Key=key)
    stream = answer["Body"]
    try:
        response = web.StreamResponse(headers=headers)
        response.content_type = "application/octet-stream"
        response.content_length = answer["ContentLength"]
        await response.prepare(request)
        try:
            async for chunk in stream.iter_chunks(CHUNK):
                await response.write(chunk)
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            # The status line is sent: all that is left is to cut the body short, which the client's
            # Content-Length check reports as a failed download (never a silently truncated file).
            log.warning("download of %s from %s broke off: %s", path, store.description, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        stream.close()


async def delete(store: ArtifactStore, run: RunInfo, path: str) -> None:
    """Delete the file or folder at `path` of `run` ('' is all of the run's artifacts)."""
    if not path:
        await store.purge(run)
        return
    where = store.locate(run)
    if isinstance(store, LocalArtifactStore):
        target = store.root / where.folder / path

        def remove(target: Path) -> None:
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

        await asyncio.to_thread(remove, target)
    elif isinstance(store, S3ArtifactStore):
        key = store._key(where, path)
        prefix = key + "/"
        await store._delete([key])
        folders = {prefix}
        async for keys in store._keys(prefix):
            await store._delete(keys)
            for found in keys:
                folders.update(found[: i + 1] for i in range(len(prefix), len(found)) if found[i] == "/")
        # S3 servers on a filesystem (SeaweedFS) list emptied folders until their folder keys are deleted,
        # deepest first (harmless no-ops on AWS), as the store's own purge does.
        ordered = sorted(folders, key=lambda f: (-f.count("/"), f))
        for i in range(0, len(ordered), 1000):
            await store._delete(ordered[i : i + 1000])


async def start_multipart(
    store: S3ArtifactStore, run: RunInfo, path: str, num_parts: int
) -> tuple[str, list[UploadPart]]:
    """A multipart upload straight to S3 with a presigned URL per part.

    MLflow's client names only the number of parts and picks their size itself, so unlike kiseki's own
    uploads the URLs are not bound to a length; S3 still refuses non-last parts under 5 MiB.
    """
    key = store._key(store.locate(run), path)
    with store._storage(field="path"):
        upload_id = str(
            (await store._client.create_multipart_upload(Bucket=store.bucket, Key=key))["UploadId"]
        )
    urls = await gather_bounded(
        store._presign("upload_part", {"Key": key, "UploadId": upload_id, "PartNumber": n})
        for n in range(1, num_parts + 1)
    )
    return upload_id, [UploadPart(part_number=n, url=url) for n, url in enumerate(urls, start=1)]


async def complete_multipart(
    store: S3ArtifactStore, run: RunInfo, path: str, upload_id: str, parts: list[tuple[int, str]]
) -> None:
    key = store._key(store.locate(run), path)
    if not parts:
        raise InvalidInput("parts must list the uploaded parts", field="parts")
    with store._storage(field="upload_id"):
        await store._client.complete_multipart_upload(
            Bucket=store.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )


async def abort_multipart(store: S3ArtifactStore, run: RunInfo, path: str, upload_id: str) -> None:
    key = store._key(store.locate(run), path)
    with store._storage(field="upload_id"):
        await store._client.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
