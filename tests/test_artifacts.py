"""Artifacts through the presigned flow, on both stores: real S3 (SeaweedFS) and the local folder.

Every test runs once per store: the API promises the same behaviour whichever holds the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from kiseki_server.app import create_app
from kiseki_server.artifacts.signing import KEY_FILE
from kiseki_server.config import Settings
from tests.conftest import free_port
from tests.helpers import call, new_experiment, new_run
from tests.s3 import S3Server

MiB = 1024 * 1024
THRESHOLD = 16 * MiB
PART_SIZE = 8 * MiB
BIG_SIZE = 100 * MiB + 123_457  # over 100 MB and not a multiple of the part size

Settle = Callable[..., Settings]
MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture(params=["s3", "local"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_settings(
    request: pytest.FixtureRequest, store_kind: str, database_url: str, tmp_path: Path
) -> Settle:
    """Settings for this test's store: S3 under a prefix of its own in the session bucket, or a folder."""
    base: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path / "data",
        "db_pool_min_size": 1,
        "db_pool_max_size": 8,
        "artifact_multipart_threshold": THRESHOLD,
        "artifact_multipart_part_size": PART_SIZE,
    }
    if store_kind == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        base |= {
            "default_artifact_root": f"s3://{bucket}/{uuid.uuid4().hex}",
            "s3_endpoint_url": server.endpoint,
            "s3_access_key_id": server.access_key_id,
            "s3_secret_access_key": server.secret_access_key,
            "s3_region": server.region,
        }
    else:
        base["default_artifact_root"] = (tmp_path / "artifacts").as_uri()

    def make(**overrides: Any) -> Settings:
        return Settings(**(base | overrides))

    return make


@pytest.fixture
def make_client(make_settings: Settle, aiohttp_client: Any) -> MakeClient:
    # make_settings first: its database must outlive the apps (fixtures tear down in reverse order).
    async def make(**overrides: Any) -> TestClient:
        client: TestClient = await aiohttp_client(create_app(make_settings(**overrides)))
        return client

    return make


