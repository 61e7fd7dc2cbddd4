"""What kiseki answers for the parts of MLflow's API it does not serve, and the server-info handshake.

Every MLflow route kiseki lacks (model registry, traces, logged models, prompts, the gateway, scorers,
evaluation datasets, …) answers 404 ENDPOINT_NOT_FOUND in MLflow's error shape, naming the feature, so the
client raises a clear `RestException` (or falls back, where it knows how) and never sees a crash.
"""

from __future__ import annotations

from aiohttp import web

from kiseki_server.appkeys import ARTIFACTS
from kiseki_server.artifacts import S3ArtifactStore
from kiseki_server.auth.policy import READ
from kiseki_server.mlflow.errors import MlflowRoute, error_body
from kiseki_server.mlflow.wire import respond

_FEATURES = (
    ("registered-models", "the model registry"),
    ("model-versions", "the model registry"),
    ("traces", "tracing"),
    ("unified-traces", "tracing"),
    ("logged-models", "logged models"),
    ("prompt", "prompts"),
    ("gateway", "the AI gateway"),
    ("scorers", "scorers"),
    ("datasets", "evaluation datasets"),
    ("label-schemas", "labeling"),
    ("review-queues", "labeling"),
    ("issues", "issues"),
    ("workspaces", "workspaces"),
)


def _feature(path: str) -> str:
    for part in path.split("/"):
        for prefix, feature in _FEATURES:
            if part.startswith(prefix):
                return feature
    return "this endpoint"


async def not_served(request: web.Request) -> web.Response:
    feature = _feature(request.path)
    return error_body(
        "ENDPOINT_NOT_FOUND",
        f"kiseki serves MLflow's tracking API (experiments, runs, metrics, artifacts) but not {feature}: "
        f"{request.method} {request.path} is not implemented (see kiseki's docs/mlflow.md)",
        404,
    )


async def server_info(request: web.Request) -> web.Response:
    """What the client asks before moving artifacts: multipart uploads straight to storage on S3."""
    s3 = isinstance(request.app[ARTIFACTS], S3ArtifactStore)
    return respond(
        {
            "store_type": "SqlStore",
            "artifact_serving_enabled": True,
            "workspaces_enabled": False,
            "multipart_uploads_enabled": s3,
            "multipart_downloads_enabled": False,
            "artifacts_presigned_only": False,
        }
    )


async def search_logged_models(request: web.Request) -> web.Response:
    """kiseki has no logged models: a search finds none (the 3.x client searches during some flows)."""
    return respond({"models": []})


ROUTES: list[MlflowRoute] = [("POST", "logged-models/search", search_logged_models, READ)]
