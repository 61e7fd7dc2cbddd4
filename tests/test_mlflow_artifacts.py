"""MLflow's client moving artifacts through kiseki, on both stores (local folder and S3 via SeaweedFS):
proxied uploads and downloads streamed through the service (past the request size limit), listings,
deletes, and on S3 the multipart path where the client sends parts straight to storage."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")

import mlflow
from mlflow import MlflowClient
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

import kiseki
from tests.conftest import create_database
from tests.servers import kiseki_server

MiB = 1024 * 1024


@pytest.fixture(scope="module", params=["local", "s3"])
def server(request, postgres_url, template_url, tmp_path_factory) -> Iterator[tuple[str, str, list[str]]]:  # type: ignore[no-untyped-def]
    """A kiseki server on one store, with a 1 MiB request limit (uploads must stream past it)."""
    store = request.param
    env = {"KISEKI_MAX_REQUEST_BYTES": str(MiB), "KISEKI_ARTIFACT_MULTIPART_PART_SIZE": str(5 * MiB)}
    if store == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        env |= {
            "KISEKI_DEFAULT_ARTIFACT_ROOT": f"s3://{bucket}/mlflow-{uuid.uuid4().hex[:6]}",
            "KISEKI_S3_ENDPOINT_URL": s3.endpoint,
            "KISEKI_S3_ACCESS_KEY_ID": s3.access_key_id,
            "KISEKI_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
            "KISEKI_S3_REGION": s3.region,
        }
    database_url = create_database(postgres_url, f"kiseki_test_mlflow_artifacts_{store}")
    data_dir = tmp_path_factory.mktemp(f"mlflow-{store}")
    args = ("--database-url", database_url, "--data-dir", str(data_dir), "--access-log")
    with kiseki_server(*args, env=env) as (url, lines):
        yield url, store, lines


@pytest.fixture
def client(server: tuple[str, str, list[str]]) -> Iterator[MlflowClient]:
    mlflow.set_tracking_uri(server[0])
    mlflow.set_experiment(f"artifacts-{uuid.uuid4().hex[:8]}")
    yield MlflowClient()
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def destination(path: Path) -> str:
    path.mkdir()  # MLflow 2.x wants the destination folder to exist
    return str(path)


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))
    return path


def test_upload_list_download_delete(client: MlflowClient, tmp_path: Path) -> None:
    big = random_file(tmp_path / "weights.bin", 12 * MiB + 123)  # over the request limit, several S3 parts
    (tmp_path / "tree" / "deep").mkdir(parents=True)
    (tmp_path / "tree" / "x.txt").write_text("x")
    (tmp_path / "tree" / "deep" / "y.txt").write_text("yy")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(big), "model")
        mlflow.log_artifact(str(empty))
        mlflow.log_artifacts(str(tmp_path / "tree"), "tree")
    run_id = run.info.run_id
    listed = [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id)]
    assert listed == [("empty.txt", False, 0), ("model", True, None), ("tree", True, None)]
    assert [(f.path, f.file_size) for f in client.list_artifacts(run_id, "model")] == [
        ("model/weights.bin", big.stat().st_size)
    ]
    assert client.list_artifacts(run_id, "model/weights.bin") == [], "a file lists as empty, as in MLflow"
    out = Path(client.download_artifacts(run_id, "model/weights.bin", destination(tmp_path / "dl")))
    assert sha256(out) == sha256(big)
    tree = Path(client.download_artifacts(run_id, "tree", destination(tmp_path / "dl2")))
    assert (tree / "deep" / "y.txt").read_text() == "yy"
    assert {
        f.path for f in kiseki.Client(tracking_uri=mlflow.get_tracking_uri()).list_artifacts(run_id, "tree")
    } == {"tree/x.txt", "tree/deep"}, "kiseki's own API sees what mlflow uploaded"
    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    repo.delete_artifacts("tree/deep")
    assert [f.path for f in client.list_artifacts(run_id, "tree")] == ["tree/x.txt"]


def test_large_file_through_multipart_or_stream(
    client: MlflowClient, server: tuple[str, str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A >100 MB file: on S3 the client sends 16 MiB parts straight to storage (mpu routes); on the
    local store it streams through the service."""
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(50 * MiB))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(16 * MiB))
    big = random_file(tmp_path / "big.bin", 105 * MiB + 7)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(big), "ckpt")
    assert [(f.path, f.file_size) for f in client.list_artifacts(run.info.run_id, "ckpt")] == [
        ("ckpt/big.bin", big.stat().st_size)
    ]
    out = Path(client.download_artifacts(run.info.run_id, "ckpt/big.bin", destination(tmp_path / "dl")))
    assert sha256(out) == sha256(big)
    info = mlflow.utils.rest_utils.http_request(
        mlflow.utils.credentials.get_default_host_creds(server[0]), "/api/3.0/mlflow/server-info", "GET"
    ).json()
    assert info["multipart_uploads_enabled"] is (server[1] == "s3")
    via_parts = any(f"mpu/complete/{run.info.experiment_id}/{run.info.run_id}" in line for line in server[2])
    assert via_parts is (server[1] == "s3"), "S3 uploads big files in parts straight to storage"


def test_paths_cannot_leave_the_run(client: MlflowClient, server: tuple[str, str, list[str]]) -> None:
    import requests

    with mlflow.start_run() as run:
        mlflow.log_text("secret", "s.txt")
    with mlflow.start_run() as other:
        pass
    base = f"{server[0]}/api/2.0/mlflow-artifacts/artifacts"
    experiment = run.info.experiment_id
    # Percent-encoded dots: a plain '..' would be resolved by requests itself before sending.
    wrong_run = requests.get(
        f"{base}/{experiment}/{other.info.run_id}/artifacts/%2E%2E/%2E%2E/{run.info.run_id}/artifacts/s.txt"
    )
    assert wrong_run.status_code in (400, 404), wrong_run.text
    mismatched = requests.get(f"{base}/{experiment}9/{run.info.run_id}/artifacts/s.txt")
    assert mismatched.status_code == 404 and mismatched.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert requests.get(f"{base}/{experiment}/{run.info.run_id}/artifacts/s.txt").text == "secret"
