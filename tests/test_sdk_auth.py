"""The SDK against a real `kiseki server` with auth on: a token from `token=` or KISEKI_TRACKING_TOKEN is
sent on every API request (never to storage), a missing or refused token is a clear error that is not
retried, and batches a read-only token could not send are spooled, not lost, until a working token syncs
them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

import kiseki
from kiseki import _spool, fluent
from kiseki_server.auth import credentials
from kiseki_server.stores.identities import IdentityStore
from tests.conftest import create_database, free_port
from tests.s3 import S3Server
from tests.servers import kiseki_server

ADMIN_TOKEN = credentials.new_token()
AUTH_SECRET = secrets.token_urlsafe(32)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class AuthServer:
    url: str
    database_url: str

    def token(self, scope: str, *, user: str | None = None) -> str:
        """A fresh token of `scope` for `user` (a new non-admin user when None), stored the way the
        server stores it (HMAC under its KISEKI_AUTH_SECRET)."""
        token = credentials.new_token()

        async def make() -> None:
            pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=1)
            try:
                identities = IdentityStore(pool)
                name = user or unique("user")
                found, _ = await identities.ensure_user(name, is_admin=False)
                digest = credentials.digest(AUTH_SECRET.encode(), "token", token)
                await identities.create_token(
                    int(found.user_id), digest, name="test", scope=scope, expires_at=None
                )
            finally:
                await pool.close()

        asyncio.run(make())
        return token


@pytest.fixture(scope="module", params=["local", "s3"])
def server(request, postgres_url, template_url, tmp_path_factory) -> Iterator[AuthServer]:
    store = request.param
    env = {"KISEKI_AUTH": "true", "KISEKI_ADMIN_TOKEN": ADMIN_TOKEN, "KISEKI_AUTH_SECRET": AUTH_SECRET}
    if store == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        env |= {
            "KISEKI_DEFAULT_ARTIFACT_ROOT": f"s3://{bucket}/sdk-auth-{uuid.uuid4().hex[:6]}",
            "KISEKI_S3_ENDPOINT_URL": s3.endpoint,
            "KISEKI_S3_ACCESS_KEY_ID": s3.access_key_id,
            "KISEKI_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
            "KISEKI_S3_REGION": s3.region,
        }
    database_url = create_database(postgres_url, f"kiseki_test_sdk_auth_{store}")
    data_dir = tmp_path_factory.mktemp(f"auth-server-{store}")
    with kiseki_server("--database-url", database_url, "--data-dir", str(data_dir), env=env) as (url, _):
        yield AuthServer(url, database_url)


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("KISEKI_TRACKING_TOKEN", raising=False)
    yield
    while kiseki.active_run():
        kiseki.end_run()
    fluent._experiment_id = None


def kiseki_cli(*args: str, token: str | None, spool: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KISEKI_TRACKING_TOKEN"}
    if token is not None:
        env["KISEKI_TRACKING_TOKEN"] = token
    if spool is not None:
        env["KISEKI_SPOOL_DIR"] = str(spool)
    return subprocess.run(
        [sys.executable, "-m", "kiseki", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_fluent_logging_with_the_env_token_works_end_to_end(server, monkeypatch, tmp_path):
    monkeypatch.setenv("KISEKI_TRACKING_TOKEN", server.token("write"))
    kiseki.set_tracking_uri(server.url)  # a new process-wide client, which reads the environment
    kiseki.set_experiment(unique("auth-fluent"))
    source = tmp_path / "model.txt"
    source.write_text("weights\n" * 1000)
    with kiseki.start_run(run_name="with-token") as run:
        kiseki.log_params({"lr": 0.01})
        for step in range(3000):
            kiseki.log_metric("loss", 1 / (step + 1), step=step)
        kiseki.log_artifact(str(source), "models")
    run_id = run.info.run_id

    stored = kiseki.get_run(run_id)
    assert stored.data.params == {"lr": "0.01"}
    assert stored.info.status == kiseki.RunStatus.FINISHED
    with kiseki.Client(server.url) as client:  # Client reads the environment too
        assert len(client.get_metric_history(run_id, "loss")) == 3000
    local = kiseki.download_artifacts(run_id=run_id, artifact_path="models", dst_path=str(tmp_path / "out"))
    assert (Path(local) / "model.txt").read_text() == source.read_text(), "presigned download works"


def test_token_argument_beats_the_environment(server, monkeypatch):
    monkeypatch.setenv("KISEKI_TRACKING_TOKEN", "ksk_" + "x" * 43)  # not a token the server knows
    with kiseki.Client(server.url, token=server.token("write")) as client:
        experiment = client.get_or_create_experiment(unique("auth-arg"))
        run = client.create_run(experiment.experiment_id)
        client.log_metric(run.info.run_id, "acc", 0.5, step=1)
        client.flush()
        assert [m.value for m in client.get_metric_history(run.info.run_id, "acc")] == [0.5]


@pytest.mark.parametrize("credential", ["none", "unknown"])
def test_missing_or_unknown_token_is_a_typed_error_naming_the_fix_and_not_retried(server, credential):
    token = None if credential == "none" else "ksk_" + "y" * 43
    started = time.monotonic()
    with (
        kiseki.Client(server.url, token=token, retry_timeout=30) as client,
        pytest.raises(kiseki.Unauthenticated) as caught,
    ):
        client.get_or_create_experiment(unique("auth-none"))
    assert time.monotonic() - started < 2, "a 401 must not be retried for the 30 s budget"
    assert caught.value.status == 401
    assert "KISEKI_TRACKING_TOKEN" in caught.value.message, caught.value.message
    if credential == "unknown":
        assert "refused the API token" in caught.value.message and "unknown token" in caught.value.message


def log_until_refused(client: kiseki.Client, run_id: str, step: int) -> tuple[int, Exception | None]:
    """Log a point every 5 ms until a call raises (a background send failed); (next step, the error)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.log_metric(run_id, "loss", step / 10, step=step)
        except kiseki.KisekiError as exc:
            return step, exc
        step += 1
        time.sleep(0.005)
    return step, None


