"""MLflow's artifact routes: the proxied `/mlflow-artifacts/...` API and `/mlflow/artifacts/list`.

Runs show MLflow `artifact_uri = mlflow-artifacts:/<experiment>/<run>/artifacts` (their folder under the
service's artifact root), so MLflow's client sends bytes here: a path under /mlflow-artifacts/artifacts/
is that folder plus the file's path in the run. The run is looked up by the id in the folder and the
path must lie in the run's own folder, so a request can never reach another run's files.

With auth on, the permission is checked on that run's experiment, as MLflow's auth plugin does for its
artifact proxy: listing and downloading need READ, uploads (multipart ones too) EDIT, and deleting
MANAGE (MLflow's `validate_can_delete_experiment_artifact_proxy` asks for its "manage" action).
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from kiseki.models import FileInfo, RunInfo
from kiseki_server.appkeys import ARTIFACTS, SETTINGS, STORES
from kiseki_server.artifacts import S3ArtifactStore
from kiseki_server.artifacts.paths import normalize
from kiseki_server.auth.authorizer import principal_of
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import EDIT_HANDLER, MANAGE_HANDLER, READ_HANDLER, Level
from kiseki_server.errors import InvalidInput, NotFound
from kiseki_server.mlflow import storage
from kiseki_server.mlflow.errors import MlflowError, MlflowRoute, invalid, not_found
from kiseki_server.mlflow.wire import Lenient, message, public_uri, respond, run_id_of
from kiseki_server.stores.runs import parse_run_id

PAGE = 1000


async def _resolve(request: web.Request, full: str, needed: Level) -> tuple[RunInfo, str]:
    """The run owning artifact-root-relative `full` and the path inside the run's folder, once the
    caller is known to hold `needed` on the run's experiment (403 otherwise)."""
    full = normalize(full, allow_root=True)
    parts = full.split("/")
    missing = not_found(f"no run's artifacts at '{full}'")
    if len(parts) < 2:
        raise missing
    try:
        run_id = parse_run_id(parts[1])
        run = (await request.app[STORES].runs.get(run_id)).info
    except (InvalidInput, NotFound):
        raise missing from None
    folder = request.app[ARTIFACTS].locate(run).folder
    if full == folder:
        inside = ""
    elif full.startswith(folder + "/"):
        inside = full[len(folder) + 1 :]
    else:
        raise missing
    await request.app[AUTHORIZER].require_experiment(request, int(run.experiment_id), needed)
    return run, inside


async def _listing(
    request: web.Request, run: RunInfo, path: str, page_token: str | None
) -> tuple[list[FileInfo], str | None]:
    """One level under `path`; nothing for a file or a missing path (MLflow lists those as empty)."""
    try:
        listing = await request.app[ARTIFACTS].list_files(
            run, path or None, max_results=PAGE, page_token=page_token
        )
    except (NotFound, InvalidInput):
        if page_token:
            raise
        return [], None
    return listing.files, listing.next_page_token


def _entry(info: FileInfo, path: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "is_dir": info.is_dir}
    if not info.is_dir and info.file_size is not None:
        entry["file_size"] = info.file_size
    return entry


async def list_proxied(request: web.Request) -> web.Response:
    """GET /mlflow-artifacts/artifacts?path=: one level, basenames, the whole folder in one answer.

    A path in no run's folder lists as empty, as on MLflow's server; with auth on (for anyone but an
    admin) it is a 404 instead, so that only a run the caller may read ever answers a 2xx."""
    full = request.query.get("path", "")
    if not full.strip("/"):
        return respond()
    try:
        run, path = await _resolve(request, full.strip("/"), Level.READ)
    except MlflowError:
        if not principal_of(request).sees_everything:
            raise
        return respond()
    files: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page, token = await _listing(request, run, path, token)
        files += [_entry(f, f.path.rsplit("/", 1)[-1]) for f in page]
        if token is None:
            break
    return respond({"files": files} if files else None)


async def download(request: web.Request) -> web.StreamResponse:
    run, path = await _resolve(request, request.match_info["path"], Level.READ)
    if not path:
        raise invalid("the run's artifact folder is a folder; list it instead")
    return await storage.read(request.app[ARTIFACTS], run, path, request)


async def upload(request: web.Request) -> web.Response:
    run, path = await _resolve(request, request.match_info["path"], Level.EDIT)
    if not path:
        raise invalid("an upload must name a file inside the run's artifact folder")
    if run.lifecycle_stage != "active":
        raise invalid(f"run {run.run_id} is deleted; restore it to log artifacts to it")
    settings = request.app[SETTINGS]
    await storage.write(
        request.app[ARTIFACTS],
        run,
        path,
        request.content,
        request.content_length if request.content_length is not None or request.body_exists else 0,
        settings.artifact_multipart_part_size,
    )
    return respond()


