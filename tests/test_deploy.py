"""Deployment and operations: the container and orchestration files, the ops endpoints, and the topology
they describe run for real — replicas sharing one Postgres and one S3, concurrent migrations, SIGTERM in
the middle of a stream of batches behind a load balancer, and `--workers`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

import kiseki
from kiseki.models import Metric
from kiseki_server import db
from kiseki_server.app import create_app
from kiseki_server.auth import credentials
from kiseki_server.config import Settings
from kiseki_server.logs import log_handler
from tests.conftest import create_database, free_port, with_database
from tests.s3 import S3Server
from tests.servers import kiseki_server

ROOT = Path(__file__).resolve().parents[1]
SETTING_ENV_NAMES = {f"KISEKI_{name.upper()}" for name in Settings.model_fields}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


REQUIRED_ENV = {
    "KISEKI_ADMIN_TOKEN": credentials.new_token(),
    "KISEKI_AUTH_SECRET": secrets.token_urlsafe(32),
}
"""What a `.env` gives the compose file's required variables (`${NAME:?why}`)."""


def interpolate(value: Any) -> Any:
    """Compose's `${NAME:-default}` with nothing set: the default (what `docker compose up` uses); a
    required `${NAME:?why}`: the value `.env` would give it."""
    if not isinstance(value, str):
        return value
    value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m[1], m[2]), value)
    return re.sub(r"\$\{(\w+):\?([^}]*)\}", lambda m: REQUIRED_ENV[m[1]], value)


def s3_env(s3: S3Server, bucket: str) -> dict[str, str]:
    return {
        "KISEKI_DEFAULT_ARTIFACT_ROOT": f"s3://{bucket}/{unique('deploy')}",
        "KISEKI_S3_ENDPOINT_URL": s3.endpoint,
        "KISEKI_S3_ACCESS_KEY_ID": s3.access_key_id,
        "KISEKI_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
        "KISEKI_S3_REGION": s3.region,
    }


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