def test_read_token_logging_is_refused_at_log_time_spooled_once_and_synced_later(server, tmp_path, caplog):
    user = unique("reader")
    write_token, read_token = server.token("write", user=user), server.token("read", user=user)
    with kiseki.Client(server.url, token=write_token) as writer:
        experiment = writer.get_or_create_experiment(unique("auth-read"))
        run_id = writer.create_run(experiment.experiment_id).info.run_id
    spool = tmp_path / "spool"

    reader = kiseki.Client(server.url, token=read_token, max_batch_points=1000, spool_dir=spool)
    assert reader.get_run(run_id).info.run_id == run_id, "a read token reads"
    for step in range(2500):
        reader.log_metric(run_id, "loss", step / 10, step=step)
    reader.log_param(run_id, "lr", 0.1)
    with caplog.at_level(logging.WARNING, logger="kiseki"), pytest.raises(kiseki.PermissionDenied) as caught:
        reader.flush()
    assert caught.value.status == 403
    assert "write scope" in caught.value.message and "KISEKI_TRACKING_TOKEN" in caught.value.message
    assert "saved to the spool" in caught.value.message, caught.value.message
    # Later sends are refused too (said only once), and the error comes back from a log call itself.
    with caplog.at_level(logging.WARNING, logger="kiseki"):
        logged, error = log_until_refused(reader, run_id, 2500)
    assert isinstance(error, kiseki.PermissionDenied), (
        f"a later log_metric call raises the refusal: {error!r}"
    )
    with caplog.at_level(logging.WARNING, logger="kiseki"), contextlib.suppress(kiseki.PermissionDenied):
        reader.close()  # what was queued meanwhile is refused and spooled too
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "spool" in r.getMessage()
    ]
    assert len(warnings) == 1, f"the refusal is reported once, not per batch: {warnings}"
    assert "write scope" in warnings[0]

    folder = _spool.server_folder(spool, server.url)
    entries = _spool.entries(folder)
    spooled = [sum(t) for t in zip(*(_spool.counts(_spool.read(e)["body"]) for e in entries), strict=True)]
    assert spooled == [logged, 1, 0], "every point and the param are in the spool"
    with kiseki.Client(server.url, token=write_token) as writer:
        assert writer.get_metric_history(run_id, "loss") == [], "nothing was stored with the read token"

    refused = kiseki_cli("sync", str(spool), token=read_token)
    assert refused.returncode == 1 and "write scope" in refused.stderr, refused.stderr
    assert _spool.entries(folder) == entries, "a refused token keeps the spool as it is"
    synced = kiseki_cli("sync", str(spool), token=write_token)
    assert synced.returncode == 0, synced.stderr
    assert f"sent {len(entries)} of {len(entries)}" in synced.stdout, synced.stdout
    with kiseki.Client(server.url, token=write_token) as writer:
        points = writer.get_metric_history(run_id, "loss")
        assert [p.step for p in points] == list(range(logged)), "every point arrived, once"
        assert writer.get_run(run_id).data.params == {"lr": "0.1"}


