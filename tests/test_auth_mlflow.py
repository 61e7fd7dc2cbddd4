"""MLflow's routes with access control on: the unmodified `mlflow` client against a real `kiseki server`
(KISEKI_AUTH=true) with each way it can send credentials, and the refusals in MLflow's error shape,
also when the middleware (not a handler) refuses."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from kiseki_server.app import create_app
from kiseki_server.auth import credentials
from kiseki_server.config import Settings
from tests.authkit import ADMIN_TOKEN, auth_settings, bearer, make_user
from tests.conftest import create_database
from tests.s3 import S3Server

_CREDENTIAL_VARS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
PASSWORD = "correct-horse-battery-staple"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    admin_token: str

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Any:
        """kiseki's own API (the admin routes), with the admin token unless told otherwise."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **bearer(token or self.admin_token)},
        )
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read() or b"null")

    def user(self, name: str, *, password: str | None = None) -> None:
        self.call("POST", "/api/v1/users", {"name": name, "password": password})

    def token(self, user: str, scope: str = "write") -> str:
        made = self.call("POST", "/api/v1/tokens", {"user": user, "scope": scope, "name": "mlflow test"})
        token: str = made["token"]
        return token


@pytest.fixture(scope="module")
def server(postgres_url: str, template_url: str, s3_server: S3Server, s3_bucket: str) -> Iterator[Server]:
    """One real auth-on `kiseki server` on S3 for this module (tests isolate by unique names, users)."""
    from tests.servers import kiseki_server

    database_url = create_database(postgres_url, "kiseki_test_auth_mlflow")
    data_dir = tempfile.mkdtemp(prefix="kiseki-auth-mlflow-", dir="/tmp")
    admin = credentials.new_token()
    env = {
        "KISEKI_AUTH": "true",
        "KISEKI_ADMIN_TOKEN": admin,
        "KISEKI_DEFAULT_ARTIFACT_ROOT": f"s3://{s3_bucket}/auth-mlflow-{uuid.uuid4().hex[:6]}",
        "KISEKI_S3_ENDPOINT_URL": s3_server.endpoint,
        "KISEKI_S3_ACCESS_KEY_ID": s3_server.access_key_id,
        "KISEKI_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "KISEKI_S3_REGION": s3_server.region,
    }
    try:
        with kiseki_server("--database-url", database_url, "--data-dir", data_dir, env=env) as (url, _):
            yield Server(url, admin)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def as_user(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`as_user(**env)` points mlflow at the server with exactly these credential variables set."""

    def use(**env: str) -> MlflowClient:
        for name in _CREDENTIAL_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return MlflowClient(tracking_uri=server.url)

    for name in _CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.url)
    yield use
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    mlflow.set_tracking_uri(previous)


def _refused(call: Any, code: str) -> MlflowException:
    with pytest.raises(MlflowException) as refused:
        call()
    assert refused.value.error_code == code, refused.value.message
    return refused.value


@pytest.mark.parametrize("how", ["bearer-token", "password", "token-as-password"])
def test_the_mlflow_client_works_with_each_kind_of_credential(
    server: Server, as_user: Any, how: str, tmp_path: Path
) -> None:
    name = unique("user")
    server.user(name, password=PASSWORD)
    if how == "bearer-token":
        client = as_user(MLFLOW_TRACKING_TOKEN=server.token(name))
    elif how == "password":
        client = as_user(MLFLOW_TRACKING_USERNAME=name, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    else:
        client = as_user(MLFLOW_TRACKING_USERNAME=name, MLFLOW_TRACKING_PASSWORD=server.token(name))

    experiment = mlflow.set_experiment(unique(how))
    (tmp_path / "model.txt").write_text("weights")
    with mlflow.start_run(run_name="trained") as run:
        mlflow.log_param("lr", 0.01)
        for step in range(5):
            mlflow.log_metric("loss", 1 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.9, "f1": 0.8})
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("batch", 2.0, 0, 3)],
            params=[Param("opt", "adam")],
            tags=[RunTag("team", "vision")],
        )
        mlflow.log_artifact(str(tmp_path / "model.txt"), "model")
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.01", "opt": "adam"}
    assert got.data.metrics == {"loss": 0.2, "acc": 0.9, "f1": 0.8, "batch": 2.0}
    assert got.data.tags["team"] == "vision" and got.info.status == "FINISHED"
    (tmp_path / "out").mkdir()
    downloaded = client.download_artifacts(run.info.run_id, "model/model.txt", str(tmp_path / "out"))
    assert Path(downloaded).read_text() == "weights"
    found = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert [r.info.run_id for r in found] == [run.info.run_id]
    assert [e.name for e in client.search_experiments(filter_string=f"name = '{experiment.name}'")] == [
        experiment.name
    ]


def test_without_credentials_the_client_gets_a_clear_error(server: Server, as_user: Any) -> None:
    client = as_user()
    refused = _refused(lambda: client.search_experiments(), "UNAUTHENTICATED")
    assert "MLFLOW_TRACKING_TOKEN" in refused.message
    refused = _refused(lambda: mlflow.set_experiment(unique("anonymous")), "UNAUTHENTICATED")
    client = as_user(MLFLOW_TRACKING_TOKEN="ksk_" + "x" * 43)
    refused = _refused(lambda: client.get_experiment_by_name("Default"), "UNAUTHENTICATED")
    assert "unknown token" in refused.message


def test_a_read_scoped_token_reads_but_cannot_log(server: Server, as_user: Any, tmp_path: Path) -> None:
    name = unique("reader")
    server.user(name)
    writer = as_user(MLFLOW_TRACKING_TOKEN=server.token(name))
    experiment_id = writer.create_experiment(unique("read-only"))
    run = writer.create_run(experiment_id)
    writer.log_metric(run.info.run_id, "loss", 0.5)

    reader = as_user(MLFLOW_TRACKING_TOKEN=server.token(name, "read"))
    assert reader.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    assert [m.value for m in reader.get_metric_history(run.info.run_id, "loss")] == [0.5]
    for write in (
        lambda: reader.log_metric(run.info.run_id, "loss", 0.1),
        lambda: reader.log_batch(run.info.run_id, params=[Param("p", "1")]),
        lambda: reader.set_tag(run.info.run_id, "k", "v"),
        lambda: reader.create_run(experiment_id),
        lambda: reader.create_experiment(unique("nope")),
        lambda: reader.delete_run(run.info.run_id),
    ):
        refused = _refused(write, "PERMISSION_DENIED")
        assert "read scope" in refused.message
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(Exception, match="403"):
        reader.log_artifact(run.info.run_id, str(tmp_path / "f.txt"))
    assert reader.get_run(run.info.run_id).data.metrics == {"loss": 0.5}, "a refused write changed the run"
    assert reader.list_artifacts(run.info.run_id) == []


def test_a_user_with_none_on_an_experiment_never_sees_its_runs(
    server: Server, as_user: Any, tmp_path: Path
) -> None:
    alice, bob = unique("alice"), unique("bob")
    server.user(alice)
    server.user(bob)
    alice_token, bob_token = server.token(alice), server.token(bob)
    owner = as_user(MLFLOW_TRACKING_TOKEN=alice_token)
    private = owner.create_experiment(unique("private"))
    secret = owner.create_run(private, run_name="secret")
    owner.log_param(secret.info.run_id, "p", "1")
    (tmp_path / "f.txt").write_text("secret bytes")
    owner.log_artifact(secret.info.run_id, str(tmp_path / "f.txt"))
    uri = owner.get_run(secret.info.run_id).info.artifact_uri
    # alice manages what she created, so she can shut bob out of it.
    server.call(
        "PUT", f"/api/v1/experiments/{private}/permissions/{bob}", {"level": "none"}, token=alice_token
    )

    other = as_user(MLFLOW_TRACKING_TOKEN=bob_token)  # (credentials are read from env per request)
    mine = other.create_experiment(unique("bobs"))
    own = other.create_run(mine, run_name="own")
    run_id = secret.info.run_id
    for read in (
        lambda: other.get_run(run_id),
        lambda: other.get_experiment(private),
        lambda: other.get_metric_history(run_id, "loss"),
        lambda: other.list_artifacts(run_id),
        lambda: other.search_runs([private]),
        lambda: other.search_runs([mine, private]),
        lambda: other.log_param(run_id, "q", "2"),
        lambda: other.delete_experiment(private),
    ):
        _refused(read, "PERMISSION_DENIED")
    _refused(lambda: other.download_artifacts(run_id, "f.txt", str(tmp_path)), "PERMISSION_DENIED")
    # Straight to the artifact proxy, without asking for the run first: refused there too.
    (tmp_path / "out").mkdir()
    with pytest.raises(Exception, match="403"):
        mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/f.txt", dst_path=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "f.txt").exists()
    assert [r.info.run_id for r in other.search_runs([mine])] == [own.info.run_id]
    seen = {e.experiment_id for e in other.search_experiments(max_results=1000)}
    assert mine in seen and private not in seen, "search_experiments listed a hidden experiment"
    everything = other.search_runs([e for e in seen], max_results=1000)
    assert run_id not in {r.info.run_id for r in everything}
    owner = as_user(MLFLOW_TRACKING_TOKEN=alice_token)
    assert owner.get_run(run_id).data.params == {"p": "1"}, "bob's refused write changed alice's run"


# --- refusals by the middleware, in MLflow's shape (in-process app) --------------------------------


@pytest.fixture
async def auth_client(aiohttp_client: Any, settings: Settings) -> TestClient:
    """An auth-on app in-process (local artifact store), 3 failed credentials a minute per address."""
    changes = {"auth_failure_limit": 3, "default_artifact_root": None}
    return await aiohttp_client(create_app(auth_settings(settings, **changes)))


@pytest.mark.parametrize(
    "path",
    [
        "/api/2.0/mlflow/experiments/search",
        "/ajax-api/2.0/mlflow/experiments/search",
        "/api/3.0/mlflow/server-info",
        "/ajax-api/3.0/mlflow/server-info",
        "/api/2.0/mlflow-artifacts/artifacts?path=1",
        "/api/2.0/mlflow/registered-models/search",
    ],
)
async def test_unauthenticated_is_mlflows_error_shape(auth_client: TestClient, path: str) -> None:
    response = await auth_client.get(path)
    assert response.status == 401, await response.text()
    body = await response.json()
    assert set(body) == {"error_code", "message"} and body["error_code"] == "UNAUTHENTICATED", body
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_scope_refusals_unsupported_bodies_and_rate_limits_are_mlflows_shape(
    auth_client: TestClient,
) -> None:
    reader = await make_user(auth_client, "reader", scope="read")
    response = await auth_client.post(
        "/api/2.0/mlflow/experiments/create", json={"name": "x"}, headers=reader.headers
    )
    assert response.status == 403
    assert (await response.json())["error_code"] == "PERMISSION_DENIED"

    response = await auth_client.post(
        "/ajax-api/2.0/mlflow/experiments/create",
        data=b'{"name": "x"}',
        headers={**bearer(ADMIN_TOKEN), "Content-Type": "text/plain"},
    )
    assert response.status == 415
    body = await response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and "JSON" in body["message"], body

    statuses = []
    for i in range(4):  # a new unknown token each time (an unknown one is remembered for a moment)
        response = await auth_client.get(
            "/api/2.0/mlflow/experiments/search", headers=bearer(f"ksk_{i}" + "y" * 42)
        )
        statuses.append(response.status)
    assert statuses == [401, 401, 401, 429]
    assert (await response.json())["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert int(response.headers["Retry-After"]) >= 1


async def test_handlers_check_the_experiment_in_the_body(auth_client: TestClient) -> None:
    """The ids of MLflow's routes are in bodies and queries: each handler checks them once parsed."""
    alice = await make_user(auth_client, "alice")
    bob = await make_user(auth_client, "bob")

    async def call(method: str, path: str, who: Any, **kwargs: Any) -> tuple[int, Any]:
        response = await auth_client.request(method, f"/api/2.0/mlflow/{path}", headers=who.headers, **kwargs)
        return response.status, await response.json()

    status, body = await call("POST", "experiments/create", alice, json={"name": "alices"})
    assert status == 200, body
    experiment_id = body["experiment_id"]
    status, body = await call("POST", "runs/create", alice, json={"experiment_id": experiment_id})
    assert status == 200, body
    run_id = body["run"]["info"]["run_id"]
    # Default permission is read: bob reads alice's experiment, but edits and deletes nothing.
    status, _ = await call("GET", "experiments/get-by-name", bob, params={"experiment_name": "alices"})
    assert status == 200
    refusals = [
        ("POST", "runs/create", {"json": {"experiment_id": experiment_id}}),
        ("POST", "runs/log-batch", {"json": {"run_id": run_id, "params": [{"key": "a", "value": "1"}]}}),
        ("POST", "runs/log-inputs", {"json": {"run_id": run_id, "datasets": []}}),
        ("POST", "runs/delete", {"json": {"run_id": run_id}}),
        ("POST", "experiments/update", {"json": {"experiment_id": experiment_id, "new_name": "bobs"}}),
        ("POST", "experiments/delete", {"json": {"experiment_id": experiment_id}}),
    ]
    for method, path, kwargs in refusals:
        status, body = await call(method, path, bob, **kwargs)
        assert (status, body["error_code"]) == (403, "PERMISSION_DENIED"), f"{path}: {body}"
    artifact = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/a.txt"
    response = await auth_client.put(artifact, data=b"x", headers=bob.headers)
    assert response.status == 403, await response.text()
    response = await auth_client.put(artifact, data=b"x", headers=alice.headers)
    assert response.status == 200, await response.text()
    response = await auth_client.get(artifact, headers=bob.headers)
    assert response.status == 200 and await response.read() == b"x"
    response = await auth_client.delete(artifact, headers=bob.headers)
    assert response.status == 403, "deleting artifacts needs MANAGE (MLflow's artifact proxy rule)"
    # alice, the creator, manages: she may delete.
    status, body = await call("POST", "runs/delete", alice, json={"run_id": run_id})
    assert status == 200, body