# --- the files: compose, Kubernetes, Dockerfile -----------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_postgres_minio_migrations_and_the_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "minio", "create-bucket", "migrate", "kiseki"} <= set(services)
    for name in ("postgres", "minio", "kiseki"):
        assert services[name]["healthcheck"]["test"], f"{name} needs a healthcheck for depends_on"
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    declared = set(compose["volumes"])
    for name, mount in [("postgres", "/var/lib/postgresql/data"), ("minio", "/data")]:
        volumes = {v.split(":")[0] for v in services[name]["volumes"] if v.endswith(f":{mount}")}
        assert volumes and volumes <= declared, f"{name} keeps {mount} in a named volume"

    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
            condition = spec["condition"]
            if "healthcheck" in services[dependency]:
                assert condition == "service_healthy", f"{name} waits for {dependency} to be healthy"
            else:
                assert condition == "service_completed_successfully", f"{dependency} is a one-shot"
    kiseki_deps = services["kiseki"]["depends_on"]
    assert kiseki_deps["migrate"]["condition"] == "service_completed_successfully"
    assert kiseki_deps["create-bucket"]["condition"] == "service_completed_successfully"
    assert kiseki_deps["postgres"]["condition"] == "service_healthy"

    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"], "the one-shot migration runs `kiseki db upgrade`"
    for name in ("migrate", "kiseki"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (ROOT / services[name]["build"]["context"] / "deploy" / "Dockerfile").is_file()

    env = {k: str(interpolate(v)) for k, v in services["kiseki"]["environment"].items()}
    assert set(env) <= SETTING_ENV_NAMES, f"unknown settings: {set(env) - SETTING_ENV_NAMES}"
    assert env["KISEKI_S3_PUBLIC_ENDPOINT_URL"] == "http://localhost:9000"
    assert env["KISEKI_S3_ENDPOINT_URL"] == "http://minio:9000"
    bucket = interpolate(services["create-bucket"]["environment"]["KISEKI_BUCKET"])
    assert env["KISEKI_DEFAULT_ARTIFACT_ROOT"] == f"s3://{bucket}/artifacts", "kiseki uses the bucket made"
    assert "mc mb" in str(services["create-bucket"]["command"])
    minio_env = {k: interpolate(v) for k, v in services["minio"]["environment"].items()}
    assert env["KISEKI_S3_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert env["KISEKI_S3_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    pg_env = {k: interpolate(v) for k, v in services["postgres"]["environment"].items()}
    assert env["KISEKI_DATABASE_URL"] == (
        f"postgresql://{pg_env['POSTGRES_USER']}:{pg_env['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{pg_env['POSTGRES_DB']}"
    )
    assert interpolate(migrate["environment"]["KISEKI_DATABASE_URL"]) == env["KISEKI_DATABASE_URL"]
    assert any(str(p).endswith(":5000") for p in services["kiseki"]["ports"]), "the API is published"
    Settings(**{k.removeprefix("KISEKI_").lower(): v for k, v in env.items()})  # the values validate

    # Secrets come from the environment or .env: every password is a ${VAR:-local default}.
    for service, key in [("postgres", "POSTGRES_PASSWORD"), ("minio", "MINIO_ROOT_PASSWORD")]:
        assert str(services[service]["environment"][key]).startswith("${"), f"{service} {key} is hard-coded"
    # Auth is on, and its secrets have no default at all: compose refuses to start without them in .env.
    assert env["KISEKI_AUTH"] == "true"
    for key in ("KISEKI_ADMIN_TOKEN", "KISEKI_AUTH_SECRET"):
        raw = str(services["kiseki"]["environment"][key])
        assert raw.startswith(f"${{{key}:?"), f"{key} must be a required variable, not {raw!r}"
        assert env[key] == REQUIRED_ENV[key]
    example = (ROOT / ".env.example").read_text()
    for key in ("KISEKI_ADMIN_TOKEN", "KISEKI_AUTH_SECRET"):
        assert re.search(rf"^{key}=$", example, re.M), f".env.example lists {key}, empty"
    assert "kiseki tokens generate" in example


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip(
            "the `docker compose` plugin is not installed on this machine (the YAML checks above ran)"
        )
    result = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **REQUIRED_ENV},
    )
    assert result.returncode == 0, result.stderr


def kubernetes_objects() -> list[dict[str, Any]]:
    folder = ROOT / "deploy" / "kubernetes"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, "kustomization.yaml lists every manifest"
    return [doc for name in sorted(listed) for doc in yaml.safe_load_all((folder / name).read_text()) if doc]


def test_kubernetes_manifests() -> None:
    objects = kubernetes_objects()
    by_kind = collections.defaultdict(list)
    for obj in objects:
        by_kind[obj["kind"]].append(obj)
    assert {"Deployment", "Service", "Job", "ConfigMap", "Secret"} <= set(by_kind)
    (deployment,) = by_kind["Deployment"]
    (config,) = by_kind["ConfigMap"]
    (secret,) = by_kind["Secret"]
    (job,) = by_kind["Job"]
    (service,) = by_kind["Service"]

    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["kiseki", "server"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        assert container[probe]["httpGet"]["path"] == path, probe
        assert container[probe]["httpGet"]["port"] in ports, f"{probe} targets a declared port"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in ports

    settings = Settings(**{k.removeprefix("KISEKI_").lower(): v for k, v in config["data"].items()})
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.shutdown_timeout, (
        "the pod must get time to pause and then finish in-flight requests before SIGKILL"
    )

    (migration,) = job["spec"]["template"]["spec"]["containers"]
    assert migration["command"] == ["kiseki", "db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")

    names = {("ConfigMap", config["metadata"]["name"]), ("Secret", secret["metadata"]["name"])}
    env_names = set(config["data"]) | set(secret["stringData"])
    for c in (container, migration):
        refs = {("ConfigMap", r["configMapRef"]["name"]) for r in c["envFrom"] if "configMapRef" in r}
        refs |= {("Secret", r["secretRef"]["name"]) for r in c["envFrom"] if "secretRef" in r}
        assert refs == names, f"{c['name']} reads the ConfigMap and the Secret"
        env_names |= {e["name"] for e in c.get("env", [])}
    assert env_names <= SETTING_ENV_NAMES, f"unknown settings: {env_names - SETTING_ENV_NAMES}"

    # Auth on, its two secrets by reference to a Secret the operator creates (never a shipped placeholder).
    env = {e["name"]: e for e in container["env"]}
    assert env["KISEKI_AUTH"]["value"] == "true"
    for name, key in [("KISEKI_ADMIN_TOKEN", "admin-token"), ("KISEKI_AUTH_SECRET", "auth-secret")]:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "kiseki-auth", "key": key}, f"{name} comes from the kiseki-auth Secret"
    assert "kiseki-auth" not in {s["metadata"]["name"] for s in by_kind["Secret"]}, "no shipped placeholder"
    assert not {"KISEKI_ADMIN_TOKEN", "KISEKI_AUTH_SECRET"} & set(config["data"]), "secrets in a ConfigMap"
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "kubectl create secret generic kiseki-auth" in readme, "deploy/README says how to create it"