def test_cli_commands_send_the_env_token(server):
    token = server.token("write")
    with kiseki.Client(server.url, token=token) as client:
        name = unique("auth-cli")
        client.get_or_create_experiment(name)
    listed = kiseki_cli("experiments", "list", "--tracking-uri", server.url, token=token)
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout
    refused = kiseki_cli("experiments", "list", "--tracking-uri", server.url, token=None)
    assert refused.returncode == 1
    assert "requires an API token" in refused.stderr and "KISEKI_TRACKING_TOKEN" in refused.stderr


@contextmanager
def recording_proxy(target: str) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP proxy in front of S3 that records the headers of every request it forwards (keeping
    the Host header, which presigned signatures cover); yields its URL and the recorded headers."""
    seen: list[dict[str, str]] = []
    port = free_port()
    ready = threading.Event()
    stop: list[asyncio.AbstractEventLoop] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        body = await request.read()
        sent = {k: v for k, v in request.headers.items() if k.lower() not in ("transfer-encoding",)}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(request.method, f"{target}{request.path_qs}", headers=sent, data=body) as r,
        ):
            data = await r.read()
            keep = {k: v for k, v in r.headers.items() if k.lower() in ("etag", "content-type")}
            return web.Response(status=r.status, body=data, headers=keep)

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        stop.append(loop)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        stop[0].call_soon_threadsafe(stop[0].stop)
        thread.join(10)


def test_presigned_storage_requests_never_carry_the_token(
    postgres_url, template_url, s3_server: S3Server, s3_bucket: str, tmp_path
):
    database_url = create_database(postgres_url, "kiseki_test_sdk_auth_presigned")
    with recording_proxy(s3_server.endpoint) as (public, seen):
        env = {
            "KISEKI_AUTH": "true",
            "KISEKI_ADMIN_TOKEN": ADMIN_TOKEN,
            "KISEKI_DEFAULT_ARTIFACT_ROOT": f"s3://{s3_bucket}/sdk-auth-proxy-{uuid.uuid4().hex[:6]}",
            "KISEKI_S3_ENDPOINT_URL": s3_server.endpoint,
            "KISEKI_S3_PUBLIC_ENDPOINT_URL": public,  # presigned URLs lead through the proxy
            "KISEKI_S3_ACCESS_KEY_ID": s3_server.access_key_id,
            "KISEKI_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
            "KISEKI_S3_REGION": s3_server.region,
        }
        args = ("--database-url", database_url, "--data-dir", str(tmp_path / "server"))
        with kiseki_server(*args, env=env) as (url, _), kiseki.Client(url, token=ADMIN_TOKEN) as client:
            run_id = client.create_run(
                client.get_or_create_experiment(unique("proxy")).experiment_id
            ).info.run_id
            source = tmp_path / "weights.bin"
            source.write_bytes(os.urandom(100_000))
            client.log_artifact(run_id, source)
            local = client.download_artifacts(run_id, "weights.bin", tmp_path / "out")
            assert Path(local).read_bytes() == source.read_bytes()
    hosts = {h.get("Host") for h in seen}
    assert len(seen) >= 2 and hosts == {public.removeprefix("http://")}, "the upload and download went via S3"
    leaked = [h for h in seen if "Authorization" in h or ADMIN_TOKEN in str(h)]
    assert not leaked, f"the API token reached storage: {leaked}"
