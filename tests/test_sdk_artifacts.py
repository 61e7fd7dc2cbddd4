"""SDK artifacts end to end, through a real server, on both stores: the local folder and S3 (SeaweedFS)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import kiseki
from kiseki import fluent
from tests.conftest import create_database
from tests.servers import kiseki_server

MiB = 1024 * 1024
SMALL_PARTS = {
    "KISEKI_ARTIFACT_MULTIPART_THRESHOLD": str(5 * MiB),
    "KISEKI_ARTIFACT_MULTIPART_PART_SIZE": str(5 * MiB),
}


@pytest.fixture(scope="module", params=["local", "s3"])
def server_url(request, postgres_url, template_url, tmp_path_factory) -> Iterator[str]:
    store = request.param
    env = dict(SMALL_PARTS)
    if store == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        env |= {
            "KISEKI_DEFAULT_ARTIFACT_ROOT": f"s3://{bucket}/sdk-{uuid.uuid4().hex[:6]}",
            "KISEKI_S3_ENDPOINT_URL": s3.endpoint,
            "KISEKI_S3_ACCESS_KEY_ID": s3.access_key_id,
            "KISEKI_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
            "KISEKI_S3_REGION": s3.region,
        }
    database_url = create_database(postgres_url, f"kiseki_test_sdk_artifacts_{store}")
    data_dir = tmp_path_factory.mktemp(f"server-{store}")
    with kiseki_server("--database-url", database_url, "--data-dir", str(data_dir), env=env) as (url, _):
        yield url


@pytest.fixture
def sdk(server_url):
    kiseki.set_tracking_uri(server_url)
    kiseki.set_experiment(f"artifacts-{uuid.uuid4().hex[:8]}")
    yield kiseki
    while kiseki.active_run():
        kiseki.end_run()
    fluent._experiment_id = None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"lr": 0.1}',
        "plots/loss.svg": b"<svg/>",
        "plots/deep/acc.txt": b"0.9\n" * 100,
        "weights.bin": os.urandom(12 * MiB + 123),  # > threshold: a three-part multipart upload
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_upload_list_download_round_trip(sdk, tmp_path):
    source = tmp_path / "out"
    files = make_tree(source)
    with sdk.start_run() as run:
        sdk.log_artifacts(source, artifact_path="model")
        sdk.log_artifact(source / "config.json")
        sdk.log_text("hello", "notes/readme.txt")
        sdk.log_dict({"a": 1, "nested": {"b": [1, 2]}}, "meta/info.json")
    client = sdk.Client()
    run_id = run.info.run_id

    top = {(f.path, f.is_dir) for f in client.list_artifacts(run_id)}
    assert top == {("model", True), ("config.json", False), ("notes", True), ("meta", True)}
    model = {f.path: f for f in client.list_artifacts(run_id, "model")}
    assert set(model) == {"model/config.json", "model/plots", "model/weights.bin"}
    assert model["model/weights.bin"].file_size == len(files["weights.bin"])
    assert model["model/plots"].is_dir

    folder = Path(client.download_artifacts(run_id, "model", tmp_path / "dl"))
    assert folder == tmp_path / "dl" / "model"
    for rel, data in files.items():
        got = folder / rel
        assert (
            got.read_bytes() == data if len(data) < MiB else sha256(got) == hashlib.sha256(data).hexdigest()
        )
    single = Path(client.download_artifacts(run_id, "meta/info.json", tmp_path / "one"))
    assert json.loads(single.read_text()) == {"a": 1, "nested": {"b": [1, 2]}}
    everything = Path(sdk.download_artifacts(run_id))  # no destination: a new temporary folder
    try:
        assert (everything / "notes" / "readme.txt").read_text() == "hello"
        assert not list(everything.rglob(".*part-*")), "no partial files are left behind"
    finally:
        shutil.rmtree(everything)


def test_missing_artifacts_are_not_found(sdk, tmp_path):
    with sdk.start_run() as run:
        pass
    with pytest.raises(kiseki.NotFound):
        sdk.Client().download_artifacts(run.info.run_id, "nothing/here", tmp_path)
    with pytest.raises(FileNotFoundError):
        sdk.Client().log_artifact(run.info.run_id, tmp_path / "absent.txt")


def test_bad_artifact_path_is_a_clear_error(sdk, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with sdk.start_run() as run:
        pass
    with pytest.raises(kiseki.InvalidInput) as info:
        sdk.Client().log_artifact(run.info.run_id, tmp_path / "f.txt", artifact_path="../escape")
    assert "path" in (info.value.field or "")


def test_cli_conveniences(sdk, server_url, tmp_path):
    experiment = sdk.set_experiment(f"cli-{uuid.uuid4().hex[:8]}")
    (tmp_path / "f.txt").write_text("payload")
    with sdk.start_run(run_name="cli-run") as run:
        sdk.log_metric("acc", 0.5)
        sdk.log_artifact(tmp_path / "f.txt", "docs")

    def cli(*args: str) -> str:
        env = {**os.environ, "KISEKI_TRACKING_URI": server_url}
        done = subprocess.run(
            [sys.executable, "-m", "kiseki", *args], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert experiment.name in cli("experiments", "list")
    listing = cli("runs", "list", experiment.name)
    assert run.info.run_id in listing
    assert "cli-run" in listing
    assert "acc=0.5" in listing
    out = cli("artifacts", "download", run.info.run_id, "docs", "-o", str(tmp_path / "cli"))
    assert Path(out.strip()) == tmp_path / "cli" / "docs"
    assert (tmp_path / "cli" / "docs" / "f.txt").read_text() == "payload"


# --- a hostile listing --------------------------------------------------------------------------------
# The real service never lists such paths; this fake peer stands for a broken or compromised server.


async def test_download_refuses_paths_outside_the_destination(aiohttp_server, tmp_path):
    from aiohttp import web

    outside = tmp_path / "elsewhere" / "x"  # an absolute path outside dst (no real /etc/x is touched)
    listing = ["ok.txt", "../evil", "sub/../../evil2", str(outside)]

    async def download_list(request: web.Request) -> web.Response:
        base = f"http://127.0.0.1:{request.url.port}"
        files = [{"path": p, "file_size": 4, "url": f"{base}/blob/{i}"} for i, p in enumerate(listing)]
        return web.json_response({"files": files, "expires_at": 2**41, "next_page_token": None})

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=b"evil")

    app = web.Application()
    app.router.add_get("/api/v1/runs/{run_id}/artifacts/download", download_list)
    app.router.add_get("/blob/{n}", blob)
    server = await aiohttp_server(app)
    dst = tmp_path / "dst"
    async with kiseki.AsyncClient(f"http://127.0.0.1:{server.port}") as client:
        with pytest.raises(kiseki.UnsafeArtifactPath) as info:
            await client.download_artifacts("a" * 32, "", dst)
    message = str(info.value)
    for path in listing[1:]:
        assert repr(path) in message, f"the error names {path!r}: {message}"
    assert "'ok.txt'" not in message
    assert not (tmp_path / "evil").exists() and not (tmp_path / "evil2").exists()
    assert not outside.exists()
    assert not (dst / "ok.txt").exists(), "the whole download is refused: nothing is written"