def test_dockerfile_is_multi_stage_slim_non_root_and_runs_kiseki_server() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert len(froms) >= 2 and " AS build" in froms[0], "a build stage and a runtime stage"
    base = next(arg for op, arg in instructions if op == "ARG" and arg.startswith("PYTHON_IMAGE="))
    assert "slim" in base
    assert any(op == "COPY" and arg.startswith("--from=build") for op, arg in instructions)
    (user,) = [arg for op, arg in instructions if op == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert ("ENTRYPOINT", '["kiseki"]') in instructions and ("CMD", '["server"]') in instructions
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "KISEKI_HOST=0.0.0.0" in env, "inside a container the service must listen on every interface"
    assert "DATABASE_URL" not in env and "SECRET" not in env, "configuration and secrets come at run time"

    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[ignore.index("*") + 1 :][:4] == ["!pyproject.toml", "!README.md", "!sdk/", "!service/"]
    assert "**/.env" in ignore


# --- ops endpoints, request ids, logs (the app in-process) ------------------------------------------------


@pytest.fixture
def s3_settings(settings: Settings, s3_server: S3Server, s3_bucket: str) -> Settings:
    return settings.model_copy(
        update={
            "default_artifact_root": f"s3://{s3_bucket}/{unique('ops')}",
            "s3_endpoint_url": s3_server.endpoint,
            "s3_access_key_id": s3_server.access_key_id,
            "s3_secret_access_key": SecretStr(s3_server.secret_access_key),
            "s3_region": s3_server.region,
        }
    )


async def test_healthz_and_readyz_when_all_is_well(aiohttp_client, s3_settings: Settings) -> None:
    client = await aiohttp_client(create_app(s3_settings))
    response = await client.get("/healthz")
    assert response.status == 200 and await response.json() == {"status": "ok"}
    response = await client.get("/readyz")
    body = await response.json()
    assert response.status == 200, body
    assert body["status"] == "ok" and body["down"] == []
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "postgres": "ok",
        "artifact_store": "ok",
    }


async def test_readyz_names_an_unreachable_artifact_store(aiohttp_client, s3_settings: Settings) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    app = create_app(s3_settings.model_copy(update={"s3_endpoint_url": closed, "s3_max_attempts": 1}))
    client = await aiohttp_client(app)
    response = await client.get("/readyz")
    body = await response.json()
    assert response.status == 503, body
    assert body["down"] == ["artifact_store"]
    assert closed in body["checks"]["artifact_store"]["error"], "the error names the storage"
    assert body["checks"]["postgres"]["status"] == "ok"
    assert (await client.get("/healthz")).status == 200, "liveness never depends on a backend"