async def delete(request: web.Request) -> web.Response:
    run, path = await _resolve(request, request.match_info["path"], Level.MANAGE)
    await storage.delete(request.app[ARTIFACTS], run, path)
    return respond()


class ListArtifacts(Lenient):
    run_id: str | None = None
    run_uuid: str | None = None
    path: str | None = None
    page_token: str | None = None


async def list_tracking(request: web.Request) -> web.Response:
    """GET /mlflow/artifacts/list: one level of a run's artifacts, paths relative to the run's root."""
    body = await message(request, ListArtifacts)
    run_id = run_id_of(body.run_id or body.run_uuid)
    await request.app[AUTHORIZER].require_run(request, run_id, Level.READ)
    run = (await request.app[STORES].runs.get(run_id)).info
    path = normalize(body.path or "", allow_root=True)
    files, token = await _listing(request, run, path, body.page_token or None)
    answer: dict[str, Any] = {
        "root_uri": public_uri(request.app[ARTIFACTS], run.artifact_uri),
        "files": [_entry(f, f.path) for f in files],
    }
    if token:
        answer["next_page_token"] = token
    return respond(answer)


# --- multipart uploads straight to S3 -------------------------------------------------------------


class MpuCreate(Lenient):
    path: str = ""
    num_parts: int = 1


class MpuPart(Lenient):
    part_number: int
    etag: str = ""


class MpuFinish(Lenient):
    path: str = ""
    upload_id: str = ""
    parts: list[MpuPart] = []


def _s3(request: web.Request) -> S3ArtifactStore:
    store = request.app[ARTIFACTS]
    if not isinstance(store, S3ArtifactStore):
        # 501 is what MLflow's client takes as "upload through the proxy instead".
        raise MlflowError("NOT_IMPLEMENTED", "multipart uploads need S3 artifact storage", 501)
    return store


async def _file(request: web.Request, name: str) -> tuple[RunInfo, str]:
    """The run and the file a multipart upload writes (EDIT needed)."""
    run, folder = await _resolve(request, request.match_info["path"], Level.EDIT)
    base = name.replace("\\", "/").rsplit("/", 1)[-1]  # clients before MLflow 3.18 sent a local path
    if not base:
        raise invalid("path must name the file being uploaded")
    return run, normalize(f"{folder}/{base}" if folder else base)


async def mpu_create(request: web.Request) -> web.Response:
    store = _s3(request)
    body = await message(request, MpuCreate)
    if not 1 <= body.num_parts <= 10_000:
        raise invalid(f"num_parts must be between 1 and 10000, got {body.num_parts}")
    run, path = await _file(request, body.path)
    if run.lifecycle_stage != "active":
        raise invalid(f"run {run.run_id} is deleted; restore it to log artifacts to it")
    upload_id, parts = await storage.start_multipart(store, run, path, body.num_parts)
    credentials = [{"url": p.url, "part_number": p.part_number, "headers": {}} for p in parts]
    return respond({"upload_id": upload_id, "credentials": credentials})


async def mpu_complete(request: web.Request) -> web.Response:
    store = _s3(request)
    body = await message(request, MpuFinish)
    run, path = await _file(request, body.path)
    parts = [(p.part_number, p.etag) for p in sorted(body.parts, key=lambda p: p.part_number)]
    await storage.complete_multipart(store, run, path, body.upload_id, parts)
    return respond()


async def mpu_abort(request: web.Request) -> web.Response:
    store = _s3(request)
    body = await message(request, MpuFinish)
    run, path = await _file(request, body.path)
    with contextlib.suppress(NotFound):  # already gone: aborting is idempotent
        await storage.abort_multipart(store, run, path, body.upload_id)
    return respond()


ROUTES: list[MlflowRoute] = [
    ("GET", "artifacts", list_proxied, READ_HANDLER),
    ("GET", "artifacts/{path:.+}", download, READ_HANDLER),
    ("PUT", "artifacts/{path:.+}", upload, EDIT_HANDLER),
    ("DELETE", "artifacts/{path:.+}", delete, MANAGE_HANDLER),
    ("POST", "mpu/create/{path:.+}", mpu_create, EDIT_HANDLER),
    ("POST", "mpu/complete/{path:.+}", mpu_complete, EDIT_HANDLER),
    ("POST", "mpu/abort/{path:.+}", mpu_abort, EDIT_HANDLER),
]
"""Under /api/2.0/mlflow-artifacts."""

TRACKING_ROUTES: list[MlflowRoute] = [("GET", "artifacts/list", list_tracking, READ_HANDLER)]
"""Under /api/2.0/mlflow."""