@pytest.fixture
async def api(make_client: MakeClient) -> TestClient:
    return await make_client()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client for the URLs the service hands out (what an SDK or curl would use)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        yield session


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A random file over 100 MB and its sha256, written in 1 MiB blocks."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = BIG_SIZE
        while left:
            block = os.urandom(min(MiB, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return path, digest.hexdigest()


def _root(run_id: str) -> str:
    return f"/api/v1/runs/{run_id}/artifacts"


async def plan(api: TestClient, run_id: str, files: dict[str, int]) -> list[dict[str, Any]]:
    body = {"files": [{"path": p, "size": s} for p, s in files.items()]}
    return (await call(api, "POST", _root(run_id) + "/uploads", json=body))["uploads"]


async def put(http: aiohttp.ClientSession, url: str, data: bytes, status: int = 200) -> str | None:
    async with http.put(url, data=data) as response:
        text = await response.text()
        assert response.status == status, f"PUT {url}: expected {status}, got {response.status}: {text}"
        return response.headers.get("ETag")


async def get(http: aiohttp.ClientSession, url: str, status: int = 200) -> bytes:
    async with http.get(url) as response:
        body = await response.read()
        assert response.status == status, (
            f"GET {url}: expected {status}, got {response.status}: {body[:300]!r}"
        )
        return body


async def upload(api: TestClient, http: aiohttp.ClientSession, run_id: str, files: dict[str, bytes]) -> None:
    """Upload small files the way a client does: one plan, then one PUT per file."""
    uploads = await plan(api, run_id, {p: len(b) for p, b in files.items()})
    semaphore = asyncio.Semaphore(32)

    async def one(item: dict[str, Any]) -> None:
        assert item["url"] and item["multipart"] is None, f"{item['path']} should go up in one PUT"
        async with semaphore:
            await put(http, item["url"], files[item["path"]])

    await asyncio.gather(*(one(item) for item in uploads))


async def download(api: TestClient, run_id: str, path: str = "", **query: Any) -> dict[str, Any]:
    result: dict[str, Any] = await call(
        api, "GET", _root(run_id) + "/download", params={"path": path, **query}
    )
    return result


async def listing(api: TestClient, run_id: str, path: str = "", **query: Any) -> list[tuple[str, bool, Any]]:
    body = await call(api, "GET", _root(run_id), params={"path": path, **query})
    return [(f["path"], f["is_dir"], f["file_size"]) for f in body["files"]]


async def test_single_file_round_trip(api: TestClient, http: aiohttp.ClientSession) -> None:
    run_id = await new_run(api)
    uploads = await plan(api, run_id, {"./model/config.json": 13, "empty.txt": 0})
    assert [u["path"] for u in uploads] == ["model/config.json", "empty.txt"], "paths come back normalised"
    assert uploads[0]["expires_at"] > time.time() * 1000
    await put(http, uploads[0]["url"], b'{"layers": 3}')
    await put(http, uploads[1]["url"], b"")

    found = await download(api, run_id, "model/config.json")
    assert [(f["path"], f["file_size"]) for f in found["files"]] == [("model/config.json", 13)]
    assert await get(http, found["files"][0]["url"]) == b'{"layers": 3}'
    async with http.get(found["files"][0]["url"], headers={"Range": "bytes=2-7"}) as response:
        assert (response.status, await response.read()) == (206, b"layers"), "Range requests work"
    empty = (await download(api, run_id, "empty.txt"))["files"][0]
    assert (empty["file_size"], await get(http, empty["url"])) == (0, b"")
    assert await listing(api, run_id) == [("empty.txt", False, 0), ("model", True, None)]


async def test_multipart_round_trip_of_a_large_file(
    api: TestClient, http: aiohttp.ClientSession, big_file: tuple[Path, str]
) -> None:
    path, sha256 = big_file
    run_id = await new_run(api)
    [item] = await plan(api, run_id, {"weights/model.bin": BIG_SIZE})
    multipart = item["multipart"]
    assert item["url"] is None and multipart is not None, "a file over the threshold goes up in parts"
    assert multipart["part_size"] == PART_SIZE
    assert multipart["part_count"] == len(multipart["parts"]) == -(-BIG_SIZE // PART_SIZE)

    semaphore = asyncio.Semaphore(4)  # 4 parts of 8 MiB in memory at a time

    async def send(part: dict[str, Any]) -> dict[str, Any]:
        async with semaphore:
            with path.open("rb") as f:
                f.seek((part["part_number"] - 1) * PART_SIZE)
                data = f.read(PART_SIZE)
            etag = await put(http, part["url"], data)
        assert etag, "every part answers with an ETag"
        return {"part_number": part["part_number"], "etag": etag}

    parts = await asyncio.gather(*(send(p) for p in multipart["parts"]))
    body = {"path": "weights/model.bin", "upload_id": multipart["upload_id"], "parts": parts}
    done = await call(api, "POST", _root(run_id) + "/uploads/complete", json=body)
    assert done == {"path": "weights/model.bin", "is_dir": False, "file_size": BIG_SIZE}

    [file] = (await download(api, run_id, "weights/model.bin"))["files"]
    digest, size = hashlib.sha256(), 0
    async with http.get(file["url"]) as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(MiB):
            digest.update(chunk)
            size += len(chunk)
    assert (size, digest.hexdigest()) == (BIG_SIZE, sha256), "the downloaded file differs from the upload"


async def test_folder_of_500_small_files(api: TestClient, http: aiohttp.ClientSession) -> None:
    run_id = await new_run(api)
    files = {f"data/shard-{i % 5}/{i:04d}.bin": os.urandom(64 + i * 8) for i in range(500)}
    await upload(api, http, run_id, files)

    assert await listing(api, run_id, "data") == [(f"data/shard-{k}", True, None) for k in range(5)]
    whole = await download(api, run_id, "data")
    assert [f["path"] for f in whole["files"]] == sorted(files), "a folder downloads as all its files"
    assert whole["next_page_token"] is None
    semaphore = asyncio.Semaphore(32)

    async def fetch(f: dict[str, Any]) -> tuple[str, bytes]:
        async with semaphore:
            return f["path"], await get(http, f["url"])

    fetched = dict(await asyncio.gather(*(fetch(f) for f in whole["files"])))
    assert fetched == files

    paged: list[str] = []
    token = None
    while True:
        page = await download(
            api, run_id, "data", max_results=200, **({"page_token": token} if token else {})
        )
        paged += [f["path"] for f in page["files"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert paged == sorted(files), "pages of a folder download add up to the whole, in order"


async def test_nested_listing(api: TestClient, http: aiohttp.ClientSession) -> None:
    run_id = await new_run(api)
    await upload(
        api, http, run_id, {"a.txt": b"a", "d/b.txt": b"bb", "d/e/c.txt": b"ccc", "d/e/f.txt": b"ff"}
    )

    assert await listing(api, run_id) == [("a.txt", False, 1), ("d", True, None)]
    assert await listing(api, run_id, "d") == [("d/b.txt", False, 2), ("d/e", True, None)]
    assert await listing(api, run_id, "d/e/") == [("d/e/c.txt", False, 3), ("d/e/f.txt", False, 2)]

    first = await call(api, "GET", _root(run_id), params={"path": "d/e", "max_results": 1})
    assert [f["path"] for f in first["files"]] == ["d/e/c.txt"] and first["next_page_token"]
    second = await call(
        api,
        "GET",
        _root(run_id),
        params={"path": "d/e", "max_results": 1, "page_token": first["next_page_token"]},
    )
    assert [f["path"] for f in second["files"]] == ["d/e/f.txt"]
    assert (
        second["next_page_token"] is None
        or not (
            await call(
                api, "GET", _root(run_id), params={"path": "d/e", "page_token": second["next_page_token"]}
            )
        )["files"]
    )

    assert [f["path"] for f in (await download(api, run_id, "d"))["files"]] == [
        "d/b.txt",
        "d/e/c.txt",
        "d/e/f.txt",
    ]
    error = (await call(api, "GET", _root(run_id), 400, params={"path": "a.txt"}))["error"]
    assert error["field"] == "path" and "is a file" in error["message"]
    assert (await call(api, "GET", _root(run_id), 404, params={"path": "nope"}))["error"]["field"] == "path"


async def test_expired_urls_are_refused_by_storage(
    make_client: MakeClient, http: aiohttp.ClientSession
) -> None:
    api = await make_client(artifact_url_expiry_seconds=2)
    run_id = await new_run(api)
    [item] = await plan(api, run_id, {"soon-gone.txt": 5})
    await put(http, item["url"], b"hello")
    found = await download(api, run_id, "soon-gone.txt")
    url = found["files"][0]["url"]
    assert await get(http, url) == b"hello"

    await asyncio.sleep(max(found["expires_at"], item["expires_at"]) / 1000 - time.time() + 1.2)
    await get(http, url, status=403)
    await put(http, item["url"], b"hello", status=403)


async def test_a_url_works_only_for_its_own_run_and_path(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    experiment_id = await new_experiment(api)
    run_a = await new_run(api, experiment_id)
    run_b = await new_run(api, experiment_id)
    [item] = await plan(api, run_a, {"first.txt": 5})
    await put(http, item["url"], b"first")
    read_url = (await download(api, run_a, "first.txt"))["files"][0]["url"]
    assert item["url"].count("first.txt") == read_url.count("first.txt") == 1
    assert item["url"].count(run_a) == read_url.count(run_a) == 1

    await put(http, item["url"].replace("first.txt", "other.txt"), b"first", status=403)
    await put(http, item["url"].replace(run_a, run_b), b"first", status=403)
    await get(http, read_url.replace("first.txt", "other.txt"), status=403)
    await get(http, read_url.replace(run_a, run_b), status=403)

    assert await listing(api, run_a) == [("first.txt", False, 5)]
    assert await listing(api, run_b) == [], "nothing was written under the other run"


BAD_PATHS = [
    ("../escape.txt", "'..'"),
    ("a/../../escape.txt", "'..'"),
    ("..", "'..'"),
    ("/etc/passwd", "absolute"),
    ("a\\b.txt", "backslash"),
    ("a\x00b.txt", "NUL"),
    ("a//b.txt", "empty parts"),
    ("a/\nb.txt", "control characters"),
    ("x" * 1001, "at most 1000"),
    ("n" * 256 + "/f.txt", "255 bytes"),
]


async def test_unsafe_paths_are_refused(api: TestClient) -> None:
    run_id = await new_run(api)
    for path, why in BAD_PATHS:
        body = {"files": [{"path": "fine.txt", "size": 1}, {"path": path, "size": 1}]}
        error = (await call(api, "POST", _root(run_id) + "/uploads", 400, json=body))["error"]
        assert error["field"] == "files.1.path" and why in error["message"], f"upload {path!r}: {error}"
        for endpoint in ("", "/download"):
            error = (await call(api, "GET", _root(run_id) + endpoint, 400, params={"path": path}))["error"]
            assert error["field"] == "path" and why in error["message"], f"GET {endpoint} {path!r}: {error}"
        body = {"path": path, "upload_id": "x", "parts": [{"part_number": 1, "etag": "x"}]}
        error = (await call(api, "POST", _root(run_id) + "/uploads/complete", 400, json=body))["error"]
        assert error["field"] == "path", f"complete {path!r}: {error}"
    for path in ("", "./"):
        error = await call(
            api, "POST", _root(run_id) + "/uploads", 400, json={"files": [{"path": path, "size": 1}]}
        )
        assert error["error"]["field"] == "files.0.path", "the run's root is not a file"
    body = {"files": [{"path": "twice.txt", "size": 1}, {"path": "./twice.txt", "size": 2}]}
    error = (await call(api, "POST", _root(run_id) + "/uploads", 400, json=body))["error"]
    assert error["field"] == "files.1.path" and "also files.0.path" in error["message"]
    assert await listing(api, run_id) == [], "no refused request left anything behind"


async def test_missing_things_are_404(api: TestClient) -> None:
    run_id = await new_run(api)
    error = (await call(api, "GET", _root(run_id) + "/download", 404, params={"path": "nope.txt"}))["error"]
    assert error["field"] == "path" and "nope.txt" in error["message"]
    assert (await call(api, "GET", _root(run_id), params={"path": ""}))["files"] == [], (
        "an empty run lists empty"
    )
    assert (await download(api, run_id))["files"] == []
    unknown = uuid.uuid4().hex
    for method, suffix in (("GET", ""), ("GET", "/download"), ("DELETE", "")):
        assert (await call(api, method, _root(unknown) + suffix, 404))["error"]["field"] == "run_id"
    body = {"files": [{"path": "x.txt", "size": 1}]}
    assert (await call(api, "POST", _root(unknown) + "/uploads", 404, json=body))["error"][
        "field"
    ] == "run_id"
    for upload_id, status in (("0123456789abcdef0123456789abcdef", 404), ("../../../etc", 400)):
        body = {"path": "x.bin", "upload_id": upload_id, "parts": [{"part_number": 1, "etag": '"abc"'}]}
        error = (await call(api, "POST", _root(run_id) + "/uploads/complete", status, json=body))["error"]
        assert error["field"] == "upload_id", f"complete with upload_id {upload_id!r}: {error}"


async def test_multipart_fresh_part_urls_bad_etags_and_abort(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    run_id = await new_run(api)
    size = 2 * PART_SIZE + 1000
    content = os.urandom(size)
    [item] = await plan(api, run_id, {"ckpt.bin": size})
    multipart = item["multipart"]
    upload_id = multipart["upload_id"]
    assert multipart["part_count"] == 3

    first = await put(http, multipart["parts"][0]["url"], content[:PART_SIZE])
    body = {"path": "ckpt.bin", "upload_id": upload_id, "part_numbers": [2, 3]}
    fresh = await call(api, "POST", _root(run_id) + "/uploads/parts", json=body)
    assert [p["part_number"] for p in fresh["parts"]] == [2, 3]
    second = await put(http, fresh["parts"][0]["url"], content[PART_SIZE : 2 * PART_SIZE])
    third = await put(http, fresh["parts"][1]["url"], content[2 * PART_SIZE :])

    wrong = {"path": "ckpt.bin", "upload_id": upload_id, "parts": [{"part_number": 1, "etag": '"0123"'}]}
    error = (await call(api, "POST", _root(run_id) + "/uploads/complete", 400, json=wrong))["error"]
    assert error["field"].startswith("parts")
    unordered = {"path": "ckpt.bin", "upload_id": upload_id, "parts": [{"part_number": 2, "etag": second}]}
    error = (await call(api, "POST", _root(run_id) + "/uploads/complete", 400, json=unordered))["error"]
    assert error["field"] == "parts.0.part_number"

    parts = [{"part_number": n, "etag": e} for n, e in enumerate((first, second, third), 1)]
    done = {"path": "ckpt.bin", "upload_id": upload_id, "parts": parts}
    assert (await call(api, "POST", _root(run_id) + "/uploads/complete", json=done))["file_size"] == size
    assert await get(http, (await download(api, run_id, "ckpt.bin"))["files"][0]["url"]) == content

    [other] = await plan(api, run_id, {"abandoned.bin": size})
    abort = {"path": "abandoned.bin", "upload_id": other["multipart"]["upload_id"]}
    await put(http, other["multipart"]["parts"][0]["url"], content[:PART_SIZE])
    assert await call(api, "POST", _root(run_id) + "/uploads/abort", json=abort) == abort
    late = {**abort, "parts": [{"part_number": 1, "etag": '"x"'}]}
    assert (await call(api, "POST", _root(run_id) + "/uploads/complete", 404, json=late))["error"][
        "field"
    ] == "upload_id"
    assert await listing(api, run_id) == [("ckpt.bin", False, size)]


async def test_purge_deletes_for_good_but_soft_delete_keeps(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    run_id = await new_run(api)
    await upload(api, http, run_id, {"a.txt": b"a", "b/c.txt": b"c", "b/d/e.txt": b"e"})
    [unfinished] = await plan(api, run_id, {"big.bin": THRESHOLD + 1})
    assert unfinished["multipart"]

    await call(api, "DELETE", f"/api/v1/runs/{run_id}")
    assert len(await listing(api, run_id)) == 2, "a soft-deleted run keeps its artifacts"
    purged = await call(api, "DELETE", _root(run_id))
    assert purged == {"deleted_files": 3, "aborted_uploads": 1}
    assert await listing(api, run_id) == []
    assert (await download(api, run_id))["files"] == []
    assert await call(api, "DELETE", _root(run_id)) == {"deleted_files": 0, "aborted_uploads": 0}


async def test_purging_an_experiment_purges_all_its_runs_and_nothing_else(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    doomed, kept = await new_experiment(api, "doomed"), await new_experiment(api, "kept")
    runs = [await new_run(api, doomed) for _ in range(3)]
    other = await new_run(api, kept)
    for run_id in [*runs, other]:
        await upload(api, http, run_id, {"model/w.bin": b"w", "log.txt": b"l"})
    await call(api, "DELETE", f"/api/v1/runs/{runs[0]}")  # soft-deleted runs are purged too
    purged = await call(api, "DELETE", f"/api/v1/experiments/{doomed}/artifacts")
    assert purged == {"deleted_files": 6, "aborted_uploads": 0}
    for run_id in runs:
        assert await listing(api, run_id) == []
    assert len(await listing(api, other)) == 2, "another experiment's artifacts are untouched"
    await call(api, "DELETE", "/api/v1/experiments/999999/artifacts", 404)


async def test_unreachable_storage_is_503(store_kind: str, make_client: MakeClient, tmp_path: Path) -> None:
    if store_kind == "s3":
        api = await make_client(s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_max_attempts=1)
        where = "S3 storage at http://127.0.0.1:"
    else:
        (tmp_path / "not-a-folder").write_text("a file where the artifact folder should be")
        api = await make_client(default_artifact_root=(tmp_path / "not-a-folder" / "artifacts").as_uri())
        where = "local artifact storage at "
    run_id = await new_run(api)
    for method, suffix, kwargs in [
        ("GET", "", {}),
        ("GET", "/download", {"params": {"path": "x.txt"}}),
        ("POST", "/uploads", {"json": {"files": [{"path": "big.bin", "size": THRESHOLD + 1}]}}),
        ("DELETE", "", {}),
    ]:
        error = (await call(api, method, _root(run_id) + suffix, 503, **kwargs))["error"]
        assert error["code"] == "SERVICE_UNAVAILABLE" and where in error["message"], (
            f"{method} {suffix}: {error}"
        )


async def test_runs_outside_the_artifact_root_are_refused(store_kind: str, api: TestClient) -> None:
    elsewhere = "s3://another-bucket/x" if store_kind == "s3" else "file:///tmp/elsewhere"
    body = {"name": "outside", "artifact_location": elsewhere}
    experiment = await call(api, "POST", "/api/v1/experiments", 201, json=body)
    run_id = await new_run(api, experiment["experiment_id"])
    error = (await call(api, "GET", _root(run_id), 409))["error"]
    assert "outside this service's artifact root" in error["message"]


# --- the local store's own promises -----------------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
async def test_local_signing_key_is_private_and_survives_restarts(
    make_client: MakeClient, make_settings: Settle, http: aiohttp.ClientSession
) -> None:
    first = await make_client()
    run_id = await new_run(first)
    [item] = await plan(first, run_id, {"kept.txt": 4})
    key_file = make_settings().data_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    origin = str(first.make_url(""))
    await first.close()

    second = await make_client()
    await put(http, item["url"].replace(origin, str(second.make_url(""))), b"kept")
    assert await listing(second, run_id) == [("kept.txt", False, 4)], (
        "URLs signed before a restart still work"
    )

    rekeyed = await make_client(artifact_signing_key="k" * 32)
    await put(http, item["url"].replace(origin, str(rekeyed.make_url(""))), b"kept", status=403)


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
async def test_local_uploads_take_exactly_the_declared_bytes(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    run_id = await new_run(api)
    [item] = await plan(api, run_id, {"exact.txt": 5})
    await put(http, item["url"], b"too long", status=400)
    await put(http, item["url"], b"shrt", status=400)
    assert await listing(api, run_id) == [], "a refused body leaves no file"
    await put(http, item["url"], b"exact")
    assert await listing(api, run_id) == [("exact.txt", False, 5)]


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
async def test_local_downloads_are_never_rendered_as_pages_of_the_site(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    run_id = await new_run(api)
    await upload(api, http, run_id, {"evil page.html": b"<script>alert(1)</script>"})
    [item] = (await download(api, run_id, "evil page.html"))["files"]
    async with http.get(item["url"]) as response:
        assert response.status == 200
        assert response.headers["Content-Disposition"] == "attachment; filename*=UTF-8''evil%20page.html"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"].startswith("sandbox")


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
async def test_local_file_and_folder_clashes_are_409(api: TestClient, http: aiohttp.ClientSession) -> None:
    run_id = await new_run(api)
    await upload(api, http, run_id, {"a": b"file", "d/x.txt": b"x"})
    body = {"files": [{"path": "a/b.txt", "size": 1}]}
    assert (await call(api, "POST", _root(run_id) + "/uploads", 409, json=body))["error"]["field"] == "path"
    body = {"files": [{"path": "d", "size": 1}]}
    assert (await call(api, "POST", _root(run_id) + "/uploads", 409, json=body))["error"]["field"] == "path"


@pytest.mark.parametrize("store_kind", ["s3"], indirect=True)
async def test_s3_url_is_signed_for_the_public_endpoint(make_client: MakeClient, s3_server: S3Server) -> None:
    api = await make_client(s3_public_endpoint_url="http://storage.example.org:9000")
    run_id = await new_run(api)
    [item] = await plan(api, run_id, {"x.txt": 1})
    assert item["url"].startswith("http://storage.example.org:9000/"), item["url"]
    assert "X-Amz-Signature=" in item["url"] and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in item["url"]