async def test_readyz_names_a_missing_bucket(aiohttp_client, s3_settings: Settings) -> None:
    app = create_app(s3_settings.model_copy(update={"default_artifact_root": f"s3://{unique('nobucket')}/x"}))
    body = await (await (await aiohttp_client(app)).get("/readyz")).json()
    assert body["down"] == ["artifact_store"] and "bucket" in body["checks"]["artifact_store"]["error"]


async def test_readyz_names_postgres_when_the_database_goes_away(
    aiohttp_client, settings: Settings, postgres_url: str, tmp_path: Path
) -> None:
    # No connection floor: the pool would keep trying to reconnect to the dropped database.
    local = settings.model_copy(
        update={"default_artifact_root": (tmp_path / "artifacts").as_uri(), "db_pool_min_size": 0}
    )
    client = await aiohttp_client(create_app(local))
    assert (await client.get("/readyz")).status == 200
    admin = await asyncpg.connect(postgres_url)
    try:
        name = urlsplit(local.database_url).path.lstrip("/")  # type: ignore[arg-type]
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()
    response = await client.get("/readyz")
    body = await response.json()
    assert response.status == 503, body
    assert body["down"] == ["postgres"]
    assert body["checks"]["postgres"]["error"]
    assert body["checks"]["artifact_store"]["status"] == "ok"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_requests_by_route_template_and_ingested_points(client) -> None:
    experiment = await (await client.post("/api/v1/experiments", json={"name": unique("m")})).json()
    run = await (
        await client.post("/api/v1/runs", json={"experiment_id": experiment["experiment_id"]})
    ).json()
    run_id = run["info"]["run_id"]
    for _ in range(2):
        assert (await client.get(f"/api/v1/runs/{run_id}")).status == 200
    batch = {
        "batch_id": str(uuid.uuid4()),
        "metric_columns": {"m": {"steps": list(range(1000)), "values": [0.5] * 1000}},
    }
    for _ in range(2):  # the second is a client's retry: acknowledged, not stored again
        assert (await client.post(f"/api/v1/runs/{run_id}/batch", json=batch)).status == 200
    assert (await client.get(f"/api/v1/runs/{'0' * 32}")).status == 404
    assert (await client.get("/no/such/page")).status == 404

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert run_id not in text, "routes are labelled by template, never by raw path"
    found = samples(text)

    def requests(method: str, route: str, status: str) -> float:
        labels = frozenset({"method": method, "route": route, "status": status}.items())
        return found.get(("kiseki_http_requests_total", labels), 0.0)

    assert requests("GET", "/api/v1/runs/{run_id}", "200") == 2
    assert requests("GET", "/api/v1/runs/{run_id}", "404") == 1
    assert requests("POST", "/api/v1/runs/{run_id}/batch", "200") == 2
    assert requests("GET", "/no/such/page", "404") == 0
    assert requests("GET", "(unmatched)", "404") == 1
    latency = frozenset({"method": "GET", "route": "/api/v1/runs/{run_id}", "status": "200"}.items())
    assert found[("kiseki_http_request_duration_seconds_count", latency)] == 2
    assert found[("kiseki_metric_points_ingested_total", frozenset())] == 1000
    assert found[("kiseki_log_batches_total", frozenset({("applied", "true")}))] == 1
    assert found[("kiseki_log_batches_total", frozenset({("applied", "false")}))] == 1
    assert found[("kiseki_log_batch_points_bucket", frozenset({("le", "1000.0")}))] == 1
    assert found[("kiseki_db_pool_connections", frozenset())] >= 1
    assert found[("kiseki_db_pool_max_connections", frozenset())] == 8
    assert ("kiseki_db_pool_connections_in_use", frozenset()) in found


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The service's JSON log lines while the test runs."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    logger = logging.getLogger("kiseki_server")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.setLevel(previous)
    logger.removeHandler(handler)


