"""/api/v1/runs/{run_id}/artifacts: upload and download URLs, listings and purge of a run's artifacts.

With S3 the bytes never pass through here: the URLs are presigned for storage. With the local store
the URLs point back at this service's `/artifacts/data` route, which checks their signature.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from kiseki.models import (
    ARTIFACT_FOLDER_PATTERN,
    ARTIFACT_PATH_PATTERN,
    MAX_ARTIFACT_PATH_LENGTH,
    MAX_ARTIFACT_SIZE,
    MAX_PARTS,
    ArtifactList,
    ArtifactPurge,
    DownloadList,
    FileInfo,
    MultipartAbort,
    MultipartAborted,
    MultipartComplete,
    PartUrls,
    PartUrlsRequest,
    RunInfo,
    UploadPlan,
    UploadRequest,
)
from kiseki_server.appkeys import ARTIFACTS, SETTINGS, STORES
from kiseki_server.artifacts import LocalArtifactStore
from kiseki_server.artifacts.paths import normalize
from kiseki_server.auth.audit import audit
from kiseki_server.auth.policy import EDIT_PATH, MANAGE_PATH, READ_PATH
from kiseki_server.errors import InvalidInput, NotFound
from kiseki_server.handlers.runs import run_id_of
from kiseki_server.http_io import model_response, query_int, query_str, read_model
from kiseki_server.routing import Query, Route, paging
from kiseki_server.stores.experiments import parse_experiment_id

MAX_PAGE = 1000
_BODY_CHUNK = 1024 * 1024


async def _run(request: web.Request) -> RunInfo:
    return (await request.app[STORES].runs.get(run_id_of(request))).info


def _origin(request: web.Request) -> str:
    """The base URL clients reach this service at, for URLs that point back here."""
    public = request.app[SETTINGS].public_url
    return public.rstrip("/") if public else f"{request.scheme}://{request.host}"


def _page(request: web.Request) -> tuple[int, str | None]:
    return (
        query_int(request, "max_results", default=MAX_PAGE, lo=1, hi=MAX_PAGE),
        query_str(request, "page_token"),
    )


async def plan_uploads(request: web.Request) -> web.Response:
    run_id_of(request)
    body = await read_model(request, UploadRequest)
    run = await _run(request)
    plan = await request.app[ARTIFACTS].plan_uploads(run, body.files, origin=_origin(request))
    return model_response(plan)


async def part_urls(request: web.Request) -> web.Response:
    run_id_of(request)
    body = await read_model(request, PartUrlsRequest)
    run = await _run(request)
    return model_response(await request.app[ARTIFACTS].part_urls(run, body, origin=_origin(request)))


async def complete(request: web.Request) -> web.Response:
    run_id_of(request)
    body = await read_model(request, MultipartComplete)
    run = await _run(request)
    return model_response(await request.app[ARTIFACTS].complete_multipart(run, body))


async def abort(request: web.Request) -> web.Response:
    run_id_of(request)
    body = await read_model(request, MultipartAbort)
    run = await _run(request)
    return model_response(await request.app[ARTIFACTS].abort_multipart(run, body))


async def list_files(request: web.Request) -> web.Response:
    run = await _run(request)
    max_results, page_token = _page(request)
    listing = await request.app[ARTIFACTS].list_files(
        run, query_str(request, "path"), max_results=max_results, page_token=page_token
    )
    return model_response(listing)


async def download(request: web.Request) -> web.Response:
    run = await _run(request)
    max_results, page_token = _page(request)
    downloads = await request.app[ARTIFACTS].download_urls(
        run,
        query_str(request, "path"),
        max_results=max_results,
        page_token=page_token,
        origin=_origin(request),
    )
    return model_response(downloads)


async def purge(request: web.Request) -> web.Response:
    run = await _run(request)
    purged = await request.app[ARTIFACTS].purge(run)
    await audit(request, "artifacts.purge", "run", run.run_id, **purged.model_dump())
    return model_response(purged)


async def purge_experiment(request: web.Request) -> web.Response:
    experiment_id = parse_experiment_id(request.match_info["experiment_id"])
    stores = request.app[STORES]
    await stores.experiments.get(experiment_id)
    runs = await stores.runs.infos_for_experiment(experiment_id)
    purged = await request.app[ARTIFACTS].purge_many(runs)
    detail = purged.model_dump()
    await audit(request, "artifacts.purge", "experiment", experiment_id, runs=len(runs), **detail)
    return model_response(purged)


# --- the local store's signed URLs ------------------------------------------------------------------


def _local(request: web.Request) -> LocalArtifactStore:
    store = request.app[ARTIFACTS]
    if not isinstance(store, LocalArtifactStore):
        raise NotFound(f"artifact bytes are not served here but by {store.description}")
    return store


def _signed_path(request: web.Request) -> str:
    path = query_str(request, "path")
    if path is None:
        raise InvalidInput("this URL lacks its 'path' parameter; ask the artifacts API for a fresh one")
    return normalize(path)


async def write_data(request: web.Request) -> web.Response:
    store = _local(request)
    grant = store.signer.verify("PUT", run_id_of(request), _signed_path(request), request.query)
    run = await _run(request)
    body = request.content.iter_chunked(_BODY_CHUNK)
    etag = await store.receive(run, grant, body, request.content_length)
    return web.Response(headers={"ETag": etag} if etag else None)


async def read_data(request: web.Request) -> web.StreamResponse:
    store = _local(request)
    path = _signed_path(request)
    grant = store.signer.verify("GET", run_id_of(request), path, request.query)
    # Artifacts are untrusted content served from kiseki's own origin: never let a browser render an
    # uploaded HTML or SVG file as a page of this site (an <img> still shows images).
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
    # FileResponse stats and opens the file in a thread and sends it with sendfile, off the event loop.
    return web.FileResponse(await store.readable(await _run(request), grant), headers=headers)


_ROOT = "/api/v1/runs/{run_id}/artifacts"
_PATH = Query(
    "path",
    "string",
    "Artifact path relative to the run's root; unset or '' for the root.",
    rules={"pattern": ARTIFACT_FOLDER_PATTERN, "maxLength": MAX_ARTIFACT_PATH_LENGTH},
)
_PAGING = paging(MAX_PAGE, default=MAX_PAGE)
_SIGNED = (
    Query(
        "path",
        "string",
        "Artifact path.",
        required=True,
        rules={"pattern": ARTIFACT_PATH_PATTERN, "maxLength": MAX_ARTIFACT_PATH_LENGTH},
    ),
    Query("expires", "integer", "Epoch second the URL stops working.", required=True, rules={"minimum": 0}),
    Query(
        "signature",
        "string",
        "HMAC over method, run, path, expiry and the rest (unpadded base64url).",
        required=True,
        rules={"pattern": r"^[A-Za-z0-9_-]{43}$"},
    ),
)
_SIGNED_PUT = (
    *_SIGNED,
    Query(
        "size",
        "integer",
        "Exact body size the URL takes.",
        required=True,
        rules={"minimum": 0, "maximum": MAX_ARTIFACT_SIZE},
    ),
    Query(
        "upload_id",
        "string",
        "Multipart upload a part belongs to.",
        rules={"minLength": 1, "maxLength": 1024},
    ),
    Query(
        "part_number",
        "integer",
        "Part number of a multipart upload.",
        rules={"minimum": 1, "maximum": MAX_PARTS},
    ),
)
ROUTES = [
    Route(
        "POST",
        _ROOT + "/uploads",
        plan_uploads,
        "Upload URLs for files of a run: one PUT URL per file, or a multipart upload for large files",
        UploadRequest,
        UploadPlan,
        access=EDIT_PATH,
    ),
    Route(
        "POST",
        _ROOT + "/uploads/parts",
        part_urls,
        "Fresh URLs for parts of an unfinished multipart upload",
        PartUrlsRequest,
        PartUrls,
        access=EDIT_PATH,
    ),
    Route(
        "POST",
        _ROOT + "/uploads/complete",
        complete,
        "Finish a multipart upload from its parts' ETags",
        MultipartComplete,
        FileInfo,
        access=EDIT_PATH,
    ),
    Route(
        "POST",
        _ROOT + "/uploads/abort",
        abort,
        "Abandon a multipart upload and drop its parts",
        MultipartAbort,
        MultipartAborted,
        access=EDIT_PATH,
    ),
    Route(
        "GET",
        _ROOT,
        list_files,
        "One level of a run's artifact tree, like a directory listing",
        response=ArtifactList,
        query=(_PATH, *_PAGING),
        access=READ_PATH,
    ),
    Route(
        "GET",
        _ROOT + "/download",
        download,
        "Download URLs: the file at path, or every file under the folder at path",
        response=DownloadList,
        query=(_PATH, *_PAGING),
        access=READ_PATH,
    ),
    Route(
        "DELETE",
        _ROOT,
        purge,
        "Delete all of a run's artifacts from storage for good (deleting the run itself keeps them)",
        response=ArtifactPurge,
        access=MANAGE_PATH,
    ),
    Route(
        "DELETE",
        "/api/v1/experiments/{experiment_id}/artifacts",
        purge_experiment,
        "Delete the artifacts of every run of an experiment for good (deleting it keeps them)",
        response=ArtifactPurge,
        access=MANAGE_PATH,
    ),
    Route(
        "PUT",
        _ROOT + "/data",
        write_data,
        "Local store only: a signed upload URL (the body is the file or part; ETag header for parts)",
        query=_SIGNED_PUT,
        access=None,
    ),
    Route(
        "GET",
        _ROOT + "/data",
        read_data,
        "Local store only: a signed download URL (the body is the file; Range requests work)",
        query=_SIGNED,
        access=None,
    ),
]
