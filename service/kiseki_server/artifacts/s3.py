"""The S3 store (AWS, MinIO, SeaweedFS, …): the service presigns URLs and bytes go straight to storage.

Keys are `<root prefix>/<experiment_id>/<run_id>/artifacts/<path>` (the run's artifact_uri). Two
clients: one calls the endpoint the service reaches, the other only presigns, for the public endpoint
clients reach (a SigV4 signature covers the host, so a URL signed for an internal name is useless
outside). Presigning is local CPU work; only multipart bookkeeping, listings, stats and purges are
calls to storage. Every upload URL signs its exact Content-Length, so storage refuses any other body
size; as S3 keeps no metadata on an unfinished multipart upload, its layout (size, part size: what each
part URL is signed for and what `complete` checks ListParts against) is a small JSON object under
`<prefix>/.kiseki-uploads/<run_id>/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.loaders import Loader, create_loader

from kiseki.models import MAX_PARTS, ArtifactPurge, CompletedPart, FileInfo, UploadPart
from kiseki_server.artifacts.paths import STAGING, location_under, parse_s3_uri
from kiseki_server.artifacts.store import ArtifactStore, PartLayout, RunArtifacts, gather_bounded
from kiseki_server.config import Settings
from kiseki_server.errors import InvalidInput, KisekiError, NotFound, ServiceUnavailable
from kiseki_server.pagination import decode_token, encode_token

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
_DELETE_BATCH = 1000
_CREDENTIALS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
_BAD_PARTS = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall"}


class S3ArtifactStore(ArtifactStore):
    def __init__(
        self,
        *,
        root_uri: str,
        client: Any,
        presigner: Any,
        endpoint: str,
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
        self.bucket, self.prefix = parse_s3_uri(root_uri)
        self._client = client
        self._presigner = presigner
        self._endpoint = endpoint

    @property
    def description(self) -> str:
        return f"S3 storage at {self._endpoint} (bucket '{self.bucket}')"

    # --- where things are -----------------------------------------------------------------------------

    def _folder(self, artifact_uri: str) -> str | None:
        below = location_under(artifact_uri, self.root_uri)
        if not below or below[0] == STAGING:
            return None
        return "/".join(below)

    def _key(self, run: RunArtifacts, path: str) -> str:
        key = "/".join(p for p in (self.prefix, run.folder, path) if p)
        if len(key.encode()) > MAX_KEY_BYTES:
            raise InvalidInput(
                f"path '{path[:100]}…' is too long: with the run's prefix its S3 key exceeds "
                f"{MAX_KEY_BYTES} bytes",
                field="path",
            )
        return key

    def _relative(self, run: RunArtifacts, key: str) -> str:
        return key[len(self._key(run, "")) + 1 :]

    @contextlib.contextmanager
    def _storage(self, *, missing: KisekiError | None = None, field: str | None = None) -> Iterator[None]:
        """botocore's errors as the service's: `missing` for a 404, 503 naming the storage for faults.

        With `field`, storage refusing a request (4xx) is the client's doing: a 400 naming that field.
        """
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), error.get("Message", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("404", "NoSuchKey", "NotFound") and missing is not None:
                raise missing from None
            if code == "NoSuchUpload":
                raise NotFound(
                    f"no unfinished multipart upload with this id: {message}", field="upload_id"
                ) from None
            if code in _BAD_PARTS:
                raise InvalidInput(f"storage refused the parts ({code}): {message}", field="parts") from None
            if code == "NoSuchBucket":
                raise ServiceUnavailable(f"{self.description}: the bucket does not exist") from None
            if code in _CREDENTIALS:
                raise ServiceUnavailable(
                    f"{self.description} refused the service's credentials ({code})"
                ) from None
            if field is not None and 400 <= status < 500:
                raise InvalidInput(f"storage refused the request ({code}): {message}", field=field) from None
            log.warning("S3 error from %s: %s %s", self._endpoint, code, message)
            raise ServiceUnavailable(f"{self.description} failed: {code} {message}".strip()) from None
        except NoCredentialsError:
            raise ServiceUnavailable(
                f"{self.description}: the service has no credentials; set KISEKI_S3_ACCESS_KEY_ID and "
                "KISEKI_S3_SECRET_ACCESS_KEY (or the AWS_ variables)"
            ) from None
        except (TimeoutError, BotoCoreError, aiohttp.ClientError) as exc:
            raise ServiceUnavailable(f"{self.description} is unreachable: {exc}") from None

    async def ping(self) -> None:
        """HEAD the bucket: proves the endpoint answers, the credentials work and the bucket exists."""
        with self._storage(missing=ServiceUnavailable(f"{self.description}: the bucket does not exist")):
            await self._client.head_bucket(Bucket=self.bucket)

    async def _presign(self, operation: str, params: dict[str, Any]) -> str:
        """A presigned URL. Signing is ~0.2 ms of CPU that never suspends, so each one yields to the loop
        afterwards: a page of 1,000 URLs must not hold every other request for its whole duration."""
        with self._storage():
            url: str = await self._presigner.generate_presigned_url(
                operation, Params={"Bucket": self.bucket, **params}, ExpiresIn=self._expiry
            )
        await asyncio.sleep(0)
        return url

    # --- primitives -----------------------------------------------------------------------------------

    async def _upload_url(self, run: RunArtifacts, path: str, size: int, expires: int, origin: str) -> str:
        # ContentLength makes content-length a signed header: storage refuses a body of any other size.
        return await self._presign("put_object", {"Key": self._key(run, path), "ContentLength": size})

    def _manifest_key(self, run: RunArtifacts, upload_id: str) -> str:
        """Where the part layout of an unfinished upload is kept (S3 has no metadata on uploads)."""
        name = hashlib.sha256(upload_id.encode()).hexdigest()
        return "/".join(p for p in (self.prefix, STAGING, run.run_id, f"{name}.json") if p)

    async def _start_multipart(self, run: RunArtifacts, path: str, layout: PartLayout) -> str:
        key = self._key(run, path)
        with self._storage():
            answer = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = str(answer["UploadId"])
        manifest = {"key": key, "upload_id": upload_id, "size": layout.size, "part_size": layout.part_size}
        try:
            with self._storage():
                await self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._manifest_key(run, upload_id),
                    Body=orjson.dumps(manifest),
                    ContentType="application/json",
                )
        except BaseException:
            with contextlib.suppress(KisekiError):
                await self._abort(run, path, upload_id)
            raise
        return upload_id

    async def _upload_layout(self, run: RunArtifacts, path: str, upload_id: str) -> PartLayout:
        key = self._key(run, path)
        missing = NotFound(
            f"no unfinished multipart upload {upload_id[:200]!r} of '{path}'", field="upload_id"
        )
        try:
            with self._storage(missing=missing):
                answer = await self._client.get_object(
                    Bucket=self.bucket, Key=self._manifest_key(run, upload_id)
                )
                async with answer["Body"] as stream:
                    manifest = orjson.loads(await stream.read())
        except NotFound:
            # Let storage judge the id (malformed: 400, unknown: 404); one it knows but this service has
            # no layout for (started before layouts were kept) can only be aborted.
            await self._stored_parts(key, upload_id)
            raise NotFound(
                f"multipart upload {upload_id[:200]!r} of '{path}' has no recorded part layout, so its "
                "part sizes can't be checked; abort it and upload the file again",
                field="upload_id",
            ) from None
        if manifest.get("key") != key or manifest.get("upload_id") != upload_id:
            raise missing
        return PartLayout(size=manifest["size"], part_size=manifest["part_size"])

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
        key = self._key(run, path)
        urls = await gather_bounded(
            self._presign(
                "upload_part",
                {"Key": key, "UploadId": upload_id, "PartNumber": n, "ContentLength": layout.part_bytes(n)},
            )
            for n in numbers
        )
        return [UploadPart(part_number=n, url=url) for n, url in zip(numbers, urls, strict=True)]

    async def _stored_parts(self, key: str, upload_id: str) -> dict[int, int]:
        """Part number → size of every part storage holds for the upload (ListParts, 1,000 a page)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "MaxParts": 1000}
        sizes: dict[int, int] = {}
        for _ in range(MAX_PARTS // 1000 + 1):
            with self._storage(field="upload_id"):
                page = await self._client.list_parts(**params)
            sizes.update({int(p["PartNumber"]): int(p["Size"]) for p in page.get("Parts", [])})
            if not page.get("IsTruncated"):
                break
            params["PartNumberMarker"] = page["NextPartNumberMarker"]
        return sizes

    async def _complete(
        self, run: RunArtifacts, path: str, upload_id: str, layout: PartLayout, parts: list[CompletedPart]
    ) -> FileInfo:
        key = self._key(run, path)
        stored = await self._stored_parts(key, upload_id)
        for i, part in enumerate(parts):
            number = part.part_number
            if number not in stored:
                raise InvalidInput(f"part {number} was never uploaded", field=f"parts.{i}.etag")
            if stored[number] != layout.part_bytes(number):
                # Only a URL used against its signed length gets here: the upload is not to be trusted.
                await self._abort(run, path, upload_id)
                raise InvalidInput(
                    f"part {number} holds {stored[number]} bytes but a {layout.size}-byte file in parts of "
                    f"{layout.part_size} needs {layout.part_bytes(number)} there; the upload was aborted",
                    field=f"parts.{i}",
                )
        with self._storage(field="upload_id"):
            await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p.part_number, "ETag": p.etag} for p in parts]},
            )
        await self._delete([self._manifest_key(run, upload_id)])
        found = await self._stat(run, path)
        if found is None:
            raise ServiceUnavailable(f"{self.description} completed the upload of '{path}' but lost the file")
        return found

    async def _abort(self, run: RunArtifacts, path: str, upload_id: str) -> None:
        with self._storage(field="upload_id"):
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._key(run, path), UploadId=upload_id
            )
        await self._delete([self._manifest_key(run, upload_id)])

    async def _stat(self, run: RunArtifacts, path: str) -> FileInfo | None:
        key = self._key(run, path)
        try:
            with self._storage(missing=NotFound(key)):
                head = await self._client.head_object(Bucket=self.bucket, Key=key)
            return FileInfo(path=path, is_dir=False, file_size=head["ContentLength"])
        except NotFound:
            pass
        with self._storage():
            listed = await self._client.list_objects_v2(Bucket=self.bucket, Prefix=key + "/", MaxKeys=1)
        return FileInfo(path=path, is_dir=True) if listed.get("KeyCount", 0) else None

    async def _list_page(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None, *, delimiter: bool
    ) -> tuple[dict[str, Any], str | None]:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self._key(run, path) + "/",
            "MaxKeys": max_results,
        }
        if delimiter:
            params["Delimiter"] = "/"
        if page_token:
            params["ContinuationToken"] = decode_token(page_token, str)[0]
        # A forged continuation token is the client's fault (a 400), not a storage failure.
        with self._storage(field="page_token" if page_token else None):
            page = await self._client.list_objects_v2(**params)
        token = encode_token(page["NextContinuationToken"]) if page.get("IsTruncated") else None
        return page, token

    async def _list(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None
    ) -> tuple[list[FileInfo], str | None]:
        page, token = await self._list_page(run, path, max_results, page_token, delimiter=True)
        entries = [
            FileInfo(path=self._relative(run, p["Prefix"].rstrip("/")), is_dir=True)
            for p in page.get("CommonPrefixes", [])
        ]
        entries += [
            FileInfo(path=self._relative(run, o["Key"]), is_dir=False, file_size=o["Size"])
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/")
        ]
        # S3's key order, across pages too: a folder sorts as its prefix, with the trailing '/'.
        return sorted(entries, key=lambda e: e.path + "/" if e.is_dir else e.path), token

    async def _walk(
        self, run: RunArtifacts, path: str, max_results: int, page_token: str | None
    ) -> tuple[list[FileInfo], str | None]:
        page, token = await self._list_page(run, path, max_results, page_token, delimiter=False)
        files = [
            FileInfo(path=self._relative(run, o["Key"]), is_dir=False, file_size=o["Size"])
            for o in page.get("Contents", [])
            if not o["Key"].endswith("/")
        ]
        return files, token

    async def _download_url(self, run: RunArtifacts, path: str, expires: int, origin: str) -> str:
        return await self._presign("get_object", {"Key": self._key(run, path)})

    async def _purge(self, run: RunArtifacts) -> ArtifactPurge:
        prefix = self._key(run, "") + "/"
        deleted = 0
        folders = {prefix}
        staging = "/".join(p for p in (self.prefix, STAGING, run.run_id) if p) + "/"
        async for keys in self._keys(staging):
            await self._delete(keys)
        await self._delete([staging])
        async for keys in self._keys(prefix):
            await self._delete(keys)
            deleted += len(keys)
            for key in keys:
                folders.update(key[: i + 1] for i in range(len(prefix), len(key)) if key[i] == "/")
        # S3 servers on a filesystem (SeaweedFS) keep emptied folders, listed as common prefixes, until
        # their folder keys are deleted (deepest first); on AWS these deletes are harmless no-ops.
        ordered = sorted(folders, key=lambda f: (-f.count("/"), f))
        for i in range(0, len(ordered), _DELETE_BATCH):
            await self._delete(ordered[i : i + _DELETE_BATCH])
        aborted = 0
        for upload in await self._uploads(prefix):
            with contextlib.suppress(NotFound), self._storage():
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
        return ArtifactPurge(deleted_files=deleted, aborted_uploads=aborted)

    async def _delete(self, keys: list[str]) -> None:
        with self._storage():
            answer = await self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        if errors := answer.get("Errors"):
            first = errors[0]
            raise ServiceUnavailable(
                f"{self.description} failed to delete {len(errors)} files, e.g. '{first.get('Key')}': "
                f"{first.get('Code')} {first.get('Message', '')}".strip()
            )

    async def _keys(self, prefix: str) -> AsyncIterator[list[str]]:
        """Every key under `prefix`, in batches of at most 1,000 (what one DeleteObjects takes)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": _DELETE_BATCH}
        while True:
            with self._storage():
                page = await self._client.list_objects_v2(**params)
            if keys := [o["Key"] for o in page.get("Contents", [])]:
                yield keys
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def _uploads(self, prefix: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        uploads: list[dict[str, Any]] = []
        while True:
            with self._storage():
                page = await self._client.list_multipart_uploads(**params)
            uploads += page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return uploads
            params["KeyMarker"] = page["NextKeyMarker"]
            params["UploadIdMarker"] = page["NextUploadIdMarker"]


@functools.cache
def _service_models() -> Loader:
    """botocore's loader of its service-model JSON, shared by every store of the process: parsing the
    models takes ~0.1 s per session, and the loader holds nothing but those immutable files (sessions,
    which resolve credentials, stay one per store)."""
    return create_loader()


@contextlib.asynccontextmanager
async def open_s3_store(settings: Settings, root_uri: str) -> AsyncIterator[S3ArtifactStore]:
    """The S3 store with its clients open for as long as the context lasts (no network call here)."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        region_name=settings.s3_region,
        retries={"total_max_attempts": settings.s3_max_attempts, "mode": "standard"},
        connect_timeout=settings.s3_connect_timeout,
        max_pool_connections=32,
        # Only what S3 requires: third-party S3 servers differ in the optional checksums they accept.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    credentials: dict[str, str] = {}
    if settings.s3_access_key_id or settings.s3_secret_access_key:
        if not (settings.s3_access_key_id and settings.s3_secret_access_key):
            raise ValueError("set both KISEKI_S3_ACCESS_KEY_ID and KISEKI_S3_SECRET_ACCESS_KEY, or neither")
        credentials = {
            "aws_access_key_id": settings.s3_access_key_id,
            "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
        }
    session = get_session()
    session.register_component("data_loader", _service_models())
    endpoint = settings.s3_endpoint_url
    public = settings.s3_public_endpoint_url or endpoint
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            session.create_client("s3", endpoint_url=endpoint, config=config, **credentials)
        )
        presigner = client
        if public != endpoint:
            presigner = await stack.enter_async_context(
                session.create_client("s3", endpoint_url=public, config=config, **credentials)
            )
        yield S3ArtifactStore(
            root_uri=root_uri,
            client=client,
            presigner=presigner,
            endpoint=endpoint or f"AWS S3 ({settings.s3_region})",
            url_expiry_seconds=settings.artifact_url_expiry_seconds,
            multipart_threshold=settings.artifact_multipart_threshold,
            part_size=settings.artifact_multipart_part_size,
        )