async def test_request_ids_are_echoed_and_tag_access_and_error_logs(
    aiohttp_client, settings: Settings, log_lines: io.StringIO
) -> None:
    app = create_app(settings.model_copy(update={"access_log": True}))

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_get("/api/v1/broken", broken)
    client = await aiohttp_client(app)
    response = await client.get("/api/v1/experiments", headers={"X-Request-ID": "job-7.attempt-2"})
    assert response.headers["X-Request-ID"] == "job-7.attempt-2"
    made_up = (await client.get("/api/v1/experiments")).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", made_up)
    unsafe = (await client.get("/healthz", headers={"X-Request-ID": "x" * 500})).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", unsafe), "an oversized or odd id is replaced, not logged"
    response = await client.get("/api/v1/broken", headers={"X-Request-ID": "trace-500"})
    assert response.status == 500 and response.headers["X-Request-ID"] == "trace-500"
    assert "Traceback" not in await response.text()

    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    access = [r for r in records if r["logger"] == "kiseki_server.access"]
    first = next(r for r in access if r.get("request_id") == "job-7.attempt-2")
    assert {"time", "level", "logger", "message"} <= set(first)
    assert (first["method"], first["path"], first["status"]) == ("GET", "/api/v1/experiments", 200)
    assert isinstance(first["duration_ms"], float)
    assert any(r.get("request_id") == made_up for r in access)
    (error,) = [r for r in records if r["level"] == "ERROR"]
    assert error["request_id"] == "trace-500", "the error log names the request"
    assert "RuntimeError: a bug" in error["exception"]
    assert next(r for r in access if r.get("request_id") == "trace-500")["status"] == 500


async def test_access_lines_are_off_by_default(client, log_lines: io.StringIO) -> None:
    assert (await client.get("/healthz")).status == 200
    assert "kiseki_server.access" not in log_lines.getvalue()


async def test_accepted_connections_have_tcp_nodelay(aiohttp_client, settings: Settings) -> None:
    app = create_app(settings)

    async def nodelay(request: web.Request) -> web.Response:
        assert request.transport is not None
        sock = request.transport.get_extra_info("socket")
        return web.json_response(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    app.router.add_get("/nodelay", nodelay)
    client = await aiohttp_client(app)
    assert await (await client.get("/nodelay")).json() is True, "small responses would wait on delayed ACKs"


# --- the topology for real: replicas, migrations, SIGTERM, workers -----------------------------------------


def test_replicas_share_postgres_and_s3(postgres_url, template_url, s3_server, s3_bucket, tmp_path) -> None:
    database_url = create_database(postgres_url, "kiseki_test_deploy_shared")
    env = s3_env(s3_server, s3_bucket)
    with (
        kiseki_server("--database-url", database_url, "--data-dir", str(tmp_path / "a"), env=env) as (
            url_a,
            _,
        ),
        kiseki_server("--database-url", database_url, "--data-dir", str(tmp_path / "b"), env=env) as (
            url_b,
            _,
        ),
        kiseki.Client(url_a) as a,
        kiseki.Client(url_b) as b,
    ):
        for url in (url_a, url_b):
            assert get(f"{url}/readyz")[0] == 200
        run_id = a.create_run(a.create_experiment(unique("shared"))).info.run_id
        for step in range(5000):
            a.log_metric(run_id, "loss", 1 / (step + 1), step=step)
        a.log_param(run_id, "lr", "0.01")
        model = tmp_path / "model.bin"
        model.write_bytes(os.urandom(300_000))
        a.log_artifact(run_id, model)
        a.flush()

        assert [m.step for m in b.get_metric_history(run_id, "loss")] == list(range(5000))
        assert b.get_run(run_id).data.params == {"lr": "0.01"}
        assert [f.path for f in b.list_artifacts(run_id)] == ["model.bin"]
        downloaded = Path(b.download_artifacts(run_id, "model.bin", tmp_path / "download"))
        assert downloaded.read_bytes() == model.read_bytes()
        b.set_terminated(run_id)
        assert a.get_run(run_id).info.status == "FINISHED"


def test_replicas_migrating_a_fresh_database_at_once(postgres_url: str) -> None:
    """Four `kiseki db upgrade` processes on an empty database, released together: the test holds the
    migration lock until all four are waiting for it, so they really do race."""
    name = "kiseki_test_deploy_migrate"
    url = with_database(postgres_url, name)
    command = [sys.executable, "-m", "kiseki", "db", "upgrade", "--database-url", url]
    waiting_for_the_lock = (
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
    )

    async def race() -> list[tuple[int | None, str, str]]:
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        holder = await asyncpg.connect(url)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", db._MIGRATION_LOCK)
            pipe = asyncio.subprocess.PIPE
            replicas = [
                await asyncio.create_subprocess_exec(*command, stdout=pipe, stderr=pipe) for _ in range(4)
            ]
            deadline = time.monotonic() + 30
            while await holder.fetchval(waiting_for_the_lock) < 4:
                assert time.monotonic() < deadline, "the replicas never queued for the migration lock"
                assert all(p.returncode is None for p in replicas), "a replica exited without the lock"
                await asyncio.sleep(0.05)
            await holder.execute("SELECT pg_advisory_unlock($1)", db._MIGRATION_LOCK)
        finally:
            await holder.close()
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in replicas)), 60)
        return [
            (p.returncode, out.decode(), err.decode())
            for p, (out, err) in zip(replicas, outputs, strict=True)
        ]

    results = asyncio.run(race())
    for code, out, err in results:
        assert code == 0, f"a replica's migration failed:\n{out}\n{err}"
        assert "up to date" in out
    applied = [name for _, out, _ in results for name in re.findall(r"\d{4}_\w+\.sql", out)]
    expected = [name for _, name, _ in db.migration_files()]
    assert sorted(applied) == sorted(expected), "each migration is applied by exactly one replica"

    async def check() -> None:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
            assert [r["name"] for r in rows] == expected
        finally:
            await conn.close()
        assert await db.pending(url) == []

    asyncio.run(check())
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "applied" not in again.stdout, "a later upgrade has nothing left to do"


class RoundRobinBalancer:
    """A tiny TCP load balancer on 127.0.0.1: each new connection goes to the next backend in turn, or to
    the one after if that refuses (a stopped replica), then bytes flow both ways until either side closes.
    """

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.connections: list[tuple[float, int]] = []  # (time.monotonic(), backend port) per connection
        self.refused: collections.Counter[int] = collections.Counter()
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> RoundRobinBalancer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result()
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            for _ in self.ports:
                port = self.ports[self._turn % len(self.ports)]
                self._turn += 1
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    self.refused[port] += 1
                    continue
                self.connections.append((time.monotonic(), port))
                await asyncio.gather(self._pipe(client_reader, writer), self._pipe(reader, client_writer))
                return
            client_writer.close()
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


def _batch_body(batch_id: str, key: str, steps: range) -> bytes:
    columns = {key: {"steps": list(steps), "values": [float(s) for s in steps]}}
    return json.dumps({"batch_id": batch_id, "metric_columns": columns}).encode()


def _slow_batch(port: int, run_id: str, halfway: threading.Event, answer: list[bytes]) -> None:
    """POST a batch to one replica in two halves with a pause between: SIGTERM arrives mid-request."""
    body = _batch_body(str(uuid.uuid4()), "slow", range(20_000))
    head = (
        f"POST /api/v1/runs/{run_id}/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.2)  # let the server start the handler
        halfway.set()
        time.sleep(0.8)  # the replica is shutting down meanwhile; the request must still complete
        sock.sendall(body[len(body) // 2 :])
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    answer.append(received)


@contextlib.contextmanager
def crashable_server(
    *args: str, env: dict[str, str], port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`kiseki server` for a test that kills it; whatever is left is killed at the end."""
    command = [sys.executable, "-m", "kiseki", "server", "--port", str(port), *args]
    with (
        log.open("wb") as out,
        subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}) as proc,
    ):
        try:
            deadline = time.monotonic() + 60
            while "serving on" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            yield proc
        finally:
            proc.kill()


def test_replica_shutdown_and_crash_mid_stream_lose_and_duplicate_no_batch(
    postgres_url, template_url, s3_server, s3_bucket, tmp_path
) -> None:
    """Three replicas behind a round-robin balancer, jobs logging batches through it: replica A gets
    SIGTERM (graceful), then replica C is SIGKILLed (a crash). Every acknowledged batch is stored whole
    and exactly once, the retries land on B, and a request half-uploaded to A at SIGTERM completes."""
    database_url = create_database(postgres_url, "kiseki_test_deploy_sigterm")
    env = s3_env(s3_server, s3_bucket)
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    keys, per_batch, lanes = ("a", "b", "c"), 1000, 6
    sent: list[int] = []  # first step of every acknowledged batch
    repeats: list[bool] = []  # True: a retry found its batch already stored (the answer had been lost)
    failures: list[BaseException] = []
    stop = threading.Event()

    def args(name: str) -> tuple[str, ...]:
        return ("--database-url", database_url, "--data-dir", str(tmp_path / name))

    async def stream(url: str, run_id: str) -> None:
        async with kiseki.AsyncClient(url, retry_timeout=30) as client:

            async def job(lane: int) -> None:
                n = lane
                while not stop.is_set() and n < 3000:
                    first = n * per_batch
                    metrics = [
                        Metric(key=k, value=float(s), step=s, timestamp=s)
                        for k in keys
                        for s in range(first, first + per_batch)
                    ]
                    result = await client.log_batch(run_id, metrics, batch_id=str(uuid.uuid4()))
                    assert result.points == len(keys) * per_batch
                    sent.append(first)
                    repeats.append(not result.applied)
                    n += lanes

            await asyncio.gather(*(job(lane) for lane in range(lanes)))

    def run_stream(url: str, run_id: str) -> None:
        try:
            asyncio.run(stream(url, run_id))
        except BaseException as exc:
            failures.append(exc)

    def wait_for_more(count: int) -> None:
        target, deadline = len(sent) + count, time.monotonic() + 20
        while len(sent) < target and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(sent) >= target, f"the stream stalled: {failures!r}"

    with (
        kiseki_server(*args("b"), env=env, port=port_b),
        contextlib.ExitStack() as replica_a,
        crashable_server(*args("c"), env=env, port=port_c, log=tmp_path / "c.log") as replica_c,
        RoundRobinBalancer([port_a, port_b, port_c]) as balancer,
        kiseki.Client(balancer.url) as client,
    ):
        replica_a.enter_context(kiseki_server(*args("a"), env=env, port=port_a))
        run_id = client.create_run(client.create_experiment(unique("sigterm"))).info.run_id
        writer = threading.Thread(target=run_stream, args=(balancer.url, run_id))
        writer.start()
        wait_for_more(40)

        halfway, answer = threading.Event(), []
        slow = threading.Thread(target=_slow_batch, args=(port_a, run_id, halfway, answer))
        slow.start()
        assert halfway.wait(10)
        sigterm_at = time.monotonic()
        replica_a.close()  # SIGTERM; returns once replica A exited, with code 0 (checked by kiseki_server)
        wait_for_more(40)

        assert port_c in {port for _, port in balancer.connections}, "replica C is serving when it dies"
        killed_at = time.monotonic()
        replica_c.kill()  # in the middle of whatever batches it is storing
        wait_for_more(40)
        stop.set()
        writer.join(timeout=60)
        slow.join(timeout=30)
        assert not failures, f"the client gave up: {failures!r}"

        # The request half-uploaded to A when SIGTERM arrived was finished, not dropped.
        status_line = answer[0].split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 200 OK", answer[0][:500]
        assert b'"applied":true' in answer[0]

        # All replicas served; after each one went away the balancer sent nothing more its way.
        assert {port for t, port in balancer.connections if t < sigterm_at} == {port_a, port_b, port_c}
        assert port_a not in {port for t, port in balancer.connections if t > sigterm_at}
        assert {port for t, port in balancer.connections if t > killed_at} <= {port_b}

        # Every batch is there exactly once and whole.
        steps = sorted(s for first in sent for s in range(first, first + per_batch))
        assert len(set(steps)) == len(steps)
        for key in keys:
            stored = [m.step for m in client.get_metric_history(run_id, key)]
            assert stored == steps, f"{key}: {len(stored)} points stored, {len(steps)} acknowledged"
        assert [m.step for m in client.get_metric_history(run_id, "slow")] == list(range(20_000))

    async def chunks() -> tuple[int, dict[str, int]]:
        conn = await asyncpg.connect(database_url)
        try:
            batches = await conn.fetchval("SELECT count(*) FROM applied_batches WHERE run_id = $1", run_id)
            rows = await conn.fetch(
                "SELECT key, count(*) AS n FROM metric_chunks WHERE run_id = $1 GROUP BY key", run_id
            )
        finally:
            await conn.close()
        return batches, {r["key"]: r["n"] for r in rows}

    batches, per_key = asyncio.run(chunks())
    assert batches == len(sent) + 1
    assert per_key == {**dict.fromkeys(keys, len(sent)), "slow": 1}, "one chunk per key in every batch"


def _metric_total(text: str, route: str) -> float:
    return sum(
        value
        for (name, labels), value in samples(text).items()
        if name == "kiseki_http_requests_total" and dict(labels)["route"] == route
    )


def test_workers_share_the_port_sum_their_metrics_and_stop_together(
    database_url: str, tmp_path: Path
) -> None:
    flags = ("--workers", "2", "--access-log", "--log-format", "json")
    with kiseki_server("--database-url", database_url, "--data-dir", str(tmp_path), *flags) as (url, lines):
        ready = next(line for line in lines if "serving on" in line)
        pids = {int(p) for p in re.search(r"pids ([\d, ]+)\)", ready)[1].split(", ")}  # type: ignore[index]
        assert len(pids) == 2, ready

        sent = 0
        served_by: set[int] = set()
        while served_by != pids and sent < 200:
            status, headers, _ = get(f"{url}/healthz", {"X-Request-ID": f"probe-{sent}"})  # a new connection
            assert status == 200 and headers["X-Request-ID"] == f"probe-{sent}"
            sent += 1
            if sent % 10 == 0:
                time.sleep(0.1)  # let the output thread catch up
                access = [
                    json.loads(x) for x in list(lines) if x.startswith("{") and '"kiseki_server.access"' in x
                ]
                served_by = {r["pid"] for r in access if r.get("path") == "/healthz"}
        assert served_by == pids, f"both workers serve the port ({sent} connections)"

        status, _, body = get(f"{url}/metrics")
        assert status == 200
        assert _metric_total(body.decode(), "/healthz") == sent, "/metrics sums every worker's counts"

        # Small requests on a keep-alive connection stay fast (TCP_NODELAY: no delayed-ACK stalls).
        async def latencies() -> list[float]:
            async with kiseki.AsyncClient(url) as client:
                times = []
                for _ in range(50):
                    started = time.perf_counter()
                    await client.search_experiments()
                    times.append(time.perf_counter() - started)
                return sorted(times)

        times = asyncio.run(latencies())
        assert times[len(times) // 2] < 0.02, (
            f"p50 of a small request: {times[len(times) // 2] * 1000:.1f} ms"
        )

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_processes_exit_when_their_parent_is_killed(database_url: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "kiseki", "server", "--database-url", database_url]
    command += ["--data-dir", str(tmp_path), "--workers", "2", "--port", str(free_port())]
    log = tmp_path / "server.log"
    pids: list[int] = []
    with log.open("w") as out, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT) as parent:
        try:
            deadline = time.monotonic() + 60
            while not (match := re.search(r"pids ([\d, ]+)\)", log.read_text())):
                assert parent.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            pids = [int(p) for p in match[1].split(", ")]
            parent.kill()
            parent.wait()
            deadline = time.monotonic() + 20
            while (alive := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive, f"workers {alive} outlived their parent:\n{log.read_text()}"
        finally:
            for pid in pids:
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
